"""Execute one run: resolve the config, load the splits, run the method, log everything to MLflow."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.config import RunConfig
from benchmark.examples import Splits
from benchmark.methods.base import Method, RunContext, RunResult
from benchmark.tracking import Tracker, tracked
from registry import METHODS, TASKS, BenchError, TaskSpec, load_builtins, load_task_file


@dataclass
class RunOutcome:
    """A finished run: its MLflow id and what the method returned."""

    run_id: str
    config: RunConfig
    result: RunResult
    seconds: float


def resolve_task(config: RunConfig) -> TaskSpec:
    """The task of ``config``: from ``--task-file`` if given, else the registry."""
    load_builtins()
    if config.task_file is not None:
        spec = load_task_file(config.task_file)
        if config.task and config.task != spec.name:
            raise BenchError(f"--task '{config.task}' does not match the name '{spec.name}' in {config.task_file}")
        return spec
    return TASKS.get(config.task)


def resolve_method(config: RunConfig) -> Method:
    """The method of ``config``, with its options validated."""
    load_builtins()
    return METHODS.get(config.method).from_config(config)


def resolve_device(config: RunConfig) -> torch.device:
    """The torch device for ``config.device`` ('auto' = CUDA when available)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def run_tags(config: RunConfig, task: TaskSpec, method: Method) -> dict[str, str]:
    """The MLflow tags that identify a run's cell."""
    return {
        "task": task.name,
        "method": method.name,
        "method_family": method.family,
        "backbone": config.backbone,
        "k": str(config.k),
        "seed": str(config.seed),
        "template": "none" if not config.prompt_based else (config.template or "default"),
        "config_hash": config.config_hash(),
    }


def run_name(config: RunConfig, task: TaskSpec, method: Method) -> str:
    """A run name that says what differs between runs: task, method, k, seed, template, options, short hash.

    The config hash's first 6 characters end every name, so two different configurations never share one.
    """
    from benchmark.config import MEASUREMENT_OPTIONS

    parts = [task.name, method.name, f"k{config.k}", f"s{config.seed}"]
    if not config.prompt_based:
        parts.append("no-prompt")
    elif config.template:
        parts.append("tmpl")
    for key, value in sorted(config.options.items()):
        if key in MEASUREMENT_OPTIONS:
            continue
        if isinstance(value, dict):  # an in-run grid: name the axes and their values
            parts.extend(f"{k}={','.join(map(str, v))}" for k, v in sorted(value.items()))
        else:
            parts.append(f"{key}={value}")
    name = "-".join(parts)
    if len(name) > 90:
        name = name[:89] + "…"
    return f"{name}-{config.config_hash()[:6]}"


def start_tracker(config: RunConfig, parent_run_id: str | None = None) -> Tracker:
    """Create the MLflow run of ``config`` (validating task and method first)."""
    task = resolve_task(config)
    method = resolve_method(config)
    name = run_name(config, task, method)
    return Tracker.start(
        tracking_uri=config.tracking_uri,
        experiment=config.experiment,
        run_name=name,
        tags=run_tags(config, task, method),
        parent_run_id=parent_run_id,
    )


def load_config_splits(config: RunConfig, task: TaskSpec) -> Splits:
    """The k-shot splits of ``config`` (its k, seed, data directory, test cap and split cache)."""
    from benchmark.data import load_splits

    return load_splits(task, k=config.k, seed=config.seed, data_dir=config.data_dir, test_cap=config.test_cap,
                       cache_dir=config.resolved_cache_dir() / "splits")


@contextmanager
def build_context(config: RunConfig, tracker: Tracker | None = None) -> Iterator[RunContext]:
    """A `RunContext` for ``config`` outside a tracked run (logging goes to ``tracker`` or nowhere)."""
    from benchmark.tracking import NullTracker

    task = resolve_task(config)
    splits = load_config_splits(config, task)
    with tempfile.TemporaryDirectory(prefix="kernel-bench-") as work:
        yield RunContext(config=config, task=task, splits=splits, tracker=tracker or NullTracker(),
                         device=resolve_device(config), work_dir=Path(work))


def execute(
    config: RunConfig,
    *,
    tracker: Tracker | None = None,
    finish: bool = True,
    launcher: str = "local",
    deepspeed_config: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> RunOutcome:
    """Run ``config`` end to end and log it; the MLflow run is FAILED if anything raises.

    ``tracker`` logs into an existing run (a launcher's); with ``finish=False`` the caller closes it.
    """
    from benchmark.backbones import resolve_backbone

    # Validate what a user can get wrong before an MLflow run exists for it.
    task = resolve_task(config)
    method = resolve_method(config)
    device = resolve_device(config)
    resolve_backbone(config.backbone)
    splits = load_config_splits(config, task)
    tracker = tracker or start_tracker(config)
    start = time.perf_counter()

    def body() -> RunResult:
        tracker.log_params(flat_params(config, task))
        tracker.log_params({f"n_{name}": size for name, size in splits.sizes().items()})
        with tempfile.TemporaryDirectory(prefix="kernel-bench-") as work:
            ctx = RunContext(
                config=config,
                task=task,
                splits=splits,
                tracker=tracker,
                device=device,
                work_dir=Path(work),
                launcher=launcher,
                deepspeed_config=deepspeed_config,
                rank=rank,
                world_size=world_size,
            )
            result = method.run(ctx)
            log_result(tracker, config, task, result, time.perf_counter() - start)
        return result

    if finish:
        with tracked(tracker):
            result = body()
    else:
        result = body()
    return RunOutcome(run_id=tracker.run_id, config=config, result=result, seconds=time.perf_counter() - start)


def flat_params(config: RunConfig, task: TaskSpec) -> dict[str, Any]:
    """The config as flat MLflow params (options prefixed with ``opt.``)."""
    params = config.model_dump(mode="json", exclude={"options", "tracking_uri"})
    params.update({f"opt.{key}": value for key, value in config.options.items()})
    params["num_labels"] = task.num_labels
    params["config_hash"] = config.config_hash()
    return {key: value for key, value in params.items() if value is not None}


def log_result(tracker: Tracker, config: RunConfig, task: TaskSpec, result: RunResult, seconds: float) -> None:
    """Log a method's metrics, params, resolved config and predictions to the run."""
    tracker.log_metrics({**result.metrics, "wall_seconds": seconds})
    if result.params:
        tracker.log_params({f"result.{key}": value for key, value in result.params.items()})
    resolved = {"config": config.model_dump(mode="json"), "task": task.model_dump(mode="json")}
    tracker.log_json(resolved, "config.json")
    if result.predictions:
        tracker.log_json(result.predictions, "predictions.json")
    for path in result.artifacts:
        tracker.log_artifact(path)
