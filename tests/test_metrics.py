"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from benchmark.metrics import accuracy, binary_f1, predict_labels, split_metrics


def test_predict_labels_multi_and_binary() -> None:
    assert predict_labels(torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5]])).tolist() == [1, 0]
    assert predict_labels(torch.tensor([[0.3], [-0.2], [0.0]])).tolist() == [1, 0, 0]


def test_accuracy_and_f1_by_hand() -> None:
    predictions = torch.tensor([1, 1, 0, 0, 1])
    labels = torch.tensor([1, 0, 0, 1, 1])
    assert accuracy(predictions, labels) == pytest.approx(3 / 5)
    # tp = 2, predicted positives = 3, actual positives = 3 -> F1 = 4 / 6
    assert binary_f1(predictions, labels) == pytest.approx(2 / 3)
    assert binary_f1(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)) == 0.0
    assert split_metrics("test", predictions, labels, report_f1=True) == {
        "test_acc": pytest.approx(0.6), "test_f1": pytest.approx(2 / 3)
    }
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.tensor([]), torch.tensor([]))
