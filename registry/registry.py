"""A generic name -> object registry with lazy placeholders and entry-point plugins."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
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

    BUILTIN = "built-in"
    loading_builtins = False
    """True while `registry.load_builtins` imports the built-ins: lookups then do not discover plugins yet."""

    def __init__(self, kind: str, entry_point_group: str | None = None, *,
                 check: Callable[[str, object], str | None] | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._objects: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._broken: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None
        self.check = check
        """``check(name, obj)``: why a plugin's object is not a valid entry (None = valid)."""
        self.before_plugins: Callable[[], None] | None = None
        """Called before plugins are discovered (registers the built-ins, so a plugin cannot take their names)."""

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
                owner = self._origins.get(self._aliases.get(alias_key, alias_key), self.BUILTIN)
                raise BenchError(f"{self.kind} '{alias_key}' is already registered (by {owner}); choose another name")
        self._objects[key] = obj
        self._origins.setdefault(key, self.BUILTIN if _builtin(obj) else _module_of(obj))
        for alias in aliases:
            self._aliases[self._key(alias)] = key

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`: ``@registry.register("name")``."""

        def decorate(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorate

    def _load_plugins(self) -> None:
        """Discover the entry points once: import and check each, never replacing an existing name.

        A plugin whose object cannot be imported or is not a valid entry is left out with one warning
        line; a name that two sources register is an error naming both, raised when that name is used.
        """
        if self._plugins_loaded or Registry.loading_builtins:
            return
        self._plugins_loaded = True
        if self.before_plugins is not None:
            self.before_plugins()
        for ep in entry_points(group=self.entry_point_group):
            key = self._key(ep.name)
            origin = _distribution(ep)
            if key in self._broken:
                continue
            if key in self._objects or key in self._aliases:
                owner = self._origins.get(self._aliases.get(key, key), self.BUILTIN)
                owner_text = "the built-in one" if owner == self.BUILTIN else f"the one from {owner}"
                self._broken[key] = (f"{self.kind} '{key}' is registered twice: by plugin {origin} (entry point "
                                     f"{ep.name} = {ep.value}) and {owner_text}; uninstall one or rename the "
                                     "plugin's entry point")
                _warn(self._broken[key] + f" (the {self.kind} '{key}' cannot be used until then)")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self._broken[key] = f"plugin {origin} {self.kind} '{ep.name}' ({ep.value}) failed to load ({reason})"
                _warn(self._broken[key] + "; ignored")
                continue
            problem = self.check(ep.name, obj) if self.check is not None else None
            if problem is None and getattr(obj, "name", None) is not None and self._key(str(obj.name)) != key:
                problem = f"its name is '{obj.name}', not the entry-point name '{ep.name}'"
            if problem is not None:
                self._broken[key] = f"plugin {origin} {self.kind} entry point '{ep.name}' ({ep.value}) is invalid: " \
                                    f"{problem}"
                _warn(self._broken[key] + "; ignored")
                continue
            self._objects[key] = obj
            self._origins[key] = origin

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: ``built-in``, a plugin distribution (``name version``) or a module."""
        return self._origins.get(self.resolve_name(name), self.BUILTIN)

    def problems(self) -> dict[str, str]:
        """Names whose plugin entry failed (import error, invalid object, name taken twice) -> why."""
        self._load_plugins()
        return dict(self._broken)

    def resolve_name(self, name: str) -> str:
        """The canonical name for ``name`` (aliases resolved); raises `BenchError` if unknown."""
        self._load_plugins()
        key = self._key(name)
        key = self._aliases.get(key, key)
        if key in self._broken:
            raise BenchError(self._broken[key])
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

    def registered(self, name: str) -> bool:
        """Whether ``name`` is registered already, without discovering plugins (for registering built-ins)."""
        key = self._key(name)
        return key in self._objects or key in self._aliases

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load_plugins()
        key = self._key(name)
        return key in self._objects or key in self._aliases

    def names(self, *, include_aliases: bool = False, in_order: bool = False) -> list[str]:
        """Sorted registered names (and aliases, if asked); ``in_order``: names in registration order instead
        (the built-ins in the order their modules register them, then plugins), without aliases."""
        self._load_plugins()
        if in_order:
            return list(self._objects)
        names = list(self._objects)
        if include_aliases:
            names += list(self._aliases)
        return sorted(names)

    def aliases_of(self, name: str) -> list[str]:
        """The aliases that point at the canonical ``name``."""
        key = self.resolve_name(name)
        return sorted(alias for alias, target in self._aliases.items() if target == key)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) pairs, loading placeholders; names a plugin made unusable (see `problems`) are left out."""
        for name in self.names():
            if name not in self._broken:
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


_warned: set[str] = set()


def _warn(message: str) -> None:
    """One ``warning:`` line on stderr per distinct message (registries are looked up many times)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return f"'{ep.value.partition(':')[0]}'"
    return f"{dist.metadata['Name']} {dist.version}"


def _builtin(obj: object) -> bool:
    """A built-in entry: a lazy placeholder into, or an object defined in, the suite's own packages."""
    module = obj.partition(":")[0] if isinstance(obj, str) else getattr(obj, "__module__", "") or ""
    if not isinstance(obj, str) and not hasattr(obj, "__qualname__"):
        module = _caller_module()
    return module.split(".")[0] in _SUITE_PACKAGES


def _module_of(obj: object) -> str:
    if isinstance(obj, str):
        return obj.partition(":")[0]
    return (getattr(obj, "__module__", None) if hasattr(obj, "__qualname__") else None) or _caller_module()


_SUITE_PACKAGES = frozenset({"benchmark", "registry", "tasks", "runners", "leaderboard"})


def _caller_module() -> str:
    """The module that registered a spec instance (specs do not carry one): the first frame outside registry."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("registry"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"
