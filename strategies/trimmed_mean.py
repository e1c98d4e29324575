"""Coordinate-wise trimmed mean: drop the largest and smallest values, average the rest."""

from __future__ import annotations

import math

import numpy as np

from strategies.base import AdapterState, SiteUpdate


class TrimmedMean:
    """Per value, the ``trim_fraction`` highest and lowest sites are dropped (at least one
    each when there are three sites or more and the fraction is not 0), the rest averaged
    without weights."""

    name = "trimmed-mean"

    def __init__(self, trim_fraction: float = 0.1) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError("strategy.trim_fraction must be in [0, 0.5)")
        self.trim_fraction = trim_fraction

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        count = len(updates)
        at_least = 1 if count >= 3 and self.trim_fraction > 0 else 0
        cut = max(math.floor(count * self.trim_fraction), at_least)
        result = {}
        for key in global_state:
            ordered = np.sort(np.stack([u.state[key] for u in updates]), axis=0)
            kept = ordered[cut : count - cut]
            result[key] = kept.mean(axis=0).astype(global_state[key].dtype)
        return result
