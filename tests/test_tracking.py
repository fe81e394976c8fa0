"""MLflow tracking: params, metrics, artifacts, and FAILED status on a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.tracking import NullTracker, Tracker, tracked


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_run_logs_params_metrics_tags_and_artifacts(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    tracker = Tracker.start(tracking_uri=uri, experiment="exp", run_name="r", tags={"task": "mr"})
    with tracked(tracker):
        tracker.log_params({"k": 16, "lr": 1e-5})
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.log_metrics({"loss": 0.25}, step=2)
        tracker.log_json({"dev": [0, 1]}, "predictions.json")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"k": "16", "lr": "1e-05"}
    assert run.data.tags["task"] == "mr" and "code_version" in run.data.tags
    history = [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")]
    assert sorted(history) == [(1, 0.5), (2, 0.25)]
    local = client.download_artifacts(tracker.run_id, "predictions.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"dev": [0, 1]}


def test_crash_marks_run_failed(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    tracker = Tracker.start(tracking_uri=uri, experiment="exp", run_name="boom", tags={})
    with pytest.raises(RuntimeError, match="boom"), tracked(tracker):
        raise RuntimeError("boom")
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"


def test_attach_logs_into_the_same_run(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    parent = Tracker.start(tracking_uri=uri, experiment="exp", run_name="r", tags={})
    Tracker.attach(tracking_uri=uri, run_id=parent.run_id).log_metrics({"dev_acc": 0.75})
    NullTracker().log_metrics({"dev_acc": 0.0})
    runs = MlflowClient(tracking_uri=uri).search_runs([parent.experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics == {"dev_acc": 0.75}


def test_code_version_without_git_or_installed_package(monkeypatch) -> None:
    """A copy of the checkout without .git, run from PYTHONPATH (the GPU machine): 'unknown', no crash."""
    import importlib.metadata
    import subprocess

    from benchmark import tracking

    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, args[0])

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    tracking.code_version.cache_clear()
    try:
        assert tracking.code_version() == "unknown"
    finally:
        tracking.code_version.cache_clear()
