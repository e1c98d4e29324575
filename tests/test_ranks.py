"""Heterogeneous LoRA ranks: sites of smaller rank, one global adapter."""

import json

import numpy as np
import pytest

from common.config import ConfigError, load_config
from common.ranks import adapter_rank, pad_to_rank, truncate_to_rank
from server.simulation import simulate
from strategies import SiteUpdate, create_strategy
from tests.conftest import tiny_settings


def _adapter(rank, seed, inp=6, out=5):
    rng = np.random.default_rng(seed)
    return {"m.lora_A.weight": rng.normal(size=(rank, inp)).astype(np.float32),
            "m.lora_B.weight": rng.normal(size=(out, rank)).astype(np.float32),
            "classifier.weight": rng.normal(size=(3, inp)).astype(np.float32)}


def test_padding_keeps_the_product_and_truncation_undoes_it():
    small = _adapter(2, 0)
    padded = pad_to_rank(small, 4)
    assert adapter_rank(padded) == 4
    np.testing.assert_array_equal(padded["m.lora_B.weight"] @ padded["m.lora_A.weight"],
                                  small["m.lora_B.weight"] @ small["m.lora_A.weight"])
    back = truncate_to_rank(padded, 2)
    for name in small:
        np.testing.assert_array_equal(back[name], small[name])


def test_exact_lora_over_mixed_ranks_is_the_weighted_mean_of_products():
    updates = [SiteUpdate("a", pad_to_rank(_adapter(1, 1), 4), 30),
               SiteUpdate("b", pad_to_rank(_adapter(2, 2), 4), 10),
               SiteUpdate("c", _adapter(1, 3) | {}, 20)]
    updates[2] = SiteUpdate("c", pad_to_rank(updates[2].state, 4), 20)
    strategy = create_strategy(load_config(overrides=["strategy.name=exact-lora"]).strategy)
    result = strategy.aggregate(_adapter(4, 9), updates)
    expected = sum(w * (u.state["m.lora_B.weight"].astype(np.float64)
                        @ u.state["m.lora_A.weight"]) for u, w in
                   zip(updates, (0.5, 1 / 6, 1 / 3)))
    # total rank 1 + 2 + 1 = 4 fits the global rank: exact
    np.testing.assert_allclose(result["m.lora_B.weight"] @ result["m.lora_A.weight"], expected,
                               rtol=1e-4, atol=1e-5)
    # a rank-2 site takes the best rank-2 part of it
    site = truncate_to_rank(result, 2)
    u, s, vt = np.linalg.svd(expected)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    np.testing.assert_allclose(site["m.lora_B.weight"] @ site["m.lora_A.weight"], best,
                               rtol=1e-4, atol=1e-4)


def test_a_site_rank_above_the_global_one_is_refused():
    with pytest.raises(ConfigError, match="lora_rank=16 exceeds lora.r=8"):
        load_config(overrides=["federation.sites=[{id: de, lora_rank: 16}, fr]"])


def test_sites_of_different_ranks_train_one_global_adapter(silo_root, tiny_model_dir, tmp_path):
    settings = tiny_settings(silo_root, tiny_model_dir, tmp_path / "runs")
    cfg = load_config(overrides=[*settings, "strategy.name=exact-lora",
                                 "federation.sites=[{id: de, lora_rank: 1}, "
                                 "{id: fr, lora_rank: 2}, id]"])
    result = simulate(cfg)
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert all(sorted(r["train"]) == ["de", "fr", "id"] and not r["excluded"] for r in rounds)
    assert all(r["train"]["de"]["update_norm"] > 0 for r in rounds)
    from safetensors.numpy import load_file

    saved = load_file(str(result.run_dir / "global" / "adapter_model.safetensors"))
    assert adapter_rank({k: v for k, v in saved.items() if "lora" in k}) == cfg.lora.r


def _coordinator(name, site_ranks):
    from server.coordinator import Coordinator

    strategy = create_strategy(load_config(overrides=[f"strategy.name={name}"]).strategy)
    coordinator = Coordinator(strategy=strategy, channel=None, site_ids=list(site_ranks),
                              min_sites=1, site_ranks=site_ranks)
    coordinator.global_state = _adapter(4, 9)
    return coordinator


@pytest.mark.parametrize("name", ["fedavg", "median", "trimmed-mean", "clipped-fedavg",
                                  "fedadam", "fedyogi", "fedprox"])
def test_smaller_rank_sites_leave_the_components_they_never_held_where_they_were(name):
    # Sites of rank 1 and 2 train their leading components; through the coordinator's
    # padding the components beyond their rank stay as they were (zero-padding would drag
    # them towards zero), while those they trained move.
    coordinator = _coordinator(name, {"a": 1, "b": 2, "c": 2})
    start = coordinator.global_state
    updates = []
    for site, rank in (("a", 1), ("b", 2), ("c", 2)):
        trained = {k: v + 0.5 for k, v in truncate_to_rank(start, rank).items()}
        updates.append(coordinator._to_global_rank(SiteUpdate(site, trained, 10)))
    result = coordinator.strategy.aggregate(start, updates)
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    np.testing.assert_allclose(result[a][2:], start[a][2:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result[b][:, 2:], start[b][:, 2:], rtol=1e-6, atol=1e-6)
    assert np.all(result[a][0] > start[a][0])  # every site trained component 0


def test_padding_with_the_global_fills_only_the_missing_components():
    global_state, small = _adapter(4, 9), _adapter(2, 0)
    padded = pad_to_rank(small, 4, global_state)
    np.testing.assert_array_equal(padded["m.lora_A.weight"][:2], small["m.lora_A.weight"])
    np.testing.assert_array_equal(padded["m.lora_A.weight"][2:], global_state["m.lora_A.weight"][2:])
    np.testing.assert_array_equal(padded["m.lora_B.weight"][:, 2:],
                                  global_state["m.lora_B.weight"][:, 2:])
    np.testing.assert_array_equal(padded["classifier.weight"], small["classifier.weight"])


@pytest.mark.parametrize("name,fills_from_global", [("fedavg", True), ("exact-lora", False)])
def test_the_coordinator_pads_a_smaller_update_as_its_strategy_needs(name, fills_from_global):
    coordinator = _coordinator(name, {"a": 2})
    padded = coordinator._to_global_rank(SiteUpdate("a", _adapter(2, 0), 10)).state
    start = coordinator.global_state
    for key, tail in (("m.lora_A.weight", lambda v: v[2:]), ("m.lora_B.weight",
                                                             lambda v: v[:, 2:])):
        expected = tail(start[key]) if fills_from_global else 0
        np.testing.assert_array_equal(tail(padded[key]),
                                      np.broadcast_to(expected, tail(padded[key]).shape))
