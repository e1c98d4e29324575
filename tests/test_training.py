import numpy as np
import pytest

from common.config import load_config
from common.data import load_silo
from common.federation import federation_labels, silo_dir
from common.model import build_site_model
from common.training import encode_split, evaluate, macro_f1, train_local


@pytest.fixture
def site(tiny_overrides):
    cfg = load_config(overrides=tiny_overrides)
    labels = federation_labels(cfg)
    model = build_site_model(cfg, labels)
    data = load_silo(silo_dir(cfg, "de"), "train", labels=labels)
    encoded = encode_split(model.tokenizer, data.texts, data.labels, cfg.model.max_length)
    return cfg, model, encoded


def _train(cfg, model, encoded, seed):
    return train_local(model.model, encoded, epochs=1, batch_size=16, learning_rate=5e-3,
                       weight_decay=0.0, seed=seed)


def test_training_is_repeatable_with_the_same_seed(site):
    cfg, model, encoded = site
    initial = model.adapter_state()
    _train(cfg, model, encoded, seed=3)
    first = model.adapter_state()
    model.load_adapter_state(initial)
    _train(cfg, model, encoded, seed=3)
    second = model.adapter_state()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_training_changes_only_the_adapter_and_head(site):
    cfg, model, encoded = site
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters()
              if not p.requires_grad}
    before = model.adapter_state()
    metrics = _train(cfg, model, encoded, seed=0)
    after = model.adapter_state()
    assert metrics["num_examples"] == len(encoded)
    assert any(not np.array_equal(before[n], after[n]) for n in before)
    assert any("lora_B" in n for n in after) and any("classifier" in n for n in after)
    for name, param in model.model.named_parameters():
        if name in frozen:
            assert param.detach().equal(frozen[name]), name


def test_evaluate_reports_accuracy_and_macro_f1(site):
    cfg, model, encoded = site
    result = evaluate(model.model, encoded, batch_size=64)
    assert set(result) == {"accuracy", "macro_f1", "num_examples"}
    assert 0.0 <= result["macro_f1"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0


def test_macro_f1_matches_a_hand_computed_value():
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # label 0: tp1 fp1 fn1 -> 0.5; label 1: tp2 fp1 fn0 -> 0.8; label 2: tp0 fn1 -> 0.0
    assert macro_f1(truth, predicted) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_proximal_term_keeps_the_adapter_closer_to_where_it_started(site):
    from common.training import proximal_term
    from strategies.kernels import norm

    cfg, model, encoded = site
    start = model.adapter_state()

    def distance_after(mu):
        model.load_adapter_state(start)
        extra = proximal_term(model.model, mu) if mu else None
        train_local(model.model, encoded, epochs=1, batch_size=16, learning_rate=5e-3,
                    weight_decay=0.0, seed=1, extra_loss=extra)
        now = model.adapter_state()
        return norm({k: now[k].astype("float64") - start[k] for k in start})

    assert distance_after(10.0) < distance_after(0.0)
