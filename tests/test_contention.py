"""bench.contention: what else ran beside a cell's worker.

The machine these tests run on is shared, so no test depends on how busy it is: the window
arithmetic is a pure function of two samples (:func:`contention.cpu_shares`), the sampler is
driven by scripted counters, and real processes are used only to check which of them count
as the cell's own (the process tree), never how much CPU they got.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import types

import psutil
import pytest

from bench import contention, nvml
from bench.contention import Contention, ContentionSampler, Sample, cpu_shares

SLEEP = "import time; time.sleep(30)"
PARENT_OF_SLEEPER = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SLEEP!r}])"


@contextlib.contextmanager
def python(code: str):
    """A Python subprocess running ``code``, killed (and reaped) however the test ends."""
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait(timeout=10)


def sample(pid: int, **kwargs) -> Contention:
    """Start and stop a sampler at once: two samples, whatever the machine's load."""
    return ContentionSampler(pid, interval_s=60, scan_every_s=60, **kwargs).start().stop()


# --------------------------------------------------------------------------- the arithmetic

def test_shares_of_a_window_are_a_pure_function_of_its_two_samples():
    first = Sample(t=100.0, busy_s=1000.0, steal_s=50.0, worker_s=10.0)
    last = Sample(t=110.0, busy_s=1030.0, steal_s=52.0, worker_s=25.0)
    shares = cpu_shares(first, last, usable_cpus=2, measured_cpus=2)
    # 10 s × 2 CPUs = 20 CPU-s: the worker tree used 15 (75 %), everything else 30 − 15 (75 %)
    assert shares == contention.CpuShares(wall_s=10.0, other_pct=75.0, worker_pct=75.0, steal_pct=10.0)
    # a quota of 1 CPU on 2 schedulable ones: the same work is twice the share
    assert cpu_shares(first, last, usable_cpus=1, measured_cpus=2).other_pct == 150.0


def test_shares_never_go_negative_and_say_what_was_not_measured():
    first = Sample(t=0.0, busy_s=10.0, steal_s=None, worker_s=8.0)
    last = Sample(t=4.0, busy_s=11.0, steal_s=None, worker_s=5.0)    # a tree member ended: counter fell
    shares = cpu_shares(first, last, usable_cpus=1, measured_cpus=1)
    assert shares.worker_pct == 0.0 and shares.other_pct == 25.0 and shares.steal_pct is None
    empty = cpu_shares(first, first, usable_cpus=1, measured_cpus=1)
    assert empty.other_pct is None and empty.worker_pct is None and empty.steal_pct is None


def test_the_window_ends_at_the_last_sample_that_saw_the_worker_alive(monkeypatch):
    """Counters scripted: the worker is alive for two samples, then gone; the runner stops the
    sampler late. Later samples (another cell's load) must not count."""
    sampler = ContentionSampler(os.getpid(), usable_cpus=1, interval_s=60)
    script = iter([(0.0, 0.0, True), (10.0, 5.0, True), (20.0, 20.0, False), (30.0, 30.0, False)])
    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr(contention.time, "monotonic", lambda: next(clock))

    def scripted():
        busy, worker, alive = next(script)
        sampler._next = (busy, worker, alive)
        return busy, 0.0

    monkeypatch.setattr(sampler, "_system_times", scripted)
    monkeypatch.setattr(sampler, "_worker_seconds", lambda: (sampler._next[1], sampler._next[2]))
    for _ in range(4):
        sampler._sample()
    seen = sampler._result()
    assert seen.wall_s == 10.0 and seen.samples == 2
    assert seen.worker_cpu_pct == 50.0 and seen.other_cpu_pct == 50.0


# --------------------------------------------------------------------------- whose processes

def test_the_workers_children_and_the_cells_peers_are_its_own_tree():
    with python(PARENT_OF_SLEEPER) as worker, python(SLEEP) as peer:
        deadline = time.monotonic() + 30
        while not psutil.Process(worker.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = psutil.Process(worker.pid).children()
        own = ContentionSampler(worker.pid, interval_s=60, cell_pids=(peer.pid,)).start()
        alone = ContentionSampler(worker.pid, interval_s=60).start()
        own.stop(), alone.stop()
    assert {worker.pid, child.pid, peer.pid} <= set(own._tree)
    assert child.pid in alone._tree and peer.pid not in alone._tree


def test_a_sleeping_worker_gives_every_field():
    with python(SLEEP) as worker:
        seen = sample(worker.pid)
    assert seen.other_cpu_pct is not None and seen.other_cpu_pct >= 0 and seen.worker_cpu_pct is not None
    assert seen.samples > 0 and seen.usable_cpus > 0 and seen.load_avg_1m_max is not None
    if sys.platform.startswith("linux"):
        assert seen.steal_pct is not None
    assert seen.gpu_other_processes is None and seen.gpu_throttle_reasons is None   # a CPU cell
    assert "usable CPUs" in seen.describe()


def test_a_worker_gone_before_sampling_is_a_note_not_a_crash():
    with python("pass") as worker:
        worker.wait(timeout=10)
        seen = sample(worker.pid)
    assert "ended" in " ".join(seen.notes) and seen.worker_cpu_pct in (0.0, None)


class FakeNvmlError(Exception):
    pass


def fake_nvml(worker_pid: int, fail: bool = False):
    clocks = iter([1980, 1410, 1755] + [1980] * 1000)

    def init():
        if fail:
            raise FakeNvmlError("NVML Shared Library Not Found")

    return types.SimpleNamespace(
        NVMLError=FakeNvmlError, NVML_CLOCK_SM=1, nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetMaxClockInfo=lambda h, clock: 1980,
        nvmlDeviceGetClockInfo=lambda h, clock: next(clocks),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [types.SimpleNamespace(pid=worker_pid),
                                                        types.SimpleNamespace(pid=4_000_000)],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x1 | 0x4 | 0x40)


def test_gpu_fields_come_from_nvml(monkeypatch):
    with python(SLEEP) as worker:
        monkeypatch.setattr(nvml, "pynvml", fake_nvml(worker.pid))
        seen = sample(worker.pid, gpu_index=0)
    assert seen.gpu_other_processes == 1                     # the worker itself is not "other"
    assert seen.gpu_sm_clock_min_mhz == 1410 and seen.gpu_sm_clock_max_mhz == 1980
    assert seen.gpu_throttle_reasons == ("sw_power_cap", "hw_thermal_slowdown")   # idle left out
    assert seen.busy() and "1 other process" in seen.describe()


def test_no_nvml_leaves_gpu_fields_empty_with_a_note(monkeypatch):
    with python(SLEEP) as worker:
        monkeypatch.setattr(nvml, "pynvml", fake_nvml(worker.pid, fail=True))
        seen = sample(worker.pid, gpu_index=0)
    assert seen.gpu_other_processes is None and seen.gpu_sm_clock_min_mhz is None
    assert any("NVML unavailable" in note for note in seen.notes)


def test_busy_and_the_runs_csv_columns():
    quiet = Contention(wall_s=10, usable_cpus=2, samples=20, other_cpu_pct=3.0, worker_cpu_pct=97,
                       steal_pct=0.0)
    loaded = Contention(wall_s=10, usable_cpus=2, samples=20, other_cpu_pct=48.0,
                        worker_cpu_pct=50, steal_pct=2.0, gpu_throttle_reasons=("hw_slowdown",))
    assert not quiet.busy() and loaded.busy() and quiet.busy(threshold_pct=2)
    assert loaded.describe().startswith("other processes used 48 % of the 2 usable CPUs; steal 2 %")
    columns = loaded.columns()
    assert list(columns) == list(Contention.COLUMNS)
    assert columns["gpu_throttle_reasons"] == "hw_slowdown" and columns["other_cpu_pct"] == 48.0
    assert columns["contention_note"] == loaded.describe() and quiet.columns()["gpu_throttle_reasons"] is None
    from bench import record
    assert set(Contention.COLUMNS) <= set(record.RUN_COLUMNS)      # the schema is declared from them


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_default_usable_cpus_follow_the_affinity():
    with python(SLEEP) as worker:
        seen = sample(worker.pid)
    assert seen.usable_cpus <= len(os.sched_getaffinity(0))
