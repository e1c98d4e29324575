"""FedAvg over norm-clipped updates: no site can move the adapter by more than the bound."""

from __future__ import annotations

from strategies.base import AdapterState, SiteUpdate
from strategies.kernels import apply, clip, deltas, example_weights, weighted_mean

# Example counts are reported by the sites themselves: a weight is capped at this multiple of
# the lower median count (the smaller middle value for an even number of sites, so that with
# two sites the smaller claim sets the cap): a site claiming a huge count cannot take the mean.
WEIGHT_CAP = 3.0


class ClippedFedAvg:
    """Each site's change is scaled to L2 norm at most ``clip_norm``, then example-weighted
    averaged (each weight at most WEIGHT_CAP times the lower median count): the result moves
    by at most ``clip_norm`` from the global adapter."""

    name = "clipped-fedavg"

    def __init__(self, clip_norm: float = 10.0) -> None:
        if clip_norm <= 0:
            raise ValueError("strategy.clip_norm must be positive")
        self.clip_norm = clip_norm

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        clipped = [clip(delta, self.clip_norm) for delta in deltas(global_state, updates)]
        weights = example_weights(updates)
        cap = WEIGHT_CAP * sorted(weights)[(len(weights) - 1) // 2]
        weights = [min(weight, cap) for weight in weights]
        mean = {k: weighted_mean([d[k] for d in clipped], weights) for k in global_state}
        return apply(global_state, mean)
