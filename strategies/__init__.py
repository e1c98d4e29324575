"""Aggregation strategies, registered by the name used in ``strategy.name``."""

from __future__ import annotations

from collections.abc import Callable

from strategies.base import SiteUpdate, Strategy
from strategies.fedavg import FedAvg

REGISTRY: dict[str, Callable[[], Strategy]] = {
    FedAvg.name: FedAvg,
}


def create_strategy(name: str) -> Strategy:
    try:
        factory = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"strategy.name={name!r} is not a known strategy; choose one of: {known}")
    return factory()


__all__ = ["REGISTRY", "SiteUpdate", "Strategy", "create_strategy"]
