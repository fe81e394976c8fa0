"""Tracking stores: concurrent creation, artifact location, old stores, and one-line errors for bad stores."""

from __future__ import annotations

import multiprocessing
import socket
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.tracking import Tracker, get_or_create_experiment, open_client, tracked
from tests.test_cli_e2e import invoke, write_mr_fixture


def _bench_run(argv: list[str], start: multiprocessing.synchronize.Event, codes: multiprocessing.Queue) -> None:
    """A forked `bench ARGS` (the imports are done already) that waits for ``start``, then reports its exit code."""
    import torch

    torch.set_num_threads(1)
    sys.argv = ["bench", *argv]
    start.wait(30)
    from benchmark.cli import main

    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    codes.put(code)


def _concurrent_runs(n: int, tmp_path: Path, model: Path, data: Path) -> tuple[str, list[int]]:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # a new store: its schema is created by the runs
    argv = ["run", "--task", "mr", "--method", "zero-shot", "--backbone", str(model), "--data-dir", str(data),
            "--k", "4", "--test-cap", "8", "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache")]
    ctx = multiprocessing.get_context("fork")
    start, codes = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=_bench_run, args=([*argv, "--seed", str(13 + i)], start, codes))
                 for i in range(n)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(120)
    return uri, sorted(codes.get(timeout=5) for _ in processes)


@pytest.mark.parametrize("n", [2, 4])
def test_runs_started_at_once_on_a_new_sqlite_store_all_finish(n, tmp_path, tiny_bert_dir, one_thread) -> None:
    data = write_mr_fixture(tmp_path / "data")
    uri, codes = _concurrent_runs(n, tmp_path, tiny_bert_dir, data)
    assert codes == [0] * n
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    assert [e.name for e in experiments if e.name == "kernel-bench"] == ["kernel-bench"]  # created once
    runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == [str(13 + i) for i in range(n)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    # The store is usable afterwards: another run goes in.
    tracker = Tracker.start(tracking_uri=uri, experiment="kernel-bench", run_name="after", tags={})
    with tracked(tracker):
        tracker.log_metrics({"x": 1.0})
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_ten_trials_of_two_and_four_runs_at_once(tmp_path, tiny_bert_dir, one_thread) -> None:
    """The issue's check: 10 trials each of 2 and 4 runs started at once on a new store, every run FINISHED."""
    data = write_mr_fixture(tmp_path / "data")
    for n in (2, 4):
        for trial in range(10):
            uri, codes = _concurrent_runs(n, tmp_path / f"{n}-{trial}", tiny_bert_dir, data)
            assert codes == [0] * n, (n, trial)
            client = MlflowClient(tracking_uri=uri)
            runs = client.search_runs([client.get_experiment_by_name("kernel-bench").experiment_id])
            assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}, (n, trial)


def test_artifacts_go_next_to_the_sqlite_store_not_into_the_current_directory(tmp_path, monkeypatch) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    db = tmp_path / "stores" / "mlflow.db"
    tracker = Tracker.start(tracking_uri=f"sqlite:///{db}", experiment="exp", run_name="r", tags={})
    with tracked(tracker):
        tracker.log_json({"dev": [1, 0]}, "predictions.json")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("exp")
    assert experiment.artifact_location == (db.parent / "artifacts").as_uri()
    assert (db.parent / "artifacts" / tracker.run_id / "artifacts" / "predictions.json").is_file()
    assert list(cwd.iterdir()) == []  # no ./mlruns


def test_a_sweep_creates_its_experiment_with_artifacts_next_to_the_store(tmp_path, monkeypatch) -> None:
    from benchmark.sweeps import open_store

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    db = tmp_path / "stores" / "mlflow.db"
    assert open_store(f"sqlite:///{db}", "sweep-exp", create=False) is None  # a dry run creates nothing
    store = open_store(f"sqlite:///{db}", "sweep-exp")
    experiment = MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment(store.experiment_id)
    assert experiment.artifact_location == (db.parent / "artifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert open_store(f"sqlite:///{db}", "sweep-exp", create=False).experiment_id == store.experiment_id
    assert list(cwd.iterdir()) == []


def test_a_store_made_before_still_works(tmp_path, monkeypatch) -> None:
    """An experiment created by plain MLflow (artifacts at its default root) is reused as it is."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'old' / 'mlflow.db'}"
    (tmp_path / "old").mkdir()
    old = MlflowClient(tracking_uri=uri)
    old_id = old.create_experiment("exp")
    old_run = old.create_run(old_id, tags={"task": "mr"})
    old.log_metric(old_run.info.run_id, "test_acc", 0.5)
    old.set_terminated(old_run.info.run_id)
    location = old.get_experiment(old_id).artifact_location
    tracker = Tracker.start(tracking_uri=uri, experiment="exp", run_name="new", tags={"task": "mr"})
    with tracked(tracker):
        tracker.log_json({"a": 1}, "x.json")
    assert tracker.experiment_id == old_id
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(old_id).artifact_location == location
    assert client.get_run(old_run.info.run_id).data.metrics == {"test_acc": 0.5}
    assert client.list_artifacts(tracker.run_id)[0].path == "x.json"


def test_create_experiment_race_gets_the_experiment_the_other_process_made(tmp_path, monkeypatch) -> None:
    """As on a server: the name was free when looked up, taken when created (RESOURCE_ALREADY_EXISTS)."""
    client, uri = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    other = MlflowClient(tracking_uri=uri).create_experiment("exp")
    lookups = []
    real = client.get_experiment_by_name

    def first_lookup_misses(name: str):
        lookups.append(name)
        return None if len(lookups) == 1 else real(name)

    monkeypatch.setattr(client, "get_experiment_by_name", first_lookup_misses)
    assert get_or_create_experiment(client, uri, "exp") == other
    assert len(lookups) == 2


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: nothing listens there


@pytest.mark.parametrize(
    ("make_uri", "message"),
    [
        (lambda tmp: "foo://bar", "unsupported scheme 'foo'"),
        (lambda tmp: f"sqlite:///{tmp / 'garbage.db'}", "is not an SQLite database"),
        (lambda tmp: f"http://127.0.0.1:{_dead_port()}", "cannot reach the MLflow tracking server"),
    ],
    ids=["bad-scheme", "garbage-file", "dead-server"],
)
def test_bad_tracking_stores_fail_in_one_line_quickly(make_uri, message, tmp_path, tiny_bert_dir, monkeypatch,
                                                      capsys) -> None:
    (tmp_path / "garbage.db").write_bytes(bytes(range(256)) * 8)
    data = write_mr_fixture(tmp_path / "data")
    args = ["run", "--task", "mr", "--method", "zero-shot", "--backbone", str(tiny_bert_dir), "--data-dir",
            str(data), "--k", "4", "--test-cap", "8", "--tracking-uri", make_uri(tmp_path), "--cache-dir",
            str(tmp_path / "cache")]
    start = time.monotonic()
    code, out, err = invoke(args, monkeypatch, capsys)
    assert time.monotonic() - start < 20
    assert code == 2, out + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "garbage.db").read_bytes() == bytes(range(256)) * 8  # left as it was


def test_the_suite_runs_away_from_the_checkout_and_the_users_cache(tmp_path) -> None:
    """The autouse isolation of tests/conftest.py: cwd, default store and default cache under tmp_path."""
    from benchmark.config import RunConfig
    from benchmark.tracking import default_cache_dir, default_tracking_uri
    from tests.conftest import REAL_CACHE, REPO

    assert Path.cwd() == tmp_path
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert default_cache_dir() == tmp_path / "kernel-bench-cache"
    cache = RunConfig(task="mr", method="zero-shot").resolved_cache_dir()
    assert REAL_CACHE not in (cache, *cache.parents) and REPO not in cache.parents
