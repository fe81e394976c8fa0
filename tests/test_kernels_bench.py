"""The kernel benchmark script runs end to end on the small random model and reports what it measured."""

from __future__ import annotations

import re

import pytest

from benchmark import bench_kernel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_kernel_reports_plan_floor_and_float64_error(capsys) -> None:
    status = bench_kernel.main(
        ["--n-train", "2", "--n-eval", "3", "--seq-len", "16", "--formulas", "sgd,signgd", "--no-reference",
         "--error-sub", "2", "--memory-budget", "256MiB", "--threads", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "training side stored as: per-example float gradients + int8 signs" in out
    assert re.search(r"plan: 1 pass\(es\)", out)
    floor = re.search(r"fast / floor = ([0-9.]+)x", out)
    assert floor and float(floor.group(1)) > 0
    error = re.search(r"error vs float64 on the first 2 x 2 block .*: sgd ([0-9.e+-]+)", out)
    assert error and float(error.group(1)) <= 1e-6
    assert "estimate: roberta-base" in out  # the small preset extrapolates
