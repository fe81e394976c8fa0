"""Kernel formulas as plain data: which sides of the eNTK are signed, for each kernel a formula outputs.

A formula names one or more kernel *outputs*; each output is the inner product of the training
(``a``) side's per-example gradients with the other (``b``) side's, each side either raw or signed:
``K(x, x')_ab = <s_a(g_a(x)), s_b(g_b(x'))>`` with ``s`` the identity or ``sign``. The first output is
always named ``kernel``; ``asym`` also outputs its ``flipped`` kernel (sign on the ``b`` side), which
the asymmetric LS-SVM reads. A formula also says which kernel solver it uses by default.

The spec holds no code, so the registry lives here, below the engine: plugins (entry-point group
``kernel_bench.formulas``, an object that is a `Formula`) and the leaderboard need no engine import.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry.errors import BenchError
from registry.registry import Registry

#: Output names are used in cache and file keys (``{split}_{output}``); ``logits`` is taken by f0.
_OUTPUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_OUTPUTS = frozenset({"logits"})


class KernelOutput(BaseModel):
    """One kernel a formula produces: its name and whether each side's gradients are signed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sign_a: bool = Field(description="sign of the training-side gradients")
    sign_b: bool = Field(description="sign of the other side's gradients")

    @property
    def combo(self) -> tuple[bool, bool]:
        """``(sign_a, sign_b)``: the sign combination the engine computes."""
        return (self.sign_a, self.sign_b)


class Formula(BaseModel):
    """A kernel formula: name, outputs (first one ``kernel``), default solver and aliases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    outputs: tuple[KernelOutput, ...]
    default_solver: str = "lstsq"
    aliases: tuple[str, ...] = ()
    summary: str = ""

    @model_validator(mode="after")
    def _check(self) -> Formula:
        names = [o.name for o in self.outputs]
        if not names or names[0] != "kernel":
            raise ValueError(f"formula '{self.name}': the first output must be named 'kernel', got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"formula '{self.name}': output names must be distinct, got {names}")
        for name in names:
            if not _OUTPUT_NAME.match(name) or name in RESERVED_OUTPUTS:
                raise ValueError(f"formula '{self.name}': bad output name '{name}' (lowercase identifier, not "
                                 f"{', '.join(sorted(RESERVED_OUTPUTS))})")
        return self

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs, in order."""
        return tuple(o.name for o in self.outputs)

    @property
    def combos(self) -> tuple[tuple[bool, bool], ...]:
        """The sign combinations of the outputs, in order."""
        return tuple(o.combo for o in self.outputs)

    @property
    def signed(self) -> bool:
        """Whether any output takes signs (then the fast strategy may use exact float64 signs)."""
        return any(o.sign_a or o.sign_b for o in self.outputs)


def _check_formula(name: str, obj: object) -> str | None:
    if not isinstance(obj, Formula):
        return f"it is a {type(obj).__name__}, not a registry.formulas.Formula"
    return None


FORMULAS: Registry[Formula] = Registry("kernel formula", "kernel_bench.formulas", check=_check_formula)


def register_formula(spec: Formula) -> Formula:
    """Register a `Formula` under its name and aliases."""
    FORMULAS.add(spec.name, spec, aliases=spec.aliases)
    return spec


def get_formula(name: str) -> Formula:
    """The registered formula ``name`` (aliases and case folded); unknown names raise `BenchError`.

    A plugin's formula is found by its aliases too (entry points register only the name).
    """
    try:
        return FORMULAS.get(str(name))
    except BenchError:
        key = str(name).strip().lower()
        found = [spec for _, spec in FORMULAS.items() if key in (a.lower() for a in spec.aliases)]
        if len(found) == 1:
            return found[0]
        raise


def sign_combos(formulas: list[Formula]) -> tuple[tuple[bool, bool], ...]:
    """The distinct (sign on a, sign on b) products ``formulas`` need, in order of first use."""
    return tuple(dict.fromkeys(combo for f in formulas for combo in f.combos))


register_formula(Formula(
    name="sgd", outputs=(KernelOutput(name="kernel", sign_a=False, sign_b=False),),
    summary="K_SGD = <grad f(x), grad f(x')>",
))
register_formula(Formula(
    name="signgd", outputs=(KernelOutput(name="kernel", sign_a=True, sign_b=True),),
    summary="K_SignGD = <sign grad f(x), sign grad f(x')>",
))
register_formula(Formula(
    name="asym",
    outputs=(KernelOutput(name="kernel", sign_a=True, sign_b=False), KernelOutput(name="flipped", sign_a=False,
                                                                                  sign_b=True)),
    default_solver="asym",
    aliases=("asymmetric_signgd", "asymmetric-signgd", "a-signgd", "adam"),
    summary="K_A-SignGD = <sign grad f(x_train), grad f(x)> and its flip (the Adam analog)",
))
