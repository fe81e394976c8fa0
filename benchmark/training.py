"""The fine-tuning loop: LM-BFF's protocol on a logit model, locally or on N data-parallel ranks.

Protocol (princeton-nlp/LM-BFF ``src/trainer.py``, kept by LM-Kernel-FT): a fixed number of
optimizer steps over reshuffled epochs (the last batch of an epoch may be smaller), a linear
learning-rate schedule with optional warmup, gradient clipping (transformers' default norm 1.0),
evaluation on dev every ``eval_every`` steps, and the checkpoint with the best dev objective
(strictly better than every earlier one) is the one kept and reported. The dev objective is F1
for tasks that report F1, else accuracy, as in the reference's ``default_dev_objective``.

Data-parallel runs (any `benchmark.distribution.Distribution`: plain ``torch.distributed`` here,
DeepSpeed through the stepper its runner injects) see exactly the local run's global
batches: each global batch is collated once (padded to its longest example), every rank takes a
contiguous slice of ``batch_size / world_size`` rows, and the loss is scaled so that the averaged
gradient is the gradient of the global batch mean. Dropout masks are drawn for the whole global
batch on every rank (same seed, same RNG stream) and sliced, so a 2-rank run follows the local
run's trajectory up to floating-point summation order.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from benchmark.distribution import LOCAL, Distribution
from benchmark.method import MEASUREMENT, MethodOptions, role
from benchmark.metrics import predict_labels, split_metrics
from benchmark.pipeline import compute_logits, to_device
from benchmark.prompts import EncodedSplit
from benchmark.tracking import Tracker
from registry import BenchError

OPTIMIZERS = ("sgd", "adam")
# Parameters without weight decay, as in the reference (transformers' Trainer convention).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


class TrainingOptions(MethodOptions):
    """Hyper-parameters of one training run (``--opt name=value``).

    Defaults follow LM-BFF / LM-Kernel-FT (1000 steps, dev evaluation every 100 steps, no weight
    decay, no warmup, gradient norm clipped at 1.0); subclasses set the per-optimizer learning
    rate. Strings such as ``"1e-5"`` are coerced to numbers.
    """

    lr: float = Field(default=1e-5, gt=0, description="peak learning rate")
    batch_size: int = Field(default=8, ge=1, description="global training batch size (all ranks together)")
    steps: int = Field(default=1000, ge=1, description="optimizer steps")
    eval_every: int = Field(default=100, ge=1, description="evaluate on dev every N steps (and at the last step)")
    weight_decay: float = Field(default=0.0, ge=0, description="decoupled (Adam) or L2 (SGD) weight decay")
    warmup_steps: int = Field(default=0, ge=0, description="linear warmup steps (overrides warmup_ratio)")
    warmup_ratio: float = Field(default=0.0, ge=0, le=1, description="linear warmup as a fraction of steps")
    max_grad_norm: float = Field(default=1.0, ge=0, description="clip the global gradient norm (0 = off)")
    loss: Literal["ce", "mse"] = Field(default="ce", description="cross-entropy, or MSE to the one-hot (+-1) target")
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    checkpoint: Literal["memory", "disk"] = Field(default="memory", description="where the best-dev weights live",
                                                  json_schema_extra=role(MEASUREMENT))

    def warmup(self) -> int:
        """The number of warmup steps (``warmup_steps`` if set, else ``ceil(warmup_ratio * steps)``)."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * self.steps)

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> TrainingOptions:
        if self.warmup() > self.steps:
            raise ValueError(f"warmup ({self.warmup()} steps) is longer than training ({self.steps} steps)")
        return self


@dataclass
class EvalRecord:
    """One dev evaluation during training."""

    step: int
    train_loss: float
    lr: float
    metrics: dict[str, float]
    objective: float


@dataclass
class TrainResult:
    """What `train_model` returns; the model holds the best-dev weights afterwards."""

    best_step: int
    best_objective: float
    best_metrics: dict[str, float]
    history: list[EvalRecord] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    steps_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    final_train_loss: float = float("nan")

    def summary(self) -> dict[str, float]:
        """Scalar metrics of the run, for MLflow."""
        return {
            "best_step": float(self.best_step),
            "train_seconds": self.train_seconds,
            "train_steps_per_second": self.steps_per_second,
            "peak_memory_mb": self.peak_memory_mb,
            "final_train_loss": self.final_train_loss,
        }


# ------------------------------------------------------------------------------------------ pieces


def linear_schedule(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate multiplier at ``step``: linear warmup to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_optimizer(
    name: str, params: Sequence[tuple[str, nn.Parameter]], options: TrainingOptions
) -> torch.optim.Optimizer:
    """Plain SGD (no momentum, no Nesterov) or AdamW over the trainable ``(name, param)`` pairs.

    Biases and LayerNorm weights get no weight decay, as in the reference.
    """
    if name not in OPTIMIZERS:
        raise BenchError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    decay = [p for n, p in params if not any(tag in n for tag in NO_DECAY)]
    no_decay = [p for n, p in params if any(tag in n for tag in NO_DECAY)]
    groups = [g for g in ({"params": decay, "weight_decay": options.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=options.lr, momentum=0.0, dampening=0.0, nesterov=False)
    betas = (options.adam_beta1, options.adam_beta2)
    return torch.optim.AdamW(groups, lr=options.lr, betas=betas, eps=options.adam_eps)


def example_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example loss ``[B]`` of ``[B, C]`` logits.

    ``ce``: cross-entropy over the C logits (with one logit, the logistic loss on labels +-1).
    ``mse``: squared error to the one-hot target averaged over C (the reference's
    ``MSELoss(logits, one_hot)``); with one logit, the target is -1 / +1.
    """
    logits = logits.float()
    if logits.shape[-1] == 1:
        z = logits.reshape(-1)
        sign = labels.to(z.dtype) * 2 - 1
        return F.softplus(-sign * z) if kind == "ce" else (z - sign) ** 2
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return ((logits - target) ** 2).mean(dim=-1)


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of indices: a fresh permutation per epoch from a generator seeded with ``seed``."""
    if n == 0:
        raise BenchError("the training split is empty")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@dataclass(frozen=True)
class Shard:
    """This rank's rows ``[start, start + real)`` of a global batch of ``total`` rows.

    ``padded`` >= ``real`` rows are fed to the model; rows beyond ``real`` are copies with weight 0
    (a rank whose slice of a short last batch is empty still takes part in every collective).
    """

    total: int
    start: int
    real: int
    padded: int

    @classmethod
    def of(cls, total: int, micro: int, rank: int) -> Shard:
        """Rank ``rank``'s slice of ``micro`` rows of a global batch of ``total`` rows."""
        start = min(rank * micro, total)
        real = max(0, min(total, start + micro) - start)
        return cls(total=total, start=start, real=real, padded=max(real, 1))

    def rows(self) -> list[int]:
        """Row indices into the global batch (padding rows repeat row 0)."""
        return list(range(self.start, self.start + self.real)) + [0] * (self.padded - self.real)

    def weights(self, device: torch.device) -> torch.Tensor:
        """1 for real rows, 0 for padding rows."""
        weights = torch.zeros(self.padded, device=device)
        weights[: self.real] = 1.0
        return weights


@contextmanager
def global_batch_dropout(shard: Shard) -> Iterator[None]:
    """Draw every dropout mask for the whole global batch and keep this rank's rows.

    Inside the block, ``torch.nn.functional.dropout`` (used by ``nn.Dropout`` and by transformers'
    eager attention) samples a ``[total, ...]`` mask from the global RNG and applies rows
    ``[start, start + real)``, so that the masks do not depend on how the batch is split.
    Tensors whose first dimension is not this rank's batch fall back to ordinary dropout.
    """
    original = F.dropout

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0.0 or input.dim() == 0 or input.shape[0] != shard.padded:
            return original(input, p, training, inplace)
        if p >= 1.0:
            return input * 0.0
        keep = torch.empty((shard.total, *input.shape[1:]), dtype=input.dtype, device=input.device)
        keep.bernoulli_(1.0 - p)
        keep = keep[shard.start : shard.start + shard.real]
        if shard.padded > shard.real:
            keep = torch.cat([keep, keep.new_ones((shard.padded - shard.real, *input.shape[1:]))])
        return input * keep.div_(1.0 - p)

    F.dropout = dropout  # type: ignore[assignment]
    try:
        yield
    finally:
        F.dropout = original  # type: ignore[assignment]


def check_global_batch(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly into one micro-batch per rank."""
    if batch_size % world_size:
        raise BenchError(
            f"batch_size {batch_size} is not divisible by the {world_size} processes; choose a multiple of "
            f"{world_size} (the batch size is the global one, split across the processes)"
        )


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, param)`` pairs that require gradients (shared parameters once)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters."""
    return {n: p.detach().to("cpu", copy=True) for n, p in trainable_parameters(model)}


@torch.no_grad()
def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a `snapshot` back into the model's parameters."""
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise BenchError(f"cannot restore weights: the model has no parameters {missing[:5]}")
    for name, value in state.items():
        params[name].copy_(value.to(params[name].device, params[name].dtype))


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory on ``device``, else the process's peak resident memory (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ evaluation


def gather_logits(
    model: nn.Module, split: EncodedSplit, *, batch_size: int, device: torch.device, dist: Distribution, desc: str
) -> torch.Tensor:
    """Logits ``[N, C]`` of ``model`` on ``split``; with several ranks each computes a slice and all gather."""
    if dist.world_size == 1:
        return compute_logits(model, split, batch_size=batch_size, device=device, desc=desc)
    n = len(split)
    chunk = -(-n // dist.world_size)
    indices = list(range(min(n, dist.rank * chunk), min(n, (dist.rank + 1) * chunk)))
    local = (compute_logits(model, split.subset(indices), batch_size=batch_size, device=device, desc=desc)
             if indices else None)
    parts: list[torch.Tensor | None] = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, local)
    return torch.cat([part for part in parts if part is not None and part.numel()])


def evaluate_split(
    model: nn.Module, split: EncodedSplit, name: str, *, batch_size: int, device: torch.device, dist: Distribution,
    report_f1: bool,
) -> tuple[dict[str, float], list[int]]:
    """``{name}_acc`` (and ``{name}_f1``) and the predictions of ``model`` on ``split``."""
    logits = gather_logits(model, split, batch_size=batch_size, device=device, dist=dist, desc=name)
    predicted = predict_labels(logits)
    return split_metrics(name, predicted, split.labels, report_f1=report_f1), predicted.tolist()


def dev_objective(metrics: dict[str, float]) -> float:
    """The reference's dev objective: F1 where reported, else accuracy."""
    return metrics.get("dev_f1", metrics["dev_acc"])


# ------------------------------------------------------------------------------------------ loop


def train_model(
    model: nn.Module,
    train: EncodedSplit,
    dev: EncodedSplit,
    options: TrainingOptions,
    *,
    optimizer: str,
    seed: int,
    device: torch.device,
    eval_batch_size: int = 32,
    report_f1: bool = False,
    tracker: Tracker | None = None,
    prefix: str = "",
    dist: Distribution | None = None,
    work_dir: Path | None = None,
    label: str = "",
) -> TrainResult:
    """Train the trainable parameters of ``model`` on ``train`` and keep the best checkpoint on ``dev``.

    ``model(**inputs)`` must return logits ``[B, C]``. Metrics go to ``tracker`` at each
    evaluation step as ``{prefix}train/loss``, ``{prefix}train/lr``, ``{prefix}train/grad_norm``
    and ``{prefix}eval/dev_acc`` (and ``eval/dev_f1``). On return the model holds the best-dev
    weights, is in eval mode, and the result says at which step they were reached. ``label`` names
    the progress bar (e.g. a grid point's values); it defaults to ``prefix``.
    """
    dist = dist or LOCAL
    check_global_batch(options.batch_size, dist.world_size)
    if dist.world_size > 1 and not torch.distributed.is_initialized():
        raise BenchError(f"world_size {dist.world_size} needs torch.distributed to be initialised")
    params = trainable_parameters(model)
    if not params:
        raise BenchError("the model has no trainable parameters")
    if options.checkpoint == "disk" and work_dir is None:
        raise BenchError("checkpoint=disk needs a work directory")
    warmup = options.warmup()
    schedule = _schedule_fn(warmup, options.steps)
    optim = build_optimizer(optimizer, params, options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(seed)
    stepper = dist.stepper(model, optim, schedule, options)
    module = stepper.module
    tracker = tracker or _NoTracker()
    micro = options.batch_size // dist.world_size

    best: TrainResult = TrainResult(best_step=0, best_objective=-math.inf, best_metrics={})
    best_state: dict[str, torch.Tensor] | None = None
    best_path = (work_dir / f"best-{prefix.strip('/').replace('/', '-') or 'run'}.pt") if work_dir else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_steps = 0
    grad_norm: Any = None
    train_time = 0.0
    start = time.perf_counter()
    batches = epoch_batches(len(train), options.batch_size, seed)
    module.train()
    # Rank 0 of a multi-rank run writes to the launcher's pipe (not a TTY): show its bar anyway; other ranks stay quiet.
    show: bool | None = (None if dist.world_size == 1 else True) if dist.rank == 0 else False
    bar = tqdm(range(1, options.steps + 1), desc=f"{label or prefix}train", disable=not show if show is not None
               else None, leave=False)
    for step in bar:
        tick = time.perf_counter()
        indices = next(batches)
        inputs, labels = train.collate(indices)
        shard = Shard.of(len(indices), micro, dist.rank)
        if shard.padded != shard.total:
            rows = torch.tensor(shard.rows())
            inputs, labels = {key: value[rows] for key, value in inputs.items()}, labels[rows]
        local, local_labels = to_device(inputs, device), labels.to(device)
        with global_batch_dropout(shard):
            logits = stepper.forward(local)
        losses = example_losses(logits, local_labels, options.loss)
        weighted = (losses * shard.weights(device)).sum()
        stepper.backward(weighted * (dist.world_size / shard.total))
        grad_norm = stepper.step()
        loss_sum += weighted.detach().double() / shard.total
        loss_steps += 1
        train_time += time.perf_counter() - tick

        if step % options.eval_every == 0 or step == options.steps:
            if dist.world_size > 1:
                torch.distributed.all_reduce(loss_sum)
            train_loss = float(loss_sum) / max(1, loss_steps)
            loss_sum.zero_()
            loss_steps = 0
            metrics, _ = evaluate_split(module, dev, "dev", batch_size=eval_batch_size, device=device, dist=dist,
                                        report_f1=report_f1)
            module.train()
            objective = dev_objective(metrics)
            record = EvalRecord(step=step, train_loss=train_loss, lr=stepper.lr(), metrics=metrics, objective=objective)
            best.history.append(record)
            best.final_train_loss = train_loss
            logged = {f"{prefix}train/loss": train_loss, f"{prefix}train/lr": record.lr,
                      **{f"{prefix}eval/{key}": value for key, value in metrics.items()}}
            if grad_norm is not None:
                logged[f"{prefix}train/grad_norm"] = float(grad_norm)
            tracker.log_metrics(logged, step=step)
            bar.set_postfix(loss=f"{train_loss:.4f}", dev=f"{objective:.4f}")
            if objective > best.best_objective:
                best.best_step, best.best_objective, best.best_metrics = step, objective, metrics
                best_state = snapshot(module)
                if best_path is not None and options.checkpoint == "disk":
                    torch.save(best_state, best_path)
                    best_state = None
    bar.close()
    if best_path is not None and options.checkpoint == "disk":
        best_state = torch.load(best_path)
        best_path.unlink()
    assert best_state is not None
    restore(module, best_state)
    module.eval()
    best.steps = options.steps
    best.train_seconds = time.perf_counter() - start
    best.steps_per_second = options.steps / train_time if train_time > 0 else 0.0
    best.peak_memory_mb = peak_memory_mb(device)
    return best


def _schedule_fn(warmup: int, total: int) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        return linear_schedule(step, warmup=warmup, total=total)

    return schedule


class _NoTracker:
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


# ----------------------------------------------------------------------------------- saved weights

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "finetune.json"


def save_weights(model: nn.Module, directory: Path, meta: dict[str, Any]) -> Path:
    """Write the trainable parameters (safetensors) and ``meta`` (JSON) to ``directory``.

    With LoRA these are the adapter and head weights; with full fine-tuning, every parameter.
    `load_weights` puts them back into a freshly built model of the same kind.
    """
    import json

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {name: value.contiguous() for name, value in snapshot(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / META_FILE).write_text(json.dumps({**meta, "parameters": len(state)}, indent=2, default=str))
    return directory


def load_weights(model: nn.Module, directory: Path) -> dict[str, Any]:
    """Load weights saved by `save_weights` into ``model``; returns the saved metadata."""
    import json

    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / WEIGHTS_FILE).is_file():
        raise BenchError(f"'{path}' holds no fine-tuned weights ({WEIGHTS_FILE}); pass a --save-model artifact")
    restore(model, load_file(str(path / WEIGHTS_FILE)))
    meta_path = path / META_FILE
    return json.loads(meta_path.read_text()) if meta_path.is_file() else {}
