"""The one exception type a user can cause, shared by every room."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by user input (unknown name, bad file, bad option).

    The CLI prints its message on one line and exits with code 2, so the message must say
    what went wrong and what to do about it.
    """
