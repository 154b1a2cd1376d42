"""Starting, streaming, timing out and killing worker processes (cells and peak measurements).

A worker gets its own process group, so a terminal's Ctrl-C reaches only the harness, which
then stops the worker itself. When a worker ends, however it ends, its whole group is killed
(a grandchild never outlives its cell), whether or not the worker itself is still alive.
``--cell-timeout`` covers the worker's whole life, not just its output: one that closes its
output and keeps running is killed at the deadline. Once it has exited, its group is killed
at once, so its output closes and is read to the end however slowly this process runs; only
a child that left the group (``setsid``) can keep it open, and after :data:`EXIT_GRACE_S`
with nothing to read, reading stops. On Linux a
worker also dies with the harness (the kernel's parent-death signal, set by a short prelude
that then becomes the worker), even when the harness is SIGKILLed in the worker's first instant.
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
import re
import select
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
PUMP_JOIN_S = 2
#: after the worker exits, how long its output may stay open with nothing to read (a child that
#: left its group holds it) before reading stops
EXIT_GRACE_S = 2.0
LOG_TAIL_BYTES = 64 * 1024
_PR_SET_PDEATHSIG = 1


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
        process = start_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
    except OSError as exc:
        _close(log)
        outcome.reason = f"could not start the worker: {exc.strerror or exc}"
        return outcome
    watcher = watch(process.pid) if watch else None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(process.stdout, lines, log, outcome), daemon=True)
    pump.start()
    try:
        assert process.stdin is not None          # started with stdin=PIPE
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        outcome.reason = _follow(process, lines, outcome, on_event, timeout_s, parse_result)
    finally:
        kill_group(process)  # also when it exited: its children go with it
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


def start_process(command, **popen_kwargs) -> subprocess.Popen:
    """Start a worker (or a local peer) in a process group of its own that dies with this process.

    OSError if it cannot be started. Every worker the harness starts goes through here.
    """
    return subprocess.Popen(with_parent_death_signal(list(command), os.getpid()), start_new_session=True,
                            **popen_kwargs)


#: Run first in the worker's process, then replaced by the worker itself (same pid): asks the
#: kernel for SIGKILL when the harness dies (PR_SET_PDEATHSIG, kept across exec), and exits at
#: once if the harness is already gone. Not a preexec_fn: Python code between fork and exec
#: would let a Ctrl-C arriving then be swallowed by the fork hooks.
_PARENT_DEATH_PRELUDE = (
    "import ctypes, os, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, {int(signal.SIGKILL)})\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n")


def with_parent_death_signal(command: list[str], parent_pid: int) -> list[str]:
    """``command`` started so that it dies with ``parent_pid`` (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-c", _PARENT_DEATH_PRELUDE, str(parent_pid), *command]


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
    """Read the worker's messages until it has exited and its output is read; returns a
    failure reason or ''.

    The deadline covers the worker's life, not only its output. Once the worker has exited,
    its group is killed and its output read to the end; if something outside the group
    holds the pipe open, reading stops after EXIT_GRACE_S with nothing to read.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    reason = ""
    output_closed = exited = False
    idle_since, idle_checks = None, 0
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            kill_group(process)
            return f"timed out after {timeout_s:g} s (--cell-timeout); killed"
        wait = 0.5 if deadline is None else min(0.5, deadline - now)
        if not exited and process.poll() is not None:
            exited = True
            kill_group(process)  # its children go too, so its output closes
        if exited:
            if output_closed:
                return reason
            if lines.empty() and _nothing_to_read(process.stdout):
                # idle for the grace *and* over many waits below, in which the reading thread
                # runs: a harness descheduled for seconds does not mistake that for idleness
                idle_since, idle_checks = idle_since or now, idle_checks + 1
                if now - idle_since >= EXIT_GRACE_S and idle_checks >= EXIT_GRACE_S / 0.05:
                    return reason
            else:
                idle_since, idle_checks = None, 0
            wait = min(wait, 0.05)
        elif output_closed:  # it closed its output but still runs: wait for it, up to the deadline
            time.sleep(min(wait, 0.05))
            continue
        try:
            line = lines.get(timeout=max(wait, 0.001))
        except queue.Empty:
            continue
        if line is None:
            output_closed = True
            continue
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


def _nothing_to_read(stream) -> bool:
    """Whether the worker's output pipe has neither data nor its end waiting to be read."""
    try:
        return not select.select([stream.fileno()], [], [], 0)[0]
    except (OSError, ValueError):  # closed: nothing more will come
        return True


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
    """SIGKILL the worker's whole process group, whether or not the worker itself still
    runs (its children may), and reap the worker."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


#: framework start-up and logging chatter, never the reason a worker died: glog/absl
#: (``I1130 ...``, ``W0000 ...``) and TensorFlow's C++ log lines at info/warning level, and
#: CUDA/cuDNN/cuBLAS/TensorRT initialisation lines at any level but fatal
_NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d\d\.\d+|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] |WARNING: All log messages before)"
    r"|^(?![F]\d{4} ).*(?:cuda|cudnn|cublas|cufft|tensorrt|TF-TRT|GPU will not be used|CPU instructions"
    r"|rebuild TensorFlow)", re.IGNORECASE)
#: the last line of a Python traceback: ``SomeError: what happened``
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b")


def exit_reason(status: int, log_path: Path) -> str:
    """Why a worker ended without a result, with the line of its log that says why."""
    if status < 0:
        name = signal.Signals(-status).name
        hint = {"SIGKILL": " (out of memory? the kernel's OOM killer sends SIGKILL)",
                "SIGALRM": (" (its deadline for every peer worker to join passed: were all "
                            "started, with the same --cluster? see --connect-timeout)")}.get(name, "")
        reason = f"worker killed by {name}{hint}"
    else:
        reason = f"worker exited with status {status} without a result"
    error, last = _telling_lines(log_path)
    if error:
        return f"{reason}; error in its log: {error[:200]}"
    return f"{reason}; last log line: {last[:200]}" if last else reason


def _telling_lines(log_path: Path) -> tuple[str, str]:
    """The last exception line and the last line that is not framework noise, from the log's end."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - LOG_TAIL_BYTES))
            tail = log.read(LOG_TAIL_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return "", ""
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not _NOISE.search(line.strip())]
    error = next((line for line in reversed(lines) if _EXCEPTION.match(line)), "")
    return error, (lines[-1] if lines else "")
