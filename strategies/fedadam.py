"""FedAdam: Adam's second moment on the coordinator."""

from __future__ import annotations

import numpy as np

from strategies.server_optimizer import ServerOptimizer


class FedAdam(ServerOptimizer):
    name = "fedadam"

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return self.beta2 * previous + (1 - self.beta2) * squared
