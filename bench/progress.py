"""What the user sees while cells run: plain log lines, or progress bars on a terminal."""

from __future__ import annotations

import sys

from bench import matrix
from bench.protocol import Event


class Reporter:
    """What the user sees while a run goes on: plain log lines (not a terminal, CI logs)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr   # now, not when this module loaded

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cell_started(self, index: int, total: int, cell: matrix.Cell) -> None:
        self._say(f"[{index + 1}/{total}] {cell.cell_id}: starting")

    def cell_event(self, cell: matrix.Cell, event: Event) -> None:
        if event.kind == "phase":
            self._say(f"    {cell.cell_id}: {event.fields.get('phase')}")
        elif event.kind == "step":
            self._say(f"    {cell.cell_id}: step {event.fields['done']}/{event.fields['total']}")

    def cell_finished(self, index: int, total: int, cell: matrix.Cell, row: dict) -> None:
        self._say(f"[{index + 1}/{total}] {cell.cell_id}: {finished_text(cell, row)}")

    def say(self, text: str) -> None:
        self._say(text)

    def _say(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (BrokenPipeError, OSError):
            pass  # a closed terminal or pipe must not cost the run


def finished_text(cell: matrix.Cell, row: dict) -> str:
    """One line per finished cell, saying what each figure is."""
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    if row.get("images_per_s") is None:
        return f"ok, {row['reason']}"
    return (f"ok, {row['images_per_s']:.0f} images/s (batch {cell['batch_size']} / median step "
            f"{row['step_median_s'] * 1000:.1f} ms, {row['steady_steps']} steady steps, warm-up "
            f"excluded, {cell['backend']}); full training {row['train_s']:.1f} s")


class RichReporter(Reporter):
    """Progress bars on a terminal: cells overall, and the current cell's phase and steps."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=self.stream))
        self.progress.__enter__()
        self.cells = self.progress.add_task("cells", total=None)
        self.steps = self.progress.add_task("steps", total=None, visible=False)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        return False

    def cell_started(self, index, total, cell):
        self.progress.update(self.cells, total=total, completed=index)
        self.progress.reset(self.steps, total=None, visible=True,
                            description=f"{cell.cell_id}: starting the worker")

    def cell_event(self, cell, event):
        if event.kind == "phase":
            self.progress.update(self.steps, description=f"{cell.cell_id}: {event.fields.get('phase')}")
        elif event.kind == "step":
            self.progress.update(self.steps, total=event.fields["total"], completed=event.fields["done"],
                                 description=f"{cell.cell_id}: training")

    def cell_finished(self, index, total, cell, row):
        self.progress.update(self.cells, completed=index + 1)
        self.progress.update(self.steps, visible=False)
        super().cell_finished(index, total, cell, row)

    def _say(self, text):
        try:
            self.progress.console.print(text, markup=False, highlight=False)
        except (BrokenPipeError, OSError):
            pass


def reporter_for(stream=sys.stderr) -> type[Reporter]:
    """Progress bars on a terminal, log lines elsewhere (CI logs, a file)."""
    return RichReporter if stream.isatty() else Reporter
