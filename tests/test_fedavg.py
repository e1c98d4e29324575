import numpy as np
import pytest

from types import SimpleNamespace

from common.config import StrategyConfig
from strategies import SiteUpdate, create_strategy


def _update(site, value, n):
    return SiteUpdate(site=site, state={"w": np.full((2, 2), value, np.float32)}, num_examples=n)


def test_fedavg_weights_each_site_by_its_examples():
    strategy = create_strategy(StrategyConfig(name="fedavg"))
    global_state = {"w": np.zeros((2, 2), np.float32)}
    result = strategy.aggregate(global_state, [_update("a", 1.0, 100), _update("b", 4.0, 300)])
    np.testing.assert_allclose(result["w"], np.full((2, 2), 3.25))
    assert result["w"].dtype == np.float32


def test_fedavg_of_one_site_is_that_site():
    strategy = create_strategy(StrategyConfig(name="fedavg"))
    result = strategy.aggregate({"w": np.zeros((2, 2), np.float32)}, [_update("a", 2.5, 7)])
    np.testing.assert_array_equal(result["w"], np.full((2, 2), 2.5, np.float32))


def test_unknown_strategy_name_lists_known_ones():
    with pytest.raises(ValueError, match="choose one of: clipped-fedavg, exact-lora, fedadam, fedavg"):
        create_strategy(SimpleNamespace(name="nope"))
