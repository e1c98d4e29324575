"""Exact LoRA aggregation: average the updates B_i A_i, not A and B separately.

For each LoRA module the coordinator forms the example-weighted mean of the sites' products
M = sum_i w_i B_i A_i (an out x in matrix), then factors it back to the configured rank r by
truncated SVD: B = U_r S_r, A = V_r^T (A keeps orthonormal rows, so no component dies when
the mean has rank below r). When the sites' products together span
at most r dimensions the result equals the mean exactly; otherwise it is the best rank-r
approximation (Eckart-Young). Cost per module: one SVD of an out x in matrix on the
coordinator, O(out * in * min(out, in)); for e5-small's 384 x 384 projections, a few ms each.
Sites start the next round from these factors. Tensors that are not LoRA pairs (the
classification head) are averaged as in FedAvg.
"""

from __future__ import annotations

import numpy as np

from strategies.base import AdapterState, SiteUpdate
from strategies.kernels import example_weights, factor_to_rank, lora_pairs, weighted_mean


class ExactLoRA:
    name = "exact-lora"
    averages_products = True  # smaller-rank updates arrive zero-padded: the same B_i A_i

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        weights = example_weights(updates)
        total = sum(weights)
        result: AdapterState = {}

        # LoRA modules: mean of products, back to rank r
        pairs = lora_pairs(list(global_state))
        for a_name, b_name in pairs:
            product = sum(
                (w / total) * (u.state[b_name].astype(np.float64) @ u.state[a_name].astype(
                    np.float64))
                for u, w in zip(updates, weights, strict=True)
            )
            rank = global_state[a_name].shape[0]
            b, a = factor_to_rank(product, rank)
            result[a_name] = a.astype(global_state[a_name].dtype)
            result[b_name] = b.astype(global_state[b_name].dtype)

        # Everything else: weighted mean
        paired = {name for pair in pairs for name in pair}
        for name in global_state:
            if name not in paired:
                result[name] = weighted_mean([u.state[name] for u in updates], weights)
        return result
