"""Shared timing helpers of the perf commands: wall and CPU time, peak extra memory, byte formatting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.kernels import PeakMemory


@dataclass
class Measured:
    """Wall time, CPU time (this process) and peak extra memory of one call, and what it returned."""

    wall: float
    cpu: float
    peak: int
    result: Any


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device) -> Measured:
    """Run ``fn`` once, timing it and tracking the peak memory it adds."""
    with PeakMemory(device) as peak:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Measured(wall, cpu, peak.peak_bytes, result)


def gib(n: float) -> str:
    """Bytes as ``1.23 GiB``."""
    return f"{n / 2**30:.2f} GiB"


def ratio(a: float, b: float) -> float:
    """``a / b``, or infinity when ``b`` is not positive (a clock too coarse for a tiny run)."""
    return a / b if b > 0 else float("inf")
