"""Execute one run: load the splits of a resolved run, run the method, log everything to MLflow.

Runners hand a `ResolvedRun` down (resolved once, at the edge: the CLI or a sweep) and nothing
here resolves it again. The entry points also take a plain `RunConfig` for callers that are
themselves the edge (scripts, tests): it is then resolved once, on entry.
"""

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
from benchmark.distribution import LOCAL, Distribution
from benchmark.examples import Splits
from benchmark.method import MEASUREMENT, RunContext, RunResult
from benchmark.resolve import ResolvedRun, resolve_method, resolve_run, resolve_task
from benchmark.tracking import Tracker, tracked
from registry import BenchError, schema

__all__ = ["RunOutcome", "as_resolved", "build_context", "execute", "resolve_method", "resolve_run", "resolve_task",
           "start_tracker"]


@dataclass
class RunOutcome:
    """A finished run: its MLflow id and what the method returned."""

    run_id: str
    config: RunConfig
    result: RunResult
    seconds: float


def as_resolved(run: RunConfig | ResolvedRun) -> ResolvedRun:
    """``run`` itself, or the resolution of a `RunConfig` (validated before anything is logged)."""
    return run if isinstance(run, ResolvedRun) else resolve_run(run)


def resolve_device(config: RunConfig) -> torch.device:
    """The torch device for ``config.device`` ('auto' = CUDA when available)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def run_tags(run: ResolvedRun) -> dict[str, str]:
    """The MLflow tags that identify a run's cell, and its method's metadata (names: `registry.schema`)."""
    config = run.config
    return {
        schema.TASK_TAG: run.task.name,
        schema.METHOD_TAG: run.method.name,
        **schema.method_tags(run.method),
        schema.BACKBONE_TAG: config.backbone,
        schema.BACKBONE_NAME_TAG: run.backbone.name,
        schema.K_TAG: str(config.k),
        schema.SEED_TAG: str(config.seed),
        schema.TEMPLATE_TAG: schema.NO_TEMPLATE if not run.prompt_based
        else (config.template or schema.DEFAULT_TEMPLATE),
        schema.CONFIG_HASH_TAG: run.config_hash(),
    }


def run_name(run: ResolvedRun) -> str:
    """A run name that says what differs between runs: task, method, k, seed, template, options, short hash.

    The config hash's first 6 characters end every name, so two different configurations never share one.
    """
    config = run.config
    measurement = set(run.method.options.fields_with_role(MEASUREMENT))
    parts = [run.task.name, run.method.name, f"k{config.k}", f"s{config.seed}"]
    if not run.prompt_based:
        parts.append("no-prompt")
    elif config.template:
        parts.append("tmpl")
    for key, value in sorted(config.options.items()):
        if key in measurement:
            continue
        if isinstance(value, dict):  # an in-run grid: name the axes and their values
            parts.extend(f"{k}={','.join(map(str, v))}" for k, v in sorted(value.items()))
        else:
            parts.append(f"{key}={value}")
    name = "-".join(parts)
    if len(name) > 90:
        name = name[:89] + "…"
    return f"{name}-{run.config_hash()[:6]}"


def start_tracker(run: RunConfig | ResolvedRun, parent_run_id: str | None = None) -> Tracker:
    """Create the MLflow run of ``run`` (a `RunConfig` is resolved and validated first)."""
    run = as_resolved(run)
    config = run.config
    name = run_name(run)
    return Tracker.start(
        tracking_uri=config.tracking_uri,
        experiment=config.experiment,
        run_name=name,
        tags=run_tags(run),
        parent_run_id=parent_run_id,
    )


def load_config_splits(run: ResolvedRun) -> Splits:
    """The k-shot splits of ``run`` (its k, seed, data directory, test cap and split cache)."""
    from benchmark.data import load_splits

    config = run.config
    return load_splits(run.task, k=config.k, seed=config.seed, data_dir=config.data_dir, test_cap=config.test_cap,
                       cache_dir=run.cache_root() / "splits")


@contextmanager
def build_context(run: RunConfig | ResolvedRun, tracker: Tracker | None = None) -> Iterator[RunContext]:
    """A `RunContext` for ``run`` outside a tracked run (logging goes to ``tracker`` or nowhere)."""
    from benchmark.tracking import NullTracker

    run = as_resolved(run)
    splits = load_config_splits(run)
    with tempfile.TemporaryDirectory(prefix="kernel-bench-") as work:
        yield RunContext(run=run, splits=splits, tracker=tracker or NullTracker(),
                         device=resolve_device(run.config), work_dir=Path(work))


def execute(
    run: RunConfig | ResolvedRun,
    *,
    tracker: Tracker | None = None,
    finish: bool = True,
    distribution: Distribution = LOCAL,
) -> RunOutcome:
    """Run ``run`` end to end and log it; the MLflow run is FAILED if anything raises.

    ``tracker`` logs into an existing run (a launcher's); with ``finish=False`` the caller closes it.
    ``distribution`` is this process's place among the run's ranks (a runner's; default: one process).
    Everything a user can get wrong is checked before an MLflow run exists for it.
    """
    run = as_resolved(run)
    config, method = run.config, run.method
    device = resolve_device(config)
    splits = load_config_splits(run)
    method.check_inputs(run, splits)
    tracker = tracker or start_tracker(run)
    start = time.perf_counter()

    def body() -> RunResult:
        tracker.log_params(flat_params(run))
        tracker.log_params({f"n_{name}": size for name, size in splits.sizes().items()})
        with tempfile.TemporaryDirectory(prefix="kernel-bench-") as work:
            ctx = RunContext(
                run=run,
                splits=splits,
                tracker=tracker,
                device=device,
                work_dir=Path(work),
                distribution=distribution,
            )
            result = method.run(ctx)
            log_result(tracker, run, result, time.perf_counter() - start)
        return result

    if finish:
        with tracked(tracker):
            result = body()
    else:
        result = body()
    return RunOutcome(run_id=tracker.run_id, config=config, result=result, seconds=time.perf_counter() - start)


def flat_params(run: ResolvedRun) -> dict[str, Any]:
    """The canonical config as flat MLflow params: every typed method option as ``opt.<name>``."""
    config = run.config
    params = config.model_dump(mode="json", exclude={"options", "tracking_uri"})
    options = run.method.options.model_dump(mode="json")
    params.update({f"opt.{key}": value for key, value in options.items() if value not in (None, {}, [])})
    params["num_labels"] = run.task.num_labels
    params["binary_output"] = run.binary
    params["label_words"] = ",".join(run.label_words) if run.prompt_based else None
    params["config_hash"] = run.config_hash()
    return {key: value for key, value in params.items() if value is not None}


def log_result(tracker: Tracker, run: ResolvedRun, result: RunResult, seconds: float) -> None:
    """Log a method's metrics, params, resolved config and predictions to the run."""
    tracker.log_metrics({**result.metrics, "wall_seconds": seconds})
    if result.params:
        tracker.log_params({f"result.{key}": value for key, value in result.params.items()})
    resolved = {"config": run.config.model_dump(mode="json"), "task": run.task.model_dump(mode="json"),
                "identity": run.identity(), "config_hash": run.config_hash()}
    tracker.log_json(resolved, "config.json")
    if result.predictions:
        tracker.log_json(result.predictions, "predictions.json")
    for path in result.artifacts:
        tracker.log_artifact(path)
