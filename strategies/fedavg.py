"""Sample-weighted federated averaging of the adapter tensors and the head."""

from __future__ import annotations

import numpy as np

from strategies.base import AdapterState, SiteUpdate


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean in float64, returned in the dtype of the first array."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    acc = np.zeros(arrays[0].shape, dtype=np.float64)
    for array, weight in zip(arrays, weights, strict=True):
        acc += array.astype(np.float64) * (weight / total)
    return acc.astype(arrays[0].dtype)


class FedAvg:
    """Each tensor of the new global adapter is the example-weighted mean of the sites' tensors.

    LoRA's A and B are averaged separately, as in plain FedAvg; the mean of the products
    B_i A_i differs from the product of the means when sites disagree.
    """

    name = "fedavg"

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        weights = [float(update.num_examples) for update in updates]
        return {
            key: weighted_mean([update.state[key] for update in updates], weights)
            for key in global_state
        }
