"""Run lifecycle: SIGTERM stops cleanly, a failing store cannot leave a run RUNNING unnoticed, `bench doctor`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark.lifecycle import HOST_TAG, PID_TAG, START_TAG, owner_state, owner_tags, pid_alive
from benchmark.tracking import Tracker, open_client, tracked
from registry import BenchError
from runners.deepspeed import group_members
from tests.test_cli_e2e import invoke, write_mr_fixture

REPO = Path(__file__).resolve().parents[1]


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _runs(uri: str, experiment: str = "kernel-bench") -> list:
    client, _ = open_client(uri)  # under the store lock: the process under test may be creating the store
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _wait_for(predicate, process: subprocess.Popen[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            pytest.fail(f"the process ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _training_args(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    data = write_mr_fixture(tmp_path / "data")
    return ["run", "--task", "mr", "--method", "ft-adam", "--backbone", str(model), "--data-dir", str(data),
            "--k", "4", "--test-cap", "8", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--cache-dir", str(tmp_path / "cache"), "--opt", "steps=100000", "--opt", "eval_every=50000",
            "--opt", "batch_size=4", *extra]


# ------------------------------------------------------------------------------------------ SIGTERM


def test_sigterm_to_bench_run_marks_the_run_killed_and_exits_143(tmp_path, tiny_bert_dir) -> None:
    args = _training_args(tmp_path, tiny_bert_dir)
    uri = args[args.index("--tracking-uri") + 1]
    process = _spawn("from benchmark.cli import main; main()", *args)
    try:
        _wait_for(lambda: (tmp_path / "mlflow.db").is_file() and any(r.info.status == "RUNNING" for r in _runs(uri)),
                  process, 120, "the run started")
        time.sleep(1.0)  # well into training
        process.send_signal(signal.SIGTERM)  # what `timeout`, `kill`, SLURM and `docker stop` send
        _, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["terminated (SIGTERM): the run in progress is marked KILLED"], err
    assert [r.info.status for r in _runs(uri)] == ["KILLED"]
    assert group_members(process.pid) == []


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                if fields[0] != "Z":
                    children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


SWALLOWED = textwrap.dedent("""
    import os, signal, time, weakref
    from benchmark.lifecycle import Terminated, sigterm_as_interrupt

    class Thing:
        pass

    def callback(ref):  # Python ignores what a weakref callback raises ("Exception ignored in ...")
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10000):
            pass
        print("callback done", flush=True)

    with sigterm_as_interrupt():
        try:
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing
            time.sleep(10)
            print("not interrupted")
        except Terminated:
            print("terminated")
""")


def test_a_sigterm_that_python_swallowed_is_raised_again_quietly() -> None:
    process = _spawn(SWALLOWED)
    out, err = process.communicate(timeout=60)
    assert out.split() == ["terminated"] and err == "", (out, err)  # the callback was cut short, no noise


@pytest.mark.slow
def test_sigterm_to_a_deepspeed_parent_stops_launcher_and_workers(tmp_path, tiny_bert_dir) -> None:
    """Two CPU ranks (gloo): SIGTERM to the parent leaves no launcher or worker process and no RUNNING run."""
    args = _training_args(tmp_path, tiny_bert_dir, "--launcher", "deepspeed", "--num-gpus", "2",
                          "--opt", "eval_every=20")
    uri = args[args.index("--tracking-uri") + 1]
    log = tmp_path / "bench.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:  # a file, not a pipe nobody reads: the parent streams all worker output
        process = subprocess.Popen([sys.executable, "-c", "from benchmark.cli import main; main()", *args], env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    started: list[int] = []

    def training() -> bool:  # the launcher and both workers run (ranks log train/loss only while training)
        started[:] = descendants(process.pid)
        runs = _runs(uri)
        return len(started) >= 3 and bool(runs) and bool(MlflowClient(uri).get_metric_history(runs[0].info.run_id,
                                                                                               "train/loss"))

    try:
        _wait_for(training, process, 400, "the DeepSpeed workers trained")
        assert {r.info.status for r in _runs(uri)} == {"RUNNING"}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    finally:
        for pid in [process.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    assert process.returncode == 143, output[-3000:]
    assert "terminated (SIGTERM)" in output
    assert [r.info.status for r in _runs(uri)] == ["KILLED"]
    assert [pid for pid in started if pid_alive(pid)] == []  # launcher and workers gone, none orphaned


# ------------------------------------------------------------------------------------------ failing stores


def _disk_full(*args, **kwargs):
    raise MlflowException("(sqlite3.OperationalError) database or disk is full")


def test_a_failing_error_tag_write_still_closes_the_run_failed(tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start(tracking_uri=uri, experiment="exp", run_name="r", tags={})
    monkeypatch.setattr(tracker.client, "set_tag", _disk_full)
    with pytest.raises(RuntimeError, match="training diverged"), tracked(tracker):
        raise RuntimeError("training diverged")
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.status == "FAILED"


def test_a_store_that_fails_entirely_says_to_run_doctor_and_keeps_the_real_error(tmp_path, monkeypatch,
                                                                                 capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start(tracking_uri=uri, experiment="exp", run_name="r", tags={})
    monkeypatch.setattr(tracker.client, "set_tag", _disk_full)
    monkeypatch.setattr(tracker.client, "set_terminated", _disk_full)
    with pytest.raises(RuntimeError, match="training diverged"), tracked(tracker):
        raise RuntimeError("training diverged")
    err = capsys.readouterr().err
    assert f"could not mark run {tracker.run_id} FAILED (" in err and "bench doctor" in err
    # After a successful body the failure to close is an error of its own.
    second = Tracker.start(tracking_uri=uri, experiment="exp", run_name="r2", tags={})
    monkeypatch.setattr(second.client, "set_terminated", _disk_full)
    with pytest.raises(BenchError, match=r"failed while closing run .*bench doctor"), tracked(second):
        pass
    assert MlflowClient(tracking_uri=uri).get_run(second.run_id).info.status == "RUNNING"


# ------------------------------------------------------------------------------------------ doctor

ORPHAN = textwrap.dedent("""
    import os, sys
    from benchmark.tracking import Tracker
    tracker = Tracker.start(tracking_uri=sys.argv[1], experiment="kernel-bench", run_name="orphan", tags={})
    print(tracker.run_id, flush=True)
    os._exit(0)  # gone without closing its run, as after kill -9 or a store that failed at the end
""")


def _orphan(uri: str) -> str:
    process = _spawn(ORPHAN, uri)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.split()[-1]


def test_owner_state_tells_alive_dead_reused_and_foreign_owners() -> None:
    mine = owner_tags()
    assert mine[PID_TAG] == str(os.getpid()) and owner_state(mine) == "alive"
    assert owner_state({**mine, START_TAG: "1"}) == "dead"  # same pid, another process (pid reused)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert owner_state({**mine, PID_TAG: str(gone.pid), START_TAG: ""}) == "dead"
    assert owner_state({**mine, HOST_TAG: "another-host/0"}) == "elsewhere"
    assert owner_state({}) == "unknown"


def test_doctor_marks_runs_of_dead_processes_failed_and_leaves_the_others(tmp_path, monkeypatch, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = _orphan(uri)
    live = Tracker.start(tracking_uri=uri, experiment="other", run_name="live", tags={}).run_id
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("kernel-bench").experiment_id
    foreign = client.create_run(experiment_id, tags={HOST_TAG: "another-host/0", PID_TAG: "1"}).info.run_id
    untagged = client.create_run(experiment_id).info.run_id

    def statuses() -> dict[str, str]:
        return {name: client.get_run(run_id).info.status
                for name, run_id in (("dead", dead), ("live", live), ("foreign", foreign), ("untagged", untagged))}

    code, out, err = invoke(["doctor", "--tracking-uri", uri, "--dry-run"], monkeypatch, capsys)
    assert code == 0, err
    assert "dry run: 1 of 4 would be marked FAILED" in out
    assert set(statuses().values()) == {"RUNNING"}

    code, out, err = invoke(["doctor", "--tracking-uri", uri], monkeypatch, capsys)
    assert code == 0, err
    assert "1 of 4 RUNNING run(s) marked FAILED" in out
    assert statuses() == {"dead": "FAILED", "live": "RUNNING", "foreign": "RUNNING", "untagged": "RUNNING"}
    assert "its process (pid" in client.get_run(dead).data.tags["stale_reason"]

    code, out, err = invoke(["doctor", "--tracking-uri", uri, "--older-than", "0"], monkeypatch, capsys)
    assert code == 0, err
    assert statuses() == {"dead": "FAILED", "live": "RUNNING", "foreign": "FAILED", "untagged": "FAILED"}

    code, out, err = invoke(["doctor", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], monkeypatch, capsys)
    assert code == 2 and "no MLflow store at" in err and not (tmp_path / "none.db").exists()


def test_the_next_run_closes_runs_left_by_dead_processes(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = _orphan(uri)
    tracker = Tracker.start(tracking_uri=uri, experiment="kernel-bench", run_name="next", tags={})
    with tracked(tracker):
        pass
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(dead).info.status == "FAILED"
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    err = capsys.readouterr().err
    assert f"marked 1 run(s) FAILED that were left RUNNING by processes that are gone ({dead})" in err


def test_a_run_its_owner_finished_just_before_exiting_is_not_closed_again(tmp_path) -> None:
    """Listing saw it RUNNING, its owner then finished it and exited: the stale check must not overwrite FINISHED."""
    from benchmark.lifecycle import close_dead_runs, close_stale

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = _orphan(uri)
    client = MlflowClient(tracking_uri=uri)
    client.set_terminated(dead, status="FINISHED")
    assert close_stale(client, dead, "its process is gone") is False
    assert client.get_run(dead).info.status == "FINISHED"
    assert close_dead_runs(client, client.get_run(dead).info.experiment_id) == []


def test_the_sweep_closes_stale_cell_runs_but_not_one_whose_owner_is_alive(tmp_path, tiny_bert_dir) -> None:
    from benchmark.cli.sweep import spec_from_cli
    from benchmark.sweeps import Sweep, expand_cells, open_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = write_mr_fixture(tmp_path / "data")
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "zero-shot", "k": "4", "seeds": [13, 21],
                                "backbones": str(tiny_bert_dir), "data_dir": str(data), "tracking_uri": uri,
                                "cache_dir": str(tmp_path / "cache"), "test_cap": 8}, [], [])
    cells = expand_cells(spec, tracking_uri=uri)
    store = open_store(uri, "kernel-bench")
    assert store is not None
    # Seed 13: a RUNNING run of a live process (this one, e.g. a plain `bench run` of the same config).
    live = Tracker.start(tracking_uri=uri, experiment="kernel-bench", run_name="live",
                         tags={"config_hash": cells[0].hash}, parent_run_id="none").run_id
    # Seed 21: a RUNNING run whose process is gone (a reused pid: same pid, another start time).
    dead_tags = {**owner_tags(), START_TAG: "1", "config_hash": cells[1].hash}
    dead = store.client.create_run(store.experiment_id, tags=dead_tags).info.run_id
    report = Sweep(cells, store).run()
    assert report.ok
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(dead).data.tags["stale_reason"] == "stale: its process died (lock free)"
