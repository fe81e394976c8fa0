"""`bench list`, `bench describe` and `bench data`: what is registered, a method's options, a task's splits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from benchmark.cli.app import app, console
from benchmark.cli.options import (
    BackboneOpt,
    DataDirOpt,
    KOpt,
    LabelWordsOpt,
    TaskFileOpt,
    TaskOpt,
    TemplateOpt,
    TestCapOpt,
)
from benchmark.cli.parsing import parse_label_words
from registry import BenchError

KIND_CHOICES = ("tasks", "templates", "backbones", "methods")


@app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="tasks | templates | backbones | methods",
                                        metavar="tasks|templates|backbones|methods")],
) -> None:
    """List the registered tasks, templates, backbones or methods."""
    from registry import BACKBONES, METHODS, TASKS, load_builtins

    load_builtins()
    kind = kind.lower()
    if kind not in KIND_CHOICES:
        raise BenchError(f"unknown list kind '{kind}'; choose one of: {', '.join(KIND_CHOICES)}")
    table = Table(title=f"registered {kind}")
    table.add_column("name", no_wrap=True, style="bold")
    if kind == "tasks":
        for column in ("task", "labels", "template", "label words", "max len", "from"):
            table.add_column(column)
        for name, spec in TASKS.items():
            words = ", ".join(spec.label_words[label] for label in spec.labels)
            table.add_row(name, spec.display_name, str(spec.num_labels), spec.template, words, str(spec.max_seq_len),
                          TASKS.origin(name))
    elif kind == "templates":
        from benchmark.prompts import register_task_templates
        from registry import TEMPLATES

        register_task_templates()
        for column in ("template", "label words", "description", "from"):
            table.add_column(column)
        for name, spec in TEMPLATES.items():
            words = ", ".join(spec.label_words.values()) if spec.label_words else "(task's)"
            table.add_row(spec.name, spec.template, words, spec.description, TEMPLATES.origin(name))
    elif kind == "backbones":
        from benchmark import bundled

        for column in ("path", "family", "description", "from"):
            table.add_column(column)
        for name, spec in BACKBONES.items():
            path = "(bundled with the suite)" if spec.path == str(bundled.model_dir()) else spec.path
            table.add_row(name, path, spec.family, spec.description, BACKBONES.origin(name))
        table.caption = "any Hub id (org/name) or local model directory also works"
    else:
        for column in ("aliases", "family", "summary", "options (bench describe METHOD)", "from"):
            table.add_column(column)
        for name, method in METHODS.items():
            options = ", ".join(f"{o}={d}" for o, _, d, _ in option_rows(method))
            table.add_row(name, ", ".join(METHODS.aliases_of(name)), method.family, method.summary, options,
                          METHODS.origin(name))
    console.print(table)


def option_rows(method: Any) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of each option in a method's pydantic ``Options`` model."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in method.Options.model_fields.items():
        annotation = info.annotation
        kind = getattr(annotation, "__name__", None) if getattr(annotation, "__args__", None) is None else None
        kind = kind or str(annotation).replace("typing.", "")
        if info.default is not PydanticUndefined:
            default = repr(info.default)
        elif info.default_factory is not None:
            default = repr(info.default_factory())
        else:
            default = "(required)"
        rows.append((name, kind, default, info.description or ""))
    return rows


@app.command("describe")
def describe_cmd(method: Annotated[str, typer.Argument(help="registered method name or alias")]) -> None:
    """Show a method's options (``--opt key=value``, ``--train-grid`` / ``--solver-grid key=v1,v2``) and defaults."""
    from registry import METHODS, load_builtins

    load_builtins()
    cls = METHODS.get(method)
    name = METHODS.resolve_name(method)
    console.print(f"[bold]{name}[/] ({cls.family}): {cls.summary}", highlight=False)
    aliases = METHODS.aliases_of(name)
    if aliases:
        console.print(f"aliases: {', '.join(aliases)}", highlight=False)
    table = Table(title=f"options of {name}")
    for column in ("option", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in option_rows(cls):
        table.add_row(*row)
    console.print(table)


def _task_and_splits(task: str, task_file: Path | None, k: int, seed: int, data_dir: Path | None, test_cap: int):
    from benchmark.config import RunConfig
    from benchmark.run import load_config_splits, resolve_run

    config = RunConfig(task=task, task_file=task_file, method="zero-shot", k=k, seed=seed,
                       data_dir=data_dir, test_cap=test_cap)
    run = resolve_run(config, check_tokenizer=False)
    return run.task, load_config_splits(run)


@app.command("data")
def data_cmd(
    task: TaskOpt = "",
    task_file: TaskFileOpt = None,
    k: KOpt = 16,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    data_dir: DataDirOpt = None,
    template: TemplateOpt = None,
    label_words: LabelWordsOpt = None,
    backbone: BackboneOpt = "roberta-base",
    test_cap: TestCapOpt = 1000,
    show: Annotated[int, typer.Option("--show", help="encoded examples shown")] = 3,
) -> None:
    """Show split sizes and a few encoded examples (filled template, mask position, label word ids)."""
    from benchmark.backbones import resolve_backbone
    from benchmark.prompts import PromptEncoder

    if not task and task_file is None:
        raise BenchError("give --task NAME or --task-file FILE")
    spec, splits = _task_and_splits(task, task_file, k, seed, data_dir, test_cap)
    sizes = Table(title=f"{spec.name}: k={k}, seed={seed}")
    for column in ("split", "examples", *spec.labels):
        sizes.add_column(column)
    for name in ("train", "dev", "test"):
        examples = getattr(splits, name)
        counts = [str(sum(e.label == i for e in examples)) for i in range(spec.num_labels)]
        sizes.add_row(name, str(len(examples)), *counts)
    console.print(sizes)
    from benchmark.resolve import load_tokenizer

    tokenizer = load_tokenizer(resolve_backbone(backbone))
    encoder = PromptEncoder.for_task(tokenizer, spec, template=template, label_words=parse_label_words(label_words))
    tmpl, words = encoder.template, encoder.label_words
    console.print(f"template: {tmpl if tmpl is not None else 'none ([CLS] head)'}")
    if encoder.prompt_based:
        triples = zip(spec.labels, words, encoder.label_word_ids, strict=True)
        pairs = ", ".join(f"{lab}={w} ({i})" for lab, w, i in triples)
        console.print(f"label words: {pairs}")
    for example in splits.train[:show]:
        encoded = encoder.encode(example)
        console.print(f"[bold]{example.guid}[/] label={spec.labels[example.label]} mask_pos={encoded.mask_pos} "
                      f"len={len(encoded.input_ids)}", highlight=False)
        console.print(f"  {encoder.render(example)}", highlight=False, markup=False)
