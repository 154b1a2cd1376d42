"""Starting, streaming, timing out and killing worker processes (cells and peak measurements).

A worker gets its own process group, so a terminal's Ctrl-C reaches only the harness, which
then stops the worker itself; on a timeout or any interruption the whole group is killed.
Its stderr shares the stdout pipe, so its log keeps everything in the order written. A log
that cannot be written (a full disk) costs the log, never the cell or a hang.

Test hook: ``BENCH_WORKER_COMMAND`` (a shell-style command, split with :func:`shlex.split`)
replaces ``python -m bench.worker`` (cells, and the device probe and peak measurement, which
are its ``--probe`` and ``--peak`` modes), so tests can drive the real CLI with a fake worker
(``python tests/helpers/fake_worker.py``) without a framework. It is read here and nowhere
else; users never need it.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.protocol import MARK, Event, ProtocolError, WorkerResult

WORKER_COMMAND_ENV = "BENCH_WORKER_COMMAND"
WORKER_COMMAND = (tuple(shlex.split(os.environ[WORKER_COMMAND_ENV])) if os.environ.get(WORKER_COMMAND_ENV)
                  else (sys.executable, "-m", "bench.worker"))
PUMP_JOIN_S = 10


@dataclass
class WorkerOutcome:
    """How a worker ended: its result, or why there is none."""

    result: Any = None                  # WorkerResult for a cell, a dict for a peak
    reason: str = ""
    events: list[Event] = field(default_factory=list)
    watched: Any = None                 # what ``watch`` returned when the worker ended
    log_error: str = ""                 # why the log could not be (fully) written


def run_worker(payload: str, env: dict, log_path: Path, timeout_s: float | None,
               on_event: Callable[[Event], None] = lambda event: None,
               command: list[str] | tuple[str, ...] = WORKER_COMMAND,
               parse_result: Callable[[dict], Any] = WorkerResult.from_dict,
               watch: Callable[[int], Any] | None = None) -> WorkerOutcome:
    """Run one worker to completion, a timeout, or an interruption (which is re-raised).

    ``payload`` goes to its stdin. ``watch(pid)``, if given, is called once the process
    exists and must return an object with ``stop()``; what ``stop()`` returns is kept as
    ``outcome.watched`` (the runner samples contention this way).
    """
    outcome = WorkerOutcome()
    log = _open_log(log_path, outcome)
    try:
        process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace", start_new_session=True)
    except OSError as exc:
        _close(log)
        outcome.reason = f"could not start the worker: {exc.strerror or exc}"
        return outcome
    watcher = watch(process.pid) if watch else None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(process.stdout, lines, log, outcome), daemon=True)
    pump.start()
    try:
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        outcome.reason = _follow(process, lines, outcome, on_event, timeout_s, parse_result)
    except BaseException:
        kill_group(process)
        raise
    finally:
        pump.join(timeout=PUMP_JOIN_S)
        if watcher is not None:
            outcome.watched = watcher.stop()
        _close(log)
    status = process.wait()
    if outcome.result is not None and status == 0:
        return outcome
    outcome.result = None
    if not outcome.reason:
        outcome.reason = exit_reason(status, log_path)
    return outcome


def _open_log(path: Path, outcome: WorkerOutcome):
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        outcome.log_error = f"cell log {path} not written: {exc.strerror or exc}"
        return None


def _close(log) -> None:
    if log is None:
        return
    try:
        log.close()
    except OSError:
        pass


def _follow(process, lines: queue.Queue, outcome: WorkerOutcome, on_event, timeout_s,
            parse_result) -> str:
    """Read the worker's messages until it ends; returns a failure reason or ''."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    reason = ""
    while True:
        wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if wait <= 0:
            kill_group(process)
            return f"timed out after {timeout_s:g} s (--cell-timeout); killed"
        try:
            line = lines.get(timeout=wait)
        except queue.Empty:
            continue
        if line is None:
            return reason
        try:
            event = Event.parse(line)
        except ProtocolError:
            continue  # a garbled message is not worth a crash; the cell's log keeps the rest
        outcome.events.append(event)
        if event.kind == "result":
            try:
                outcome.result = parse_result(event.fields.get("result"))
            except (ProtocolError, ValueError, TypeError) as exc:
                reason = f"the worker's result does not follow the protocol: {exc}"
        elif event.kind == "error":
            reason = str(event.fields.get("reason", "unknown error"))[:500]
        on_event(event)


def _pump(stream, lines: queue.Queue, log, outcome: WorkerOutcome) -> None:
    """Forward the worker's protocol lines; everything else it prints goes to its log.

    Always ends with ``None``, even when the log cannot be written or the stream breaks,
    so the reader never waits forever.
    """
    try:
        for line in stream:
            if line.startswith(MARK):
                lines.put(line[len(MARK):])
            elif log is not None:
                try:
                    log.write(line)
                    log.flush()
                except OSError as exc:
                    outcome.log_error = f"cell log not fully written: {exc.strerror or exc}"
                    log = None
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group and reap it."""
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


def exit_reason(status: int, log_path: Path) -> str:
    """Why a worker ended without a result, with the last line of its log."""
    if status < 0:
        name = signal.Signals(-status).name
        hint = {"SIGKILL": " (out of memory? the kernel's OOM killer sends SIGKILL)",
                "SIGALRM": (" (its deadline for every peer worker to join passed: were all "
                            "started, with the same --cluster? see --connect-timeout)")}.get(name, "")
        reason = f"worker killed by {name}{hint}"
    else:
        reason = f"worker exited with status {status} without a result"
    try:
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    return f"{reason}; last log line: {tail[-1][:200]}" if tail else reason
