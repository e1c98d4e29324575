"""Shared A, local B (FedSA-LoRA style): only the LoRA A matrices are averaged across sites;
each site keeps its own B matrices and classification head.

The A matrices learn what transfers across countries (a shared low-rank subspace of the
inputs); B and the head, which map that subspace to a site's own outputs and label mix, stay
at the site and never appear in an outbound message. The saved global adapter carries the
averaged A with the initial B (zeros) and head, so on its own it equals the base model: the
usable models are the sites' (evaluated in the `federated` column).
"""

from __future__ import annotations

from strategies.fedavg import FedAvg


class FedSALoRA(FedAvg):
    name = "fedsa-lora"

    @staticmethod
    def is_local(tensor_name: str) -> bool:
        return "lora_B" in tensor_name or "classifier" in tensor_name
