"""The one exception type a user can cause, shared by every room."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class BenchError(Exception):
    """An error caused by user input (unknown name, bad file, bad option).

    The CLI prints its message on one line and exits with code 2, so the message must say
    what went wrong and what to do about it.
    """


def first_error(exc: ValidationError, default: str = "value") -> tuple[str, str]:
    """Where a pydantic validation failed first (dotted field path, or ``default``) and why, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or default
    return where, str(first["msg"]).removeprefix("Value error, ")
