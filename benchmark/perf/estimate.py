"""An estimate of the fast strategy's time for roberta-base on 16-shot SST-2: the planner's own plan for
that shape, with per-FLOP costs of each phase measured on the benchmark's model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.perf.timing import gib

#: 16-shot SST-2: 16 per label in the training set, 32 dev and 872 test examples on the other side.
SST2_TRAIN, SST2_OTHER = 32, 32 + 872


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


@dataclass(frozen=True)
class PlannedWork:
    """What the fast strategy's plan for a shape does, counted in examples and example-logits."""

    shape: Shape  # of the roberta-base-shaped model that was planned
    passes: int
    groups: int
    chunk: int
    representation: str
    examples_run: int  # forward + reverse passes of one example, over all passes
    examples_assembled: int  # examples whose gradients are assembled (each once per chunk of training examples)
    formings: int  # example-logits of the stored side formed again from factors
    factored_fraction: float  # share of the dense columns stored as factors


def roberta_base_work(formulas: list[str], params: str, budget: int, seq_len: int, batch_size: int,
                      num_labels: int, seed: int = 0) -> PlannedWork:
    """Plan 16-shot SST-2 on a random roberta-base-shaped model exactly as the fast strategy would.

    Builds the model (random weights from its config, ~0.5 GB, a few seconds), probes it and asks
    the planner (`FastKernelEngine.run(plan_only=True)`); nothing is computed. The counts follow
    the plan: every pass runs its chunk of training examples and all other examples; the stored
    columns of factored tensors are formed again once per streamed unit (or batch) of each pass.
    """
    from benchmark.kernels import select_parameters
    from benchmark.kernels.fast import FastKernelEngine
    from benchmark.models import PromptLogitModel
    from benchmark.perf.inputs import make_batches, param_counts, preset_model
    from registry.formulas import get_formula, sign_combos

    mlm, ids = preset_model("roberta-base", seed, torch.float32)
    generator = torch.Generator().manual_seed(seed)
    words = list(range(ids["first"], ids["first"] + (2 if num_labels == 1 else num_labels)))
    model = PromptLogitModel(mlm, words, binary=num_labels == 1).eval()
    train = make_batches(SST2_TRAIN, batch_size, seq_len, ids, generator)
    others = make_batches(SST2_OTHER, batch_size, seq_len, ids, generator)
    combos = sign_combos([get_formula(name) for name in formulas])
    engine = FastKernelEngine(model, select_parameters(model, params), combos, memory_budget=budget, stats={})
    engine.run(train, {"other": others}, plan_only=True)
    plan = engine.plan
    assert plan is not None
    C = engine.num_outputs
    chunks = math.ceil(SST2_TRAIN / plan.chunk)
    groups = len(plan.groups)
    rows = plan.unit_rows or C * max(1, min(plan.max_batch, batch_size))
    dense = [s.numel for s in engine.slots if not s.sparse]
    factored = sum(engine.slots[i].numel for i in plan.factored)
    _, dense_params, hidden = param_counts(mlm)
    return PlannedWork(
        shape=Shape(dense_params, hidden, int(mlm.config.num_hidden_layers)),
        passes=plan.passes,
        groups=groups,
        chunk=plan.chunk,
        representation=plan.representation,
        examples_run=groups * (SST2_TRAIN + chunks * SST2_OTHER),
        examples_assembled=SST2_TRAIN + chunks * SST2_OTHER,
        # each chunk's pass (or group passes, each its share of the columns) forms them once per unit
        formings=chunks * math.ceil(C * SST2_OTHER / rows) * C * min(plan.chunk, SST2_TRAIN) if factored else 0,
        factored_fraction=factored / max(1, sum(dense)),
    )


def roberta_base_estimate(
    stats: dict[str, Any], bench: Shape, n_train: int, n_eval: int, seq_len: int, C: int, combos: int,
    work: PlannedWork, budget: int,
) -> str:
    """Estimated fast-strategy time for roberta-base on 16-shot SST-2 (train 32, dev 32, test 872).

    Seconds per FLOP of each phase (forward, reverse, assembly, products) are measured on the
    benchmark model (``stats`` of its run over ``n_train`` x ``n_eval``, ``stats["passes"]``
    passes) and applied to roberta-base's FLOPs as its own plan (``work``) runs them; forming the
    stored columns again costs what assembling them does.
    """
    passes = max(1, int(stats.get("passes", 1)))
    examples = n_train + passes * n_eval
    rate_f = stats.get("forward_cpu", 0.0) / max(1.0, examples * bench.forward_flops(seq_len))
    rate_r = stats.get("backward_cpu", 0.0) / max(1.0, examples * C * bench.forward_flops(seq_len))
    rate_s = stats.get("per_example_cpu", 0.0) / max(1.0, examples * C * bench.assembly_flops(seq_len))
    rate_p = stats.get("contract_cpu", 0.0) / max(1.0, 2.0 * n_train * C * n_eval * C * bench.dense * combos)

    big = work.shape
    seconds = work.examples_run * (rate_f + rate_r * C) * big.forward_flops(seq_len)
    seconds += work.examples_assembled * C * rate_s * big.assembly_flops(seq_len)
    seconds += work.formings * rate_s * big.assembly_flops(seq_len) * work.factored_fraction
    seconds += rate_p * 2.0 * SST2_TRAIN * C * (SST2_TRAIN + SST2_OTHER) * C * big.dense * combos
    return (
        f"estimate: roberta-base, 16-shot SST-2 (N_train=32, N_dev=32, N_test=872, C={C}, ~{seq_len} tokens, "
        f"{combos} sign combination(s)): ~{seconds / 60:.0f} min of fast strategy on this CPU with "
        f"{torch.get_num_threads()} thread(s); its plan under a {gib(budget)} budget: {work.passes} pass(es), "
        f"training side as {work.representation} (per-FLOP costs of each phase measured here, applied to "
        "roberta-base's FLOPs as that plan runs them; a small model's products run slower per FLOP than "
        "roberta-base's, so this errs high: `--preset roberta-base` measures it)"
    )
