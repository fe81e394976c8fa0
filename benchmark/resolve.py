"""One resolved run: a `RunConfig` turned, once and at the edge, into the typed object the engine takes.

`resolve_run` looks every name up (task, method with its validated options, backbone, template and
label words), folds aliases and case, makes paths absolute, and checks everything that can be checked
without the model (the data can be found, the label words are single tokens of the backbone's
tokenizer, the method's own files and budgets), so that a typo never becomes an MLflow run.

Its `ResolvedRun.identity` is built from content, never from spelling: the task spec's fields (not the
file it came from), the resolved template and label words, the backbone's identity (a Hub id, or for a
directory the SHA-256 of its files), the data's identity (the Hub dataset, or the SHA-256 of each local
file), k, seed, test cap, the resolved binary choice, and the method's typed options (defaults included)
without its measurement-only ones. `ResolvedRun.config_hash` is the hash the tracker tags runs with and
sweeps skip finished cells by; kernel cache keys are built from the same identity.

Not identity (they change where a run is logged or how it is computed, not its numbers): the tracking
URI, experiment, cache directory, device, and options marked ``MEASUREMENT`` on a method's options model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmark.config import NO_TEMPLATE, RunConfig
from benchmark.identity import IDENTITY_SCHEMA, folder_digest, identity_hash
from benchmark.method import Method
from registry import METHODS, TASKS, BackboneSpec, BenchError, TaskSpec, load_builtins, load_task_file

#: TaskSpec fields that only describe a task (they change no number).
TASK_DESCRIPTIVE_FIELDS = frozenset({"display_name", "family"})


@dataclass(frozen=True)
class ResolvedRun:
    """A run's config with every name looked up and validated; its identity is its content."""

    config: RunConfig
    task: TaskSpec
    method: Method = field(compare=False)
    backbone: BackboneSpec
    backbone_identity: dict[str, Any] = field(compare=False)
    template: str | None
    label_words: tuple[str, ...]
    binary: bool
    data_identity: dict[str, Any] = field(compare=False)

    @property
    def prompt_based(self) -> bool:
        """False for standard [CLS]-head inputs (``--template none``)."""
        return self.template is not None

    def identity(self) -> dict[str, Any]:
        """Everything that determines the run's numbers (see the module docstring), as JSON-ready data."""
        config = self.config
        return {
            "schema": IDENTITY_SCHEMA,
            "task": self.task.model_dump(mode="json", exclude=set(TASK_DESCRIPTIVE_FIELDS)),
            "method": config.method,
            "options": self.method.options.identity(),
            "method_extra": self.method.identity_extra(self),
            "backbone": self.backbone_identity,
            "template": self.template,
            "label_words": list(self.label_words),
            "data": self.data_identity,
            "k": config.k,
            "seed": config.seed,
            "test_cap": config.test_cap,
            "binary": self.binary,
            "batch_size": config.batch_size,
        }

    def config_hash(self) -> str:
        """A short stable hash of `identity`: the MLflow tag ``config_hash``."""
        return identity_hash(self.identity())

    def cache_root(self) -> Path:
        """The split / kernel cache directory of this run."""
        return self.config.resolved_cache_dir()


def backbone_identity(spec: BackboneSpec, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """A Hub model's id, or a model directory's files by SHA-256 (its path and name do not count)."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        return {"files": folder_digest(path, cache_dir=cache_dir)}
    return {"hub": spec.path}


def canonical_backbone(name_or_path: str) -> tuple[str, BackboneSpec]:
    """The backbone's canonical name (registered name, Hub id, or absolute directory) and its spec."""
    from benchmark.backbones import resolve_backbone
    from registry import BACKBONES

    spec = resolve_backbone(name_or_path)
    if name_or_path in BACKBONES:
        return BACKBONES.resolve_name(name_or_path), spec
    return spec.path, spec


def resolve_task(config: RunConfig) -> TaskSpec:
    """The task of ``config``: from ``--task-file`` if given, else the registry (aliases and case folded)."""
    load_builtins()
    if config.task_file is not None:
        spec = load_task_file(config.task_file)
        if config.task and config.task.strip().lower() != spec.name.lower():
            raise BenchError(f"--task '{config.task}' does not match the name '{spec.name}' in {config.task_file}")
        return spec
    return TASKS.get(config.task)


def resolve_method(config: RunConfig) -> Method:
    """The method of ``config`` with its options validated."""
    load_builtins()
    return METHODS.get(config.method).from_config(config)


@cache
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from benchmark.hub import hub_reachable

    local_only = not Path(path).exists() and not hub_reachable()
    return AutoTokenizer.from_pretrained(path, local_files_only=local_only)


def load_tokenizer(spec: BackboneSpec) -> Any:
    """The backbone's tokenizer (loaded once per process); `BenchError` when it cannot be had."""
    try:
        return _tokenizer(spec.path)
    except (OSError, ValueError) as exc:
        if Path(spec.path).exists():
            raise BenchError(f"cannot load the tokenizer in '{spec.path}': {str(exc).splitlines()[0]}") from exc
        raise BenchError(
            f"cannot load backbone '{spec.name}' ({spec.path}): the Hugging Face Hub is unreachable and the model "
            "is not cached. Download it where the Hub is reachable and pass --backbone DIR"
        ) from exc


def check_prompt(run: ResolvedRun) -> None:
    """Build the run's prompt encoder once: bad label words (not one token, not distinct) raise here."""
    from benchmark.prompts import PromptEncoder

    template = run.template if run.template is not None else NO_TEMPLATE  # None here means standard inputs
    words = run.label_words or None  # standard inputs keep no label words
    PromptEncoder.for_task(load_tokenizer(run.backbone), run.task, template=template, label_words=words)


def resolve_run(config: RunConfig, *, check_tokenizer: bool = True) -> ResolvedRun:
    """Resolve and validate ``config`` (see the module docstring); raises `BenchError` for what a user got wrong.

    ``check_tokenizer`` loads the backbone's tokenizer to check the label words (no model weights).
    """
    from benchmark.bundled import resolve_data_dir
    from benchmark.data import data_identity
    from benchmark.prompts import resolve_prompt

    task = resolve_task(config)
    method_name = METHODS.resolve_name(config.method)
    backbone_name, backbone = canonical_backbone(config.backbone)
    cache_dir = config.resolved_cache_dir().expanduser().resolve()
    canonical = config.model_copy(update={
        "task": task.name,
        "task_file": config.task_file.expanduser().resolve() if config.task_file is not None else None,
        "method": method_name,
        "backbone": backbone_name,
        "data_dir": resolve_data_dir(config.data_dir).resolve() if config.data_dir is not None else None,
        "cache_dir": cache_dir,
        "template": NO_TEMPLATE if not config.prompt_based else config.template,
    })
    method = resolve_method(canonical)
    template, words = resolve_prompt(task, canonical.template, canonical.label_words)
    binary = (config.binary if config.binary is not None else method.binary_default) and task.num_labels == 2
    run = ResolvedRun(
        config=canonical,
        task=task,
        method=method,
        backbone=backbone,
        backbone_identity=backbone_identity(backbone, cache_dir=cache_dir),
        template=template,
        label_words=tuple(words) if template is not None else (),
        binary=bool(binary),
        data_identity=data_identity(task, k=config.k, seed=config.seed, data_dir=canonical.data_dir,
                                    digest_dir=cache_dir),
    )
    method.check(run)
    if check_tokenizer and method.uses_backbone:
        check_prompt(run)
    return run
