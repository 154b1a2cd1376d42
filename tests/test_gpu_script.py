"""scripts/gpu-run.sh, the prepared run for a lent GPU machine: what it refuses before it starts.
(Its dry run, GPU_RUN_DRY=1, trains for minutes, so it is run by hand: docs/method.md.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-run.sh"


def gpu_run(out: Path, python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "GPU_RUN_DRY": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, text=True, capture_output=True, timeout=120)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_an_interpreter_without_the_harness_is_one_line_and_exit_2_writing_nothing(tmp_path):
    done = gpu_run(tmp_path / "out", "/bin/false")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "set PYTHON" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_an_existing_output_directory_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("mine")
    done = gpu_run(out, sys.executable)
    assert done.returncode == 2 and "exists; give another OUT_DIR" in done.stderr, done.stderr
    assert [p.name for p in out.iterdir()] == ["kept"] and (out / "kept").read_text() == "mine"
