"""Memory budgets: parsing, a safe default from free memory, and a peak-memory probe."""

from __future__ import annotations

import os
import re
import threading
import time
from types import TracebackType

import torch

from registry import BenchError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

#: Fraction of the free memory the engine allows itself when no budget is given.
DEFAULT_FRACTION_CPU = 0.5
DEFAULT_FRACTION_CUDA = 0.8


def parse_bytes(value: int | float | str) -> int:
    """``1073741824``, ``"1GiB"``, ``"512MB"``, ``"2.5g"`` -> bytes; raises `BenchError` if malformed."""
    if isinstance(value, int | float):
        if value <= 0:
            raise BenchError(f"memory budget must be positive, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise BenchError(f"cannot read memory size '{value}'; use bytes or a unit, e.g. '1GiB', '512MB'")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise BenchError(f"memory budget must be positive, got '{value}'")
    return size


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the CUDA allocator's free bytes, or MemAvailable on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 4 * 2**30


def default_budget(device: torch.device) -> int:
    """A safe share of the free memory on ``device`` (half on the host, 80% on a GPU)."""
    fraction = DEFAULT_FRACTION_CUDA if device.type == "cuda" else DEFAULT_FRACTION_CPU
    return int(available_bytes(device) * fraction)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager measuring the peak memory added inside it.

    On CUDA it uses the allocator's peak counter; on the host it samples the resident set size
    from a background thread (every ``interval`` seconds), so very short spikes can be missed.
    ``peak_bytes`` is the peak minus the level at entry.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._start = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_bytes = self._peak - self._start


def _libc() -> object | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


_LIBC = _libc() if os.name == "posix" else None


def release_free_memory() -> None:
    """Give the host allocator's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Long-lived buffers (the stored side) allocated between a batch's short-lived activations pin
    the heap, so that the freed activations' pages stay resident and the process grows by about
    a batch's activations per stored batch; trimming after each batch keeps the resident size to
    what is in use.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # type: ignore[attr-defined]
