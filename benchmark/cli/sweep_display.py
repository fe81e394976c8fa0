"""How `bench sweep` shows a sweep: live progress (rich), the dry-run table, and the closing summary."""

from __future__ import annotations

import time
from typing import Any

from benchmark.sweeps import Cell, SweepObserver, SweepReport


class SweepDisplay(SweepObserver):
    """Rich progress for a sweep: counts of done / running / failed / skipped, elapsed and ETA.

    With ``console=None`` nothing is shown (library use and tests).
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self.cells: list[Cell] = []
        self.progress: Any = None
        self.task: Any = None
        self.started = time.perf_counter()

    def _counts(self) -> str:
        def n(*statuses: str) -> int:
            return sum(c.status in statuses for c in self.cells)

        parts = [f"[green]done {n('done')}[/]", f"[cyan]running {n('running', 'waiting')}[/]",
                 f"[red]failed {n('failed')}[/]", f"[dim]skipped {n('skipped')}[/]"]
        if n("elsewhere"):
            parts.append(f"[yellow]elsewhere {n('elsewhere')}[/]")
        return " · ".join(parts)

    def _eta(self) -> str:
        ran = [c.seconds for c in self.cells if c.status in ("done", "failed") and c.seconds > 0]
        left = sum(c.status in ("pending", "running", "elsewhere", "waiting") for c in self.cells)
        if not left:
            return "0:00:00"
        if not ran:
            return "-:--:--"
        seconds = int(sum(ran) / len(ran) * left)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def start(self, cells: list[Cell]) -> None:
        """Show the display for ``cells`` (already-finished ones count as skipped)."""
        self.cells = cells
        self.started = time.perf_counter()
        if self.console is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        skipped = sum(c.status == "skipped" for c in cells)
        if skipped:
            self.console.print(f"{skipped} of {len(cells)} cells already have a finished run: skipped")
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=len(cells), completed=skipped, counts=self._counts(),
                                           eta=self._eta())

    def refresh(self, description: str | None = None) -> None:
        """Update counts, completion and ETA."""
        if self.progress is None:
            return
        finished = sum(c.status in ("done", "failed", "skipped") for c in self.cells)
        fields: dict[str, Any] = {"completed": finished, "counts": self._counts(), "eta": self._eta()}
        if description is not None:
            fields["description"] = description
        self.progress.update(self.task, **fields)

    def cell_started(self, cell: Cell) -> None:
        """A cell began running."""
        self.refresh(f"[{cell.index + 1}/{len(self.cells)}] {cell.label}")

    def cell_waiting(self, cell: Cell, holder: str) -> None:
        """Waiting for a cell another process is running."""
        self.refresh(f"waiting for {cell.label} ({holder})")

    def cell_done(self, cell: Cell, note: str = "") -> None:
        """A cell ended (done, failed, or found finished)."""
        if self.progress is not None:
            from rich.text import Text

            line = Text()
            if cell.status == "done":
                shown = {k: v for k, v in sorted(cell.metrics.items()) if k in ("dev_acc", "test_acc", "test_f1")}
                metrics = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                line.append("✓ ", style="green").append(f"{cell.label}: {metrics} ({cell.seconds:.1f}s)")
            elif cell.status == "failed":
                error = cell.error.splitlines()[0] if cell.error else ""
                line.append("✗ ", style="red").append(f"{cell.label}: {error}")
            elif note:
                line.append(f"- {cell.label}: {note}", style="dim")
            if line:
                self.progress.console.print(line, soft_wrap=True)
        self.refresh()

    def stop(self) -> None:
        """Remove the live display (the last state stays printed)."""
        if self.progress is not None:
            self.refresh("sweep")
            self.progress.stop()
            self.progress = None


def dry_run_table(states: list[tuple[Cell, str]]) -> Any:
    """A rich table of the cells and whether each is done, running elsewhere, or to run."""
    from rich.table import Table

    table = Table(title=f"sweep: {len(states)} cells")
    for column in ("#", "task", "method", "k", "seed", "template", "options", "config hash", "state"):
        table.add_column(column)
    styles = {"done": "green", "running elsewhere": "yellow", "to run": "bold"}
    for cell, state in states:
        c = cell.config
        options = ",".join(f"{k}={v}" for k, v in sorted(c.options.items()))
        table.add_row(str(cell.index + 1), c.task, c.method, str(c.k), str(c.seed), c.template or "default",
                      options, cell.hash, f"[{styles.get(state, 'red')}]{state}[/]")
    return table


def summary_lines(report: SweepReport) -> list[str]:
    """The end-of-sweep report: counts, the parent run, and each failed or unfinished cell."""
    lines = [f"sweep {report.sweep_hash[:8]}: {len(report.cells)} cells — done {report.count('done')}, "
             f"skipped (already finished) {report.count('skipped')}, failed {report.count('failed')}"
             + (f", running elsewhere {report.count('elsewhere')}" if report.count("elsewhere") else "")
             + (f", not run {report.count('not run')}" if report.count("not run") else "")
             + (f"; parent run {report.parent_run_id}" if report.parent_run_id else "")]
    for cell in report.failed:
        run = f" (run {cell.run_id})" if cell.run_id else ""
        lines.append(f"FAILED {cell.label}{run}: {cell.error.splitlines()[0] if cell.error else ''}")
    return lines
