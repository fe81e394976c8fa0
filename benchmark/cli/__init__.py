"""The `bench` command line (console script ``bench = benchmark.cli:main``); imported by nothing in the suite.

`app` holds the typer application and the entry point; one module per command group registers its
commands on it: `catalog` (list, describe, data), `runs` (run, kernel), `serve` (ui, server),
`sweep` (sweep; its display in `sweep_display`), `results` (leaderboard, diagnose, doctor). Shared
flags are in `options`, value parsing in `parsing`.
"""

from __future__ import annotations

import importlib

from benchmark.cli.app import app, main

# Imported in this order, which is the order `bench --help` lists the commands in.
COMMAND_MODULES = ("catalog", "runs", "serve", "sweep", "results")
for _module in COMMAND_MODULES:
    importlib.import_module(f"benchmark.cli.{_module}")

__all__ = ["COMMAND_MODULES", "app", "main"]
