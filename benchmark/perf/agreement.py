"""Do the fast and the reference eNTK strategies agree? Tolerances, sign round-off, and float64 as the arbiter.

A kernel with a sign in it is sensitive to round-off: a gradient entry within float32 round-off
of zero has an arbitrary sign, and a flip changes the kernel by twice the other side's entry.
So the same kernel is also computed in float64 (on the compared examples only) as the arbiter:
beyond the tolerance, the fast kernel still passes when it is at least as close to the float64
kernel as the reference's is (the difference is then the reference's round-off).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.kernels import select_parameters
from benchmark.perf.floor import float64_kernels, relative

SIGN_TOLERANCE = 2e-4
TOLERANCE = 1e-5


def roundoff_entries(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], params: str) -> int:
    """Most gradient entries with 0 < |g| < 1e-9 (round-off) of any logit of a few examples.

    Their signs are arbitrary, so two correct computations of a sign kernel may differ by up to
    twice the number of such entries on each side.
    """
    tensors = [s.tensor for s in select_parameters(model, params)]
    flags = [t.requires_grad for t in tensors]
    worst = 0
    try:
        for t in tensors:
            t.requires_grad_(True)
        batch = batches[0]
        device = tensors[0].device
        for i in range(min(2, batch["input_ids"].shape[0])):
            logits = model(**{k: v[i : i + 1].to(device) for k, v in batch.items()})
            for c in range(logits.shape[1]):
                grads = torch.autograd.grad(logits[0, c], tensors, retain_graph=True, allow_unused=True)
                count = sum(int(((g != 0) & (g.abs() < 1e-9)).sum()) for g in grads if g is not None)
                worst = max(worst, count)
    finally:
        for t, flag in zip(tensors, flags, strict=True):
            t.requires_grad_(flag)
    return worst


def _pick(value: Any, index: int | None) -> torch.Tensor:
    return value if index is None else value[index]


def agreement(
    model: torch.nn.Module, mlm: torch.nn.Module, words: list[int], train: list[dict[str, torch.Tensor]],
    sub: list[dict[str, torch.Tensor]], formulas: list[str], params: str, fast: dict[str, Any],
    ref: dict[str, Any], n_ref: int,
) -> tuple[list[str], bool]:
    """Report lines on how the two strategies' kernels agree on the first ``n_ref`` eval examples, and whether
    they do (a real mismatch is ``False``)."""
    float32 = next(model.parameters()).dtype != torch.float64
    truth = None
    if float32 and any(f != "sgd" for f in formulas):
        truth = float64_kernels(mlm, words, model.num_outputs == 1, train, sub, formulas, params)
    lines = ["agreement on the common eval examples (max |difference| / max |kernel|):"]
    agree = True
    for f in formulas:
        for name, index in ([("kernel", 0), ("flipped", 1)] if f == "asym" else [("kernel", None)]):
            fk, rk = _pick(fast[f], index)[:, :, :n_ref].cpu(), _pick(ref[f], index).cpu()
            err = relative(fk, rk)
            tol, note = TOLERANCE, ""
            if f == "asym" and name == "flipped" and float32:
                tol = SIGN_TOLERANCE  # both strategies take this kernel's signs from float32 eval-side gradients
                note = "; signs from float32 eval-side gradients in both strategies"
            if f == "signgd":
                noisy = roundoff_entries(model, train, params)
                allowed = 4.0 * noisy / float(rk.abs().max())
                tol = max(SIGN_TOLERANCE, allowed)
                note = (f"; {noisy} gradient entries per example are round-off (0 < |g| < 1e-9, e.g. the attention "
                        f"key bias, whose exact gradient is 0) and may flip sign: up to {allowed:.1e}")
            ok = err <= tol
            line = f"  {f:7s} {name:8s} fast vs reference {err:.2e} (tolerance {tol:.1e}{note})"
            if truth is not None and f != "sgd":
                tk = _pick(truth[f], index).cpu()
                err_fast, err_ref = relative(fk, tk), relative(rk, tk)
                line += f"; vs float64: fast {err_fast:.2e}, reference {err_ref:.2e}"
                if not ok and err_fast <= max(err_ref, tol):
                    ok = True
                    line += " (the reference is the one off: float32 sign round-off)"
            agree &= ok
            lines.append(f"{line} {'OK' if ok else 'MISMATCH'}")
    return lines, agree
