"""FedAvg over norm-clipped updates: no site can move the adapter by more than the bound."""

from __future__ import annotations

from strategies.base import AdapterState, SiteUpdate
from strategies.kernels import apply, clip, deltas, example_weights, weighted_mean


class ClippedFedAvg:
    """Each site's change is scaled to L2 norm at most ``clip_norm``, then example-weighted
    averaged: the result moves by at most ``clip_norm`` from the global adapter."""

    name = "clipped-fedavg"

    def __init__(self, clip_norm: float = 10.0) -> None:
        if clip_norm <= 0:
            raise ValueError("strategy.clip_norm must be positive")
        self.clip_norm = clip_norm

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        clipped = [clip(delta, self.clip_norm) for delta in deltas(global_state, updates)]
        weights = example_weights(updates)
        mean = {k: weighted_mean([d[k] for d in clipped], weights) for k in global_state}
        return apply(global_state, mean)
