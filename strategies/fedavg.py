"""Sample-weighted federated averaging of the adapter tensors and the head."""

from __future__ import annotations

from strategies.base import AdapterState, SiteUpdate
from strategies.kernels import example_weights, weighted_mean


class FedAvg:
    """Each tensor of the new global adapter is the example-weighted mean of the sites' tensors.

    LoRA's A and B are averaged separately, as in plain FedAvg; the mean of the products
    B_i A_i differs from the product of the means when sites disagree.
    """

    name = "fedavg"

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        weights = example_weights(updates)
        return {
            key: weighted_mean([update.state[key] for update in updates], weights)
            for key in global_state
        }
