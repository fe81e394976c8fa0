"""Classification metrics and the mapping from logits to predicted labels."""

from __future__ import annotations

import torch


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per row of ``[N, C]`` logits; with C = 1 (binary logit) the sign decides."""
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=-1)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to labels."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split")
    return (predictions.reshape(-1) == labels.reshape(-1)).double().mean().item()


def binary_f1(predictions: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> float:
    """F1 of the ``positive`` class (GLUE's F1 for MRPC and QQP); 0 when it is never predicted or present."""
    predicted = predictions.reshape(-1) == positive
    actual = labels.reshape(-1) == positive
    true_pos = (predicted & actual).sum().item()
    denominator = predicted.sum().item() + actual.sum().item()
    return 2.0 * true_pos / denominator if denominator else 0.0


def split_metrics(prefix: str, predictions: torch.Tensor, labels: torch.Tensor, *, report_f1: bool) -> dict[str, float]:
    """``{prefix}_acc`` (and ``{prefix}_f1``) for one split."""
    metrics = {f"{prefix}_acc": accuracy(predictions, labels)}
    if report_f1:
        metrics[f"{prefix}_f1"] = binary_f1(predictions, labels)
    return metrics
