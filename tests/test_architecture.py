"""The house rules ARCHITECTURE.md states that a test can check: no source file over ~500 lines without a
reason stated at its top, and the import contracts file naming every room."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("registry", "tasks", "benchmark", "runners", "leaderboard")
MAX_LINES = 500
REASON = "over 500 lines because"


def _sources() -> list[Path]:
    return sorted(p for room in ROOMS for p in (ROOT / room).rglob("*.py"))


def test_no_source_file_is_over_500_lines_without_a_stated_reason() -> None:
    long = []
    for path in _sources():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and REASON not in doc:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long, f"split these, or say why at their top ('{REASON} ...'): {', '.join(long)}"


def test_import_contracts_cover_every_room() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    roots = config["importlinter"]["root_packages"].split()
    assert sorted(roots) == sorted(ROOMS)
    contracts = [section for section in config.sections() if section.startswith("importlinter:contract:")]
    assert {config[c]["type"] for c in contracts} >= {"forbidden", "protected", "acyclic_siblings"}
