"""Parts of the adapter that a strategy keeps at the site: stored at the site, never sent."""

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import SiteRuntime
from common.config import load_config
from common.egress import EgressBlocked


@pytest.fixture
def runtime(tiny_overrides):
    return SiteRuntime(load_config(overrides=[*tiny_overrides,
                                              "strategy.name=fedavg-local-head"]))


def _context():
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_the_trained_head_is_kept_in_node_state_and_not_returned(runtime):
    context = _context()
    trained = {k: v + 1 for k, v in runtime.model.adapter_state().items()}
    outbound = runtime.keep_local_parts(trained, context)
    assert outbound and not any("classifier" in k for k in outbound)

    shared = {k: v for k, v in trained.items() if "classifier" not in k}
    restored = runtime.with_local_parts(shared, context)
    for name, value in trained.items():
        np.testing.assert_array_equal(restored[name], value)


def test_a_site_without_a_kept_head_starts_from_the_initial_one(runtime):
    shared = {k: v for k, v in runtime.model.adapter_state().items() if "classifier" not in k}
    restored = runtime.with_local_parts(shared, _context())
    heads = [k for k in restored if "classifier" in k]
    assert heads
    for name in heads:
        np.testing.assert_array_equal(restored[name], runtime.initial_state[name])


def test_the_egress_guard_blocks_the_head_if_it_ever_heads_out(runtime):
    state = runtime.model.adapter_state()
    with pytest.raises(EgressBlocked, match="classifier"):
        runtime.egress_policy().check_update(state, {"num_examples": 1.0})


def test_shared_a_local_b_keeps_b_and_the_head_and_sends_only_a(tiny_overrides):
    runtime = SiteRuntime(load_config(overrides=[*tiny_overrides, "strategy.name=fedsa-lora"]))
    context = _context()
    trained = {k: v + 1 for k, v in runtime.model.adapter_state().items()}
    outbound = runtime.keep_local_parts(trained, context)
    assert outbound and all("lora_A" in k for k in outbound)
    assert any("lora_B" in k for k in trained) and any("classifier" in k for k in trained)
    restored = runtime.with_local_parts(outbound, context)
    for name, value in trained.items():
        np.testing.assert_array_equal(restored[name], value)
    with pytest.raises(EgressBlocked, match="lora_B"):
        runtime.egress_policy().check_update({k: v for k, v in trained.items()
                                              if "classifier" not in k}, {"num_examples": 1.0})
