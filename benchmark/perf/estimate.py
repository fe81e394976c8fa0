"""An estimate of the fast strategy's time for roberta-base on 16-shot SST-2, from per-FLOP costs measured here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.perf.timing import gib


@dataclass(frozen=True)
class Shape:
    """What the cost model needs of a model: dense non-embedding parameters, width, depth."""

    dense: int
    hidden: int
    layers: int

    def forward_flops(self, seq_len: int) -> float:
        """One example's forward pass (matrix products and attention)."""
        return 2.0 * seq_len * self.dense + 4.0 * seq_len * seq_len * self.hidden * self.layers

    def assembly_flops(self, seq_len: int) -> float:
        """One example-logit's per-example weight gradients (sum over positions of outer products)."""
        return 2.0 * seq_len * self.dense


ROBERTA_BASE = Shape(dense=85_648_896, hidden=768, layers=12)  # encoder + LM-head dense, no embeddings


def roberta_base_estimate(
    stats: dict[str, Any], bench: Shape, n_train: int, n_eval: int, seq_len: int, C: int, combos: int, budget: int
) -> str:
    """Estimated fast-strategy time for roberta-base on 16-shot SST-2 (train 32, dev 32, test 872, C = 2).

    Seconds per FLOP of each phase (forward, reverse, assembly, products) are measured on the
    benchmark model and applied to roberta-base's FLOPs; the pass structure follows the planner
    (all training gradients stored if they fit, else tensor groups or example chunks).
    """
    passes = max(1, int(stats.get("passes", 1)))
    examples = n_train + passes * n_eval
    rate_f = stats.get("forward_cpu", 0.0) / max(1.0, examples * bench.forward_flops(seq_len))
    rate_r = stats.get("backward_cpu", 0.0) / max(1.0, examples * C * bench.forward_flops(seq_len))
    rate_s = stats.get("per_example_cpu", 0.0) / max(1.0, examples * C * bench.assembly_flops(seq_len))
    rate_p = stats.get("contract_cpu", 0.0) / max(1.0, 2.0 * n_train * C * n_eval * C * bench.dense * combos)

    n_tr, n_other, c = 32, 32 + 872, 2
    f = rate_f * ROBERTA_BASE.forward_flops(seq_len)
    r = rate_r * c * ROBERTA_BASE.forward_flops(seq_len)
    a = rate_s * c * ROBERTA_BASE.assembly_flops(seq_len)
    stored = n_tr * c * ROBERTA_BASE.dense * 4 * (2 if combos > 1 else 1)
    out = n_tr * c * (n_tr + n_other) * c * 8 * combos
    store = 0.45 * max(budget - out, 64 * 2**20)
    if stored <= store:
        how, seconds = "1 pass", (n_tr + n_other) * (f + r + a)
    else:
        chunks = math.ceil(stored / store)  # example chunks, or about as many tensor groups
        by_examples = n_tr * (f + r + a) + chunks * n_other * (f + r + a)
        by_groups = chunks * (n_tr + n_other) * (f + r) + (n_tr + n_other) * a
        how = f"{chunks} passes ({'tensor groups' if by_groups < by_examples else 'example chunks'})"
        seconds = min(by_examples, by_groups)
    seconds += rate_p * 2.0 * n_tr * c * (n_tr + n_other) * c * ROBERTA_BASE.dense * combos
    return (
        f"estimate: roberta-base, 16-shot SST-2 (N_train=32, N_dev=32, N_test=872, C=2, ~{seq_len} tokens, "
        f"{combos} sign combination(s)): ~{seconds / 60:.0f} min of fast strategy on this CPU with "
        f"{torch.get_num_threads()} thread(s), {how} with a {gib(budget)} budget "
        "(per-FLOP costs of each phase measured here, applied to roberta-base's FLOPs)"
    )
