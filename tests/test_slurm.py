"""`bench sweep --launcher slurm` on a real SLURM cluster, logging to a real MLflow server on loopback.

Needs a running cluster (``scripts/slurm_cluster.sh start``, as ``.ci/run`` does); skipped otherwise.
Marked slow (a few minutes: nine SLURM jobs each start a Python process); ``.ci/run`` runs it after
the fast suite with ``-m slow tests/test_slurm.py``.
A 2-task x 2-method x 2-seed sweep on the tiny model is submitted as one job array; one ``ft-adam``
array task is cancelled (``scancel``) while its run is RUNNING; the sweep reports that cell KILLED
with SLURM's state; the same sweep again resubmits exactly that cell, and every cell ends with one
FINISHED run, nothing RUNNING, all nested under the sweep's one parent run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_cli_e2e import invoke
from tests.test_sweep import write_fixture

REPO = Path(__file__).resolve().parents[1]


def cluster_state() -> str:
    """Why the SLURM tests cannot run here, or '' when a node is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (scripts/slurm_cluster.sh start installs and starts a one-node cluster)"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo does not answer: no SLURM cluster running (scripts/slurm_cluster.sh start)"
    if done.returncode != 0 or not any(s.strip("*~#") in ("idle", "mixed", "allocated", "completing")
                                       for s in done.stdout.split()):
        return "no SLURM cluster running here (scripts/slurm_cluster.sh start)"
    return ""


WHY = cluster_state()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(WHY), reason=WHY)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`bench server` on loopback (SQLite store, served artifacts) for the test; stopped after it."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "server").mkdir()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", "from benchmark.cli import main; main()", "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not come up in 180 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _cell_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("kernel-bench")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("config_hash")]


def test_sweep_on_slurm_resubmits_exactly_the_cancelled_cell(tmp_path, tiny_bert_dir, mlflow_server, monkeypatch,
                                                            capsys):
    for task in ("mr", "cr"):
        write_fixture(tmp_path / "data", task)
    args = ["sweep", "--tasks", "mr,cr", "--methods", "zero-shot,ft-adam", "--k", "4", "--seeds", "13,21",
            "--backbone", str(tiny_bert_dir), "--data-dir", str(tmp_path / "data"), "--test-cap", "12",
            "--tracking-uri", mlflow_server, "--cache-dir", str(tmp_path / "cache"),
            "--opt", "ft-adam:steps=400", "--opt", "ft-adam:eval_every=200", "--opt", "ft-adam:batch_size=4",
            "--opt", "ft-adam:diagnostics=false",
            "--launcher", "slurm", "--launch-opt", "timeout_min=15", "--launch-opt", "poll_s=1",
            "--max-parallel", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", "from benchmark.cli import main; main()", *args], env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(tracking_uri=mlflow_server)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None and first.poll() is None and time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("kernel-bench")
            if experiment is not None:
                # Cancelled before its first evaluation (step 200 of 400): the job's SIGTERM stops it far
                # from its end. (One cancelled after its run FINISHED would rightly count as done.)
                running = [r for r in client.search_runs([experiment.experiment_id],
                                                         filter_string="attributes.status = 'RUNNING'")
                           if r.data.tags.get("method") == "ft-adam" and r.data.tags.get("slurm_job_id")
                           and "train/loss" not in r.data.metrics]
                if running:
                    victim = running[0]
                    subprocess.run(["scancel", victim.data.tags["slurm_job_id"]], check=True, timeout=30)
            time.sleep(0.3)
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert victim is not None, f"no ft-adam run was seen RUNNING to cancel:\n{out}"
    task_id, cell_hash = victim.data.tags["slurm_job_id"], victim.data.tags["config_hash"]
    assert first.returncode == 1, out
    assert "8 cells — done 7, skipped (already finished) 0, failed 1" in out, out
    assert f"SLURM job {task_id} ended CANCELLED" in out, out
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["slurm_state"] == "CANCELLED"

    code, out, err = invoke(args, monkeypatch, capsys)
    assert code == 0, out + err
    assert "submitted SLURM job array" in out and ": 1 cell(s)" in out, out
    assert "8 cells — done 1, skipped (already finished) 7, failed 0" in out, out

    code, out, err = invoke([*args, "--status"], monkeypatch, capsys)
    assert code == 0 and "COMPLETED" in out and "PENDING" not in out, out + err

    runs = _cell_runs(client)
    by_hash: dict[str, list] = {}
    for run in runs:
        by_hash.setdefault(run.data.tags["config_hash"], []).append(run)
    assert len(by_hash) == 8
    assert all(sum(r.info.status == "FINISHED" for r in rs) == 1 for rs in by_hash.values())
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert sorted(r.info.status for r in by_hash[cell_hash]) == ["FINISHED", "KILLED"]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    assert parent.data.tags["run_kind"] == "sweep" and parent.info.status == "FINISHED"
    assert len(parent.data.tags["slurm_job_ids"].split(",")) == 2
    assert all(r.data.tags["launcher"] == "slurm" for r in runs)
