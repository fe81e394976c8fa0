"""The linear probe: logistic regression on frozen features, and a [CLS] head initialised from it.

The ``linear-probe`` baseline fits it; fine-tuning (``--opt init_head=linear-probe``, the
reference's ``--from_linearhead``) and the kernel methods on ``--template none`` start their
[CLS] head from its solution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmark.models import ClsHeadLogitModel, LogitModel
from benchmark.pipeline import compute_features
from registry import BenchError

if TYPE_CHECKING:
    from benchmark.method import RunContext
    from benchmark.pipeline import Prepared


def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0, max_iter: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on ``features``; returns ``(weight [C, H], bias [C])``.

    For two classes scikit-learn fits a single row (the log-odds of class 1); it is returned
    as two rows ``(-w/2, w/2)`` so that the weights always give one logit per class.
    """
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    classifier.fit(features, labels)
    weight, bias = classifier.coef_, classifier.intercept_
    if weight.shape[0] == 1:
        weight = np.concatenate([-weight / 2, weight / 2])
        bias = np.concatenate([-bias / 2, bias / 2])
    return weight, bias


def init_head_from_probe(model: LogitModel, prepared: Prepared, ctx: RunContext, c: float) -> None:
    """Set the [CLS] head to the linear probe's solution on the (frozen) train features."""
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
