"""Checks an update must pass before it may be aggregated."""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict

from common.wire import AdapterState, record_to_state
from strategies import SiteUpdate


class UpdateRejected(ValueError):
    """An update that is left out of aggregation, with the reason."""


def validate_update(site: str, content: RecordDict, expected: AdapterState) -> SiteUpdate:
    """Turn a reply into a ``SiteUpdate`` if its tensors match the global adapter exactly."""
    if "arrays" not in content.array_records:
        raise UpdateRejected("reply carries no adapter tensors")
    state = record_to_state(content["arrays"])
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

    metrics = content.metric_records.get("metrics", {})
    num_examples = int(metrics.get("num_examples", 0))
    if num_examples <= 0:
        raise UpdateRejected("num_examples missing or not positive")
    return SiteUpdate(site=site, state=state, num_examples=num_examples)
