"""Specs for site data: default silos from chatterbot-corpus and loading a site's own splits."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
import yaml

from common import data
from common.data import (
    DEFAULT_COUNTRIES,
    OTHER_LABEL,
    SPLITS,
    SiteDataError,
    check_silo,
    default_silo_root,
    load_silo,
    load_split,
    normalise_topic,
    prepare_silos,
)

LABELS = ("food", "greetings", OTHER_LABEL)


# --- helpers -------------------------------------------------------------------------------


def write_topic(corpus: Path, language: str, file_name: str, conversations: list,
                categories: tuple[str, ...] = ("whatever",)) -> None:
    """Write one corpus yml file."""
    folder = corpus / language
    folder.mkdir(parents=True, exist_ok=True)
    document = {"categories": list(categories), "conversations": conversations}
    (folder / file_name).write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")


def tagged_corpus(root: Path, conversations_per_topic: int = 40) -> Path:
    """Two 'translated' languages whose lines name their (topic, index) group."""
    corpus = root / "corpus"
    files = {"english": ("greetings.yml", "food.yml"), "german": ("Greeting.yml", "food.yml")}
    for language, names in files.items():
        for name in names:
            topic = normalise_topic(name)
            write_topic(corpus, language, name, [
                [f"{language}|{topic}|{i}|q", f"{language}|{topic}|{i}|a"]
                for i in range(conversations_per_topic)])
    return corpus


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def write_jsonl(path: Path, rows: list) -> Path:
    lines = (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)
    path.write_text("".join(line + "\n" for line in lines), "utf-8")
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> data.FederationData:
    return prepare_silos(tmp_path_factory.mktemp("federation"))


# --- default silos -------------------------------------------------------------------------


def test_translations_of_a_test_conversation_never_reach_training(tmp_path: Path) -> None:
    corpus = tagged_corpus(tmp_path)
    prepare_silos(tmp_path / "out", ["en", "de"], corpus_dir=corpus, min_topic_lines=1,
                  min_topic_countries=1)
    groups: dict[str, set[tuple[str, str]]] = {split: set() for split in SPLITS}
    for country in ("en", "de"):
        for split in SPLITS:
            for row in read_jsonl(tmp_path / "out" / country / f"{split}.jsonl"):
                _, topic, index, _ = row["text"].split("|")
                groups[split].add((topic, index))
    assert all(groups.values()), "every split should hold some conversations"
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]


def test_each_conversation_group_lands_in_one_split_for_every_language(tmp_path: Path) -> None:
    corpus = tagged_corpus(tmp_path)
    prepare_silos(tmp_path / "out", ["en", "de"], corpus_dir=corpus, min_topic_lines=1,
                  min_topic_countries=1)
    split_of = {}
    for country in ("en", "de"):
        for split in SPLITS:
            for row in read_jsonl(tmp_path / "out" / country / f"{split}.jsonl"):
                _, topic, index, _ = row["text"].split("|")
                assert split_of.setdefault((topic, index), split) == split
    assert len(split_of) == 80


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    prepare_silos(tmp_path / "a", seed=7)
    prepare_silos(tmp_path / "b", seed=7)
    first, second = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert len(first) == 1 + 4 * len(DEFAULT_COUNTRIES)
    assert first == second


def test_another_seed_moves_conversations_between_splits(tmp_path: Path) -> None:
    prepare_silos(tmp_path / "a", ["en"], seed=0)
    prepare_silos(tmp_path / "b", ["en"], seed=1)
    first, second = (tmp_path / run / "en" / "test.jsonl" for run in ("a", "b"))
    assert first.read_bytes() != second.read_bytes()


def test_default_federation_has_three_nonempty_splits_per_country(federation) -> None:
    assert federation.countries == DEFAULT_COUNTRIES
    for country in DEFAULT_COUNTRIES:
        counts = check_silo(federation.silo(country), federation.labels)["splits"]
        assert all(counts[split]["examples"] > 0 for split in SPLITS), country


def test_label_list_is_sorted_with_other_last_and_written_to_labels_json(federation) -> None:
    labels = list(federation.labels)
    assert labels[-1] == OTHER_LABEL
    assert labels[:-1] == sorted(labels[:-1])
    assert {"greetings", "conversations", "emotion", "computers"} <= set(labels)
    assert json.loads((federation.root / "labels.json").read_text("utf-8")) == labels


def test_manifest_records_counts_digests_and_parameters(federation) -> None:
    manifest = json.loads((federation.silo("ja") / "manifest.json").read_text("utf-8"))
    assert (manifest["country"], manifest["language"]) == ("ja", "japanese")
    assert manifest["labels"] == list(federation.labels)
    assert (manifest["seed"], manifest["val_fraction"], manifest["test_fraction"]) == (0, .15, .2)
    for split in SPLITS:
        payload = (federation.silo("ja") / f"{split}.jsonl").read_bytes()
        assert manifest["files"][split]["bytes"] == len(payload)
        assert sum(manifest["counts"][split].values()) == len(payload.splitlines())


def test_silo_files_are_utf8_without_ascii_escapes(federation) -> None:
    text = (federation.silo("ja") / "train.jsonl").read_text("utf-8")
    assert "\\u" not in text
    assert not list(federation.root.rglob(".*")), "no temporary files left behind"


def test_prepare_silos_reuses_matching_silos(tmp_path: Path, caplog) -> None:
    prepare_silos(tmp_path, ["en", "fr"])
    stamp = (tmp_path / "en" / "train.jsonl").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="common.data"):
        prepare_silos(tmp_path, ["en", "fr"])
    assert (tmp_path / "en" / "train.jsonl").stat().st_mtime_ns == stamp
    assert "Reusing" in caplog.text


@pytest.mark.parametrize("change", ["seed", "tampered file", "other federation"])
def test_prepare_silos_rebuilds_when_anything_differs(tmp_path: Path, change: str) -> None:
    prepare_silos(tmp_path, ["en", "fr"])
    original = (tmp_path / "en" / "test.jsonl").read_bytes()
    if change == "tampered file":
        (tmp_path / "en" / "test.jsonl").write_bytes(b"")
    rebuilt = prepare_silos(tmp_path, ["en", "fr", "de"] if change == "other federation"
                            else ["en", "fr"], seed=3 if change == "seed" else 0)
    assert rebuilt.manifests["en"]["seed"] == (3 if change == "seed" else 0)
    if change == "tampered file":
        assert (tmp_path / "en" / "test.jsonl").read_bytes() == original


@pytest.mark.parametrize("file_name, topic", [
    ("greetings.yml", "greetings"), ("greeting.yml", "greetings"),
    ("Greeting.yml", "greetings"), ("coversations.yml", "conversations"),
    ("conversation.yml", "conversations"), ("emotions.yml", "emotion"),
    ("computer.yml", "computers"), ("sport.yml", "sports"), ("IA.yml", "ai"),
    ("tech-support.yml", "tech_support"), (" tech support.yml", "tech_support"),
    ("profile.yml", "botprofile"), ("perfilbot.yml", "botprofile"),
])
def test_file_name_spelling_variants_share_one_topic(file_name: str, topic: str) -> None:
    assert normalise_topic(file_name) == topic


def test_labels_come_from_file_names_not_in_file_categories(tmp_path: Path) -> None:
    write_topic(tmp_path, "english", "food.yml", [["a", "b"]], categories=("greetings",))
    write_topic(tmp_path, "german", "food.yml", [["c", "d"]], categories=("Essen",))
    result = prepare_silos(tmp_path / "out", ["en", "de"], corpus_dir=tmp_path,
                           min_topic_lines=1, min_topic_countries=1)
    assert result.labels == ("food",)


def test_rare_topics_map_to_other(tmp_path: Path) -> None:
    for language in ("english", "german"):
        write_topic(tmp_path, language, "food.yml", [[f"{language} food {i}"] for i in range(9)])
    write_topic(tmp_path, "english", "coding.yml", [[f"code {i}"] for i in range(50)])
    write_topic(tmp_path, "german", "music.yml", [["Musik"]])
    write_topic(tmp_path, "english", "music.yml", [["music"]])
    result = prepare_silos(tmp_path / "out", ["en", "de"], corpus_dir=tmp_path,
                           min_topic_lines=5, min_topic_countries=2)
    assert result.labels == ("food", OTHER_LABEL)
    rows = [row for split in SPLITS for row in read_jsonl(tmp_path / f"out/en/{split}.jsonl")]
    assert {row["label"] for row in rows if row["text"].startswith("code")} == {OTHER_LABEL}


def test_each_line_is_one_example_stripped_deduplicated_and_empty_lines_skipped(
        tmp_path: Path) -> None:
    write_topic(tmp_path, "english", "food.yml",
                [[" hi ", "hi", "", 42, None, "bye"], "a bare line", ["bye"]])
    prepare_silos(tmp_path / "out", ["en"], corpus_dir=tmp_path, min_topic_lines=1,
                  min_topic_countries=1)
    silo = tmp_path / "out" / "en"
    texts = [row["text"] for split in SPLITS for row in read_jsonl(silo / f"{split}.jsonl")]
    assert sorted(texts) == ["a bare line", "bye", "hi"]


def test_unknown_country_is_rejected_listing_known_codes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown country code.*'zz'.*'en'"):
        prepare_silos(tmp_path, ["en", "zz"])


def test_fractions_leaving_no_training_data_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sum to less than 1"):
        prepare_silos(tmp_path, ["en"], val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("env, expected", [
    ({"FEDSILO_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}, "/c/silos/chatterbot-v1"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/fedsilo/silos/chatterbot-v1"),
    ({}, "~/.cache/fedsilo/silos/chatterbot-v1"),
])
def test_default_silo_root_follows_cache_environment(monkeypatch, env, expected) -> None:
    for name in ("FEDSILO_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_silo_root() == Path(expected).expanduser()


# --- loading a site's data -----------------------------------------------------------------

ROWS = [{"text": "hello there", "label": "greetings"}, {"text": "pizza", "label": "food"}]


def write_rows(path: Path, rows: list[dict]) -> Path:
    writers = {".jsonl": lambda: write_jsonl(path, rows),
               ".csv": lambda: pd.DataFrame(rows).to_csv(path, index=False),
               ".parquet": lambda: pd.DataFrame(rows).to_parquet(path, index=False)}
    writers[path.suffix]()
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_format_loads_to_texts_and_label_indexes(tmp_path: Path, suffix: str) -> None:
    split = load_split(write_rows(tmp_path / f"train{suffix}", ROWS), labels=LABELS)
    assert (split.texts, split.labels) == (["hello there", "pizza"], [1, 0])


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.txt", ROWS)
    assert len(load_split(path, labels=LABELS, file_format="jsonl")) == 2


def test_custom_column_names_are_used(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"utterance": "pizza", "topic": "food"}])
    split = load_split(path, labels=LABELS, text_column="utterance", label_column="topic")
    assert split.labels == [0]


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="file not found.*fedsilo data prepare") as info:
        load_split(tmp_path / "nope.jsonl", labels=LABELS)
    assert info.value.line is None


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"])
def test_file_without_examples_is_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / ("t.csv" if "," in content else "t.jsonl")
    path.write_text(content, "utf-8")
    with pytest.raises(SiteDataError, match="no examples"):
        load_split(path, labels=LABELS)


@pytest.mark.parametrize("suffix, line", [(".jsonl", 2), (".csv", 1), (".parquet", None)])
def test_missing_column_names_found_expected_and_config_keys(tmp_path: Path, suffix: str,
                                                             line: int | None) -> None:
    rows = ROWS[:1] + [{"sentence": "pizza", "label": "food"}] if suffix == ".jsonl" else [
        {"sentence": "pizza", "label": "food"}]
    path = write_rows(tmp_path / f"t{suffix}", rows)
    with pytest.raises(SiteDataError) as info:
        load_split(path, labels=LABELS)
    message = str(info.value)
    assert "['text']" in message and "sentence" in message
    assert "data.text_column" in message and "data.label_column" in message
    assert info.value.line == line


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_invalid_utf8_reports_line_and_byte_offset(tmp_path: Path, suffix: str) -> None:
    header = b"text,label\n" if suffix == ".csv" else b""
    body = (b'{"text": "ok", "label": "food"}\n' if suffix == ".jsonl" else b"ok,food\n")
    bad = b'{"text": "caf\xe9", "label": "food"}\n' if suffix == ".jsonl" else b"caf\xe9,food\n"
    path = tmp_path / f"t{suffix}"
    path.write_bytes(header + body + bad)
    with pytest.raises(SiteDataError, match="invalid UTF-8 at byte offset") as info:
        load_split(path, labels=LABELS)
    assert info.value.line == (3 if suffix == ".csv" else 2)
    assert str(len(header + body) + bad.index(b"\xe9")) in info.value.reason


def test_invalid_json_reports_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ROWS + ['{"text": "x", "label": '])
    with pytest.raises(SiteDataError, match=r"line 3: invalid JSON") as info:
        load_split(path, labels=LABELS)
    assert (info.value.path, info.value.line) == (path, 3)


def test_json_line_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ['["pizza", "food"]'])
    with pytest.raises(SiteDataError, match="not an object"):
        load_split(path, labels=LABELS)


@pytest.mark.parametrize("text, reason", [(3, "int, not a string"), (None, "not a string"),
                                          ("   ", "empty")])
def test_non_string_or_empty_text_is_rejected(tmp_path: Path, text, reason: str) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ROWS + [{"text": text, "label": "food"}])
    with pytest.raises(SiteDataError, match=reason) as info:
        load_split(path, labels=LABELS)
    assert info.value.line == 3


def test_unknown_label_lists_allowed_labels_and_the_fix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ROWS + [{"text": "x", "label": "weather"}])
    with pytest.raises(SiteDataError) as info:
        load_split(path, labels=LABELS)
    assert info.value.line == 3
    assert "'weather'" in info.value.reason
    assert "['food', 'greetings', 'other']" in info.value.reason
    assert "data.labels" in str(info.value)


def test_ten_megabyte_line_is_rejected_with_line_number(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "t.jsonl"
    huge = json.dumps({"text": "x" * 10_000_000, "label": "food"})
    path.write_text(json.dumps(ROWS[0]) + "\n" + huge + "\n" + json.dumps(ROWS[1]) + "\n")
    real_loads = json.loads

    def small_loads(text, *args, **kwargs):
        assert len(text) < 2_000_000, "the oversized line reached the JSON parser"
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(data.json, "loads", small_loads)
    with pytest.raises(SiteDataError, match=r"line 2: line is 10.0 MB .* 1.0 MB limit") as info:
        load_split(path, labels=LABELS)
    assert info.value.line == 2


def test_long_parquet_text_is_rejected_with_its_row(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.parquet", ROWS + [{"text": "y" * 2_000, "label": "food"}])
    with pytest.raises(SiteDataError, match="row 3: row is 2.0 KB"):
        load_split(path, labels=LABELS, max_line_bytes=1_000)


def test_site_data_error_is_a_value_error_that_survives_pickling(tmp_path: Path) -> None:
    error = SiteDataError(tmp_path / "t.jsonl", 4, "bad", "fix it")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ValueError)
    assert (copy.path, copy.line, copy.reason, str(copy)) == (error.path, 4, "bad", str(error))


def test_load_silo_resolves_the_split_file_by_suffix(tmp_path: Path) -> None:
    write_rows(tmp_path / "validation.csv", ROWS)
    assert load_silo(tmp_path, "validation", labels=LABELS).path == tmp_path / "validation.csv"


def test_load_silo_refuses_ambiguous_or_missing_split_files(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", ROWS)
    write_rows(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(SiteDataError, match="several files"):
        load_silo(tmp_path, "train", labels=LABELS)
    with pytest.raises(SiteDataError, match="no test file"):
        load_silo(tmp_path, "test", labels=LABELS)


def test_check_silo_reports_counts_but_never_text(tmp_path: Path) -> None:
    for split in SPLITS:
        write_rows(tmp_path / f"{split}.jsonl", ROWS)
    report = check_silo(tmp_path, LABELS)
    assert report["splits"]["test"]["counts"] == {"food": 1, "greetings": 1}
    assert report["texts_in_several_splits"] == 2
    assert "pizza" not in json.dumps(report)
