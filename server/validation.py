"""Checks an update must pass before it may be aggregated."""

from __future__ import annotations

import numbers

import numpy as np

from common.wire import AdapterState
from strategies import SiteUpdate


# A site's example count weights its update; a count beyond this is a fault or a lie.
MAX_EXAMPLES = 1e9


class UpdateRejected(ValueError):
    """An update that is left out of aggregation, with the reason (and the site if known)."""

    def __init__(self, reason: str, site: str = "") -> None:
        super().__init__(reason)
        self.site = site


def update_norm(state: AdapterState, reference: AdapterState) -> float:
    """L2 norm of the change from ``reference`` over all tensors."""
    total = 0.0
    for name, value in state.items():
        delta = value.astype(np.float64) - reference[name].astype(np.float64)
        total += float(np.sum(delta * delta))
    return total**0.5


def validate_update(
    site: str,
    state: AdapterState,
    metrics: dict[str, float],
    expected: AdapterState,
    max_norm: float = float("inf"),
) -> SiteUpdate:
    """A ``SiteUpdate`` if the tensors match the global adapter and the change is bounded."""
    if not state:
        raise UpdateRejected("reply carries no adapter tensors")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UpdateRejected(
            f"tensor names differ from the global adapter: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, value in state.items():
        reference = expected[name]
        if value.shape != reference.shape or value.dtype != reference.dtype:
            raise UpdateRejected(
                f"{name}: got {value.dtype}{list(value.shape)}, "
                f"expected {reference.dtype}{list(reference.shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise UpdateRejected(f"{name}: contains NaN or Inf")

    norm = update_norm(state, expected)
    if norm > max_norm:
        raise UpdateRejected(
            f"update norm {norm:.4g} exceeds security.max_update_norm={max_norm:.4g}"
        )
    reported = metrics.get("num_examples", 0)
    if (isinstance(reported, bool) or not isinstance(reported, numbers.Real)
            or not 0 < reported <= MAX_EXAMPLES or reported != int(reported)):
        raise UpdateRejected(f"num_examples must be a whole number from 1 to {MAX_EXAMPLES:.0e} "
                             f"(got {reported!r})")
    num_examples = int(reported)
    return SiteUpdate(site=site, state=state, num_examples=num_examples)
