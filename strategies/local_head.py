"""FedAvg of the LoRA tensors with the classification head kept at each site (FedPer style).

The head never leaves a site: each site trains the shared LoRA tensors together with its own
head, sends only the LoRA tensors, and keeps its head for the next round.
"""

from __future__ import annotations

from strategies.fedavg import FedAvg


class FedAvgLocalHead(FedAvg):
    name = "fedavg-local-head"

    @staticmethod
    def is_local(tensor_name: str) -> bool:
        return "classifier" in tensor_name
