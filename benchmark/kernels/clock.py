"""Wall-clock and CPU time stamps for the engine's phase timings."""

from __future__ import annotations

import time


def now() -> tuple[float, float]:
    """(wall clock, process CPU time) in seconds."""
    return time.perf_counter(), time.process_time()
