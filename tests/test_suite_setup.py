"""The suite's own plumbing: each xdist worker's share of the CPUs (tests/helpers/cpu_share.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import cpu_share  # noqa: E402


def as_worker(monkeypatch, worker, count, cpus):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    monkeypatch.setattr(cpu_share.os, "sched_getaffinity", lambda pid: set(cpus))


def test_each_worker_gets_its_own_slice_of_the_cpus(monkeypatch):
    as_worker(monkeypatch, "gw0", 2, {0, 1, 2, 3})
    assert cpu_share.worker_cpus() == {0, 1}
    as_worker(monkeypatch, "gw1", 2, {0, 1, 2, 3})
    assert cpu_share.worker_cpus() == {2, 3}
    as_worker(monkeypatch, "gw1", 2, {4, 9})       # a process already limited to some CPUs
    assert cpu_share.worker_cpus() == {9}


def test_no_pinning_outside_xdist_with_one_worker_or_too_few_cpus(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert cpu_share.worker_cpus() is None and cpu_share.on_worker_share(["x", "y"]) == ["x", "y"]
    as_worker(monkeypatch, "gw0", 1, {0, 1})
    assert cpu_share.worker_cpus() is None
    as_worker(monkeypatch, "gw2", 4, {0, 1})       # shares would overlap
    assert cpu_share.worker_cpus() is None
    as_worker(monkeypatch, "master", 2, {0, 1})
    assert cpu_share.worker_cpus() is None


def test_a_pinned_subprocess_runs_on_the_workers_share_only(monkeypatch):
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.skip("this process may use one CPU: there is no share to pin to")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    command = cpu_share.on_worker_share([sys.executable, "-c", "import os, sys; "
                                         "print(sorted(os.sched_getaffinity(0)), sys.argv[1:])", "a b", "-c"])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    # the share, and the command's own arguments passed through as they were
    assert done.stdout.strip() == f"{mine[len(mine) // 2:len(mine) // 2 * 2]} ['a b', '-c']"
    assert command[0] == sys.executable and "-c" in command[:2]
