"""Rebuilding a fine-tuned model from a run: theta_0 as the run built it, then its saved theta_FT.

`rebuild_finetuned` is the one place this is done: the run's method builds the model at theta_0
(`benchmark.methods.finetune.Finetune.build_model`: same backbone, template, seed, LoRA init and
head init, with the chosen train_grid point's options), then the weights saved by ``--opt
save_model=true`` are loaded. `diagnose_run` (``bench diagnose --run-id``) fetches a run's config and
``model/`` artifact from MLflow, rebuilds it, and computes (and logs) its kernel-regime diagnostics.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from benchmark.diagnostics import Diagnostics, log_diagnostics
from benchmark.methods.finetune import Finetune, FinetuneOptions, finetune_diagnostics
from benchmark.training import META_FILE, WEIGHTS_FILE, load_weights, snapshot
from registry import METHODS, BenchError, first_error, load_builtins

if TYPE_CHECKING:
    import torch

    from benchmark.method import RunContext
    from benchmark.pipeline import Prepared
    from benchmark.tracking import Tracker

FINETUNE_METHODS = "ft-sgd, ft-adam, lora-sgd, lora-adam"


@dataclass
class Rebuilt:
    """A saved fine-tuned model: the prepared model holding theta_FT, theta_0 and the saved metadata."""

    prepared: Prepared
    theta_0: dict[str, torch.Tensor]
    meta: dict[str, Any]
    options: FinetuneOptions
    method: Finetune


def saved_meta(directory: Path) -> dict[str, Any]:
    """The metadata of a model saved by ``--opt save_model=true`` (`BenchError` if ``directory`` is not one)."""
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        raise BenchError(f"'{directory}' is not a saved fine-tuned model (no {META_FILE} and {WEIGHTS_FILE}); "
                         "use a run's model/ artifact")
    return json.loads(meta_path.read_text())


def rebuild_finetuned(ctx: RunContext, directory: Path) -> Rebuilt:
    """The model saved in ``directory`` rebuilt for ``ctx`` (the saved run's context), with theta_0.

    ``ctx``'s method must be the saved run's fine-tuning method; the options of the chosen train_grid
    point (recorded with the weights) rebuild theta_0, then theta_FT is loaded and the model is put in
    eval mode.
    """
    meta = saved_meta(directory)
    method = ctx.run.method
    if not isinstance(method, Finetune):
        raise BenchError(f"'{ctx.config.method}' is not a fine-tuning method; a saved fine-tuned model is rebuilt "
                         f"by its run's method ({FINETUNE_METHODS})")
    if bool(meta.get("lora", False)) != method.lora:
        raise BenchError(f"the model in '{directory}' was saved by a {'LoRA' if meta.get('lora') else 'full'} "
                         f"fine-tuning run ('{meta.get('method')}'), not by '{method.name}': use that run's config")
    base = method.options.model_dump(exclude={"train_grid"})
    try:
        chosen = type(method.options).model_validate({**base, **meta.get("hyperparameters", {})})
    except ValidationError as exc:
        where, message = first_error(exc, "options")
        raise BenchError(f"the options saved in '{directory}' do not fit '{method.name}': {where}: {message}") from None
    binary = bool(meta["binary"]) if "binary" in meta else ctx.run.binary
    prepared, _ = method.build_model(ctx, chosen, binary=binary)  # type: ignore[arg-type]
    model = prepared.model
    if model.num_outputs != meta.get("num_outputs", model.num_outputs):
        raise BenchError(f"the saved model has {meta['num_outputs']} outputs, this run's model "
                         f"{model.num_outputs}: use the saved run's task, template and --binary")
    theta_0 = snapshot(model)
    load_weights(model, Path(directory))
    model.eval()
    return Rebuilt(prepared=prepared, theta_0=theta_0, meta=meta, options=chosen, method=method)  # type: ignore[arg-type]


def _download(tracker: Tracker, path: str, target: Path) -> Path | None:
    """The local copy of the run's artifact ``path``, or None when the run has none (no progress bar)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        return Path(tracker.client.download_artifacts(tracker.run_id, path, str(target)))
    except Exception:  # MLflow raises several types for a missing artifact
        return None
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def diagnose_run(run_id: str, *, tracking_uri: str | None = None, log: bool = True, kernel: bool = True) -> Diagnostics:
    """Diagnostics of an existing ft-*/lora-* run from its resolved config and saved weights.

    theta_0 and theta_FT come from `rebuild_finetuned`; theta_FT is the run's ``model/`` artifact
    (``--opt save_model=true``). With ``log`` the metrics and ``diagnostics.json`` are logged into that run.
    """
    from benchmark.config import RunConfig
    from benchmark.run import build_context
    from benchmark.tracking import Tracker

    try:
        tracker = Tracker.attach(tracking_uri=tracking_uri, run_id=run_id)
    except BenchError:
        raise
    except Exception as exc:  # MLflow raises several types for an unknown run or store
        raise BenchError(
            f"cannot open run '{run_id}' in {tracking_uri or 'the default store'}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="kernel-bench-diag-") as tmp:
        config_path = _download(tracker, "config.json", Path(tmp))
        if config_path is None or not config_path.is_file():
            raise BenchError(f"run '{run_id}' has no config.json artifact: it did not finish (or is not a bench run)")
        resolved = json.loads(config_path.read_text())["config"]
        load_builtins()
        method_cls = METHODS.get(str(resolved.get("method")))
        if not (isinstance(method_cls, type) and issubclass(method_cls, Finetune)):
            raise BenchError(f"run '{run_id}' is a '{resolved.get('method')}' run; diagnostics apply to fine-tuning "
                             f"runs ({FINETUNE_METHODS})")
        options = dict(resolved.get("options") or {})
        if "grid" in options:  # logged before the in-run grid of fine-tuning was renamed train_grid
            options["train_grid"] = options.pop("grid")
        config = RunConfig.model_validate({**resolved, "options": options, "tracking_uri": tracking_uri})
        model_dir = _download(tracker, "model", Path(tmp))
        if model_dir is None or not (model_dir / WEIGHTS_FILE).is_file():
            raise BenchError(
                f"run '{run_id}' has no saved weights (model/ artifact); re-run it with "
                "--opt save_model=true (or --diagnostics to compute them during the run)"
            )
        with build_context(config) as ctx:
            rebuilt = rebuild_finetuned(ctx, model_dir)
            diag = finetune_diagnostics(
                rebuilt.prepared.model, rebuilt.theta_0, rebuilt.prepared, ctx, method=type(rebuilt.method),
                best_step=rebuilt.meta.get("best_step"), kernel=kernel,
            )
    diag.details["setup"]["source"] = f"bench diagnose --run-id {run_id}"
    if log:
        log_diagnostics(tracker, diag)
    return diag
