"""A validated on-disk cache for computed kernels, and the loader for the reference's kernel files.

Cache files are written atomically (a temporary file in the same folder, then ``os.replace``)
and carry their configuration, a format version and a SHA-256 per tensor. On load everything is
checked (readable, same format, same key and configuration, expected names and shapes, checksums,
finite values); anything off is reported in the log and treated as a miss, so a corrupt or
mismatched file is recomputed and overwritten, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from registry import BenchError

logger = logging.getLogger(__name__)

#: Bump when the kernel definition or the file layout changes: old files then miss.
CACHE_FORMAT = 1


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


class KernelCache:
    """Kernels on disk under ``root``, keyed by a hash of a configuration mapping.

    The configuration must name everything the kernels depend on (the kernel methods use the run's
    content identity, the formula, the encoded inputs and label-word ids: `KernelMethod.cache_config`);
    it is stored in full inside the file and compared on load.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @staticmethod
    def key(config: Mapping[str, Any]) -> str:
        """A stable hash of ``config`` (and the cache format)."""
        blob = _canonical({"__format__": CACHE_FORMAT, **config})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, config: Mapping[str, Any]) -> Path:
        """Where the kernels for ``config`` live."""
        return self.root / f"kernels-{self.key(config)}.pt"

    def load(
        self, config: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]] | None = None
    ) -> dict[str, torch.Tensor] | None:
        """The cached tensors for ``config``, or None when absent or invalid (the reason is logged).

        ``expected`` maps tensor names to shapes the file must hold exactly.
        """
        path = self.path(config)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            logger.warning("kernel cache %s is unreadable (%s); recomputing", path, exc)
            return None
        problem = self._problem(payload, config, expected)
        if problem:
            logger.warning("kernel cache %s is not usable: %s; recomputing", path, problem)
            return None
        return dict(payload["tensors"])

    def _problem(
        self, payload: Any, config: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]] | None
    ) -> str | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("tensors"), dict):
            return "not a kernel cache file"
        if payload.get("format") != CACHE_FORMAT:
            return f"format {payload.get('format')} != {CACHE_FORMAT}"
        if payload.get("key") != self.key(config) or payload.get("config") != _canonical(config):
            return "written for another configuration"
        tensors: dict[str, Any] = payload["tensors"]
        checksums = payload.get("checksums", {})
        if expected is not None and set(expected) != set(tensors):
            return f"holds {sorted(tensors)}, expected {sorted(expected)}"
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                return f"entry '{name}' is not a tensor"
            if expected is not None and tuple(tensor.shape) != tuple(expected[name]):
                return f"'{name}' has shape {tuple(tensor.shape)}, expected {tuple(expected[name])}"
            if checksums.get(name) != _digest(tensor):
                return f"checksum of '{name}' does not match (corrupt file)"
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"'{name}' holds NaN or Inf"
        return None

    def save(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write ``tensors`` for ``config`` atomically; returns the path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(config)
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        payload = {
            "format": CACHE_FORMAT,
            "key": self.key(config),
            "config": _canonical(config),
            "tensors": cpu,
            "checksums": {name: _digest(t) for name, t in cpu.items()},
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(
        self,
        config: Mapping[str, Any],
        compute: Callable[[], Mapping[str, torch.Tensor]],
        expected: Mapping[str, tuple[int, ...]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Cached tensors for ``config``, or ``compute()`` saved (after checking ``expected`` shapes).

        A cache that cannot be written (read-only, full) costs one warning, never the computed tensors.
        """
        cached = self.load(config, expected)
        if cached is not None:
            return cached
        fresh = dict(compute())
        if expected is not None:
            for name, shape in expected.items():
                if name not in fresh or tuple(fresh[name].shape) != tuple(shape):
                    got = tuple(fresh[name].shape) if name in fresh else "missing"
                    raise BenchError(f"computed kernel '{name}' has shape {got}, expected {tuple(shape)}")
        self.save_or_warn(config, fresh)
        return fresh

    def save_or_warn(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path | None:
        """`save`, or one warning and None when the cache cannot be written."""
        try:
            return self.save(config, tensors)
        except OSError as exc:
            logger.warning("could not write the kernel cache in %s (%s); the run goes on without it", self.root, exc)
            return None


@dataclass(frozen=True)
class ReferenceKernels:
    """One kernel file of the reference: each output of the formula ``[N_train, C, N_x, C]``, and labels."""

    outputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    @property
    def kernel(self) -> torch.Tensor:
        """The first output, ``kernel``."""
        return self.outputs["kernel"]

    @property
    def flipped(self) -> torch.Tensor | None:
        """asym's flipped kernel (None for a formula without it)."""
        return self.outputs.get("flipped")


def reference_kernel_path(directory: Path | str, split: str, task: str) -> Path:
    """``<directory>/<split>_kernels_<task>.pt``, the reference's file name (split: train/dev/test)."""
    return Path(directory) / f"{split}_kernels_{task}.pt"


def load_reference_kernels(
    path: Path | str,
    *,
    formula: str,
    n_train: int | None = None,
    n_examples: int | None = None,
    num_outputs: int | None = None,
) -> ReferenceKernels:
    """Load and validate a kernel file written by princeton-nlp/LM-Kernel-FT.

    The file holds ``(kernel, labels)``: ``kernel`` is ``[N_train, C, N_x, C]``, or for a formula with
    several outputs the stack of them in the formula's order (A-SignGD: ``[2, N_train, C, N_x, C]``,
    the kernel and its flip). Labels are
    returned as class indices (the reference's -1/+1 binary labels become 0/1). Any mismatch with
    the given ``n_train``, ``n_examples`` (N_x) or ``num_outputs`` (C) raises `BenchError`.
    """
    from registry.formulas import get_formula

    spec = get_formula(formula)
    names = spec.output_names
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"reference kernel file '{path}' not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"cannot read reference kernel file '{path}': {exc}") from None
    if not isinstance(payload, tuple | list) or len(payload) != 2:
        raise BenchError(f"'{path}' should hold a pair (kernel, labels), got {type(payload).__name__}")
    kernel, labels = payload
    if not isinstance(kernel, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise BenchError(f"'{path}' should hold two tensors (kernel, labels)")
    if len(names) > 1:
        if kernel.dim() != 5 or kernel.shape[0] != len(names):
            raise BenchError(
                f"'{path}' holds a kernel of shape {tuple(kernel.shape)}; the file of formula '{spec.name}' should "
                f"stack its {len(names)} kernels ({', '.join(names)}), [{len(names)}, N_train, C, N_x, C]. Is it a "
                "file for another formula?"
            )
        tensors = dict(zip(names, kernel.unbind(0), strict=True))
    elif kernel.dim() != 4:
        raise BenchError(
            f"'{path}' holds a kernel of shape {tuple(kernel.shape)}, expected [N_train, C, N_x, C] for "
            f"formula '{spec.name}'"
        )
    else:
        tensors = {"kernel": kernel}
    for name, tensor in tensors.items():
        what = "kernel" if name == "kernel" else f"{name} kernel"
        if not tensor.is_floating_point():
            raise BenchError(f"'{path}' holds a {what} of dtype {tensor.dtype}; kernels are floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise BenchError(f"'{path}': the {what} holds {bad} NaN or Inf values; recompute or re-export it")
    kernel = tensors["kernel"]
    n_tr, c, n_x, c2 = kernel.shape
    problems = []
    if c != c2:
        problems.append(f"the two logit axes differ ({c} vs {c2})")
    if n_train is not None and n_tr != n_train:
        problems.append(f"N_train is {n_tr}, expected {n_train}")
    if n_examples is not None and n_x != n_examples:
        problems.append(f"N_x is {n_x}, expected {n_examples}")
    if num_outputs is not None and c != num_outputs:
        problems.append(f"C is {c}, expected {num_outputs}")
    if labels.reshape(-1).numel() != n_x:
        problems.append(f"{labels.numel()} labels for {n_x} examples")
    if problems:
        raise BenchError(f"reference kernel file '{path}' does not fit this run: {'; '.join(problems)}")
    labels = labels.reshape(-1)
    if c == 1 and labels.numel() and bool(((labels == -1) | (labels == 1)).all()):
        labels = ((labels + 1) / 2).long()
    else:
        labels = labels.long()
    return ReferenceKernels({name: t.to(torch.float64) for name, t in tensors.items()}, labels)
