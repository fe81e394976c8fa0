"""The local runner: the run executes in the calling process, on the CPU or one GPU."""

from __future__ import annotations

from benchmark.config import RunConfig
from benchmark.run import RunOutcome, execute


def run_local(config: RunConfig) -> RunOutcome:
    """Run ``config`` in this process (``--device`` picks CPU or GPU) and return its outcome."""
    return execute(config)
