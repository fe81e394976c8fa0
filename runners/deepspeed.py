"""The DeepSpeed runner: validate, create the MLflow run, start the DeepSpeed launcher on `runners.worker`.

The parent process never trains. It takes the `ResolvedRun` from the edge, checks the launch (config
file, devices, hostfile, the method's options against the world size) before anything is logged,
creates the run with `benchmark.run.start_tracker`, starts
``python -m deepspeed.launcher.runner ... --module runners.worker`` with the run config and the
DeepSpeed config inline (base64 JSON, so remote nodes need no shared temp files), streams the
workers' output line by line, and closes the run: FINISHED on exit code 0, else FAILED with a
`BenchError`. Rank 0 logs into that run; the other ranks log nothing.

Without CUDA (or with ``DS_ACCELERATOR=cpu``) the workers are CPU processes talking over gloo:
``--num-gpus N`` then means N processes, at most one per CPU core.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from benchmark.method import RunResult
from benchmark.resolve import ResolvedRun
from benchmark.run import RunOutcome, start_tracker
from benchmark.tracking import DOCTOR_HINT, Tracker, close_run, default_tracking_uri
from registry import BenchError
from runners.multinode import NodePlan, node_plan, per_node_command

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "zero2"
#: Where DeepSpeed's CPU communication backend puts its shared-memory allreduce buffers.
SHM_DIR = Path("/dev/shm")


class DeepSpeedOptions(BaseModel):
    """``--launcher deepspeed`` options (``--launch-opt key=value``; ``--num-gpus`` etc. are shorthands)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_gpus: int | None = Field(
        default=None, ge=1, description="processes per node (default: every visible GPU, 1 on CPU)"
    )
    num_nodes: int = Field(default=1, ge=1, description="nodes (needs a hostfile when > 1)")
    hostfile: Path | None = Field(default=None, description="DeepSpeed hostfile ('host slots=N' per line)")
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON config, or a bundled name: zero0, zero1, zero2 (default)"
    )
    master_port: int | None = Field(default=None, ge=1, le=65535, description="rendezvous port (default: a free one)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", description="bf16 / fp16 need GPUs")
    node_rank: int | None = Field(default=None, ge=0, description="this node's rank when every node runs its own "
                                  "launcher (default: SLURM_NODEID in a multi-node SLURM job); see runners.multinode")
    master_addr: str | None = Field(default=None, description="node 0's address for a per-node launch "
                                    "(default: MASTER_ADDR, else the first host of the SLURM job)")


class DeepSpeedRunner:
    """``--launcher deepspeed``: the run on N DeepSpeed ranks per node; one MLflow run, logged by rank 0."""

    name: ClassVar[str] = "deepspeed"
    Options: ClassVar[type[BaseModel]] = DeepSpeedOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options or DeepSpeedOptions()

    def launch(self, run: ResolvedRun, parent_run_id: str | None = None) -> RunOutcome:
        """Start the DeepSpeed launcher on `runners.worker` for ``run`` and wait for it."""
        return run_deepspeed(run, self.options, parent_run_id=parent_run_id)  # type: ignore[arg-type]


def bundled_configs() -> list[str]:
    """Names of the DeepSpeed configs shipped in ``runners/configs``."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def resolve_config_path(path: Path | None) -> Path:
    """The config file for ``--deepspeed-config``: a path, a bundled name (``zero1``), or the default."""
    if path is None:
        return CONFIG_DIR / f"{DEFAULT_CONFIG}.json"
    if Path(path).expanduser().exists():
        return Path(path).expanduser()
    if str(path) in bundled_configs():
        return CONFIG_DIR / f"{path}.json"
    raise BenchError(
        f"DeepSpeed config '{path}' does not exist; pass a JSON file or one of {', '.join(bundled_configs())}"
    )


def load_deepspeed_config(path: Path | None) -> dict[str, Any]:
    """Read and check a DeepSpeed JSON config (must parse, must be an object)."""
    resolved = resolve_config_path(path)
    try:
        config = json.loads(resolved.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"DeepSpeed config '{resolved}' is not valid JSON: {exc}") from None
    except OSError as exc:
        raise BenchError(f"cannot read DeepSpeed config '{resolved}': {exc.strerror}") from None
    if not isinstance(config, dict):
        raise BenchError(f"DeepSpeed config '{resolved}' must be a JSON object, got {type(config).__name__}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict) or not isinstance(zero.get("stage", 0), int):
        raise BenchError(f"DeepSpeed config '{resolved}': 'zero_optimization' must be an object with an integer stage")
    return config


def cpu_mode() -> bool:
    """True when the workers run on CPUs (``DS_ACCELERATOR=cpu``, or no CUDA device)."""
    import torch

    return os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()


def apply_precision(config: dict[str, Any], precision: str, *, on_cpu: bool) -> dict[str, Any]:
    """``config`` with ``bf16`` / ``fp16`` enabled for ``--precision``; both need GPUs."""
    if precision == "fp32":
        return config
    if on_cpu:
        raise BenchError(f"--precision {precision} needs CUDA GPUs; on CPU the DeepSpeed runner trains in fp32")
    other = "fp16" if precision == "bf16" else "bf16"
    if config.get(other, {}).get("enabled"):
        raise BenchError(f"--precision {precision} conflicts with '{other}' enabled in the DeepSpeed config")
    return {**config, precision: {**config.get(precision, {}), "enabled": True}}


def parse_hostfile(path: Path) -> dict[str, int]:
    """``{host: slots}`` from a DeepSpeed hostfile (``hostname slots=N`` per line, ``#`` comments)."""
    if not path.is_file():
        raise BenchError(f"hostfile '{path}' does not exist")
    hosts: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise BenchError(f"hostfile '{path}' line {number}: expected 'hostname slots=N', got '{raw.strip()}'")
        hosts[parts[0]] = int(parts[1][6:])
    if not hosts:
        raise BenchError(f"hostfile '{path}' lists no hosts")
    return hosts


def processes_per_node(options: DeepSpeedOptions, *, on_cpu: bool) -> int:
    """``--num-gpus`` checked against what this node (or the hostfile) offers."""
    if options.hostfile is not None:
        hosts = parse_hostfile(options.hostfile)
        if options.num_nodes > len(hosts):
            raise BenchError(f"--num-nodes {options.num_nodes} but the hostfile lists {len(hosts)} host(s)")
        slots = min(list(hosts.values())[: options.num_nodes])
        where = f"the hostfile's hosts have {slots} slot(s)"
    else:
        if options.num_nodes > 1:
            raise BenchError(f"--num-nodes {options.num_nodes} needs --hostfile listing the nodes")
        if on_cpu:
            slots, where = os.cpu_count() or 1, f"this machine has {os.cpu_count()} CPU core(s) (DS_ACCELERATOR=cpu)"
        else:
            import torch

            slots, where = torch.cuda.device_count(), f"{torch.cuda.device_count()} CUDA device(s) are visible"
    wanted = options.num_gpus or (1 if on_cpu else slots)
    if wanted > slots:
        raise BenchError(f"--num-gpus {wanted} is more than available: {where}")
    return wanted


def check_method(run: ResolvedRun, world_size: int) -> None:
    """Reject, before anything starts, method options that ``world_size`` ranks cannot run (e.g. a batch size
    they cannot split); say so when the method does not share its work across ranks (every rank runs it whole)."""
    method = run.method
    method.check_world_size(world_size)
    if world_size > 1 and not method.distributed:
        print(f"note: method '{method.name}' does not split its work across ranks: each of the {world_size} "
              "ranks runs it whole (rank 0 logs it)", file=sys.stderr, flush=True)


def remove_shm_buffers(port: int, directory: Path = SHM_DIR) -> list[Path]:
    """Delete the shared-memory allreduce buffers DeepSpeed's CPU backend left for the job on ``port``.

    With ``DS_ACCELERATOR=cpu`` every rank creates ``deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}``
    in /dev/shm (66 MB each with the pinned DeepSpeed) and never unlinks it: that is memory, and a
    sweep of CPU runs would fill the machine with it (101 such files, 6.6 GB, had piled up here).
    Called once the job's launcher has exited. Returns the files removed.
    """
    removed = []
    for path in directory.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def free_port() -> int:
    """An unused TCP port on this host."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def encode(obj: Any) -> str:
    """JSON, then URL-safe base64 (a single command-line word)."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def decode(text: str) -> Any:
    """Inverse of `encode`."""
    return json.loads(base64.urlsafe_b64decode(text.encode()).decode())


def launcher_command(
    options: DeepSpeedOptions, *, num_gpus: int, port: int, worker_args: list[str]
) -> list[str]:
    """The DeepSpeed launcher command line that starts `runners.worker` on every rank."""
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_gpus),
               "--master_port", str(port), "--log_level", "warning"]
    if options.hostfile is not None:
        command += ["--hostfile", str(options.hostfile), "--num_nodes", str(options.num_nodes)]
    return [*command, "--module", "runners.worker", *worker_args]


def stream(command: list[str], env: dict[str, str]) -> int:
    """Run ``command``, copying its output (stdout and stderr) line by line to ours; returns its exit code.

    The launcher runs in its own process group (session). On Ctrl-C or SIGTERM that whole group -- the
    launcher and every worker -- is interrupted, then terminated, then killed, until no process of it is
    left, and the interrupt is re-raised (as `Terminated` for SIGTERM) so that the run is closed as KILLED.
    """
    from benchmark.lifecycle import acknowledge_interrupt, sigterm_as_interrupt

    with sigterm_as_interrupt():
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            errors="replace", bufsize=1, env=env, start_new_session=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
            return process.wait()
        except KeyboardInterrupt:
            acknowledge_interrupt()
            stop_group(process)
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _group_gone(process: subprocess.Popen[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        process.poll()  # reap the launcher itself
        gone = not group_members(process.pid) if Path("/proc").is_dir() else process.returncode is not None
        if gone:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stop the launcher's process group: SIGINT, then SIGTERM, then SIGKILL, waiting after each until no
    process of the group is left (workers orphaned by a launcher that exits first included)."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(process, wait):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def run_deepspeed(run: ResolvedRun, options: DeepSpeedOptions, parent_run_id: str | None = None) -> RunOutcome:
    """Run ``run`` on ``options.num_gpus`` DeepSpeed ranks (per node); one MLflow run, logged by rank 0."""
    on_cpu = cpu_mode()
    ds_config = apply_precision(load_deepspeed_config(options.deepspeed_config), options.precision, on_cpu=on_cpu)
    plan = node_plan(options)  # one launcher per node (SLURM-style), or None: one launcher for all nodes
    num_nodes = plan.num_nodes if plan is not None else options.num_nodes
    num_gpus = processes_per_node(options if plan is None else options.model_copy(update={"num_nodes": 1}),
                                  on_cpu=on_cpu)
    check_method(run, num_gpus * num_nodes)
    # Where it logs and computes is no part of the run's identity: the resolved run stays valid.
    run = dataclasses.replace(run, config=run.config.model_copy(update={
        "tracking_uri": run.config.tracking_uri or default_tracking_uri(),
        "device": "cpu" if on_cpu else run.config.device,
    }))
    config = run.config
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if on_cpu:
        env["DS_ACCELERATOR"] = "cpu"
    if plan is not None and plan.node_rank != 0:
        return run_follower(run, ds_config, plan, num_gpus, env)
    tracker = start_tracker(run, parent_run_id=parent_run_id)
    tracker.set_tags({"launcher": "deepspeed", "world_size": num_gpus * num_nodes, "num_nodes": num_nodes,
                      "zero_stage": ds_config.get("zero_optimization", {}).get("stage", 0)})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kernel-bench-launch-") as tmp:
        result_path = Path(tmp) / "result.json"
        worker_args = [*_run_args(run), "--run-id", tracker.run_id, "--deepspeed-config", encode(ds_config),
                       "--result", str(result_path)]
        if plan is not None:
            port = plan.master_port
            command = per_node_command(plan, num_gpus=num_gpus, worker_args=worker_args)
        else:
            port = options.master_port or free_port()
            command = launcher_command(options, num_gpus=num_gpus, port=port, worker_args=worker_args)
        try:
            code = stream(command, env)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the launcher's group is stopped by now
            close_run(tracker, "KILLED")
            raise
        except BaseException as exc:
            _fail(tracker, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if on_cpu:
                remove_shm_buffers(port)
        reported = json.loads(result_path.read_text()) if result_path.is_file() else {}
        errors = [json.loads(path.read_text()).get("error") for path in sorted(Path(tmp).glob("*.error-rank*"))]
    if code != 0 or errors:
        first = next((error for error in errors if error), None)
        message = first or f"the DeepSpeed workers failed with exit code {code}; see their output above"
        _fail(tracker, message)
        raise BenchError(message)
    if not close_run(tracker, "FINISHED"):
        raise BenchError(f"the MLflow store failed while closing run {tracker.run_id}; {DOCTOR_HINT}")
    result = _result_from(reported, tracker)
    return RunOutcome(run_id=tracker.run_id, config=config, result=result, seconds=time.perf_counter() - start)


def _run_args(run: ResolvedRun) -> list[str]:
    """The worker arguments that carry the run: its canonical config, and the hash the worker's resolution must give."""
    return ["--config", encode(run.config.model_dump(mode="json")), "--config-hash", run.config_hash()]


def run_follower(run: ResolvedRun, ds_config: dict[str, Any], plan: NodePlan, num_gpus: int,
                 env: dict[str, str]) -> RunOutcome:
    """Node ``plan.node_rank`` > 0 of a per-node launch: run this node's ranks; node 0 owns the MLflow run.

    The outcome has no run id and no metrics (they are logged by rank 0, on node 0).
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kernel-bench-launch-") as tmp:
        result_path = Path(tmp) / "result.json"
        worker_args = [*_run_args(run), "--run-id", "", "--deepspeed-config", encode(ds_config),
                       "--result", str(result_path)]
        try:
            code = stream(per_node_command(plan, num_gpus=num_gpus, worker_args=worker_args), env)
        finally:
            if env.get("DS_ACCELERATOR") == "cpu":
                remove_shm_buffers(plan.master_port)
        errors = [json.loads(path.read_text()).get("error") for path in sorted(Path(tmp).glob("*.error-rank*"))]
    if code != 0 or errors:
        first = next((error for error in errors if error), None)
        raise BenchError(first or f"node {plan.node_rank}: the DeepSpeed workers failed with exit code {code}")
    return RunOutcome(run_id="", config=run.config, result=RunResult(metrics={}), seconds=time.perf_counter() - start)


def _fail(tracker: Tracker, message: str) -> None:
    close_run(tracker, "FAILED", message)


def _result_from(reported: dict[str, Any], tracker: Tracker) -> RunResult:
    """The method's result as rank 0 reported it; without a report (rank 0 on another node), from MLflow."""
    if "metrics" in reported:
        return RunResult(metrics=reported["metrics"], predictions=reported.get("predictions", {}),
                         params=reported.get("params", {}))
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    return RunResult(metrics={k: v for k, v in metrics.items() if "/" not in k and k != "wall_seconds"})
