"""How the method modules depend on each other: shared pieces in their own modules, diagnostics pure."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_after_import(module: str) -> set[str]:
    """The suite's modules a fresh interpreter has loaded after ``import module``."""
    code = (f"import sys, {module}; print('\\n'.join(m for m in sys.modules "
            "if m.split('.')[0] in ('benchmark', 'runners', 'leaderboard', 'registry', 'tasks', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    return set(out.split())


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports (at the top or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_diagnostics_imports_no_method_run_or_mlflow_code() -> None:
    loaded = modules_after_import("benchmark.diagnostics")
    assert "benchmark.diagnostics" in loaded
    assert not {m for m in loaded if m == "benchmark.methods" or m.startswith(("benchmark.methods.", "mlflow"))}
    assert not loaded & {"benchmark.pipeline", "benchmark.run", "benchmark.tracking", "benchmark.training"}
    source = imported_modules(ROOT / "benchmark" / "diagnostics.py")
    assert not {m for m in source if m.startswith(("benchmark.methods", "mlflow", "benchmark.run"))}


@pytest.mark.parametrize(("module", "never"), [
    ("benchmark/methods/kernel.py", "benchmark.methods.finetune"),
    ("benchmark/methods/finetune.py", "benchmark.methods.kernel"),
    ("benchmark/methods/finetune.py", "benchmark.methods.baselines"),
    ("benchmark/methods/kernel.py", "benchmark.methods.baselines"),
    ("benchmark/methods/baselines.py", "benchmark.methods.finetune"),
    ("benchmark/adapters.py", "benchmark.methods.finetune"),
    ("benchmark/linear_probe.py", "benchmark.methods.baselines"),
])
def test_methods_import_shared_modules_never_each_other(module: str, never: str) -> None:
    assert never not in imported_modules(ROOT / module)


def test_no_cycle_between_diagnostics_and_fine_tuning() -> None:
    loaded = modules_after_import("benchmark.methods.kernel")
    assert "benchmark.methods.finetune" not in loaded and "benchmark.finetuned" not in loaded
    assert "benchmark.methods.kernel" not in modules_after_import("benchmark.methods.finetune")
    assert "benchmark.finetuned" not in modules_after_import("benchmark.methods.finetune")


def test_one_rebuild_of_a_fine_tuned_model() -> None:
    """`benchmark.finetuned` rebuilds saved runs; no other module loads saved weights or has its own rebuild."""
    from benchmark.methods import finetune

    assert not hasattr(finetune, "load_finetuned")
    users = {path.relative_to(ROOT).as_posix() for path in (ROOT / "benchmark").rglob("*.py")
             if "load_weights(" in path.read_text() and path.name != "training.py"}
    assert users == {"benchmark/finetuned.py"}


def test_diagnostics_formula_comes_from_the_kernel_analogs() -> None:
    from benchmark.methods.finetune import FtAdam, FtSgd, LoraAdam, LoraSgd, diagnostics_formula, formula_of_optimizer
    from benchmark.methods.kernel import LoraNtkAdam, NtkAdam, NtkSgd

    assert NtkSgd.analog_of == "ft-sgd" and NtkAdam.analog_of == "ft-adam" and LoraNtkAdam.analog_of == "lora-adam"
    assert formula_of_optimizer() == {"sgd": NtkSgd.formula, "adam": NtkAdam.formula} == {"sgd": "sgd", "adam": "asym"}
    assert [diagnostics_formula(m) for m in (FtSgd, FtAdam, LoraSgd, LoraAdam)] == ["sgd", "asym", "sgd", "asym"]
