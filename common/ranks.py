"""Heterogeneous LoRA ranks: a site of rank r_i works with the leading r_i components of the
global rank-r adapter, and its update is padded back to rank r on the coordinator.

LoRA A matrices are (r, in), B matrices are (out, r); the product B A, and so the model, does
not change when both are padded with zeros, which is how `exact-lora` (an average of products)
receives a smaller site's update. Strategies that average the factors themselves receive it
padded with the global adapter's own components instead: a site that never held a component
leaves it as it was (HetLoRA), rather than pulling it towards zero. With `exact-lora` the
global factors are ordered by singular value, so a site's leading components are the best
rank-r_i approximation of the global update (FlexLoRA's redistribution); with plain averaging
they are the first r_i components (HetLoRA's truncation).
"""

from __future__ import annotations

import numpy as np

AdapterState = dict[str, np.ndarray]


def _is_a(name: str) -> bool:
    return "lora_A" in name


def _is_b(name: str) -> bool:
    return "lora_B" in name


def adapter_rank(state: AdapterState) -> int | None:
    """The LoRA rank of ``state`` (None when it holds no LoRA matrices)."""
    ranks = {value.shape[0] for name, value in state.items() if _is_a(name)}
    ranks |= {value.shape[1] for name, value in state.items() if _is_b(name)}
    if len(ranks) > 1:
        raise ValueError(f"adapter mixes LoRA ranks {sorted(ranks)}")
    return ranks.pop() if ranks else None


def truncate_to_rank(state: AdapterState, rank: int) -> AdapterState:
    """The leading ``rank`` components of every LoRA pair; other tensors unchanged."""
    result = {}
    for name, value in state.items():
        if _is_a(name):
            value = value[:rank, :]
        elif _is_b(name):
            value = value[:, :rank]
        result[name] = np.ascontiguousarray(value)
    return result


def pad_to_rank(state: AdapterState, rank: int, fill: AdapterState | None = None
                ) -> AdapterState:
    """Pad every LoRA pair to ``rank`` components; other tensors unchanged.

    Without ``fill`` the missing components are zeros, which keeps the product B A (what a
    strategy that averages products needs). With ``fill`` (the global adapter) they are taken
    from it, so a strategy that works on the factors sees no change in the components the
    site never held, rather than a change to zero.
    """
    result = {}
    for name, value in state.items():
        axis = 0 if _is_a(name) else 1 if _is_b(name) else None  # A: (r, in), B: (out, r)
        if axis is None or value.shape[axis] >= rank:
            result[name] = value
            continue
        if fill is None:
            shape = list(value.shape)
            shape[axis] = rank - value.shape[axis]
            tail = np.zeros(shape, value.dtype)
        elif name in fill:
            tail = np.take(fill[name], range(value.shape[axis], rank), axis=axis)
        else:
            raise ValueError(f"{name}: not in the adapter to pad from")
        result[name] = np.concatenate([value, tail.astype(value.dtype)], axis=axis)
    return result
