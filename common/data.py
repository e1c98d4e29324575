"""Site data: build the default per-country silos and load a site's own splits.

Raw text never leaves a site. This module only prepares silos on disk (one directory per
country) and reads them back as ``SplitData``; every validation error is a
``SiteDataError`` naming the file, the line and what to do about it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

#: Country (site) code -> chatterbot-corpus language directory.
COUNTRY_LANGUAGES: dict[str, str] = {
    "en": "english",
    "fa": "persian",
    "ja": "japanese",
    "it": "italian",
    "uk": "ukrainian",
    "ko": "korean",
    "zh": "chinese",
    "zh-Hant": "traditionalchinese",
    "es": "spanish",
    "pt": "portuguese",
    "nl": "dutch",
    "id": "indonesian",
    "tr": "turkish",
    "de": "german",
    "fr": "french",
    "ru": "russian",
    "sv": "swedish",
    "hi": "hindi",
    "hi-Latn": "hinglish",
    "bn": "bengali",
    "he": "hebrew",
    "mr": "marathi",
    "or": "oriya",
    "ta": "tamil",
    "te": "telugu",
    "th": "thai",
    "ur": "urdu",
    "yo": "yoruba",
}

#: The default federation: the first 15 countries of ``COUNTRY_LANGUAGES``.
DEFAULT_COUNTRIES: tuple[str, ...] = tuple(COUNTRY_LANGUAGES)[:15]

#: Normalised yml file name -> canonical topic. Spelling variants, typos and the Spanish file
#: names that are translations of English topics (checked against all 28 languages of 1.3.3).
TOPIC_ALIASES: dict[str, str] = {
    "conversation": "conversations",
    "coversations": "conversations",
    "greeting": "greetings",
    "emotions": "emotion",
    "emociones": "emotion",
    "computer": "computers",
    "sport": "sports",
    "ia": "ai",
    "dinero": "money",
    "psicologia": "psychology",
    "perfilbot": "botprofile",
    "profile": "botprofile",
}

OTHER_LABEL = "other"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
CORPUS_SOURCE = "chatterbot-corpus"
SILO_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.json"

# --------------------------------------------------------------------------------------------
# Errors and results
# --------------------------------------------------------------------------------------------


class SiteDataError(ValueError):
    """A site's data file is unusable.

    Attributes
    ----------
    path : Path
        The offending file (or directory).
    line : int | None
        1-based line (JSONL/CSV) or row (Parquet) number, when the problem has one.
    reason : str
        What is wrong.
    hint : str
        What to do about it.
    """

    def __init__(self, path: Path | str, line: int | None, reason: str, hint: str = "",
                 unit: str = "line") -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        self.hint = hint
        self.unit = unit
        where = f"{self.path}" if line is None else f"{self.path}, {unit} {line}"
        super().__init__(f"{where}: {reason}" + (f". {hint}" if hint else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.reason, self.hint, self.unit))


@dataclass(frozen=True)
class SplitData:
    """One split of a site's data: texts and label indexes into the federation label list."""

    texts: list[str]
    labels: list[int]
    path: Path

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class FederationData:
    """Silos prepared on disk for a federation.

    Attributes
    ----------
    root : Path
        Directory holding ``labels.json`` and one ``<country>/`` silo per site.
    countries : tuple[str, ...]
        Site codes, in federation order.
    labels : tuple[str, ...]
        Shared label list (sorted, ``other`` last).
    manifests : dict[str, dict]
        Per-country manifest contents.
    """

    root: Path
    countries: tuple[str, ...]
    labels: tuple[str, ...]
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def silo(self, country: str) -> Path:
        """Return the silo directory of ``country``."""
        return self.root / country


@dataclass(frozen=True)
class _Conversation:
    topic: str
    index: int
    lines: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Default silos
# --------------------------------------------------------------------------------------------


def default_silo_root() -> Path:
    """Return where the default silos live.

    ``$FEDSILO_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedsilo``, else ``~/.cache/fedsilo``;
    followed by ``silos/chatterbot-v1``.
    """
    candidates = (
        os.environ.get("FEDSILO_CACHE_DIR"),
        os.environ.get("XDG_CACHE_HOME") and str(Path(os.environ["XDG_CACHE_HOME"]) / "fedsilo"),
        str(Path.home() / ".cache" / "fedsilo"),
    )
    base = Path(next(candidate for candidate in candidates if candidate))
    return base / "silos" / f"chatterbot-v{SILO_FORMAT_VERSION}"


def normalise_topic(file_name: str) -> str:
    """Map a corpus yml file name to its canonical topic (``Greeting.yml`` -> ``greetings``)."""
    stem = Path(file_name.strip()).stem.strip().lower()
    stem = "_".join(stem.replace("-", " ").split())
    return TOPIC_ALIASES.get(stem, stem)


def split_of_group(topic: str, index: int, *, seed: int, val_fraction: float,
                   test_fraction: float) -> str:
    """Return the split of conversation group ``(topic, index)``, identical in every language."""
    digest = hashlib.sha256(f"{seed}\x1f{topic}\x1f{index}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    bounds = (("test", test_fraction), ("validation", test_fraction + val_fraction))
    return next((name for name, upper in bounds if draw < upper), "train")


def prepare_silos(
    out_dir: Path,
    countries: Sequence[str] | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    min_topic_lines: int = 100,
    min_topic_countries: int = 3,
    corpus_dir: Path | None = None,
) -> FederationData:
    """Build one silo per country from chatterbot-corpus (reused when already built).

    Parameters
    ----------
    out_dir : Path
        Federation root; silos go to ``out_dir/<country>/``.
    countries : Sequence[str] | None
        Site codes (keys of ``COUNTRY_LANGUAGES``); default ``DEFAULT_COUNTRIES``.
    seed, val_fraction, test_fraction : int, float, float
        Conversation-group split assignment.
    min_topic_lines, min_topic_countries : int
        Topics below either threshold (federation-wide) are labelled ``other``.
    corpus_dir : Path | None
        Corpus ``data`` directory; default: the installed package's.

    Returns
    -------
    FederationData
    """
    out_dir = Path(out_dir)
    countries = _resolve_countries(countries)
    _check_fractions(val_fraction, test_fraction)
    corpus_dir = Path(corpus_dir) if corpus_dir else _installed_corpus_dir()
    params = _build_params(countries, seed, val_fraction, test_fraction, min_topic_lines,
                           min_topic_countries, corpus_dir)
    reused = _reuse_existing(out_dir, countries, params)
    if reused is not None:
        logger.info("Reusing silos in %s (%d countries)", out_dir, len(countries))
        for manifest in reused.manifests.values():
            _log_summary(manifest)
        return reused
    corpus = {country: _read_language(corpus_dir / COUNTRY_LANGUAGES[country])
              for country in countries}
    labels, topic_to_label = _choose_labels(corpus, min_topic_lines, min_topic_countries)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = {
        country: _write_silo(out_dir / country, country, conversations, topic_to_label,
                             labels, params)
        for country, conversations in corpus.items()
    }
    _atomic_write(out_dir / LABELS_NAME, _json_bytes(labels))
    return FederationData(out_dir, tuple(countries), tuple(labels), manifests)


def _resolve_countries(countries: Sequence[str] | None) -> list[str]:
    chosen = list(DEFAULT_COUNTRIES if countries is None else countries)
    unknown = [c for c in chosen if c not in COUNTRY_LANGUAGES]
    if unknown:
        raise ValueError(f"Unknown country code(s) {unknown}; use codes from "
                         f"{sorted(COUNTRY_LANGUAGES)}")
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"Countries must be a non-empty list without repeats, got {chosen}")
    return chosen


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must "
                         "be >= 0 and sum to less than 1 so training keeps some conversations")


def _installed_corpus_dir() -> Path:
    return Path(str(resources.files("chatterbot_corpus") / "data"))


def _corpus_version() -> str:
    try:
        return metadata.version(CORPUS_SOURCE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_params(countries: Sequence[str], seed: int, val_fraction: float,
                  test_fraction: float, min_topic_lines: int, min_topic_countries: int,
                  corpus_dir: Path) -> dict[str, Any]:
    return {
        "format_version": SILO_FORMAT_VERSION,
        "source": f"{CORPUS_SOURCE}=={_corpus_version()}",
        "corpus_digest": _corpus_digest(corpus_dir, countries),
        "federation": list(countries),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "min_topic_lines": min_topic_lines,
        "min_topic_countries": min_topic_countries,
    }


def _corpus_digest(corpus_dir: Path, countries: Sequence[str]) -> str:
    """Digest of the corpus files used, so a changed corpus invalidates reuse."""
    digest = hashlib.sha256()
    for country in countries:
        language_dir = corpus_dir / COUNTRY_LANGUAGES[country]
        for path in _topic_files(language_dir):
            digest.update(f"{language_dir.name}/{path.name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _topic_files(language_dir: Path) -> list[Path]:
    if not language_dir.is_dir():
        raise FileNotFoundError(f"Corpus language directory {language_dir} is missing; "
                                f"reinstall {CORPUS_SOURCE} or pass corpus_dir")
    return sorted(p for p in language_dir.iterdir() if p.suffix.lower() in (".yml", ".yaml"))


def _read_language(language_dir: Path) -> list[_Conversation]:
    """Read every conversation of a language, keyed by normalised topic and file index."""
    return [conversation for path in _topic_files(language_dir)
            for conversation in _read_topic_file(path)]


def _read_topic_file(path: Path) -> list[_Conversation]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    raw = document.get("conversations") if isinstance(document, dict) else None
    if not isinstance(raw, list):
        logger.warning("Skipping %s: no 'conversations' list", path)
        return []
    topic = normalise_topic(path.name)
    return [_Conversation(topic, index, _clean_lines(entry)) for index, entry in enumerate(raw)]


def _clean_lines(entry: Any) -> tuple[str, ...]:
    """Lines of one conversation; a bare string counts as a one-line conversation."""
    items = entry if isinstance(entry, list) else [entry]
    stripped = (item.strip() for item in items if isinstance(item, str))
    return tuple(line for line in stripped if line)


def _choose_labels(corpus: dict[str, list[_Conversation]], min_topic_lines: int,
                   min_topic_countries: int) -> tuple[list[str], dict[str, str]]:
    """Keep topics common enough federation-wide; map the rest to ``other``.

    Lines are counted once per distinct text and country, as the silos will hold them.
    """
    distinct: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)
    for country, conversations in corpus.items():
        for conversation in conversations:
            distinct[conversation.topic].update((country, text) for text in conversation.lines)
    lines = Counter({topic: len(pairs) for topic, pairs in distinct.items()})
    countries = {topic: {country for country, _ in pairs} for topic, pairs in distinct.items()}
    kept = sorted(topic for topic in lines if topic != OTHER_LABEL
                  and lines[topic] >= min_topic_lines
                  and len(countries[topic]) >= min_topic_countries)
    topic_to_label = {topic: topic if topic in kept else OTHER_LABEL for topic in lines}
    has_other = OTHER_LABEL in topic_to_label.values()
    return kept + ([OTHER_LABEL] if has_other else []), topic_to_label


def _assign_examples(conversations: Iterable[_Conversation], topic_to_label: dict[str, str],
                     params: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Examples per split; exact (text, label) duplicates kept once per silo."""
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    seen: set[tuple[str, str]] = set()
    for conversation in conversations:
        split = split_of_group(conversation.topic, conversation.index, seed=params["seed"],
                               val_fraction=params["val_fraction"],
                               test_fraction=params["test_fraction"])
        label = topic_to_label[conversation.topic]
        for text in conversation.lines:
            if (text, label) not in seen:
                seen.add((text, label))
                splits[split].append({"text": text, "label": label})
    return splits


def _write_silo(silo_dir: Path, country: str, conversations: list[_Conversation],
                topic_to_label: dict[str, str], labels: list[str],
                params: dict[str, Any]) -> dict[str, Any]:
    """Write the three split files and the manifest of one silo; return the manifest."""
    silo_dir.mkdir(parents=True, exist_ok=True)
    splits = _assign_examples(conversations, topic_to_label, params)
    files = {}
    for split, examples in splits.items():
        payload = b"".join(_json_bytes(example, indent=None) for example in examples)
        _atomic_write(silo_dir / f"{split}.jsonl", payload)
        files[split] = {"name": f"{split}.jsonl", "sha256": hashlib.sha256(payload).hexdigest(),
                        "bytes": len(payload)}
    counts = {split: dict(sorted(Counter(e["label"] for e in examples).items()))
              for split, examples in splits.items()}
    manifest = {"country": country, "language": COUNTRY_LANGUAGES[country],
                "labels": labels, "counts": counts, "files": files, **params}
    _atomic_write(silo_dir / MANIFEST_NAME, _json_bytes(manifest))
    _log_summary(manifest)
    return manifest


def _log_summary(manifest: dict[str, Any]) -> None:
    sizes = (sum(manifest["counts"][split].values()) for split in SPLITS)
    logger.info("Silo %s (%s): train=%d validation=%d test=%d", manifest["country"],
                manifest["language"], *sizes)


def _reuse_existing(out_dir: Path, countries: Sequence[str],
                    params: dict[str, Any]) -> FederationData | None:
    """Return the existing federation if every manifest and file matches ``params``."""
    manifests = {country: _read_valid_manifest(out_dir / country, params)
                 for country in countries}
    labels = _read_json(out_dir / LABELS_NAME)
    usable = all(manifests.values()) and isinstance(labels, list) and all(
        manifest["labels"] == labels for manifest in manifests.values())
    if not usable:
        return None
    return FederationData(out_dir, tuple(countries), tuple(labels), manifests)


def _read_valid_manifest(silo_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    manifest = _read_json(silo_dir / MANIFEST_NAME)
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in params.items()):
        return None
    files = manifest.get("files", {})
    intact = set(files) == set(SPLITS) and all(
        _file_sha256(silo_dir / entry["name"]) == entry["sha256"] for entry in files.values())
    return manifest if intact else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _file_sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _json_bytes(value: Any, indent: int | None = 2) -> bytes:
    text = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=indent is not None)
    return (text + "\n").encode("utf-8")


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and rename."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Loading a site's data
# --------------------------------------------------------------------------------------------

_Row = tuple[int, dict[str, Any]]
_Reader = Callable[[Path, Sequence[str], int], Iterator[_Row]]
_COLUMN_HINT = "set data.text_column / data.label_column in the site config to the right names"


def load_split(
    path: Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str],
    max_line_bytes: int = 1_000_000,
    file_format: str | None = None,
) -> SplitData:
    """Read and validate one split file (JSONL, CSV or Parquet).

    Parameters
    ----------
    path : Path
        The split file.
    text_column, label_column : str
        Field names of the text and its label.
    labels : Sequence[str]
        Allowed label names; returned labels are indexes into it.
    max_line_bytes : int
        Longest accepted line (JSONL/CSV) or text (Parquet), in bytes.
    file_format : str | None
        ``jsonl``, ``csv`` or ``parquet``; default: from the suffix.

    Returns
    -------
    SplitData

    Raises
    ------
    SiteDataError
        On any unusable file, line or value.
    """
    path = Path(path)
    reader, unit = _pick_format(path, file_format)
    if not path.is_file():
        raise SiteDataError(path, None, "file not found",
                            "check the site's data path or run `fedsilo data prepare` for the default silos")
    label_index = {name: i for i, name in enumerate(labels)}
    texts: list[str] = []
    label_ids: list[int] = []
    for line, record in reader(path, (text_column, label_column), max_line_bytes):
        texts.append(_valid_text(path, (line, unit), record, text_column))
        label_ids.append(_valid_label(path, (line, unit), record, label_column, label_index))
    if not texts:
        raise SiteDataError(path, None, "no examples in the file",
                            f"add at least one row with '{text_column}' and '{label_column}'")
    return SplitData(texts, label_ids, path)


def load_silo(silo_dir: Path, split: str, **kwargs: Any) -> SplitData:
    """Load ``<silo_dir>/<split>.{jsonl,csv,parquet}``; keywords as in ``load_split``."""
    return load_split(_resolve_split_file(Path(silo_dir), split), **kwargs)


def check_silo(silo_dir: Path, labels: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    """Validate all splits of a silo and return counts only (never raw text).

    Returns
    -------
    dict
        ``{"silo", "labels", "splits": {split: {"file", "examples", "counts"}},
        "texts_in_several_splits"}``.
    """
    silo_dir = Path(silo_dir)
    if not silo_dir.is_dir():
        raise SiteDataError(silo_dir, None, "no such silo directory",
                            "check the path, or run `fedsilo data prepare` for the default silos")
    loaded = {split: load_silo(silo_dir, split, labels=labels, **kwargs) for split in SPLITS}
    _check_manifest_digests(silo_dir, loaded)
    text_sets = [set(data.texts) for data in loaded.values()]
    shared = set().union(*(a & b for i, a in enumerate(text_sets) for b in text_sets[i + 1:]))
    splits = {split: {"file": data.path.name, "examples": len(data),
                      "counts": {labels[i]: n for i, n in sorted(Counter(data.labels).items())}}
              for split, data in loaded.items()}
    return {"silo": str(silo_dir), "labels": list(labels), "splits": splits,
            "texts_in_several_splits": len(shared)}


def _check_manifest_digests(silo_dir: Path, loaded: dict[str, SplitData]) -> None:
    """Where a manifest.json lists file digests, each split file must still match it."""
    manifest_path = silo_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
    except (ValueError, AttributeError) as exc:
        raise SiteDataError(manifest_path, None, f"unreadable manifest ({exc})",
                            "re-run `fedsilo data prepare` or remove the manifest") from None
    for split, data in loaded.items():
        recorded = files.get(split, {})
        if recorded.get("name") != data.path.name or "sha256" not in recorded:
            continue
        if _file_sha256(data.path) != recorded["sha256"]:
            raise SiteDataError(data.path, None, "content differs from the sha256 in "
                                f"{MANIFEST_NAME}", "re-run `fedsilo data prepare`, or restore "
                                "the file")


def _resolve_split_file(silo_dir: Path, split: str) -> Path:
    found = [silo_dir / f"{split}{suffix}" for suffix in SPLIT_SUFFIXES
             if (silo_dir / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise SiteDataError(silo_dir, None, f"several files for split '{split}': "
                            f"{[p.name for p in found]}", "keep exactly one of them")
    if not found:
        raise SiteDataError(silo_dir / f"{split}.jsonl", None,
                            f"no {split} file ({', '.join(split + s for s in SPLIT_SUFFIXES)})",
                            "add one, or run `fedsilo data prepare` for the default silos")
    return found[0]


def _pick_format(path: Path, file_format: str | None) -> tuple[_Reader, str]:
    key = (file_format or path.suffix).lower().lstrip(".")
    if key not in _READERS:
        raise SiteDataError(path, None, f"unsupported file format '{key}'",
                            f"use one of {sorted(_READERS)} (suffix or file_format)")
    return _READERS[key]


def _valid_text(path: Path, where: tuple[int, str], record: dict[str, Any], column: str) -> str:
    text = record[column]
    if not isinstance(text, str):
        raise SiteDataError(path, where[0], f"'{column}' is {type(text).__name__}, not a string",
                            "make every text a non-empty string", where[1])
    if not text.strip():
        raise SiteDataError(path, where[0], f"'{column}' is empty",
                            "drop the row or fill in its text", where[1])
    return text


def _valid_label(path: Path, where: tuple[int, str], record: dict[str, Any], column: str,
                 label_index: dict[str, int]) -> int:
    label = record[column]
    if isinstance(label, str) and label in label_index:
        return label_index[label]
    raise SiteDataError(path, where[0], f"unknown label {label!r}; allowed: {list(label_index)}",
                        "labels are the federation's: map it to one of them (or `other`), or ask the "
                        "coordinator to add it to data.labels for every site",
                        where[1])


def _missing_columns(path: Path, line: int | None, present: Iterable[str],
                     expected: Sequence[str]) -> SiteDataError:
    missing = [column for column in expected if column not in present]
    return SiteDataError(path, line, f"missing column(s) {missing}; found {sorted(present)}, "
                         f"expected {list(expected)}", _COLUMN_HINT)


def _human_bytes(size: int) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    exponent = 0
    value = float(size)
    while value >= 1000 and exponent < len(units) - 1:
        value /= 1000
        exponent += 1
    return f"{value:.1f} {units[exponent]}" if exponent else f"{size} B"


def _too_long(path: Path, line: int, size: int, limit: int, unit: str = "line") -> SiteDataError:
    return SiteDataError(path, line, f"{unit} is {_human_bytes(size)} ({size} bytes), over the "
                         f"{_human_bytes(limit)} limit",
                         "shorten or drop it, or raise max_line_bytes (data.max_line_bytes)", unit)


def _text_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """Stream ``path`` in binary; yield (line number, decoded line) after size/UTF-8 checks."""
    chunk = 1 << 16
    offset = 0
    with path.open("rb") as handle:
        for number in range(1, 2**63):
            raw = handle.readline(max_line_bytes + 2)
            if not raw:
                return
            if len(raw.rstrip(b"\r\n")) > max_line_bytes:
                size = len(raw.rstrip(b"\r\n")) + _skip_rest_of_line(handle, chunk, raw)
                raise _too_long(path, number, size, max_line_bytes)
            yield number, _decode(path, number, offset, raw)
            offset += len(raw)


def _skip_rest_of_line(handle: io.BufferedReader, chunk: int, head: bytes) -> int:
    """Consume the remainder of an overlong line in chunks; return its byte count."""
    if head.endswith(b"\n"):
        return 0
    size = 0
    for _ in range(2**63):
        piece = handle.readline(chunk)
        size += len(piece.rstrip(b"\r\n"))
        if not piece or piece.endswith(b"\n"):
            return size
    return size


def _decode(path: Path, number: int, offset: int, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SiteDataError(path, number, f"invalid UTF-8 at byte offset {offset + exc.start} "
                            f"(byte {exc.start} of the line)",
                            "re-save the file as UTF-8") from None
    return text.removeprefix("\ufeff") if number == 1 else text


def _read_jsonl(path: Path, columns: Sequence[str], max_line_bytes: int) -> Iterator[_Row]:
    for number, text in _text_lines(path, max_line_bytes):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SiteDataError(path, number, f"invalid JSON ({exc.msg} at column {exc.colno})",
                                "write one JSON object per line") from None
        if not isinstance(record, dict):
            raise SiteDataError(path, number, f"a JSON {type(record).__name__}, not an object",
                                'write one object per line, e.g. {"text": ..., "label": ...}')
        if any(column not in record for column in columns):
            raise _missing_columns(path, number, record, columns)
        yield number, record


def _read_csv(path: Path, columns: Sequence[str], max_line_bytes: int) -> Iterator[_Row]:
    # Lines are size-checked before parsing; let the csv module accept fields that long.
    if csv.field_size_limit() < max_line_bytes:
        csv.field_size_limit(max_line_bytes)
    lines = _text_lines(path, max_line_bytes)
    source = (text for _, text in lines)
    reader = csv.reader(source)
    try:
        header = next(reader, None)
        if header is None:
            return
        if any(column not in header for column in columns):
            raise _missing_columns(path, reader.line_num, header, columns)
        positions = {column: header.index(column) for column in columns}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise SiteDataError(path, reader.line_num, f"{len(row)} fields, the header has "
                                    f"{len(header)}", "quote fields that contain commas")
            yield reader.line_num, {column: row[i] for column, i in positions.items()}
    except csv.Error as exc:
        raise SiteDataError(path, reader.line_num, f"malformed CSV ({exc})",
                            "check quoting on that line") from None


def _read_parquet(path: Path, columns: Sequence[str], max_line_bytes: int) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise SiteDataError(path, None, f"not a readable Parquet file ({exc})",
                            "re-export the split as Parquet, JSONL or CSV") from None
    present = parquet.schema_arrow.names
    if any(column not in present for column in columns):
        raise _missing_columns(path, None, present, columns)
    yield from _parquet_rows(path, parquet, columns, max_line_bytes)


def _parquet_rows(path: Path, parquet: Any, columns: Sequence[str],
                  max_line_bytes: int) -> Iterator[_Row]:
    row = 0
    for batch in parquet.iter_batches(columns=list(columns)):
        for record in batch.to_pylist():
            row += 1
            text = record[columns[0]]
            if isinstance(text, str) and len(text.encode("utf-8")) > max_line_bytes:
                raise _too_long(path, row, len(text.encode("utf-8")), max_line_bytes, "row")
            yield row, record


#: Format -> (reader, what its record numbers count).
_READERS: dict[str, tuple[_Reader, str]] = {
    "jsonl": (_read_jsonl, "line"),
    "csv": (_read_csv, "line"),
    "parquet": (_read_parquet, "row"),
}
