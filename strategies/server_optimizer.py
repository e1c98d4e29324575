"""Adaptive server optimisers over adapter updates (Reddi et al., "Adaptive Federated
Optimization"): the example-weighted mean change is a pseudo-gradient, and the coordinator
takes an Adam-style step with it. Subclasses choose the second-moment rule."""

from __future__ import annotations

import numpy as np

from strategies.base import AdapterState, SiteUpdate
from strategies.kernels import apply, deltas, example_weights, weighted_mean


class ServerOptimizer:
    name = "server-optimizer"

    def __init__(
        self, learning_rate: float = 1e-3, beta1: float = 0.9, beta2: float = 0.99,
        tau: float = 1e-6,
    ) -> None:
        self.learning_rate, self.beta1, self.beta2, self.tau = learning_rate, beta1, beta2, tau
        self.first: AdapterState = {}
        self.second: AdapterState = {}

    def export_state(self) -> AdapterState:
        """The moments, for the coordinator's checkpoint."""
        return {**{f"first/{k}": v for k, v in self.first.items()},
                **{f"second/{k}": v for k, v in self.second.items()}}

    def import_state(self, state: AdapterState) -> None:
        self.first = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("first/")}
        self.second = {k.split("/", 1)[1]: v for k, v in state.items()
                       if k.startswith("second/")}

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        weights = example_weights(updates)
        site_deltas = deltas(global_state, updates)
        step = {}
        for key in global_state:
            gradient = weighted_mean([d[key] for d in site_deltas], weights)
            first = self.first.get(key, np.zeros_like(gradient))
            second = self.second.get(key, np.full_like(gradient, self.tau**2))
            self.first[key] = self.beta1 * first + (1 - self.beta1) * gradient
            self.second[key] = self.second_moment(second, gradient * gradient)
            step[key] = self.learning_rate * self.first[key] / (
                np.sqrt(self.second[key]) + self.tau)
        return apply(global_state, step)
