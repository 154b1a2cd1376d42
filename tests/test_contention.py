"""bench.contention: what else ran beside a cell's worker.

The machine these tests run on is shared, so no test assumes it is quiet: they start their
own CPU hog and assert what the hog must cause, or assert what other load cannot fake.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import types

import pytest

from bench import contention
from bench.contention import Contention, ContentionSampler

BURN = "while True: pass"
SLEEP = "import time; time.sleep(30)"
PARENT_OF_BURNER = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])"


@contextlib.contextmanager
def python(code: str):
    """A Python subprocess running ``code``, killed (and reaped) however the test ends."""
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait(timeout=10)


def sample(pid: int, seconds: float, **kwargs) -> Contention:
    sampler = ContentionSampler(pid, interval_s=0.1, scan_every_s=0.2, **kwargs).start()
    time.sleep(seconds)
    return sampler.stop()


def test_a_hog_beside_a_busy_worker_is_seen_as_other_load():
    with python(BURN) as hog, python(PARENT_OF_BURNER) as worker:
        time.sleep(0.3)                              # the worker's burning child has started
        seen = sample(worker.pid, 2.0)
        assert hog.poll() is None
    # the hog alone is a whole CPU; the worker tree (its burning child) gets at most one
    assert seen.other_cpu_pct > 30, seen.describe()
    assert seen.worker_cpu_pct > 5, seen.describe()          # the child counts for the worker
    assert seen.busiest_other_name and seen.busiest_other_cpu_pct > 0
    assert seen.samples > 5 and seen.wall_s >= 1.5


def test_a_cells_own_peer_workers_are_not_other_load():
    """A local multi-worker cell: the chief sleeps, its peer burns a CPU. Named as the cell's
    own, the peer counts for the worker; unnamed, it is other load."""
    with python(BURN) as peer, python(SLEEP) as chief:
        time.sleep(0.2)
        own = sample(chief.pid, 1.5, cell_pids=(peer.pid,))
        other = sample(chief.pid, 1.5)
    assert own.worker_cpu_pct > 20, own.describe()           # the burning peer is the cell's
    assert other.worker_cpu_pct < 5, other.describe()        # unnamed, only the sleeping chief


def test_a_sleeping_worker_uses_little_cpu_and_every_field_is_there():
    with python(SLEEP) as worker:
        seen = sample(worker.pid, 1.0)
    assert seen.worker_cpu_pct < 5 and seen.other_cpu_pct is not None and seen.other_cpu_pct >= 0
    assert seen.samples > 0 and seen.usable_cpus > 0 and seen.load_avg_1m_max is not None
    if sys.platform.startswith("linux"):
        assert seen.steal_pct is not None
    assert seen.gpu_other_processes is None and seen.gpu_throttle_reasons is None   # a CPU cell
    assert "usable CPUs" in seen.describe()


def test_the_window_ends_when_the_worker_ends():
    with python("import time; time.sleep(0.5)") as worker:
        sampler = ContentionSampler(worker.pid, interval_s=0.1).start()
        worker.wait(timeout=10)
        time.sleep(1.0)                              # the runner is late to stop the sampler
        seen = sampler.stop()
    assert seen.wall_s < 1.0 and seen.samples > 0


def test_a_worker_gone_before_sampling_is_a_note_not_a_crash():
    with python("pass") as worker:
        worker.wait(timeout=10)
        seen = sample(worker.pid, 0.2)
    assert "ended" in " ".join(seen.notes) and seen.worker_cpu_pct in (0.0, None)


def test_measure_call_returns_the_result_and_the_contention():
    result, seen = contention.measure_call(lambda x: x * 2, 21, interval_s=0.05)
    assert result == 42 and isinstance(seen, Contention) and seen.samples >= 1
    quiet = contention.measure_window(0.3, interval_s=0.1)
    assert quiet.wall_s > 0.2 and quiet.worker_cpu_pct < 50


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
        monkeypatch.setattr(contention, "pynvml", fake_nvml(worker.pid))
        seen = sample(worker.pid, 0.5, gpu_index=0)
    assert seen.gpu_other_processes == 1                     # the worker itself is not "other"
    assert seen.gpu_sm_clock_min_mhz == 1410 and seen.gpu_sm_clock_max_mhz == 1980
    assert seen.gpu_throttle_reasons == ("sw_power_cap", "hw_thermal_slowdown")   # idle left out
    assert seen.busy() and "1 other process" in seen.describe()


def test_no_nvml_leaves_gpu_fields_empty_with_a_note(monkeypatch):
    with python(SLEEP) as worker:
        monkeypatch.setattr(contention, "pynvml", fake_nvml(worker.pid, fail=True))
        seen = sample(worker.pid, 0.3, gpu_index=0)
    assert seen.gpu_other_processes is None and seen.gpu_sm_clock_min_mhz is None
    assert any("NVML unavailable" in note for note in seen.notes)


def test_busy_and_the_record_round_trip():
    quiet = Contention(wall_s=10, usable_cpus=2, samples=20, other_cpu_pct=3.0, worker_cpu_pct=97,
                       steal_pct=0.0)
    loaded = Contention(wall_s=10, usable_cpus=2, samples=20, other_cpu_pct=48.0,
                        worker_cpu_pct=50, steal_pct=2.0, gpu_throttle_reasons=("hw_slowdown",))
    assert not quiet.busy() and loaded.busy() and quiet.busy(threshold_pct=2)
    assert loaded.describe().startswith("other processes used 48 % of the 2 usable CPUs; steal 2 %")
    stored = {**loaded.to_dict(), "added_in_a_later_version": 1}
    assert stored["gpu_throttle_reasons"] == ["hw_slowdown"]
    assert Contention.from_dict(stored) == loaded
    assert Contention.from_dict({"other_cpu_pct": 5.0}).steal_pct is None   # an older record


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_default_usable_cpus_follow_the_affinity():
    with python(SLEEP) as worker:
        seen = sample(worker.pid, 0.2)
    assert seen.usable_cpus <= len(os.sched_getaffinity(0))
