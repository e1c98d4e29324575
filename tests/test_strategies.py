"""The aggregation strategies, on hand-made updates with known answers."""

import numpy as np
import pytest

from common.config import StrategyConfig
from strategies import REGISTRY, SiteUpdate, create_strategy
from strategies.kernels import norm

RANK, OUT, IN = 2, 6, 5
A, B, HEAD = "m.lora_A.default.weight", "m.lora_B.default.weight", "classifier.weight"


def _global():
    return {A: np.zeros((RANK, IN), np.float32), B: np.zeros((OUT, RANK), np.float32),
            HEAD: np.zeros((3, 4), np.float32)}


def _site(name, seed, n, rank=RANK, value=None):
    rng = np.random.default_rng(seed)
    state = {A: rng.standard_normal((RANK, IN)).astype(np.float32),
             B: rng.standard_normal((OUT, RANK)).astype(np.float32),
             HEAD: np.full((3, 4), value if value is not None else seed, np.float32)}
    if rank < RANK:  # a product of lower rank, padded with zeros
        state[A][rank:] = 0
        state[B][:, rank:] = 0
    return SiteUpdate(name, state, n)


def _strategy(name, **settings):
    return create_strategy(StrategyConfig(name=name, **settings))


def test_every_registered_strategy_is_selectable_by_name_from_config():
    for name in REGISTRY:
        assert _strategy(name).name == name


def test_exact_lora_equals_the_weighted_mean_of_products_when_the_rank_allows():
    # Two sites with rank-1 products: their mean has rank <= 2, the configured rank.
    updates = [_site("a", 1, 30, rank=1), _site("b", 2, 10, rank=1)]
    result = _strategy("exact-lora").aggregate(_global(), updates)
    expected = sum(w * (u.state[B] @ u.state[A]) for u, w in zip(updates, (0.75, 0.25)))
    np.testing.assert_allclose(result[B] @ result[A], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 0.75 * 1 + 0.25 * 2))


def test_exact_lora_is_the_best_rank_r_fit_when_the_mean_has_higher_rank():
    updates = [_site(n, s, 10) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    result = _strategy("exact-lora").aggregate(_global(), updates)
    mean = sum(u.state[B].astype(np.float64) @ u.state[A] for u in updates) / 3
    singular = np.linalg.svd(mean, compute_uv=False)
    error = np.linalg.norm(result[B] @ result[A] - mean)
    assert error == pytest.approx(np.sqrt(np.sum(singular[RANK:] ** 2)), rel=1e-4)


def test_exact_lora_keeps_every_component_trainable_when_the_mean_has_lower_rank():
    # One rank-1 site: the mean product has rank 1 < RANK. B A must still equal it, and A
    # must keep a non-zero row for every component, or that component never trains again.
    updates = [_site("a", 1, 10, rank=1)]
    result = _strategy("exact-lora").aggregate(_global(), updates)
    np.testing.assert_allclose(result[B] @ result[A], updates[0].state[B] @ updates[0].state[A],
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.linalg.norm(result[A], axis=1) > 0.5)


def test_fedavg_of_factors_differs_from_the_mean_of_products():
    updates = [_site("a", 1, 10), _site("b", 2, 10)]
    avg = _strategy("fedavg").aggregate(_global(), updates)
    mean = sum(u.state[B] @ u.state[A] for u in updates) / 2
    assert np.linalg.norm(avg[B] @ avg[A] - mean) > 0.1


def test_median_ignores_one_extreme_site():
    updates = [_site("a", 1, 10, value=1.0), _site("b", 2, 10, value=2.0),
               _site("c", 3, 10, value=1e6)]
    result = _strategy("median").aggregate(_global(), updates)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 2.0))


def test_trimmed_mean_drops_the_extremes():
    values = [1.0, 2.0, 3.0, 4.0, -1e6]
    updates = [_site(str(i), i, 10, value=v) for i, v in enumerate(values)]
    result = _strategy("trimmed-mean", trim_fraction=0.2).aggregate(_global(), updates)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 2.0))  # mean of 1, 2, 3


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "clipped-fedavg"])
@pytest.mark.parametrize("claimed", [10, 10**9])  # the hostile site may also lie about its size
def test_a_1000x_scaled_site_moves_robust_strategies_less_than_the_clip_bound(name, claimed):
    clip_norm = 5.0
    start = {k: v + 0.3 for k, v in _site("g", 7, 1).state.items()}  # a non-zero global
    honest = [SiteUpdate(str(i), {k: v + 0.01 * i for k, v in start.items()}, 10)
              for i in range(1, 5)]
    baseline = _strategy(name, clip_norm=clip_norm).aggregate(start, honest)
    hostile = SiteUpdate("x", {k: v * 1000 for k, v in _site("x", 9, 1).state.items()}, claimed)
    attacked = _strategy(name, clip_norm=clip_norm).aggregate(start, [*honest, hostile])
    moved = norm({k: attacked[k].astype(np.float64) - baseline[k] for k in baseline})
    assert moved < clip_norm


def test_clipped_fedavg_caps_the_weight_a_site_can_claim():
    start = _global()
    honest = [SiteUpdate(str(i), {k: v + 1.0 for k, v in start.items()}, 100) for i in range(4)]
    liar = SiteUpdate("x", {k: v - 1.0 for k, v in start.items()}, 10**9)
    result = _strategy("clipped-fedavg", clip_norm=1e6).aggregate(start, [*honest, liar])
    # weights 100 x 4 and min(1e9, 3 x median 100) = 300: (400 - 300) / 700 per value
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 100 / 700), rtol=1e-6)


def test_clipped_fedavg_caps_a_liar_by_the_smaller_claim_when_two_sites_reply():
    start = _global()
    honest = SiteUpdate("a", {k: v + 1.0 for k, v in start.items()}, 100)
    liar = SiteUpdate("x", {k: v - 1.0 for k, v in start.items()}, 10**9)
    result = _strategy("clipped-fedavg", clip_norm=1e6).aggregate(start, [honest, liar])
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), (100 - 300) / 400), rtol=1e-6)


def test_weights_that_overflow_are_refused_rather_than_averaged_to_zero():
    updates = [_site("a", 1, 10), _site("b", 2, 10)]
    updates = [SiteUpdate(u.site, u.state, 1.7e308) for u in updates]
    with pytest.raises(ValueError, match="finite"):
        _strategy("fedavg").aggregate(_global(), updates)


def test_trimmed_mean_with_fraction_zero_is_the_plain_mean():
    updates = [_site(str(i), i, 10, value=v) for i, v in enumerate([0.0, 0.0, 3.0])]
    result = _strategy("trimmed-mean", trim_fraction=0.0).aggregate(_global(), updates)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 1.0))


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    updates = [_site(str(i), i, 10, value=v) for i, v in enumerate([1.0, 2.0, 4.0, 1e6])]
    result = _strategy("median").aggregate(_global(), updates)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), 3.0))


def test_clipped_fedavg_moves_the_adapter_at_most_the_bound():
    updates = [_site("a", 1, 10, value=100.0)]
    result = _strategy("clipped-fedavg", clip_norm=3.0).aggregate(_global(), updates)
    assert norm(result) == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimisers_step_towards_the_mean_update_by_about_the_learning_rate(name):
    updates = [_site("a", 1, 10, value=0.5), _site("b", 2, 10, value=0.5)]
    result = _strategy(name, server_learning_rate=0.01).aggregate(_global(), updates)
    # First step of Adam/Yogi: (1-b1) g / sqrt((1-b2) g^2) * lr, same sign as the update.
    expected = 0.01 * 0.1 / np.sqrt(0.01)
    np.testing.assert_allclose(result[HEAD], np.full((3, 4), expected), rtol=1e-3)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimiser_moments_carry_over_rounds_and_through_a_checkpoint(name):
    start = {k: v + 0.2 for k, v in _site("g", 7, 1).state.items()}  # a non-zero global
    rounds = [[_site("a", 1, 10, value=0.5)], [_site("a", 2, 10, value=-0.3)]]
    straight = _strategy(name, server_learning_rate=0.01)
    middle = straight.aggregate(start, rounds[0])
    end = straight.aggregate(middle, rounds[1])

    first = _strategy(name, server_learning_rate=0.01)
    first.aggregate(start, rounds[0])
    resumed = _strategy(name, server_learning_rate=0.01)
    resumed.import_state(first.export_state())
    for key, value in resumed.aggregate(middle, rounds[1]).items():
        np.testing.assert_array_equal(value, end[key])
    # without the moments the second step differs: they do carry information
    fresh = _strategy(name, server_learning_rate=0.01).aggregate(middle, rounds[1])
    assert not np.allclose(fresh[HEAD], end[HEAD])


def test_yogi_and_adam_differ_from_the_second_round():
    updates = [[_site("a", 1, 10, value=0.5)], [_site("a", 1, 10, value=2.0)]]
    results = {}
    for name in ("fedadam", "fedyogi"):
        strategy, state = _strategy(name, server_learning_rate=0.01), _global()
        for round_updates in updates:
            state = strategy.aggregate(state, round_updates)
        results[name] = state[HEAD]
    assert not np.allclose(results["fedadam"], results["fedyogi"])
