"""Stateless aggregation arithmetic shared by the strategies (numpy only)."""

from __future__ import annotations

import numpy as np

from strategies.base import AdapterState, SiteUpdate

LORA_A, LORA_B = "lora_A", "lora_B"


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean in float64, returned in the dtype of the first array."""
    total = float(sum(weights))
    if not 0 < total < float("inf"):
        raise ValueError(f"weights must sum to a positive finite number (got {total})")
    acc = np.zeros(arrays[0].shape, dtype=np.float64)
    for array, weight in zip(arrays, weights, strict=True):
        acc += array.astype(np.float64) * (weight / total)
    return acc.astype(arrays[0].dtype)


def example_weights(updates: list[SiteUpdate]) -> list[float]:
    # LIMITATION: the counts are what each site reports (bounded at 1e9 by validation); only
    # clipped-fedavg caps them. A shared cap here would limit a lying site in every weighted
    # strategy, at the price of changing FedAvg for honest federations with skewed sizes.
    return [float(update.num_examples) for update in updates]


def deltas(global_state: AdapterState, updates: list[SiteUpdate]) -> list[AdapterState]:
    """Each site's change to the global adapter, in float64."""
    return [
        {k: u.state[k].astype(np.float64) - global_state[k].astype(np.float64)
         for k in global_state}
        for u in updates
    ]


def norm(state: AdapterState) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in state.values())))


def clip(delta: AdapterState, bound: float) -> AdapterState:
    """Scale ``delta`` down so its L2 norm over all tensors is at most ``bound``."""
    size = norm(delta)
    if size <= bound or size == 0.0:
        return delta
    return {k: v * (bound / size) for k, v in delta.items()}


def apply(global_state: AdapterState, delta: AdapterState) -> AdapterState:
    """``global + delta`` in the dtypes of the global adapter."""
    return {
        k: (global_state[k].astype(np.float64) + delta[k]).astype(global_state[k].dtype)
        for k in global_state
    }


def lora_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA module among ``names``."""
    pairs = []
    for name in names:
        if LORA_A in name:
            partner = name.replace(LORA_A, LORA_B)
            if partner not in names:
                raise ValueError(f"{name}: no matching {LORA_B} tensor")
            pairs.append((name, partner))
    return pairs


def factor_to_rank(product: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """B (out x rank), A (rank x in) with B @ A the best rank-``rank`` fit of ``product``.

    Truncated SVD: B = U_r S_r, A = V_r^T. A keeps orthonormal rows even where a singular
    value is zero, so every component still gets a gradient in the next round (splitting
    sqrt(S) into both factors would zero A's row and B's column together, and such a
    component could never train again, as with LoRA's own initialisation of B = 0).
    """
    u, s, vt = np.linalg.svd(product, full_matrices=False)
    b = u[:, :rank] * s[:rank]
    a = vt[:rank]
    if b.shape[1] < rank:  # product smaller than the rank: pad with zeros
        b = np.pad(b, ((0, 0), (0, rank - b.shape[1])))
        a = np.pad(a, ((0, rank - a.shape[0]), (0, 0)))
    return b, a
