"""Registries for tasks, templates, backbones and methods, and the specs they hold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from registry.errors import BenchError
from registry.registry import Registry
from registry.specs import BackboneSpec, HubSource, LocalSource, TaskSpec, TemplateSpec, load_task_file

T = TypeVar("T")

TASKS: Registry[TaskSpec] = Registry("task", "kernel_bench.tasks")
TEMPLATES: Registry[TemplateSpec] = Registry("template", "kernel_bench.templates")
BACKBONES: Registry[BackboneSpec] = Registry("backbone", "kernel_bench.backbones")
METHODS: Registry[Any] = Registry("method", "kernel_bench.methods")

# Built-ins are lazy placeholders so that importing the registry stays cheap.
_BUILTIN_MODULES = ("tasks", "benchmark.methods")
_builtins_loaded = False


def load_builtins() -> None:
    """Import the modules that register the built-in tasks, templates, backbones and methods."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _decorator(registry: Registry[Any], name: str, aliases: tuple[str, ...]) -> Callable[[T], T]:
    return registry.register(name, aliases=aliases)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Register a `TaskSpec` under its own name."""
    TASKS.add(spec.name, spec)
    return spec


def register_template(spec: TemplateSpec) -> TemplateSpec:
    """Register a `TemplateSpec` under its own name."""
    TEMPLATES.add(spec.name, spec)
    return spec


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Register a `BackboneSpec` under its own name."""
    BACKBONES.add(spec.name, spec)
    return spec


def register_method(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator registering a method under its CLI ``name`` (and ``aliases``)."""
    return _decorator(METHODS, name, aliases)


__all__ = [
    "BACKBONES",
    "METHODS",
    "TASKS",
    "TEMPLATES",
    "BackboneSpec",
    "BenchError",
    "HubSource",
    "LocalSource",
    "Registry",
    "TaskSpec",
    "TemplateSpec",
    "load_builtins",
    "load_task_file",
    "register_backbone",
    "register_method",
    "register_task",
    "register_template",
]
