"""The site's egress guard: a declarative allow-list of what may leave a site.

Everything a site sends passes ``EgressPolicy.check_update`` before it is serialized and
sealed, and ``check_content`` on the final message. Anything not declared is blocked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# The records a site's reply may carry, and the keys allowed inside the site record.
REPLY_RECORDS = frozenset({"site", "update", "arrays", "metrics"})
SITE_RECORD_KEYS = frozenset({"site", "status", "reason"})

# Named scalar metrics a site may report; nothing per example.
DEFAULT_METRICS = frozenset({
    "num_examples", "train_loss", "train_time_s", "eval_time_s", "accuracy", "macro_f1",
    "model_loads",
})


class EgressBlocked(ValueError):
    """Something not on the site's allow-list was about to leave the site."""


TensorSpec = dict[str, tuple[tuple[int, ...], str]]


def tensor_spec(state: Mapping[str, np.ndarray]) -> TensorSpec:
    """The declaration of an adapter: each tensor's name, shape and dtype."""
    return {name: (tuple(value.shape), str(value.dtype)) for name, value in state.items()}


@dataclass(frozen=True)
class EgressPolicy:
    """What may leave: the adapter tensors as declared, named scalar metrics, known records."""

    tensors: TensorSpec
    metrics: frozenset[str] = DEFAULT_METRICS
    records: frozenset[str] = REPLY_RECORDS

    def check_update(
        self, tensors: Mapping[str, np.ndarray] | None, metrics: Mapping[str, object]
    ) -> None:
        for name, value in (tensors or {}).items():
            declared = self.tensors.get(name)
            if declared is None:
                raise EgressBlocked(f"tensor {name!r} is not a declared adapter tensor")
            actual = (tuple(np.shape(value)), str(np.asarray(value).dtype))
            if actual != declared:
                raise EgressBlocked(
                    f"tensor {name!r} is {actual[1]}{list(actual[0])}, declared "
                    f"{declared[1]}{list(declared[0])}"
                )
        for name, value in metrics.items():
            if name not in self.metrics:
                raise EgressBlocked(f"metric {name!r} is not on the allow-list")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise EgressBlocked(f"metric {name!r} is not a scalar number")

    def check_content(self, content) -> None:
        """The reply as a whole: only known records, only known keys in the site record."""
        unknown = sorted(set(content.keys()) - self.records)
        if unknown:
            raise EgressBlocked(f"records {unknown} are not on the allow-list")
        if "site" in content:
            extra = sorted(set(content["site"].keys()) - SITE_RECORD_KEYS)
            if extra:
                raise EgressBlocked(f"site record keys {extra} are not on the allow-list")
