"""Fine-tuning methods: full or LoRA, with SGD or AdamW, prompt-based or standard ([CLS] head).

``ft-sgd`` / ``ft-adam`` (alias ``ft``) fine-tune every parameter of the logit model;
``lora-sgd`` / ``lora-adam`` (alias ``lora``) add LoRA (``peft``, `benchmark.adapters`) to the attention
projections, freeze the backbone and train the adapters plus the head, as the reference does (its LoRA
runs freeze every ``roberta.*`` parameter except ``lora_*``; the LM head stays trainable, minus the
decoder weight that is tied to the word embeddings). ``--template none`` trains a [CLS] linear
head instead of the label words' logits, optionally initialised from the linear probe
(``--opt init_head=linear-probe``, as the reference's ``--from_linearhead``; `benchmark.linear_probe`).

Default hyper-parameters per method are the ``Options`` classes below; ``--train-grid key=v1,v2``
(option ``train_grid``) trains every grid point and keeps the one with the best dev accuracy (ties:
the first), which is what the reference's ``tools/gather_result.py`` does per seed.

`Finetune.build_model` is the one place the model at theta_0 is built (LoRA init, trainable set, head
init); a run trains it, and `benchmark.finetuned` rebuilds it to load a saved run's theta_FT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn

from benchmark.adapters import LORA_FIELDS, LoraOptions, lora_adapter
from benchmark.diagnostics import Diagnostics, compute_diagnostics, log_diagnostics, split_batches
from benchmark.grids import product, refuse_old_grid
from benchmark.linear_probe import init_head_from_probe
from benchmark.method import MEASUREMENT, Method, RunContext, RunResult, role
from benchmark.models import LogitModel, PromptLogitModel
from benchmark.pipeline import Prepared, prepare, use_binary
from benchmark.training import (
    TrainingOptions,
    TrainResult,
    check_global_batch,
    evaluate_split,
    restore,
    save_weights,
    snapshot,
    train_model,
)
from registry import METHODS, BenchError, first_error, register_method

if TYPE_CHECKING:
    from collections.abc import Mapping

    from benchmark.config import RunConfig
    from benchmark.resolve import ResolvedRun

#: Options a run's own train_grid cannot vary: the model (head init, LoRA adapters) is built once per run,
#: and what is recorded is per run (a sweep's grid makes one run per value instead).
NOT_GRIDDABLE_IN_RUN = frozenset({"init_head", "probe_c", "save_model", "diagnostics"}) | LORA_FIELDS


class FinetuneOptions(TrainingOptions):
    """Options shared by the fine-tuning methods (see `TrainingOptions` for the training ones)."""

    init_head: Literal["random", "linear-probe"] = Field(
        default="random", description="[CLS] head init with --template none: random or the linear-probe solution"
    )
    probe_c: float = Field(default=1.0, gt=0, description="inverse L2 strength of the linear probe for init_head")
    save_model: bool = Field(default=False, description="store the fine-tuned weights (or LoRA adapter) in MLflow",
                             json_schema_extra=role(MEASUREMENT))
    diagnostics: bool = Field(
        default=False, description="kernel-regime diagnostics of the run: linearization, kernel drift, movement",
        json_schema_extra=role(MEASUREMENT),
    )
    train_grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="in-run search over training options, e.g. {'lr': [1e-5, 2e-5]}: one training per point, "
                    "the best dev acc kept (--train-grid lr=1e-5,2e-5)",
    )

    @model_validator(mode="after")
    def _check_grid(self) -> FinetuneOptions:
        fields = [name for name in type(self).model_fields if name != "train_grid"]
        for key in self.train_grid:
            if key not in fields:
                raise ValueError(
                    f"train_grid key '{key}' is not an option of this method (options: {', '.join(fields)})"
                )
            if key in NOT_GRIDDABLE_IN_RUN:  # the model is built once per run: these would be silently ignored
                raise ValueError(
                    f"train_grid key '{key}' changes the model or what the run records, not the training; set it "
                    f"with --opt {key}=..., or make one run per value with `bench sweep --grid {key}=v1,v2`"
                )
        product(self.train_grid, "train_grid")  # every key has a non-empty list
        if self.train_grid:
            self.grid_points()  # validates every point
        return self

    def grid_points(self) -> list[FinetuneOptions]:
        """One options object per train_grid point (the cartesian product, in its order); [self] without one."""
        if not self.train_grid:
            return [self]
        base = self.model_dump(exclude={"train_grid"})
        points = []
        for point in product(self.train_grid, "train_grid"):
            try:
                points.append(type(self).model_validate({**base, **point}))
            except ValidationError as exc:
                where, message = first_error(exc)
                raise ValueError(f"train_grid point {point}: {where}: {message}") from None
        return points

    def hyperparameters(self) -> dict[str, Any]:
        """The resolved options of one run, without the train_grid."""
        return self.model_dump(exclude={"train_grid"})


class AdamOptions(FinetuneOptions):
    """``ft-adam``: AdamW, lr 1e-5 and batch size 8 (LM-BFF's defaults; the paper's Adam grid is 1e-5..5e-5)."""

    lr: float = Field(default=1e-5, gt=0, description="peak learning rate")


class SgdOptions(FinetuneOptions):
    """``ft-sgd``: plain SGD (no momentum), lr 1e-3 (inside the paper's SGD grid 1e-4..1e-2)."""

    lr: float = Field(default=1e-3, gt=0, description="peak learning rate")


class _LoraFields(LoraOptions, FinetuneOptions):
    """Fine-tuning options plus the LoRA adapters (`benchmark.adapters.LoraOptions`)."""


class LoraAdamOptions(_LoraFields):
    """``lora-adam``: AdamW on the adapters and head, lr 1e-4, r 8, alpha 16, on query and value."""

    lr: float = Field(default=1e-4, gt=0, description="peak learning rate")


class LoraSgdOptions(_LoraFields):
    """``lora-sgd``: SGD on the adapters and head, lr 1e-2, r 8, alpha 16, on query and value."""

    lr: float = Field(default=1e-2, gt=0, description="peak learning rate")


# ---------------------------------------------------------------------------------------- helpers


def head_module(model: LogitModel) -> nn.Module:
    """The output head: the MLM head of a prompt-based model, the linear classifier of a [CLS] model."""
    return model.head if isinstance(model, PromptLogitModel) else model.classifier


def mark_trainable(model: LogitModel, *, lora: bool) -> int:
    """Set ``requires_grad``: everything (full FT), or the LoRA adapters + the head (LoRA).

    Head parameters shared with the encoder (the MLM decoder tied to the word embeddings) stay
    frozen under LoRA. Returns the number of trainable parameters.
    """
    if not lora:
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        for param in head_module(model).parameters():
            if id(param) not in encoder_ids:
                param.requires_grad_(True)
        if not any("lora_" in name for name, p in model.named_parameters() if p.requires_grad):
            raise BenchError("LoRA added no adapter parameters to the model; check lora_targets")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def formula_of_optimizer() -> dict[str, str]:
    """Optimizer -> the kernel formula of its analog, from the method metadata.

    Every registered kernel method whose ``analog_of`` is a fine-tuning method maps that method's
    optimizer to its ``formula`` (``ntk-sgd`` -> ``ft-sgd``: sgd -> sgd; ``ntk-adam`` -> ``ft-adam``:
    adam -> asym); the first in display order wins when two disagree.
    """
    mapping: dict[str, str] = {}
    kernels = sorted((cls for _, cls in METHODS.items() if getattr(cls, "family", None) == "kernel"),
                     key=lambda cls: (cls.display_order, cls.name))
    for cls in kernels:
        formula, analog = getattr(cls, "formula", None), cls.analog_of
        if formula is None or analog is None or analog not in METHODS:
            continue
        optimizer = getattr(METHODS.get(analog), "optimizer", None)
        if optimizer is not None:
            mapping.setdefault(optimizer, formula)
    return mapping


def diagnostics_formula(method: type[Finetune]) -> str:
    """The kernel whose drift a fine-tuning method's diagnostics measure: its own kernel analog's formula
    (the registered kernel method with ``analog_of`` = this method), else that of its optimizer."""
    for _, cls in METHODS.items():
        if getattr(cls, "family", None) == "kernel" and cls.analog_of == method.name and hasattr(cls, "formula"):
            return cls.formula
    by_optimizer = formula_of_optimizer()
    if method.optimizer not in by_optimizer:
        raise BenchError(
            f"no kernel formula for optimizer '{method.optimizer}' of method '{method.name}': no registered kernel "
            f"method is the analog of a method with that optimizer (known: {', '.join(by_optimizer) or 'none'})"
        )
    return by_optimizer[method.optimizer]


def finetune_diagnostics(
    model: nn.Module,
    theta_0: Mapping[str, torch.Tensor],
    prepared: Prepared,
    ctx: RunContext,
    *,
    method: type[Finetune],
    best_step: int | None = None,
    kernel: bool = True,
) -> Diagnostics:
    """Diagnostics of a fine-tuned logit model: test linearization, train kernel drift, movement.

    The kernel formula is the method's kernel analog's (`diagnostics_formula`: sgd for SGD, asym for
    Adam); ``theta_0`` is the snapshot of the trained parameters taken before training; the model
    holds theta_FT.
    """
    formula = diagnostics_formula(method)
    batch_size = ctx.config.batch_size
    train = split_batches(prepared.encoded["train"], batch_size, ctx.device)
    test_split = prepared.encoded["test"]
    test = split_batches(test_split, batch_size, ctx.device)
    diag = compute_diagnostics(
        model, theta_0, train, test, test_split.labels, formula=formula, kernel=kernel, progress=True
    )
    diag.details["setup"] = {
        "theta_0": "pre-trained weights after head initialisation (trained parameters only)",
        "theta_ft": "reported checkpoint (best dev)" + (f", step {best_step}" if best_step is not None else ""),
        "optimizer": method.optimizer,
        "prompt_based": bool(getattr(prepared.encoder, "prompt_based", True)),
        "template": ctx.config.template,
        "method": ctx.config.method,
    }
    return diag


# ---------------------------------------------------------------------------------------- methods


class Finetune(Method):
    """Fine-tune the logit model with the LM-BFF protocol (`benchmark.training.train_model`)."""

    family = "finetune"
    optimizer: ClassVar[str]
    lora: ClassVar[bool] = False
    sweep_defaults: ClassVar[dict[str, Any]] = {"diagnostics": True}
    distributed = True

    def check_world_size(self, world_size: int) -> None:
        """Every grid point's global batch must split evenly across the ranks."""
        options: FinetuneOptions = self.options  # type: ignore[assignment]
        for point in options.grid_points():
            check_global_batch(point.batch_size, world_size)

    @classmethod
    def from_config(cls, config: RunConfig) -> Method:
        """Build the method from ``config.options``; the old option name ``grid`` is refused naming ``train_grid``."""
        refuse_old_grid(cls.name, config.options, "train_grid")
        return super().from_config(config)

    def check(self, run: ResolvedRun) -> None:
        """The linear-probe head init exists for standard ([CLS]-head) inputs only."""
        options: FinetuneOptions = self.options  # type: ignore[assignment]
        if options.init_head == "linear-probe" and run.prompt_based:
            raise BenchError(
                "init_head=linear-probe initialises the [CLS] head of --template none; drop it for prompts"
            )

    def build_model(self, ctx: RunContext, options: FinetuneOptions, *, binary: bool) -> tuple[Prepared, int]:
        """The logit model at theta_0, as a run trains it: LoRA adapters initialised from the run's seed,
        ``requires_grad`` set, the [CLS] head from the linear probe if asked. Returns it and its number of
        trainable parameters."""
        adapt = lora_adapter(options, ctx.config.seed) if self.lora else None  # type: ignore[arg-type]
        prepared = prepare(ctx, binary=binary, adapt_mlm=adapt)
        n_trainable = mark_trainable(prepared.model, lora=self.lora)
        if options.init_head == "linear-probe":
            init_head_from_probe(prepared.model, prepared, ctx, options.probe_c)
        return prepared, n_trainable

    def run(self, ctx: RunContext) -> RunResult:
        """Train every train_grid point, keep the best on dev, and report its dev and test metrics."""
        options: FinetuneOptions = self.options  # type: ignore[assignment]
        seed = ctx.config.seed
        prepared, n_trainable = self.build_model(ctx, options, binary=use_binary(ctx))
        model = prepared.model
        dist = ctx.distribution
        ctx.tracker.log_params({"optimizer": self.optimizer, "lora": self.lora, "trainable_parameters": n_trainable})
        fixed = {key: value for key, value in options.hyperparameters().items() if key not in options.train_grid}
        ctx.tracker.log_params({f"hp.{key}": value for key, value in fixed.items()})

        points = options.grid_points()
        initial = snapshot(model) if len(points) > 1 or options.diagnostics else None  # theta_0
        best: tuple[int, float, FinetuneOptions, TrainResult, dict[str, torch.Tensor] | None] | None = None
        for index, point in enumerate(points):
            if initial is not None and index > 0:
                restore(model, initial)
            prefix = f"grid/{index}/" if len(points) > 1 else ""
            result = train_model(
                model,
                prepared.encoded["train"],
                prepared.encoded["dev"],
                point,
                optimizer=self.optimizer,
                seed=seed,
                device=ctx.device,
                eval_batch_size=ctx.config.batch_size,
                report_f1=ctx.task.report_f1,
                tracker=ctx.tracker,
                prefix=prefix,
                dist=dist,
                work_dir=ctx.work_dir,
                label=", ".join(f"{k}={getattr(point, k)}" for k in sorted(options.train_grid)) + " " if prefix else "",
            )
            dev_acc = result.best_metrics["dev_acc"]
            if len(points) > 1:
                ctx.tracker.log_metrics({f"{prefix}dev_acc": dev_acc, f"{prefix}best_step": result.best_step})
            if best is None or dev_acc > best[1]:
                state = snapshot(model) if len(points) > 1 else None
                best = (index, dev_acc, point, result, state)
        assert best is not None
        index, _, chosen, result, state = best
        if state is not None:
            restore(model, state)

        metrics: dict[str, float] = {}
        predictions: dict[str, list[int]] = {}
        for name in ("dev", "test"):
            split_metrics, predicted = evaluate_split(
                model, prepared.encoded[name], name, batch_size=ctx.config.batch_size, device=ctx.device, dist=dist,
                report_f1=ctx.task.report_f1,
            )
            metrics.update(split_metrics)
            predictions[name] = predicted
        if options.diagnostics and initial is not None:  # every rank: the kernel engine splits its work across them
            diag = finetune_diagnostics(model, initial, prepared, ctx, method=type(self), best_step=result.best_step)
            log_diagnostics(ctx.tracker, diag, headline=False)  # the diag_* metrics go out with the result
            metrics.update(diag.metrics)
        ctx.tracker.log_metrics(result.summary())
        params: dict[str, Any] = {"best_step": result.best_step}
        if len(points) > 1:
            ctx.tracker.log_params({f"hp.{key}": getattr(chosen, key) for key in options.train_grid})
            params["grid_best"] = index
            params.update({f"grid.{key}": getattr(chosen, key) for key in options.train_grid})
        if options.save_model and dist.rank == 0:
            meta = {
                "method": self.name,
                "backbone": ctx.config.backbone,
                "template": ctx.config.template,
                "prompt_based": isinstance(model, PromptLogitModel),
                "binary": getattr(model, "binary", False),
                "num_outputs": model.num_outputs,
                "lora": self.lora,
                "hyperparameters": chosen.hyperparameters(),
                "best_step": result.best_step,
            }
            directory = save_weights(model, ctx.work_dir / "model", meta)
            ctx.tracker.log_artifact(directory, "model")
        return RunResult(metrics=metrics, predictions=predictions, params=params)


@register_method("ft-adam", aliases=("ft",))
class FtAdam(Finetune):
    """Full fine-tuning with AdamW."""

    name = "ft-adam"
    summary = "full fine-tuning with AdamW (LM-BFF protocol: 1000 steps, best dev checkpoint)"
    Options = AdamOptions
    optimizer = "adam"
    display_order = 40


@register_method("ft-sgd")
class FtSgd(Finetune):
    """Full fine-tuning with plain SGD."""

    name = "ft-sgd"
    summary = "full fine-tuning with SGD, no momentum (LM-BFF protocol)"
    Options = SgdOptions
    optimizer = "sgd"
    display_order = 20


@register_method("lora-adam", aliases=("lora",))
class LoraAdam(Finetune):
    """LoRA fine-tuning with AdamW."""

    name = "lora-adam"
    summary = "LoRA (peft) on the attention projections + trainable head, AdamW"
    Options = LoraAdamOptions
    optimizer = "adam"
    lora = True
    display_order = 100


@register_method("lora-sgd")
class LoraSgd(Finetune):
    """LoRA fine-tuning with plain SGD."""

    name = "lora-sgd"
    summary = "LoRA (peft) on the attention projections + trainable head, SGD"
    Options = LoraSgdOptions
    optimizer = "sgd"
    lora = True
    display_order = 80
