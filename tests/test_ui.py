"""MLflow UI: classic-ML experiments, unique descriptive run names, the runs page (headless Chromium) shows the
runs and their test_acc, and `bench ui` stops its server on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.config import RunConfig
from benchmark.run import resolve_run, run_name, start_tracker

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_experiments_are_classic_ml_and_run_names_unique(tmp_path, tiny_bert_dir) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = RunConfig(task="mr", method="ft-adam", k=16, seed=13, tracking_uri=uri, experiment="exp",
                     backbone=str(tiny_bert_dir))
    configs = [
        base,
        base.model_copy(update={"options": {"lr": 1e-4}}),
        base.model_copy(update={"options": {"train_grid": {"lr": [1e-5, 1e-4]}}}),
        base.model_copy(update={"template": "none"}),
        base.model_copy(update={"options": {"diagnostics": True}}),  # a measurement: the same cell, same name
    ]
    trackers = [start_tracker(c) for c in configs]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("exp").tags["mlflow.experimentKind"] == "custom_model_development"
    names = [client.get_run(t.run_id).info.run_name for t in trackers]
    hashes = [resolve_run(c).config_hash()[:6] for c in configs]
    assert names[0] == f"mr-ft-adam-k16-s13-{hashes[0]}"
    assert names[1] == f"mr-ft-adam-k16-s13-lr=0.0001-{hashes[1]}"
    assert names[2] == f"mr-ft-adam-k16-s13-lr=1e-05,0.0001-{hashes[2]}"
    assert names[3] == f"mr-ft-adam-k16-s13-no-prompt-{hashes[3]}"
    assert names[4] == names[0] and len(set(names[:4])) == 4


def test_long_run_names_keep_the_hash(tiny_bert_dir) -> None:
    config = RunConfig(task="mr", method="ft-adam", backbone=str(tiny_bert_dir),
                       options={"lr": 1e-4, "steps": 100, "warmup_ratio": 0.1, "weight_decay": 0.01, "batch_size": 8,
                                "eval_every": 10})
    run = resolve_run(config)
    name = run_name(run)
    assert len(name) <= 97 and name.endswith(run.config_hash()[:6]) and name.startswith("mr-ft-adam-k16-s13-")


def _start_ui(store: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    bench = subprocess.Popen(
        [sys.executable, "-c", "from benchmark.cli import main; main()", "ui", "--tracking-uri",
         f"sqlite:///{store / 'mlflow.db'}", "--port", str(port)],
        cwd=store, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    if not _wait_for(lambda: _port_open(port), 120):
        bench.kill()
        raise AssertionError(f"the MLflow UI never listened: {bench.communicate()[1][-2000:]}")
    return bench, port


def _stop_and_check(bench: subprocess.Popen, port: int, sig: int) -> tuple[str, str]:
    try:
        bench.send_signal(sig)
        bench.wait(timeout=30)
        assert _wait_for(lambda: not _port_open(port), 20), "the MLflow server still holds the port"
        out, err = bench.communicate()
        assert bench.returncode == 130 and "stopped the MLflow UI" in err
        return out, err
    finally:
        if bench.poll() is None:
            bench.kill()


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory, tiny_bert_dir) -> Path:
    """A store with three finished runs of two methods, made through the suite's own tracker."""
    store = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    for method, seed, acc in (("zero-shot", 13, 0.6125), ("zero-shot", 21, 0.5875), ("linear-probe", 13, 0.7375)):
        tracker = start_tracker(RunConfig(task="mr", method=method, seed=seed, tracking_uri=uri,
                                          backbone=str(tiny_bert_dir)))
        tracker.log_metrics({"dev_acc": 0.5, "test_acc": acc, "wall_seconds": 2.5})
        tracker.finish()
    return store


def test_runs_page_shows_runs_and_test_acc_in_chromium(ui_store) -> None:
    """`bench ui` prints a runs-table link; headless Chromium finds every run's name and test_acc there."""
    from tests.test_leaderboard import _screenshot_module

    chromium = _screenshot_module().find_chromium()
    bench, port = _start_ui(ui_store)
    if chromium is None:  # the stop on SIGTERM is still checked
        _stop_and_check(bench, port, signal.SIGTERM)
        pytest.skip("no Chromium installed (apt-get install -y chromium): MLflow runs page not checked")
    try:
        link = None
        deadline = time.monotonic() + 30
        while link is None and time.monotonic() < deadline:
            line = bench.stdout.readline()
            if "viewStateShareKey=headline" in line:
                link = line.split(": ", 1)[1].strip()
        assert link and link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        client = MlflowClient(tracking_uri=f"sqlite:///{ui_store / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
        with tempfile.TemporaryDirectory() as profile:
            base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1600,700"]
            dom = subprocess.run([*base, "--dump-dom", link], capture_output=True, text=True, timeout=120).stdout
            png = ui_store / "runs.png"
            subprocess.run([*base, f"--screenshot={png}", link], capture_output=True, timeout=120, check=False)
        assert "Training runs" in dom and "test_acc" in dom and "dev_acc" in dom
        for run in runs:
            # The table truncates long names with an ellipsis but keeps the full name in the DOM.
            assert run.info.run_name in dom
            assert f">{run.data.metrics['test_acc']:g}<" in dom
        assert png.stat().st_size > 20_000
    finally:
        _stop_and_check(bench, port, signal.SIGTERM)


@pytest.mark.slow  # a second real MLflow server (~30 s); SIGTERM is checked by the runs-page test
def test_bench_ui_stops_its_server_on_ctrl_c(ui_store) -> None:
    bench, port = _start_ui(ui_store)
    out, _err = _stop_and_check(bench, port, signal.SIGINT)
    assert f"http://127.0.0.1:{port}" in out
