"""FedYogi: Yogi's additive second moment, which grows more slowly than Adam's."""

from __future__ import annotations

import numpy as np

from strategies.server_optimizer import ServerOptimizer


class FedYogi(ServerOptimizer):
    name = "fedyogi"

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return previous - (1 - self.beta2) * squared * np.sign(previous - squared)
