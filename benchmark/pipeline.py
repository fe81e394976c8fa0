"""Shared steps of every method: build the logit model and encoder, encode the splits, evaluate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.backbones import load_masked_lm
from benchmark.config import NO_TEMPLATE
from benchmark.method import RunContext
from benchmark.metrics import predict_labels, split_metrics
from benchmark.models import LogitModel, build_logit_model
from benchmark.prompts import EncodedSplit, PromptEncoder

SPLITS = ("train", "dev", "test")


@dataclass
class Prepared:
    """A logit model with its tokenizer, prompt encoder and encoded train/dev/test splits."""

    model: LogitModel
    tokenizer: Any
    encoder: PromptEncoder
    encoded: dict[str, EncodedSplit]

    @property
    def num_outputs(self) -> int:
        """C, logits per example."""
        return self.model.num_outputs


def use_binary(ctx: RunContext) -> bool:
    """Whether this run uses the single logit-difference output (``--binary``, else the method's default)."""
    return ctx.run.binary


def prepare(
    ctx: RunContext,
    *,
    binary: bool = False,
    adapt_mlm: Callable[[nn.Module], nn.Module] | None = None,
) -> Prepared:
    """Load the backbone, build the prompt-based (or [CLS]-head) logit model and encode the splits.

    ``adapt_mlm`` transforms the masked LM before the logit model is built (e.g. adds LoRA).
    """
    run, task = ctx.run, ctx.task
    mlm, tokenizer = load_masked_lm(run.backbone)
    # The run's resolved template and words (what its identity hashed); for_task adds the task's length limits
    # and sentence count. Standard inputs keep no words: the user's (already checked) are passed as given.
    if run.prompt_based:
        encoder = PromptEncoder.for_task(tokenizer, task, template=run.template, label_words=run.label_words)
    else:
        encoder = PromptEncoder.for_task(tokenizer, task, template=NO_TEMPLATE, label_words=run.config.label_words)
    if adapt_mlm is not None:
        mlm = adapt_mlm(mlm)
    model = build_logit_model(
        mlm,
        prompt_based=encoder.prompt_based,
        label_word_ids=encoder.label_word_ids,
        num_labels=task.num_labels,
        binary=binary,
        seed=run.config.seed,
    ).to(ctx.device)
    encoded = {name: encoder.encode_all(getattr(ctx.splits, name)) for name in SPLITS}
    return Prepared(model=model, tokenizer=tokenizer, encoder=encoder, encoded=encoded)


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch of model inputs to ``device``."""
    return {key: value.to(device) for key, value in inputs.items()}


@torch.no_grad()
def compute_logits(
    model: nn.Module, split: EncodedSplit, *, batch_size: int, device: torch.device, desc: str = "eval"
) -> torch.Tensor:
    """Logits ``[N, C]`` of ``model`` on ``split`` (in eval mode, in split order), on the CPU."""
    was_training = model.training
    model.eval()
    outputs = []
    batches = split.batches(batch_size)
    for inputs, _ in tqdm(batches, desc=desc, total=-(-len(split) // batch_size), leave=False, disable=None):
        outputs.append(model(**to_device(inputs, device)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


@torch.no_grad()
def compute_features(
    model: LogitModel, split: EncodedSplit, *, batch_size: int, device: torch.device
) -> torch.Tensor:
    """The logit model's features (mask or [CLS] hidden state) ``[N, H]`` on ``split``."""
    model.eval()
    feats = [model.features(**to_device(inputs, device)).float().cpu() for inputs, _ in split.batches(batch_size)]
    return torch.cat(feats)


def evaluate_splits(
    model: nn.Module, prepared: Prepared, ctx: RunContext, splits: tuple[str, ...] = ("dev", "test")
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Metrics (``dev_acc``, ``test_acc``, ``test_f1``...) and predictions of ``model`` on ``splits``."""
    metrics: dict[str, float] = {}
    predictions: dict[str, list[int]] = {}
    for name in splits:
        split = prepared.encoded[name]
        logits = compute_logits(model, split, batch_size=ctx.config.batch_size, device=ctx.device, desc=name)
        predicted = predict_labels(logits)
        metrics.update(split_metrics(name, predicted, split.labels, report_f1=ctx.task.report_f1))
        predictions[name] = predicted.tolist()
    return metrics, predictions
