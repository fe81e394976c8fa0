"""Fine-tuning methods: full or LoRA, with SGD or AdamW, prompt-based or standard ([CLS] head).

``ft-sgd`` / ``ft-adam`` (alias ``ft``) fine-tune every parameter of the logit model;
``lora-sgd`` / ``lora-adam`` (alias ``lora``) add LoRA (``peft``) to the attention projections,
freeze the backbone and train the adapters plus the head, as the reference does (its LoRA runs
freeze every ``roberta.*`` parameter except ``lora_*``; the LM head stays trainable, minus the
decoder weight that is tied to the word embeddings). ``--template none`` trains a [CLS] linear
head instead of the label words' logits, optionally initialised from the linear probe
(``--opt init_head=linear-probe``, as the reference's ``--from_linearhead``).

Default hyper-parameters per method are the ``Options`` classes below; ``--grid key=v1,v2`` trains
every grid point and keeps the one with the best dev accuracy (ties: the first), which is what
the reference's ``tools/gather_result.py`` does per seed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn

from benchmark.methods.base import MEASUREMENT, Method, RunContext, RunResult, role
from benchmark.models import ClsHeadLogitModel, LogitModel, PromptLogitModel
from benchmark.pipeline import Prepared, compute_features, prepare, use_binary
from benchmark.training import (
    META_FILE,
    TrainingOptions,
    TrainResult,
    check_global_batch,
    evaluate_split,
    load_weights,
    restore,
    save_weights,
    snapshot,
    train_model,
)
from registry import BenchError, first_error, register_method

if TYPE_CHECKING:
    from benchmark.resolve import ResolvedRun

#: Options a run's own grid cannot vary: the model (head init, LoRA adapters) is built once per run,
#: and what is recorded is per run (a sweep's grid makes one run per value instead).
NOT_GRIDDABLE_IN_RUN = frozenset(
    {"init_head", "probe_c", "save_model", "diagnostics", "lora_r", "lora_alpha", "lora_dropout", "lora_targets"}
)


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
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="hyper-parameter grid, e.g. {'lr': [1e-5, 2e-5]}; best dev acc per seed"
    )

    @model_validator(mode="after")
    def _check_grid(self) -> FinetuneOptions:
        fields = [name for name in type(self).model_fields if name != "grid"]
        for key, values in self.grid.items():
            if key not in fields:
                raise ValueError(f"grid key '{key}' is not an option of this method (options: {', '.join(fields)})")
            if key in NOT_GRIDDABLE_IN_RUN:  # the model is built once per run: these would be silently ignored
                raise ValueError(
                    f"grid key '{key}' changes the model or what the run records, not the training; set it with "
                    f"--opt {key}=..., or make one run per value with `bench sweep --grid {key}=v1,v2`"
                )
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid key '{key}' needs a non-empty list of values")
        if self.grid:
            self.grid_points()  # validates every point
        return self

    def grid_points(self) -> list[FinetuneOptions]:
        """One options object per grid point (the cartesian product, in the grid's order); [self] without a grid."""
        if not self.grid:
            return [self]
        base = self.model_dump(exclude={"grid"})
        keys = list(self.grid)
        points = []
        for values in itertools.product(*(self.grid[key] for key in keys)):
            point = dict(zip(keys, values, strict=True))
            try:
                points.append(type(self).model_validate({**base, **point}))
            except ValidationError as exc:
                where, message = first_error(exc)
                raise ValueError(f"grid point {point}: {where}: {message}") from None
        return points

    def hyperparameters(self) -> dict[str, Any]:
        """The resolved options of one run, without the grid."""
        return self.model_dump(exclude={"grid"})


class AdamOptions(FinetuneOptions):
    """``ft-adam``: AdamW, lr 1e-5 and batch size 8 (LM-BFF's defaults; the paper's Adam grid is 1e-5..5e-5)."""

    lr: float = Field(default=1e-5, gt=0, description="peak learning rate")


class SgdOptions(FinetuneOptions):
    """``ft-sgd``: plain SGD (no momentum), lr 1e-3 (inside the paper's SGD grid 1e-4..1e-2)."""

    lr: float = Field(default=1e-3, gt=0, description="peak learning rate")


class _LoraFields(FinetuneOptions):
    lora_r: int = Field(default=8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["query", "value"], description="module names that get adapters (attention projections)"
    )


class LoraAdamOptions(_LoraFields):
    """``lora-adam``: AdamW on the adapters and head, lr 1e-4, r 8, alpha 16, on query and value."""

    lr: float = Field(default=1e-4, gt=0, description="peak learning rate")


class LoraSgdOptions(_LoraFields):
    """``lora-sgd``: SGD on the adapters and head, lr 1e-2, r 8, alpha 16, on query and value."""

    lr: float = Field(default=1e-2, gt=0, description="peak learning rate")


# ---------------------------------------------------------------------------------------- helpers


def lora_adapter(options: _LoraFields, seed: int) -> Callable[[nn.Module], nn.Module]:
    """A function that injects LoRA layers (initialised from ``seed``) into a masked LM, in place."""

    def adapt(mlm: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(options.lora_targets)
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in mlm.named_modules() if isinstance(m, nn.Linear)})
        if not any(name == t or name.endswith("." + t) for name, _ in mlm.named_modules() for t in targets):
            raise BenchError(
                f"LoRA targets {targets} match no module of {type(mlm).__name__}; its linear layers are named "
                f"{linear}: pass --opt 'lora_targets=[\"...\"]' with the attention projections"
            )
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        torch.manual_seed(seed)
        try:
            return inject_adapter_in_model(config, mlm)
        except ValueError as exc:
            raise BenchError(f"cannot add LoRA to {type(mlm).__name__}: {str(exc).splitlines()[0]}") from exc

    return adapt


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


def init_head_from_probe(model: LogitModel, prepared: Prepared, ctx: RunContext, c: float) -> None:
    """Set the [CLS] head to the linear probe's solution on the (frozen) train features."""
    from benchmark.methods.baselines import fit_linear_probe

    if not isinstance(model, ClsHeadLogitModel):
        raise BenchError("init_head=linear-probe initialises the [CLS] head of --template none; drop it for prompts")
    train = prepared.encoded["train"]
    features = compute_features(model, train, batch_size=ctx.config.batch_size, device=ctx.device)
    weight, bias = fit_linear_probe(features.numpy(), train.labels.numpy(), c=c, seed=ctx.config.seed)
    weight_t, bias_t = torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
    if model.num_outputs == 1 and weight_t.shape[0] == 2:  # one logit: the log-odds of class 1 over class 0
        weight_t, bias_t = weight_t[1:] - weight_t[:1], bias_t[1:] - bias_t[:1]
    if weight_t.shape[0] != model.num_outputs:
        raise BenchError(f"the linear probe has {weight_t.shape[0]} outputs but the head has {model.num_outputs}")
    model.set_head(weight_t, bias_t)


def load_finetuned(ctx: RunContext, directory: Path) -> Prepared:
    """Rebuild the logit model saved by ``--opt save_model=true`` (in ``directory``) for ``ctx`` and load theta_FT.

    ``ctx`` must describe the same task, backbone and template as the saved run; LoRA runs get
    their adapters back (same rank, alpha and targets) before the weights are loaded.
    """
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise BenchError(f"'{directory}' is not a saved fine-tuned model (no {META_FILE}); use a run's model/ artifact")
    meta = json.loads(meta_path.read_text())
    adapt = None
    if meta.get("lora"):
        adapt = lora_adapter(_LoraFields.model_validate(meta["hyperparameters"]), seed=0)
    prepared = prepare(ctx, binary=bool(meta.get("binary")), adapt_mlm=adapt)
    if prepared.model.num_outputs != meta.get("num_outputs", prepared.model.num_outputs):
        raise BenchError(f"the saved model has {meta['num_outputs']} outputs, this run's model "
                         f"{prepared.model.num_outputs}: use the saved run's task, template and --binary")
    mark_trainable(prepared.model, lora=bool(meta.get("lora")))
    load_weights(prepared.model, Path(directory))
    prepared.model.eval()
    return prepared


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

    def check(self, run: ResolvedRun) -> None:
        """The linear-probe head init exists for standard ([CLS]-head) inputs only."""
        options: FinetuneOptions = self.options  # type: ignore[assignment]
        if options.init_head == "linear-probe" and run.prompt_based:
            raise BenchError(
                "init_head=linear-probe initialises the [CLS] head of --template none; drop it for prompts"
            )

    def run(self, ctx: RunContext) -> RunResult:
        """Train every grid point, keep the best on dev, and report its dev and test metrics."""
        options: FinetuneOptions = self.options  # type: ignore[assignment]
        seed = ctx.config.seed
        adapt = lora_adapter(options, seed) if self.lora else None  # type: ignore[arg-type]
        prepared = prepare(ctx, binary=use_binary(ctx), adapt_mlm=adapt)
        model = prepared.model
        n_trainable = mark_trainable(model, lora=self.lora)
        if options.init_head == "linear-probe":
            init_head_from_probe(model, prepared, ctx, options.probe_c)
        dist = ctx.distribution
        ctx.tracker.log_params({"optimizer": self.optimizer, "lora": self.lora, "trainable_parameters": n_trainable})
        fixed = {key: value for key, value in options.hyperparameters().items() if key not in options.grid}
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
                label=", ".join(f"{key}={getattr(point, key)}" for key in sorted(options.grid)) + " " if prefix else "",
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
            from benchmark.diagnostics import finetune_diagnostics, log_diagnostics

            diag = finetune_diagnostics(
                model, initial, prepared, ctx, optimizer=self.optimizer, best_step=result.best_step
            )
            log_diagnostics(ctx.tracker, diag, headline=False)  # the diag_* metrics go out with the result
            metrics.update(diag.metrics)
        ctx.tracker.log_metrics(result.summary())
        params: dict[str, Any] = {"best_step": result.best_step}
        if len(points) > 1:
            ctx.tracker.log_params({f"hp.{key}": getattr(chosen, key) for key in options.grid})
            params["grid_best"] = index
            params.update({f"grid.{key}": getattr(chosen, key) for key in options.grid})
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
