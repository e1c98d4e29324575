"""Aggregation strategies, registered by the name used in ``strategy.name``.

A factory takes the ``strategy`` config section (its fields: trim_fraction, clip_norm,
server_learning_rate, ...) and returns a strategy object; adding a strategy is one file and
one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strategies.base import SiteUpdate, Strategy
from strategies.clipped_fedavg import ClippedFedAvg
from strategies.exact_lora import ExactLoRA
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.fedsa_lora import FedSALoRA
from strategies.fedyogi import FedYogi
from strategies.local_head import FedAvgLocalHead
from strategies.median import CoordinateMedian
from strategies.trimmed_mean import TrimmedMean


def _server_optimizer(kind):
    return lambda p: kind(learning_rate=p.server_learning_rate, beta1=p.beta1, beta2=p.beta2,
                          tau=p.tau)


REGISTRY: dict[str, Callable[[Any], Strategy]] = {
    FedAvg.name: lambda p: FedAvg(),
    FedProx.name: lambda p: FedProx(),
    FedAvgLocalHead.name: lambda p: FedAvgLocalHead(),
    FedSALoRA.name: lambda p: FedSALoRA(),
    ExactLoRA.name: lambda p: ExactLoRA(),
    CoordinateMedian.name: lambda p: CoordinateMedian(),
    TrimmedMean.name: lambda p: TrimmedMean(p.trim_fraction),
    ClippedFedAvg.name: lambda p: ClippedFedAvg(p.clip_norm),
    FedAdam.name: _server_optimizer(FedAdam),
    FedYogi.name: _server_optimizer(FedYogi),
}


def local_tensors(strategy: Strategy) -> Callable[[str], bool]:
    """Which adapter tensors stay at the sites under ``strategy`` (none by default)."""
    return getattr(strategy, "is_local", lambda tensor_name: False)


def create_strategy(settings: Any) -> Strategy:
    """The strategy named by ``settings.name``, built from the rest of ``settings``."""
    try:
        factory = REGISTRY[settings.name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(
            f"strategy.name={settings.name!r} is not a known strategy; choose one of: {known}"
        ) from None
    return factory(settings)


__all__ = ["REGISTRY", "SiteUpdate", "Strategy", "create_strategy", "local_tensors"]
