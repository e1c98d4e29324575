"""How adapter tensors and site status travel inside Flower messages.

A message between coordinator and site carries at most: the adapter (sealed or as arrays),
``metrics`` (named scalars) and ``site`` (the site id, a status and, on failure, the reason).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

AdapterState = dict[str, np.ndarray]

STATUS_OK = "ok"
STATUS_ERROR = "error"


# Query tasks the coordinator may ask of a site after (or beside) the federated rounds.
LOCAL_BASELINE = "local-baseline"  # train alone with the federation's compute, then test
PERSONALIZE = "personalize"  # fine-tune an own head on the final global model, then test


def state_to_record(state: AdapterState) -> ArrayRecord:
    return ArrayRecord(
        array_dict={name: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for name, v in
                    state.items()}
    )


def record_to_state(record: ArrayRecord) -> AdapterState:
    return {name: array.numpy() for name, array in record.items()}


def site_error(site: str, reason: str) -> RecordDict:
    """Content of a reply telling the coordinator that ``site`` could not do the round."""
    return RecordDict(
        {"site": ConfigRecord({"site": site, "status": STATUS_ERROR, "reason": reason})}
    )
