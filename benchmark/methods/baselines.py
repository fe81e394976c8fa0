"""Baselines without gradient training: zero-shot prompting and the linear probe."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from benchmark.linear_probe import fit_linear_probe
from benchmark.method import Method, MethodOptions, RunContext, RunResult
from benchmark.metrics import split_metrics
from benchmark.pipeline import compute_features, evaluate_splits, prepare
from registry import BenchError, register_method

if TYPE_CHECKING:
    from benchmark.resolve import ResolvedRun


@register_method("zero-shot")
class ZeroShot(Method):
    """The pre-trained model's label-word logits at the mask position, no training."""

    name = "zero-shot"
    summary = "prompt-based zero-shot: argmax of the label words' MLM logits"
    family = "baseline"
    display_order = 0

    def check(self, run: ResolvedRun) -> None:
        """Zero-shot scores label words: it needs a prompt."""
        if not run.prompt_based:
            raise BenchError("zero-shot needs a prompt: --template none has no label words to score")

    def run(self, ctx: RunContext) -> RunResult:
        """Evaluate the prompt on dev and test."""
        prepared = prepare(ctx)
        metrics, predictions = evaluate_splits(prepared.model, prepared, ctx)
        return RunResult(metrics=metrics, predictions=predictions)


class LinearProbeOptions(MethodOptions):
    """Options of the linear probe."""

    c_grid: list[float] = Field(
        default=[0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
        description="inverse L2 strengths tried; the best on dev is kept",
    )
    max_iter: int = Field(default=2000, ge=1)


@register_method("linear-probe")
class LinearProbe(Method):
    """Logistic regression on the frozen mask (or [CLS]) representation, C chosen on dev."""

    name = "linear-probe"
    summary = "logistic regression on the mask / [CLS] hidden state (scikit-learn)"
    family = "baseline"
    display_order = 10
    Options = LinearProbeOptions

    def run(self, ctx: RunContext) -> RunResult:
        """Fit on train for each C, keep the best on dev, report dev and test."""
        options: LinearProbeOptions = self.options  # type: ignore[assignment]
        prepared = prepare(ctx)
        feats = {
            name: compute_features(prepared.model, split, batch_size=ctx.config.batch_size, device=ctx.device).numpy()
            for name, split in prepared.encoded.items()
        }
        labels = {name: split.labels.numpy() for name, split in prepared.encoded.items()}
        if len(np.unique(labels["train"])) < 2:
            raise BenchError("the linear probe needs at least two classes in the training split")
        best: tuple[float, float, np.ndarray, np.ndarray] | None = None
        for c in options.c_grid:
            weight, bias = fit_linear_probe(
                feats["train"], labels["train"], c=c, seed=ctx.config.seed, max_iter=options.max_iter
            )
            dev_acc = float(((feats["dev"] @ weight.T + bias).argmax(1) == labels["dev"]).mean())
            ctx.tracker.log_metrics({"probe_dev_acc": dev_acc}, step=options.c_grid.index(c))
            if best is None or dev_acc > best[0]:
                best = (dev_acc, c, weight, bias)
        assert best is not None
        _, c, weight, bias = best
        metrics: dict[str, float] = {}
        predictions: dict[str, list[int]] = {}
        for name in ("dev", "test"):
            predicted = torch.from_numpy((feats[name] @ weight.T + bias).argmax(1))
            metrics.update(split_metrics(name, predicted, torch.from_numpy(labels[name]), report_f1=ctx.task.report_f1))
            predictions[name] = predicted.tolist()
        return RunResult(metrics=metrics, predictions=predictions, params={"c": c})
