"""Registries for tasks, templates, backbones and methods, and the specs they hold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from registry.errors import BenchError, first_error
from registry.registry import Registry
from registry.specs import BackboneSpec, HubSource, LocalSource, TaskSpec, TemplateSpec, load_task_file

T = TypeVar("T")



def _instance_of(cls: type) -> Callable[[str, object], str | None]:
    def check(_name: str, obj: object) -> str | None:
        return None if isinstance(obj, cls) else f"it is a {type(obj).__name__}, not a registry.{cls.__name__}"

    return check


def _method_class(_name: str, obj: object) -> str | None:
    if isinstance(obj, type) and callable(getattr(obj, "run", None)) and hasattr(obj, "Options"):
        return None
    return f"it is a {type(obj).__name__}, not a benchmark.method.Method subclass"


TASKS: Registry[TaskSpec] = Registry("task", "kernel_bench.tasks", check=_instance_of(TaskSpec))
TEMPLATES: Registry[TemplateSpec] = Registry("template", "kernel_bench.templates", check=_instance_of(TemplateSpec))
BACKBONES: Registry[BackboneSpec] = Registry("backbone", "kernel_bench.backbones", check=_instance_of(BackboneSpec))
METHODS: Registry[Any] = Registry("method", "kernel_bench.methods", check=_method_class)

# Built-ins are lazy placeholders so that importing the registry stays cheap.
_BUILTIN_MODULES = ("tasks", "benchmark.methods", "benchmark.backbones")
_builtins_loaded = False


def load_builtins() -> None:
    """Import the modules that register the built-in tasks, templates, backbones and methods."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import importlib

    Registry.loading_builtins = True
    try:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    finally:
        Registry.loading_builtins = False


for _registry in (TASKS, TEMPLATES, BACKBONES, METHODS):
    _registry.before_plugins = lambda: load_builtins()  # built-ins first: a plugin cannot take their names


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
    "first_error",
    "load_builtins",
    "load_task_file",
    "register_backbone",
    "register_method",
    "register_task",
    "register_template",
]
