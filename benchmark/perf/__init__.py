"""Benchmarks as commands: ``bench perf kernel`` (the eNTK engine) and ``bench perf train`` (the fine-tuning loop).

One module per command (`kernel`, `train`), with their shared pieces: `options` (validated inputs),
`timing` (clocks and peak memory), `inputs` (random presets and prompts), `floor` (the one-pass floor,
float64 error), `agreement` (fast vs reference tolerances) and `estimate` (roberta-base extrapolation).
"""

from benchmark.perf.app import perf_app

__all__ = ["perf_app"]
