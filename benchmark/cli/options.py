"""The typer options that several commands share (one definition of each flag)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="registered task name")]
TaskFileOpt = Annotated[Path | None, typer.Option("--task-file", help="a TaskSpec YAML/TOML file")]
KOpt = Annotated[int, typer.Option("--k", help="examples per label in train (and dev)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="local data root (LM-BFF layout); default: Hub")]
TemplateOpt = Annotated[str | None, typer.Option("--template", help="template name, LM-BFF template string, or 'none'")]
LabelWordsOpt = Annotated[str | None, typer.Option("--label-words", help="w1,w2,... in label order or label=word")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="registered backbone, Hub id, or local path")]
TestCapOpt = Annotated[int, typer.Option("--test-cap", help="test examples kept (0 = all)")]
TrackingUriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store URI")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="cache for splits and kernels")]
LauncherOpt = Annotated[str, typer.Option("--launcher", help="runner: local | deepspeed | slurm | a plugin's")]
LaunchOptOpt = Annotated[list[str], typer.Option("--launch-opt", help="runner option key=value (repeatable)")]
NumGpusOpt = Annotated[int | None, typer.Option("--num-gpus", help="processes per node (deepspeed)")]
NumNodesOpt = Annotated[int | None, typer.Option("--num-nodes", help="nodes (deepspeed; default 1)")]
HostfileOpt = Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile")]
DeepspeedConfigOpt = Annotated[Path | None, typer.Option("--deepspeed-config", help="DeepSpeed JSON config")]
