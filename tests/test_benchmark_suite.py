"""The pytest-benchmark suite is excluded from the default run; this keeps it from rotting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_suite_runs_once_per_case_with_timing_disabled():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
         "tests/benchmarks", "--benchmark-disable", "-k", "cpu-32 or pipeline_batch[32]"],
        cwd=REPO, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 passed" in done.stdout


def test_default_run_does_not_collect_the_benchmarks():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                           "no:cacheprovider"], cwd=REPO, text=True, capture_output=True, timeout=300)
    assert "tests/benchmarks" not in done.stdout and "test_training_step" not in done.stdout
    assert "tests/test_cli.py" in done.stdout
