"""A generic name -> object registry with lazy placeholders and entry-point plugins."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from registry.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (tasks, templates, backbones, methods).

    Objects are registered directly (`add`), with a decorator (`register`), or as a lazy
    ``"module:attr"`` placeholder that is imported on first `get`. Third-party packages add
    objects through the entry-point group ``entry_point_group``; those are discovered once, on
    the first lookup. Names are case-insensitive; a duplicate name is rejected.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._objects: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower()

    def add(self, name: str, obj: T | str, *, aliases: tuple[str, ...] = (), replace: bool = False) -> None:
        """Register ``obj`` (or a ``"module:attr"`` placeholder) under ``name`` and ``aliases``."""
        key = self._key(name)
        # A module that registers itself when a lazy placeholder for it is imported fills the placeholder.
        replace = replace or _fills_placeholder(self._objects.get(key), obj)
        for alias_key in (key, *map(self._key, aliases)):
            taken = alias_key in self._objects or alias_key in self._aliases
            if replace and (alias_key == key or self._aliases.get(alias_key) == key):
                taken = False
            if taken:
                raise BenchError(f"{self.kind} '{alias_key}' is already registered; choose another name")
        self._objects[key] = obj
        for alias in aliases:
            self._aliases[self._key(alias)] = key

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`: ``@registry.register("name")``."""

        def decorate(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorate

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            key = self._key(ep.name)
            if key in self._objects or key in self._aliases:
                raise BenchError(
                    f"plugin entry point '{ep.name}' ({ep.value}) reuses the built-in {self.kind} name "
                    f"'{key}'; rename it in the plugin's entry points"
                )
            self._objects[key] = ep.value

    def resolve_name(self, name: str) -> str:
        """The canonical name for ``name`` (aliases resolved); raises `BenchError` if unknown."""
        self._load_plugins()
        key = self._key(name)
        key = self._aliases.get(key, key)
        if key not in self._objects:
            known = self.names(include_aliases=True)
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        """The object registered under ``name``, importing it if it is a lazy placeholder."""
        key = self.resolve_name(name)
        obj = self._objects[key]
        if isinstance(obj, str) and ":" in obj:
            obj = _import_attr(obj)
            self._objects[key] = obj
        return obj  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load_plugins()
        key = self._key(name)
        return key in self._objects or key in self._aliases

    def names(self, *, include_aliases: bool = False) -> list[str]:
        """Sorted registered names (and aliases, if asked)."""
        self._load_plugins()
        names = list(self._objects)
        if include_aliases:
            names += list(self._aliases)
        return sorted(names)

    def aliases_of(self, name: str) -> list[str]:
        """The aliases that point at the canonical ``name``."""
        key = self.resolve_name(name)
        return sorted(alias for alias, target in self._aliases.items() if target == key)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) pairs, loading placeholders."""
        for name in self.names():
            yield name, self.get(name)


def _fills_placeholder(existing: object, obj: object) -> bool:
    if not isinstance(existing, str) or isinstance(obj, str):
        return False
    module, _, attr = existing.partition(":")
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == attr


def _import_attr(path: str) -> object:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchError(f"cannot import '{module_name}' for registry entry '{path}': {exc}") from exc
    try:
        obj: object = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise BenchError(f"'{module_name}' has no attribute '{attr}' (registry entry '{path}')") from exc
    return obj
