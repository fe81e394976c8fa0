"""Parsing of CLI values: options, grids, label words, seeds."""

from __future__ import annotations

import pytest

from benchmark.cli.parsing import parse_label_words, parse_options, parse_seeds
from benchmark.config import RunConfig
from registry import BenchError


def test_parse_options_and_grids() -> None:
    options = parse_options(["lr=1e-5", "steps=100", "loss=mse", "save-model=true"], ["lr=1e-5,2e-5", "batch_size=8"])
    assert options == {
        "lr": 1e-5, "steps": 100, "loss": "mse", "save_model": True,
        "train_grid": {"lr": [1e-5, 2e-5], "batch_size": [8]},
    }
    assert parse_options([], [], ["regularization=0,0.1", "f0-scaling=1"]) == {
        "solver_grid": {"regularization": [0, 0.1], "f0_scaling": [1]}
    }
    with pytest.raises(BenchError, match="--opt expects key=value, got 'lr'"):
        parse_options(["lr"], [])
    with pytest.raises(BenchError, match="--train-grid expects key=v1,v2"):
        parse_options([], ["lr="])
    with pytest.raises(BenchError, match="--solver-grid expects key=v1,v2"):
        parse_options([], [], ["regularization"])


def test_parse_label_words() -> None:
    assert parse_label_words("bad,good") == ("bad", "good")
    assert parse_label_words("0=bad, 1=good") == {"0": "bad", "1": "good"}
    assert parse_label_words(None) is None
    with pytest.raises(BenchError, match="not both"):
        parse_label_words("0=bad,good")
    with pytest.raises(BenchError, match="empty word"):
        parse_label_words("bad,,good")


def test_parse_seeds() -> None:
    assert parse_seeds(["13", "21,42"]) == [13, 21, 42]
    assert parse_seeds(["all"]) == [13, 21, 42, 87, 100]
    with pytest.raises(BenchError, match="--seed expects integers"):
        parse_seeds(["x"])


def test_prompt_based_follows_template() -> None:
    assert not RunConfig(task="mr", method="ft", template="none").prompt_based
    assert RunConfig(task="mr", method="ft").prompt_based
