"""Coordinate-wise median: each value of the new adapter is the median over the sites."""

from __future__ import annotations

import numpy as np

from strategies.base import AdapterState, SiteUpdate


class CoordinateMedian:
    """Robust to fewer than half the sites sending arbitrary values; ignores example counts."""

    name = "median"

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        return {
            key: np.median(np.stack([u.state[key] for u in updates]), axis=0).astype(
                global_state[key].dtype)
            for key in global_state
        }
