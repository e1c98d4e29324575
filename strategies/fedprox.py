"""FedProx: FedAvg on the coordinator; each site adds (mu / 2) * ||w - w_global||^2 to its
training loss (``strategy.proximal_mu``), which keeps heterogeneous sites from drifting."""

from __future__ import annotations

from strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    site_proximal_term = True
