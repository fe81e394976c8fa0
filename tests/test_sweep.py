"""`bench sweep`: expansion, resume after SIGKILL, two concurrent sweeps, locks, failures, bad input."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark.cli.sweep import spec_from_cli
from benchmark.resolve import resolve_run
from benchmark.sweeps import CellLock, SweepSpec, expand_cells, load_spec_file, open_store
from tests.test_cli_e2e import invoke

REPO = Path(__file__).resolve().parents[1]
POSITIVE = "great fun loved good best".split()
NEGATIVE = "terrible boring hated bad worst".split()
TASKS = ("mr", "cr")
METHODS = "pause-probe,zero-shot,linear-probe"
SEEDS = (13, 21, 42)


def pause_probe_class() -> type:
    """``pause-probe``: the linear probe after ``pause`` seconds (so that a test can kill it mid-run)."""
    from benchmark.methods.baselines import LinearProbe, LinearProbeOptions

    class PauseOptions(LinearProbeOptions):
        pause: float = 0.0

    class PauseProbe(LinearProbe):
        name = "pause-probe"
        summary = "test only: the linear probe after a pause"
        Options = PauseOptions

        def run(self, ctx):
            time.sleep(self.options.pause)
            return super().run(ctx)

    return PauseProbe


def register_test_methods() -> None:
    """Register ``pause-probe`` for good (the sweep subprocesses call this)."""
    from registry import METHODS as REGISTRY
    from registry import load_builtins

    load_builtins()
    if "pause-probe" not in REGISTRY:
        REGISTRY.add("pause-probe", pause_probe_class())


@pytest.fixture()
def pause_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pause-probe`` registered for one test only."""
    from registry import METHODS as REGISTRY
    from registry import load_builtins

    load_builtins()
    if "pause-probe" not in REGISTRY:
        monkeypatch.setitem(REGISTRY._objects, "pause-probe", pause_probe_class())


def write_fixture(root: Path, task: str, n_train: int = 24, n_test: int = 12) -> None:
    """``<root>/original/<task>/{train,test}.csv`` in LM-BFF's headerless label,sentence layout."""
    rng = random.Random(task)
    folder = root / "original" / task
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            for i in range(n):
                label = i % 2
                writer.writerow([label, f"the movie was {rng.choice(POSITIVE if label else NEGATIVE)} , said the man"])


def initialized_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized, empty MLflow SQLite store file, made once per session (its migrations take seconds)."""
    path = tmp_path_factory.getbasetemp() / "empty-mlflow-store" / "empty.db"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments()
        partial.rename(path)
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See `initialized_store`."""
    return initialized_store(tmp_path_factory)


@pytest.fixture()
def ws(tmp_path: Path, tiny_bert_dir: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A data dir with two tasks, the tiny model, a tracking store (a copy of `empty_store`) and a cache.

    The working directory is ``tmp_path``: MLflow puts a SQLite store's artifacts under ``./mlruns``.
    """
    for task in TASKS:
        write_fixture(tmp_path / "data", task)
    for name in ("mlflow.db", "clean.db"):
        shutil.copy(empty_store, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return {"data": str(tmp_path / "data"), "model": str(tiny_bert_dir), "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "cache": str(tmp_path / "cache"), "tmp": str(tmp_path)}


def sweep_args(ws: dict[str, str], *, uri: str | None = None, methods: str = METHODS, pause: float = 0.3,
               seeds: tuple[int, ...] = SEEDS, tasks: tuple[str, ...] = TASKS) -> list[str]:
    args = ["sweep", "--tasks", ",".join(tasks), "--methods", methods, "--k", "4",
            "--seeds", ",".join(map(str, seeds)), "--backbone", ws["model"], "--data-dir", ws["data"],
            "--tracking-uri", uri or ws["uri"], "--cache-dir", ws["cache"], "--test-cap", "12"]
    if "pause-probe" in methods:
        args += ["--opt", f"pause-probe:pause={pause}"]
    return args


def spawn(args: list[str]) -> subprocess.Popen[str]:
    """`bench ARGS` in a new process (with the test-only method registered)."""
    code = "import tests.test_sweep as t; t.register_test_methods(); from benchmark.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def cell_runs(uri: str) -> list:
    """All runs of the experiment that carry a cell hash (parents excluded)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kernel-bench")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("config_hash")]


def store_statuses(uri: str) -> list[str]:
    """Statuses of the cell runs, read with sqlite3 (an MLflow client could race the sweep creating the store)."""
    path = uri.removeprefix("sqlite:///")
    query = "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = 'config_hash'"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute(query)]
    except sqlite3.OperationalError:
        return []


def n_cells() -> int:
    return len(TASKS) * len(METHODS.split(",")) * len(SEEDS)


# --------------------------------------------------------------------------------------- expansion


def test_grid_expands_into_cells_with_one_point_each(ws) -> None:
    spec = SweepSpec.model_validate({
        "tasks": "MR,cr", "methods": {"linear-probe": {"grid": {"c_grid": [[0.1], [1.0]], "max_iter": [50, 100]}},
                                      "zero-shot": None},
        "k": 4, "seeds": "13,all", "backbone": ws["model"], "data_dir": ws["data"],
    })
    cells = expand_cells(spec)
    assert len(cells) == 2 * (4 + 1) * 5
    assert [c.config.seed for c in cells[:5]] == [13, 21, 42, 87, 100]
    assert {c.config.task for c in cells} == {"mr", "cr"}
    probe = [c.config.options for c in cells if c.config.method == "linear-probe" and c.config.seed == 13]
    assert len(probe) == 8 and all("grid" not in o and set(o) == {"c_grid", "max_iter"} for o in probe)
    assert len({c.hash for c in cells}) == len(cells)
    assert cells[0].hash == resolve_run(cells[0].config).config_hash()


def test_sweep_file_yaml_toml_and_cli_overrides(ws, tmp_path) -> None:
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text(f"tasks: [mr]\nmethods:\n  linear-probe:\n    grid: {{max_iter: [50, 100]}}\n"
                         f"k: [4]\nseeds: [13, 21]\nbackbone: {ws['model']}\ndata_dir: {ws['data']}\n")
    toml_file = tmp_path / "s.toml"
    toml_file.write_text(f'tasks = ["mr"]\nk = [4]\nseeds = [13, 21]\nbackbone = "{ws["model"]}"\n'
                         f'data_dir = "{ws["data"]}"\n[methods.linear-probe.grid]\nmax_iter = [50, 100]\n')
    assert load_spec_file(yaml_file) and SweepSpec.model_validate(load_spec_file(yaml_file)) == \
        SweepSpec.model_validate(load_spec_file(toml_file))
    spec = spec_from_cli(yaml_file, {"seeds": [42], "tasks": None}, ["c_grid=[1.0]"], ["linear-probe:max_iter=7,8,9"])
    cells = expand_cells(spec)
    assert [c.config.options for c in cells] == [{"c_grid": [1.0], "max_iter": m} for m in (7, 8, 9)]
    assert {c.config.seed for c in cells} == {42}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tasks: [mrr]\nmethods: [zero-shot]\n", "unknown task 'mrr'. Did you mean: mr"),
        ("tasks: [mr]\nmethods: [zero-shoot]\n", "unknown method 'zero-shoot'"),
        ("tasks: [mr]\nmethods:\n  linear-probe:\n    grid: {max_iter: []}\n", "grid 'max_iter' of method"),
        ("tasks: [mr]\nmethods: [zero-shot]\nk: []\n", "invalid k"),
        ("tasks: [mr]\nmethods: [zero-shot]\nseedz: [1]\n", "seedz"),
        ("tasks: [mr]\nmethods: {linear-probe: {options: {nope: 1}}}\n", "bad option 'nope'"),
        ("tasks: [mr\n", "does not parse"),
    ],
)
def test_bad_sweep_file_is_one_line_and_exit_2(ws, tmp_path, monkeypatch, capsys, content, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content + f"backbone: {ws['model']}\n" if not content.endswith("[mr\n") else content)
    code, _out, err = invoke(["sweep", str(path), "--tracking-uri", ws["uri"], "--dry-run"], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (Path(ws["tmp"]) / "mlflow.db.locks").exists()  # the store was not opened


def test_unreachable_tracking_uri_is_one_line_and_exit_2(ws, monkeypatch, capsys) -> None:
    start = time.perf_counter()
    code, _out, err = invoke(sweep_args(ws, uri="http://127.0.0.1:9", methods="zero-shot"), monkeypatch, capsys)
    assert code == 2 and "cannot reach the MLflow tracking server at http://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1 and time.perf_counter() - start < 30


# --------------------------------------------------------------------------------------- in-process runs


def test_dry_run_then_run_then_resume_skips_finished(ws, monkeypatch, capsys) -> None:
    args = sweep_args(ws, methods="zero-shot", seeds=(13, 21), tasks=("mr",))
    code, out, err = invoke([*args, "--dry-run"], monkeypatch, capsys)
    assert code == 0, err
    assert "to run: 2" in out and cell_runs(ws["uri"]) == []
    assert MlflowClient(tracking_uri=ws["uri"]).get_experiment_by_name("kernel-bench") is None  # nothing created
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0, err
    assert "done 2" in out
    code, out, err = invoke([*args, "--seeds", "13,21,42", "--dry-run"], monkeypatch, capsys)
    assert "done: 2, to run: 1" in out
    code, out, err = invoke([*args, "--seeds", "13,21,42"], monkeypatch, capsys)
    assert code == 0 and "done 1, skipped (already finished) 2" in out, out
    runs = cell_runs(ws["uri"])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(tracking_uri=ws["uri"])
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 2  # one parent per sweep (the two sweeps differ)
    for parent in parents:
        run = client.get_run(parent)
        assert run.data.tags["run_kind"] == "sweep" and run.info.status == "FINISHED"


def test_stale_running_run_is_killed_and_rerun_and_failures_are_reported(ws, monkeypatch, capsys) -> None:
    args = sweep_args(ws, methods="zero-shot", seeds=(13, 21), tasks=("mr",))
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "zero-shot", "k": "4", "seeds": [13, 21],
                                "backbones": ws["model"], "data_dir": ws["data"], "tracking_uri": ws["uri"],
                                "cache_dir": ws["cache"], "test_cap": 12}, [], [])
    cells = expand_cells(spec, tracking_uri=ws["uri"])
    store = open_store(ws["uri"], "kernel-bench")
    assert store is not None
    # A run left RUNNING by a process that died (kill -9): its lock is free.
    stale = store.client.create_run(store.experiment_id, tags={"config_hash": cells[0].hash, "task": "mr"}).info.run_id
    from benchmark.methods import baselines

    original = baselines.ZeroShot.run

    def flaky(self, ctx):
        if ctx.config.seed == 21:
            raise RuntimeError("seed 21 exploded")
        return original(self, ctx)

    monkeypatch.setattr(baselines.ZeroShot, "run", flaky)
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 1, out + err
    assert "failed 1" in out and "FAILED mr zero-shot k=4 seed=21" in out and "seed 21 exploded" in out
    client = MlflowClient(tracking_uri=ws["uri"])
    assert client.get_run(stale).info.status == "KILLED"
    statuses = sorted((r.data.tags["seed"], r.info.status) for r in cell_runs(ws["uri"]) if "seed" in r.data.tags)
    assert statuses == [("13", "FINISHED"), ("21", "FAILED")]
    parent = client.get_run(cell_runs(ws["uri"])[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    monkeypatch.setattr(baselines.ZeroShot, "run", original)
    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0 and "done 1, skipped (already finished) 1" in out
    finished = [r for r in cell_runs(ws["uri"]) if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["seed"] for r in finished) == ["13", "21"]
    assert {r.data.tags["mlflow.parentRunId"] for r in finished} == {parent.info.run_id}  # same sweep, reopened
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_fail_fast_stops_at_first_failure(ws, monkeypatch, capsys) -> None:
    from benchmark.methods import baselines

    monkeypatch.setattr(baselines.ZeroShot, "run", lambda self, ctx: (_ for _ in ()).throw(RuntimeError("boom")))
    code, out, _ = invoke([*sweep_args(ws, methods="zero-shot", seeds=(13, 21), tasks=("mr",)), "--fail-fast"],
                          monkeypatch, capsys)
    assert code == 1 and "failed 1" in out and "not run 1" in out
    assert [r.info.status for r in cell_runs(ws["uri"])] == ["FAILED"]


def test_interrupt_marks_cell_and_sweep_killed_and_exits_130(ws, monkeypatch, capsys) -> None:
    from benchmark.methods import baselines

    original = baselines.ZeroShot.run

    def interrupted(self, ctx):
        if ctx.config.seed == 21:
            raise KeyboardInterrupt  # Ctrl-C (SIGTERM is turned into the same)
        return original(self, ctx)

    monkeypatch.setattr(baselines.ZeroShot, "run", interrupted)
    args = sweep_args(ws, methods="zero-shot", seeds=(13, 21, 42), tasks=("mr",))
    code, _out, err = invoke(args, monkeypatch, capsys)
    assert code == 130 and "aborted" in err
    client = MlflowClient(tracking_uri=ws["uri"])
    runs = {r.data.tags["seed"]: r for r in cell_runs(ws["uri"])}
    assert {seed: r.info.status for seed, r in runs.items()} == {"13": "FINISHED", "21": "KILLED"}
    assert client.get_run(runs["13"].data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    monkeypatch.setattr(baselines.ZeroShot, "run", original)
    code, out, _ = invoke(args, monkeypatch, capsys)
    assert code == 0 and "done 2, skipped (already finished) 1" in out


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process that takes the `CellLock` at ``path``, says ``held``, and drops it when told (a line on
    its stdin) or when it dies."""
    code = ("import sys; from benchmark.sweeps import CellLock; lock = CellLock(sys.argv[1]); "
            "assert lock.acquire(); print('held', flush=True); sys.stdin.readline(); lock.release(); print('released')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_cell_lock_excludes_another_process_until_it_releases_or_dies(tmp_path) -> None:
    path = tmp_path / "locks" / "cell.lock"
    path.parent.mkdir()
    other = hold_lock(path)
    try:
        lock = CellLock(path)
        assert lock.acquire(blocking=False) is False and not lock.held
        assert lock.holder().startswith(f"pid {other.pid} on ")
        with lock.hold(blocking=False) as taken:
            assert taken is False

        def release_soon() -> None:
            time.sleep(0.5)
            assert other.stdin is not None
            other.stdin.write("go\n")
            other.stdin.flush()

        thread = threading.Thread(target=release_soon)
        start = time.monotonic()
        thread.start()
        assert lock.acquire(blocking=True) is True  # waits for the other process to let go
        thread.join()
        assert time.monotonic() - start >= 0.5 and lock.held
        assert lock.holder().startswith(f"pid {os.getpid()} on ")
        assert other.wait(timeout=30) == 0 and other.stdout is not None and "released" in other.stdout.read()
        lock.release()
        assert not lock.held and path.exists()  # the file stays: waiters share its inode
    finally:
        with contextlib.suppress(ProcessLookupError):
            other.kill()
        other.communicate()
    killed = hold_lock(path)  # kill -9: the kernel drops the lock with the process
    assert CellLock(path).acquire(blocking=False) is False
    killed.kill()
    killed.communicate()
    again = CellLock(path)
    assert again.acquire(blocking=False) is True
    assert CellLock(path).acquire(blocking=False) is False  # another owner in this same process is refused too
    again.release()


def test_cell_held_by_another_process_is_deferred_then_skipped(ws, monkeypatch, capsys) -> None:
    args = sweep_args(ws, methods="zero-shot", seeds=(13, 21), tasks=("mr",))
    spec = spec_from_cli(None, {"tasks": "mr", "methods": "zero-shot", "k": "4", "seeds": [13, 21],
                                "backbones": ws["model"], "data_dir": ws["data"], "cache_dir": ws["cache"],
                                "test_cap": 12}, [], [])
    cells = expand_cells(spec, tracking_uri=ws["uri"])
    store = open_store(ws["uri"], "kernel-bench")
    assert store is not None
    other = hold_lock(store.lock_dir / f"{cells[0].hash}.lock")  # another process runs the first cell
    try:
        code, out, _ = invoke([*args, "--no-wait"], monkeypatch, capsys)
        assert code == 0 and "running elsewhere 1" in out
        assert [r.data.tags["seed"] for r in cell_runs(ws["uri"])] == ["21"]

        def finish_elsewhere() -> None:  # the other process finishes the cell, then drops its lock
            time.sleep(1.0)
            run = store.client.create_run(store.experiment_id, tags={"config_hash": cells[0].hash})
            store.client.set_terminated(run.info.run_id, "FINISHED")
            assert other.stdin is not None
            other.stdin.write("go\n")
            other.stdin.flush()

        thread = threading.Thread(target=finish_elsewhere)
        thread.start()
        code, out, _ = invoke(args, monkeypatch, capsys)
        thread.join()
    finally:
        with contextlib.suppress(ProcessLookupError):
            other.kill()
        other.communicate()
    assert code == 0 and "skipped (already finished) 2" in out, out
    assert sorted(r.info.status for r in cell_runs(ws["uri"])) == ["FINISHED", "FINISHED"]


# --------------------------------------------------------------------------------------- SIGKILL + concurrency


def test_sigkill_then_two_concurrent_resumes_match_an_uninterrupted_sweep(ws, pause_probe, monkeypatch, capsys) -> None:
    """2 tasks x 3 methods x 3 seeds: kill -9 mid-sweep, resume with two processes at once."""
    from leaderboard import build, render_board

    first = spawn(sweep_args(ws))
    deadline = time.monotonic() + 120
    try:
        while True:
            if first.poll() is not None:
                pytest.fail(f"the sweep ended before it was killed: {first.communicate()[0]}")
            assert time.monotonic() < deadline, "the sweep did not start a second cell in time"
            statuses = store_statuses(ws["uri"])
            if "FINISHED" in statuses and "RUNNING" in statuses:
                break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    before = {r.info.run_id: r.info.status for r in cell_runs(ws["uri"])}
    stale = [run_id for run_id, status in before.items() if status == "RUNNING"]
    assert len(stale) == 1 and 1 <= list(before.values()).count("FINISHED") < n_cells()

    resumers = [spawn(sweep_args(ws)), spawn(sweep_args(ws))]
    outputs = [p.communicate(timeout=240)[0] for p in resumers]
    assert [p.returncode for p in resumers] == [0, 0], outputs

    runs = cell_runs(ws["uri"])
    by_hash: dict[str, list] = {}
    for run in runs:
        by_hash.setdefault(run.data.tags["config_hash"], []).append(run)
    assert len(by_hash) == n_cells()
    for cell in by_hash.values():  # exactly one finished run per cell, no duplicates
        assert [r.info.status for r in cell].count("FINISHED") == 1
    killed = [r for r in runs if r.info.status != "FINISHED"]
    assert [r.info.run_id for r in killed] == stale and killed[0].info.status == "KILLED"
    assert len(runs) == n_cells() + 1
    for run_id, status in before.items():  # finished before the kill: kept, never rerun
        if status == "FINISHED":
            assert run_id in {r.info.run_id for cell in by_hash.values() for r in cell if r.info.status == "FINISHED"}

    clean_uri = f"sqlite:///{Path(ws['tmp']) / 'clean.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a shared machine
    try:
        code, out, err = invoke(sweep_args(ws, uri=clean_uri), monkeypatch, capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err + out
    resumed, clean = build(ws["uri"]), build(clean_uri)
    columns = [c for c in clean.agg.columns if c != "run_ids"]
    assert len(clean.agg) == len(TASKS) * 3 and (clean.agg["n_seeds"] == 3).all()
    assert resumed.agg[columns].equals(clean.agg[columns])
    body = lambda board: render_board(board, "md").split("## ", 1)[1]  # noqa: E731 - without the header
    assert body(resumed) == body(clean)
