"""Which method is which: family, fine-tuning analog and table order, from run tags or the method registry.

A run records its method's metadata as tags (`registry.schema.method_tags`); runs logged before those tags
existed and rows of a ``selections.csv`` get it from the registered method (`registry.METHODS`, which loads
the built-in methods and method plugins on first use). The pairs of the paired view (each fine-tuning method
and its kernel analog) and the order of methods in every table follow from it; nothing is listed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from registry.schema import (
    METHOD_ANALOG_TAG,
    METHOD_FAMILY_TAG,
    METHOD_ORDER_TAG,
    MethodInfo,
    method_info_from_tags,
    registered_method_info,
)

Catalog = Mapping[str, MethodInfo]
"""Method name -> its metadata."""


def method_info(name: str, recorded: MethodInfo | None = None) -> MethodInfo:
    """``recorded`` (from the run's tags) if given, else the registered method's metadata, else defaults."""
    return recorded or registered_method_info(name) or MethodInfo(name=name)


def method_catalog(runs: pd.DataFrame) -> dict[str, MethodInfo]:
    """The metadata of every method in ``runs``: from the tags of its latest run that carries them, else from
    the registered method, else defaults (no family, no analog, after the registered methods)."""
    catalog: dict[str, MethodInfo] = {}
    if runs.empty or "method" not in runs.columns:
        return catalog
    columns = [c for c in (METHOD_FAMILY_TAG, METHOD_ANALOG_TAG, METHOD_ORDER_TAG) if c in runs.columns]
    ordered = runs.sort_values("end_time", kind="stable") if "end_time" in runs.columns else runs
    recorded: dict[str, MethodInfo] = {}
    if METHOD_ORDER_TAG in columns:
        for name, order, tags in zip(ordered["method"], ordered[METHOD_ORDER_TAG], ordered[columns].to_dict("records"),
                                     strict=True):
            if isinstance(order, str) and order:
                info = method_info_from_tags(str(name), {k: v for k, v in tags.items() if isinstance(v, str)})
                if info is not None:
                    recorded[str(name)] = info  # the latest run's tags win
    for name in runs["method"].astype(str).unique():
        catalog[name] = method_info(name, recorded.get(name))
    return catalog


def complete(names: Iterable[str], catalog: Catalog | None) -> Catalog:
    """``catalog`` with every one of ``names`` in it (missing ones from the registry)."""
    out = dict(catalog or {})
    for name in names:
        if name not in out:
            out[name] = method_info(name)
    return out


def method_order(methods: Iterable[str], catalog: Catalog | None = None) -> list[str]:
    """Distinct ``methods`` by display order (baselines, then each fine-tuning method followed by its kernel
    analog, as the methods declare), ties and unknown methods by name."""
    names = sorted(set(methods))
    known = complete(names, catalog)
    return sorted(names, key=lambda m: (known[m].display_order, m))


def method_pairs(catalog: Catalog) -> list[tuple[str, str]]:
    """(fine-tuning method, kernel analog) for each method of ``catalog`` that names an analog, in the fine-tuning
    method's display order (the kernel's breaking ties)."""
    known = complete([info.analog_of for info in catalog.values() if info.analog_of], catalog)
    pairs = [(info.analog_of, name) for name, info in catalog.items() if info.analog_of]
    return sorted(pairs, key=lambda p: (known[p[0]].display_order, p[0], known[p[1]].display_order, p[1]))


def registered_catalog() -> dict[str, MethodInfo]:
    """The metadata of every registered method (built-ins and plugins; broken plugins left out)."""
    from registry import METHODS

    out: dict[str, MethodInfo] = {}
    for name in METHODS.names():
        info = registered_method_info(name)
        if info is not None:
            out[name] = info
    return out
