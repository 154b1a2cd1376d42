"""Plan the matrix, run each cell in its own subprocess, collect every outcome.

One cell, one fresh process: the worker's environment hides every other device before
TensorFlow starts, memory from one cell never pollutes the next, and a crash, a hang or an
out-of-memory costs one row, not the run. Rows are written to disk after every cell.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import results
from bench.devices import Requested, auto_precision
from bench.worker import MARK
from cifar_model.data import resolve_data_placement, split_sizes, training_set_bytes


@dataclass(frozen=True)
class RunConfig:
    """Everything ``bench run`` was asked to do, validated."""

    batch_sizes: tuple[int, ...]
    epochs: int
    steps: int | None                     # cap on steps per epoch; None: full epochs
    warmup: int
    repeats: int = 1
    data: str = "cifar10"                 # what the cells train on: cifar10 or synthetic
    data_path: str | None = None          # resolved CIFAR-10 location (cifar10 only)
    data_note: str = ""                   # why synthetic, when it is a fallback
    split: str = "standard"
    precisions: tuple[str, ...] = ("fp32",)
    jit_compile: tuple[str, ...] = ("auto",)
    cpu_threads: tuple[int, ...] = (0,)
    steps_per_execution: tuple[int, ...] = (1,)
    data_placements: tuple[str, ...] = ("auto",)
    cell_timeout: float | None = None
    seed: int = 0
    synthetic_images: int | None = None
    unsynced_steps: int = 0               # > 0: also time that many steps with one sync at the end


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a device, a batch size and settings, one repeat."""

    device: Requested
    batch_size: int
    precision: str
    jit_compile: str
    cpu_threads: int
    steps_per_execution: int
    repeat: int
    requested_precision: str = ""   # as asked ("auto" resolves per device); "" means = precision
    data_placement: str = "host"    # where the training images live: host or device
    requested_data_placement: str = ""

    @property
    def cell_id(self) -> str:
        device = self.device.id.replace(":", "")
        return (f"{device}_bs{self.batch_size}_{self.precision}_xla-{self.jit_compile}"
                f"_thr{self.cpu_threads}_spe{self.steps_per_execution}"
                f"_data-{self.data_placement}_r{self.repeat}")

    @property
    def device_type(self) -> str:
        return "CPU" if self.device.id == "cpu" else "GPU"

    def columns(self) -> dict:
        """The cell's own columns of runs.csv."""
        device = self.device.device
        return {"cell_id": self.cell_id, "repeat": self.repeat, "device_id": self.device.id,
                "device_name": device.name if device else "", "device_type": self.device_type,
                "batch_size": self.batch_size, "precision": self.precision,
                "precision_requested": self.requested_precision or self.precision,
                "jit_compile": self.jit_compile, "cpu_threads": self.cpu_threads,
                "steps_per_execution": self.steps_per_execution,
                "data_placement": self.data_placement,
                "data_placement_requested": self.requested_data_placement or self.data_placement}


def plan(config: RunConfig, devices: list[Requested]) -> list[Cell]:
    """Devices x batch sizes x settings, repeats outermost.

    Repeating the whole sweep (rather than each cell back to back) spreads slow drifts of
    a shared machine over every cell instead of loading them onto one. Precision ``auto``
    becomes the device's own choice (:func:`bench.devices.auto_precision`), data placement
    ``auto`` the device's memory if the training set fits there
    (:func:`cifar_model.data.resolve_data_placement`); a cell that then equals another is
    planned once.
    """
    train_images = (config.synthetic_images if config.data == "synthetic" and config.synthetic_images
                    else split_sizes(config.split)[0])
    cells: dict[str, Cell] = {}
    for repeat, device, batch, precision, jit, threads, spe, placement in itertools.product(
            range(config.repeats), devices, config.batch_sizes, config.precisions,
            config.jit_compile, config.cpu_threads, config.steps_per_execution,
            config.data_placements):
        resolved, resolved_placement = precision, placement
        if device.device is not None:
            if precision == "auto":
                resolved = auto_precision(device.device)
            resolved_placement = resolve_data_placement(
                placement, device.device.type, device.device.memory_bytes,
                training_set_bytes(train_images))
        cell = Cell(device, batch, resolved, jit, threads, spe, repeat, requested_precision=precision,
                    data_placement=resolved_placement, requested_data_placement=placement)
        cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def peak_combinations(cells: list[Cell]) -> list[tuple[Requested, str, int]]:
    """Each (usable device, precision, threads) the cells need a peak for, in plan order."""
    combos = {}
    for cell in cells:
        if cell.device.device is not None and cell.device.device.usable:
            combos.setdefault((cell.device.id, cell.precision, cell.cpu_threads),
                              (cell.device, cell.precision, cell.cpu_threads))
    return list(combos.values())


def worker_environment(device: Requested, base: dict | None = None) -> dict:
    """A worker's environment: only ``device`` visible, before TensorFlow starts."""
    env = dict(os.environ if base is None else base)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"          # the same numbering as nvidia-smi
    env["CUDA_VISIBLE_DEVICES"] = "-1" if device.id == "cpu" else str(device.device.index)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_spec(cell: Cell, config: RunConfig) -> dict:
    return {"cell_id": cell.cell_id, "device_type": cell.device_type,
            "batch_size": cell.batch_size, "epochs": config.epochs, "steps": config.steps,
            "warmup": config.warmup, "precision": cell.precision, "jit_compile": cell.jit_compile,
            "cpu_threads": cell.cpu_threads, "steps_per_execution": cell.steps_per_execution,
            "data_placement": cell.data_placement, "data": config.data,
            "data_path": config.data_path, "data_note": config.data_note,
            "split": config.split, "seed": config.seed + cell.repeat,
            "synthetic_images": config.synthetic_images, "unsynced_steps": config.unsynced_steps}


@dataclass
class WorkerOutcome:
    result: dict | None = None
    reason: str = ""
    events: list[dict] = field(default_factory=list)


def run_worker(spec: dict, env: dict, log_path: Path, timeout_s: float | None,
               on_event: Callable[[dict], None] = lambda event: None,
               command: list[str] | None = None) -> WorkerOutcome:
    """Run one worker process to completion, a timeout, or Ctrl-C (which is re-raised).

    The worker gets its own process group so a terminal's Ctrl-C reaches only the
    harness, which then stops the worker itself; on a timeout the whole group is killed.
    Its stderr shares the stdout pipe, so its log keeps everything in the order written.
    """
    command = command or [sys.executable, "-m", "bench.worker"]
    outcome = WorkerOutcome()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace", start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        pump = threading.Thread(target=_pump, args=(process.stdout, lines, log), daemon=True)
        pump.start()
        try:
            process.stdin.write(json.dumps(spec))
            process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            outcome.reason = _follow(process, lines, outcome, on_event, timeout_s)
        except BaseException:
            _kill(process)
            raise
        finally:
            pump.join(timeout=10)
        status = process.wait()
    if outcome.result is not None and status == 0:
        return outcome
    outcome.result = None
    if not outcome.reason:
        outcome.reason = _exit_reason(status, log_path)
    return outcome


def _follow(process, lines: queue.Queue, outcome: WorkerOutcome, on_event, timeout_s) -> str:
    """Read the worker's messages until it ends; returns a failure reason or ''."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    reason = ""
    while True:
        wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if wait <= 0:
            _kill(process)
            return f"timed out after {timeout_s:g} s (--cell-timeout); killed"
        try:
            line = lines.get(timeout=wait)
        except queue.Empty:
            continue
        if line is None:
            return reason
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a garbled message is not worth a crash; the cell's log keeps the rest
        outcome.events.append(event)
        if event["event"] == "result":
            outcome.result = event["result"]
        elif event["event"] == "error":
            reason = event["reason"]
        on_event(event)


def _pump(stream, lines: queue.Queue, log) -> None:
    """Forward the worker's protocol lines; everything else it prints goes to its log."""
    for line in stream:
        if line.startswith(MARK):
            lines.put(line[len(MARK):])
        else:
            log.write(line)
            log.flush()
    lines.put(None)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            process.kill()
    except ProcessLookupError:
        pass
    process.wait()


def _exit_reason(status: int, log_path: Path) -> str:
    if status < 0:
        name = signal.Signals(-status).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        reason = f"worker killed by {name}{hint}"
    else:
        reason = f"worker exited with status {status} without a result"
    try:
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    return f"{reason}; last log line: {tail[-1][:200]}" if tail else reason


class Reporter:
    """What the user sees while a run goes on: plain log lines (not a terminal, CI logs)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cell_started(self, index: int, total: int, cell: Cell) -> None:
        self._say(f"[{index + 1}/{total}] {cell.cell_id}: starting")

    def cell_event(self, cell: Cell, event: dict) -> None:
        if event["event"] == "step":
            self._say(f"    {cell.cell_id}: step {event['done']}/{event['total']}")

    def cell_finished(self, index: int, total: int, cell: Cell, row: dict) -> None:
        if row["status"] == "ok":
            self._say(f"[{index + 1}/{total}] {cell.cell_id}: ok, {row['images_per_s']:.0f} images/s "
                      f"(batch {cell.batch_size} / median step {row['step_median_s'] * 1000:.1f} ms, "
                      f"{row['steady_steps']} steady steps, warm-up excluded); "
                      f"full training {row['train_s']:.1f} s")
        else:
            self._say(f"[{index + 1}/{total}] {cell.cell_id}: {row['status']}: {row['reason']}")

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class RichReporter(Reporter):
    """Progress bars on a terminal: cells overall, and steps within the current cell."""

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
                            description=f"{cell.cell_id}: starting")

    def cell_event(self, cell, event):
        if event["event"] == "step":
            self.progress.update(self.steps, total=event["total"], completed=event["done"],
                                 description=f"{cell.cell_id}: steps")

    def cell_finished(self, index, total, cell, row):
        self.progress.update(self.cells, completed=index + 1)
        self.progress.update(self.steps, visible=False)
        super().cell_finished(index, total, cell, row)

    def _say(self, text):
        self.progress.console.print(text, markup=False, highlight=False)


def execute(config: RunConfig, cells: list[Cell], writer: results.RunWriter, context: dict,
            reporter: Reporter, log_dir: Path, worker_command: list[str] | None = None,
            peaks: dict | None = None) -> list[dict]:
    """Run every cell; each outcome becomes a row on disk before the next cell starts.

    ``context`` holds the run-wide row values (run id, system, git commit); ``peaks`` the
    measured peak of each (device, precision, threads), for the efficiency columns. Ctrl-C
    propagates as KeyboardInterrupt after the running worker is stopped; every finished
    row is already on disk.
    """
    peaks = peaks or {}
    log_dir.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(cells):
        reporter.cell_started(index, len(cells), cell)
        # what was asked for, so that a skipped or failed row still says it
        planned = {**cell.columns(), "data": config.data, "split": config.split,
                   "epochs": config.epochs, "warmup_steps": config.warmup}
        if cell.device.device is None or not cell.device.device.usable:
            row = results.skipped_row(planned, cell.device.reason, **context)
            writer.add(row)
        else:
            outcome = run_worker(worker_spec(cell, config), worker_environment(cell.device),
                                 log_dir / f"{cell.cell_id}.log", config.cell_timeout,
                                 on_event=lambda event, cell=cell: reporter.cell_event(cell, event),
                                 command=worker_command)
            if outcome.result is None:
                row = results.failed_row(planned, outcome.reason, **context)
                writer.add(row)
            else:
                peak = peaks.get((cell.device.id, cell.precision, cell.cpu_threads))
                row = results.ok_row(planned, outcome.result, peak=peak, **context)
                writer.add(row, results.step_rows(context["run_id"], cell.cell_id,
                                                  outcome.result["records"]))
        reporter.cell_finished(index, len(cells), cell, row)
    return writer.rows
