"""Hostile workers against the real CLI: none hangs the run, outlives its cell, or survives
the harness; a failed row quotes the line that says why, not framework chatter.

Each worker here is a small script of its own (the worker is the attacker); it answers the
device probe by handing over to the fake worker. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import process

sys.path.insert(0, str(Path(__file__).parent))
import test_faults as faults
from test_faults import FAKE_WORKER, FAST, alive, bench, environment, rows, wait_for

started = faults.started  # the fixture: processes a failed test leaves are killed

HANDOVER = f"""
import os, sys, time
FAKE = {FAKE_WORKER!r}
if sys.argv[1:] == ["--probe"]:
    os.execv(FAKE[0], FAKE + sys.argv[1:])
"""


def hostile(tmp_path: Path, body: str, **extra: str) -> dict:
    """An environment whose worker is ``body`` (after the probe hand-over)."""
    script = tmp_path / "hostile_worker.py"
    script.write_text(HANDOVER + textwrap.dedent(body))
    return environment(tmp_path, BENCH_WORKER_COMMAND=f"{sys.executable} {script}", **extra)


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def test_a_worker_that_closes_its_output_and_keeps_running_is_killed_at_the_deadline(tmp_path):
    env = hostile(tmp_path, f"""
        open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))
        os.close(1); os.close(2)
        time.sleep(120)
    """)
    started_at = time.monotonic()
    done = bench("run", *FAST, "--batch-sizes", "32", "--cell-timeout", "3", "--out", "run",
                 cwd=tmp_path, env=env, timeout=90)
    assert done.returncode == 4, done.stderr
    assert "timed out" in rows(tmp_path / "run").loc[0, "reason"]
    assert time.monotonic() - started_at < 90
    assert not alive(pid_in(tmp_path / "pid"))


def test_a_child_holding_the_pipe_neither_hangs_the_cell_nor_outlives_it(tmp_path):
    # the worker leaves a grandchild holding its output, then does its job and exits
    env = hostile(tmp_path, f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(tmp_path / 'grandchild')!r}, 'w').write(str(child.pid))
        os.execv(FAKE[0], FAKE + sys.argv[1:])
    """)
    # no --cell-timeout: before, the harness read the pipe until the grandchild ended (2 min)
    done = bench("run", *FAST, "--batch-sizes", "32", "--out", "run", cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(rows(tmp_path / "run")["status"]) == ["ok"]
    wait_for(lambda: not alive(pid_in(tmp_path / "grandchild")), 5, "the grandchild to be killed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_that_never_watches_its_parent_dies_with_a_sigkilled_harness(tmp_path, started):
    # this worker does nothing to notice its parent; only the kernel can tell it
    env = hostile(tmp_path, f"""
        open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))
        time.sleep(120)
    """)
    run = started("run", *FAST, "--batch-sizes", "32", "--out", "run", env=env)
    worker = wait_for(lambda: pid_in(tmp_path / "pid"), 30, "the worker to start")
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    wait_for(lambda: not alive(worker), 5, "the orphaned worker to die")


def test_a_child_started_after_its_parent_died_exits_before_running(tmp_path):
    # the race: the parent is gone before the death signal is set; the prelude checks and exits
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    import subprocess
    marker = tmp_path / "ran"
    command = process.with_parent_death_signal([sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                                               os.getpid() + 10**6)  # a parent pid that is not ours
    assert subprocess.run(command, check=False, timeout=30).returncode == 1 and not marker.exists()
    # with the right parent it becomes the command itself
    command = process.with_parent_death_signal([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], os.getpid())
    assert subprocess.run(command, check=False, timeout=30).returncode == 0 and marker.exists()


def test_the_reason_of_a_crash_is_its_error_not_a_cuda_start_up_line(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "ValueError: the batch does not fit\n"
                   "E0000 00:00:1732900000.123456   4242 cuda_blas.cc:1418] Unable to register cuBLAS "
                   "factory: Attempting to register factory for plugin cuBLAS when one has already been registered\n"
                   "W0000 00:00:1732900000.2   4242 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\n")
    reason = process.exit_reason(1, log)
    assert "ValueError: the batch does not fit" in reason and "cuBLAS" not in reason


def test_a_crash_without_an_exception_quotes_its_last_meaningful_line(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text("F0000 00:00:1.0 1 check.cc:9] Check failed: ok\n"
                   "2026-11-30 05:00:00.000001: I tensorflow/core/platform/cpu_feature_guard.cc:210] "
                   "This TensorFlow binary is optimized to use available CPU instructions\n")
    assert process.exit_reason(-6, log).endswith("last log line: F0000 00:00:1.0 1 check.cc:9] Check failed: ok")


def test_a_child_that_left_the_group_holding_the_pipe_costs_only_a_short_grace(tmp_path):
    # out of the worker's group, it cannot be killed with it; reading stops once nothing comes
    env = hostile(tmp_path, f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        open({str(tmp_path / 'escaped')!r}, 'w').write(str(child.pid))
        os.execv(FAKE[0], FAKE + sys.argv[1:])
    """)
    try:
        done = bench("run", *FAST, "--batch-sizes", "32", "--out", "run", cwd=tmp_path, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert list(rows(tmp_path / "run")["status"]) == ["ok"]
    finally:
        escaped = pid_in(tmp_path / "escaped")
        if escaped and alive(escaped):
            os.kill(escaped, signal.SIGKILL)
