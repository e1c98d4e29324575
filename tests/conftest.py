"""Shared fixtures: a tiny model built from a config and a small prepared federation.

The tiny model has the real architecture (XLM-RoBERTa) and a real tokenizer trained on the
corpus, at a size that trains in seconds; the main job and the conversion test use the real
pretrained weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.offline import apply_offline_switches

apply_offline_switches()

TINY_SITES = ["de", "fr", "id"]


def _corpus_lines(root: Path) -> list[str]:
    import json

    lines = []
    for path in sorted(root.glob("*/train.jsonl")):
        lines += [json.loads(line)["text"] for line in path.read_text("utf-8").splitlines()]
    return lines


def build_tiny_model(dest: Path, texts: list[str]) -> Path:
    """A 2-layer XLM-RoBERTa with a byte-level BPE tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )
    fast.save_pretrained(dest)

    import torch

    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    )
    XLMRobertaModel(config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def silo_root(tmp_path_factory) -> Path:
    from common.data import prepare_silos

    root = tmp_path_factory.mktemp("silos")
    prepare_silos(root, TINY_SITES, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, silo_root) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), _corpus_lines(silo_root))


def tiny_settings(silo_root: Path, model_dir: Path, runs_dir: Path) -> list[str]:
    """``--set`` overrides that turn the default config into a fast 3-site federation."""
    return [
        f"federation.sites=[{', '.join(TINY_SITES)}]",
        "federation.rounds=2",
        f"data.silo_root={silo_root}",
        f"model.name={model_dir}",
        "model.source=local",
        "model.max_length=32",
        "lora.r=4",
        "train.batch_size=32",
        "train.learning_rate=0.005",
        f"output.runs_dir={runs_dir}",
    ]


@pytest.fixture
def tiny_overrides(silo_root, tiny_model_dir, tmp_path) -> list[str]:
    return tiny_settings(silo_root, tiny_model_dir, tmp_path / "runs")
