"""What every aggregation strategy receives and returns. Pure: no I/O, no Flower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

AdapterState = dict[str, np.ndarray]


@dataclass(frozen=True)
class SiteUpdate:
    """A site's adapter after local training, with the example count that weights it."""

    site: str
    state: AdapterState
    num_examples: int


class Strategy(Protocol):
    """Combines the sites' updates of one round into the next global adapter.

    A strategy that averages LoRA products rather than factors sets ``averages_products =
    True``: smaller-rank sites' updates then reach it zero-padded (same B A) instead of padded
    with the global adapter's components (see common/ranks.py).
    """

    name: str

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the new global adapter; ``updates`` is non-empty and validated."""
        ...
