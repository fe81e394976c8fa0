"""The `bench` application: the typer app, its consoles, and the entry point that turns errors into exit codes.

Commands register themselves on `app` from the modules of this package (`benchmark.cli` imports them all).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from benchmark.perf import perf_app
from benchmark.quiet import quiet_libraries
from registry import BenchError, first_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kernel-bench: fine-tuning vs. its kernel analogs.")
app.add_typer(perf_app, name="perf")
console = Console()
err_console = Console(stderr=True)


def _validation_message(exc: ValidationError) -> str:
    where, message = first_error(exc, "config")
    return f"invalid {where}: {message}"


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """Click's exception base class, and typer's bundled copy of it (typer >= 0.22 vendors click)."""
    types: list[type[BaseException]] = []
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        types.append(TyperClickException)
    except ImportError:  # older typer: click's own classes
        pass
    return tuple(types)


def _show_usage_error(exc: Any) -> None:
    """One ``error:`` line, then the command's usage and where to get help (no traceback)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # a bare group (`bench`): its help is the answer
        return
    err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        err_console.print(ctx.get_usage(), highlight=False, markup=False, soft_wrap=True)
        err_console.print(f"Try '{ctx.command_path} --help' for help.", highlight=False, markup=False)


def main() -> None:
    """Entry point of the ``bench`` console script: user errors print one line and exit 2.

    SIGTERM (``timeout``, ``kill``, SLURM, ``docker stop``) stops as Ctrl-C does: the run in progress is
    closed as KILLED, one line on stderr, exit 143 (130 for Ctrl-C).
    """
    from benchmark.lifecycle import sigterm_as_interrupt

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    with sigterm_as_interrupt():
        _main()


TERMINATED_LINE = "terminated (SIGTERM): the run in progress is marked KILLED"


def _main() -> None:
    from benchmark.lifecycle import acknowledge_interrupt, sigterm_received

    click_errors = _click_exception_types()
    try:
        # Without standalone mode click returns (not raises) exit codes and Ctrl-C: pass them on.
        code = app(prog_name="bench", standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130 and sigterm_received():
                acknowledge_interrupt()
                err_console.print(TERMINATED_LINE, highlight=False)
                sys.exit(143)
            sys.exit(code)
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ValidationError as exc:
        err_console.print(f"[bold red]error:[/] {_validation_message(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        acknowledge_interrupt()
        if sigterm_received():
            err_console.print(TERMINATED_LINE, highlight=False)
            sys.exit(143)
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_errors as exc:  # usage errors (unknown command or option, bad or missing value)
        _show_usage_error(exc)
        sys.exit(getattr(exc, "exit_code", 2))
