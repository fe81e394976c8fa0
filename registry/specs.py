"""Pydantic specs for the things the registries hold: tasks, templates and backbones (and task files)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.errors import BenchError, first_error
from registry.files import load_mapping_file


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _str_keys(value: object) -> object:
    """YAML/TOML reads ``{0: negative}`` with int keys: file label values and label names are strings here."""
    if isinstance(value, dict):
        return {str(k) if isinstance(k, int | float) and not isinstance(k, bool) else k: v for k, v in value.items()}
    return value


def _str_items(value: object) -> object:
    """``labels: [0, 1]`` in a YAML file means the label names "0" and "1"."""
    if isinstance(value, list | tuple):
        return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    return value


class HubSource(_Spec):
    """Where a task lives on the Hugging Face Hub and how its columns map to ours."""

    path: str = Field(description="dataset id, e.g. 'glue' or 'SetFit/subj'")
    config: str | None = Field(default=None, description="dataset configuration, e.g. 'sst2'")
    train_split: str = "train"
    test_split: str = Field(description="split used as our test set (GLUE-style: the validation set)")
    text_columns: tuple[str, ...] = Field(description="columns holding sent_0 (and sent_1)")
    label_column: str = "label"
    label_map: dict[str, str] | None = Field(
        default=None,
        description="Hub label value (as a string) -> our label name; None = the Hub's integer i is labels[i]",
    )
    drop_labels: tuple[str, ...] = Field(default=(), description="Hub label values whose rows are dropped (SNLI: -1)")

    _keys = field_validator("label_map", mode="before")(classmethod(lambda cls, v: _str_keys(v)))
    _drop = field_validator("drop_labels", mode="before")(classmethod(lambda cls, v: _str_items(v)))


class LocalSource(_Spec):
    """The task's files in LM-BFF's ``original/<dir>/`` layout."""

    dir: str = Field(description="folder name under <data-dir>/original/, e.g. 'SST-2'")
    train_file: str
    test_file: str
    delimiter: str = ","
    header: bool = False
    text_columns: tuple[str | int, ...] = Field(description="column names (with header) or indices")
    label_column: str | int
    label_map: dict[str, str] | None = Field(default=None, description="file label value -> our label name")
    skip_bad_rows: bool = Field(default=False, description="drop rows with too few fields (GLUE TSV quirks)")

    _keys = field_validator("label_map", mode="before")(classmethod(lambda cls, v: _str_keys(v)))


class TaskSpec(_Spec):
    """A classification task: its data sources, labels, default prompt and length limits."""

    name: str = Field(description="CLI name, e.g. 'sst2'")
    display_name: str
    family: Literal["sentiment", "topic", "nli", "paraphrase", "other"] = "other"
    labels: tuple[str, ...] = Field(description="label names in LM-BFF order; label i is class i")
    num_sentences: Literal[1, 2] = 1
    hub: HubSource | None = None
    local: LocalSource | None = None
    template: str = Field(description="default LM-BFF template")
    label_words: dict[str, str] = Field(description="label name -> label word")
    max_seq_len: int = 128
    first_sent_limit: int | None = None
    other_sent_limit: int | None = None
    report_f1: bool = Field(default=False, description="also report binary F1 of the positive label (MRPC, QQP)")

    _labels = field_validator("labels", mode="before")(classmethod(lambda cls, v: _str_items(v)))
    _words = field_validator("label_words", mode="before")(classmethod(lambda cls, v: _str_keys(v)))

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if len(self.labels) < 2:
            raise ValueError("a task needs at least two labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {list(self.labels)}")
        if set(self.label_words) != set(self.labels):
            raise ValueError(
                f"label_words must give one word for each label {list(self.labels)}, got {sorted(self.label_words)}"
            )
        if "*mask*" not in self.template:
            raise ValueError(f"template '{self.template}' has no *mask*")
        for source in (self.hub, self.local):
            if source is None:
                continue
            if len(source.text_columns) != self.num_sentences:
                raise ValueError(f"{type(source).__name__} gives {len(source.text_columns)} text columns "
                                 f"for a {self.num_sentences}-sentence task")
            if source.label_map is not None and not set(source.label_map.values()) <= set(self.labels):
                raise ValueError(f"{type(source).__name__}.label_map maps to unknown labels "
                                 f"{sorted(set(source.label_map.values()) - set(self.labels))}")
        return self


class TemplateSpec(_Spec):
    """A named prompt: an LM-BFF template string and, optionally, its label words."""

    name: str
    template: str
    label_words: dict[str, str] | None = None
    description: str = ""


class BackboneSpec(_Spec):
    """A masked LM the suite can load by name: a Hub id or a local path."""

    name: str
    path: str = Field(description="Hub id or local directory for AutoModelForMaskedLM")
    family: Literal["roberta", "bert", "other"] = "other"
    description: str = ""


def load_task_file(path: str | Path) -> TaskSpec:
    """Load and validate a `TaskSpec` from a YAML or TOML file (``--task-file``)."""
    raw = load_mapping_file(path, "task file", "TaskSpec fields")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        where, message = first_error(exc, "task")
        raise BenchError(f"task file '{path}' is invalid at '{where}': {message}") from exc
