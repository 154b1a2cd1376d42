"""The real CLI, in subprocesses, on tiny configurations: what a user sees and gets on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.devices import auto_precision, cpu_device

TINY = ["--steps", "6", "--warmup", "2", "--data", "synthetic", "--synthetic-images", "256"]


def bench(*args, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=env)


def assert_usage_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), done.stderr
    assert fragment in lines[0] and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One small run: CPU and a (missing) GPU at two batch sizes."""
    root = tmp_path_factory.mktemp("cli")
    done = bench("run", "--devices", "cpu,gpu", "--batch-sizes", "16,32", *TINY, "--unsynced-steps",
                 "4", "--out", root / "run", cwd=root)
    return root, root / "run", done


def test_run_writes_a_row_per_cell_and_skips_the_missing_gpu(synthetic_run):
    _, out, done = synthetic_run
    assert done.returncode == 0, done.stderr
    runs = pd.read_csv(out / "runs.csv")
    assert list(zip(runs["device_id"], runs["batch_size"], runs["status"])) == [
        ("cpu", 16, "ok"), ("cpu", 32, "ok"), ("gpu:0", 16, "skipped"), ("gpu:0", 32, "skipped")]
    assert set(runs[runs["status"] == "skipped"]["reason"]) == {"no GPU detected on this machine"}
    ok = runs[runs["status"] == "ok"]
    assert (ok["data"] == "synthetic").all() and ok["heldout_accuracy"].isna().all()
    assert (ok["accuracy_note"] == "not measured: synthetic data").all()
    assert (ok["peak_rss_mb"] > 100).all() and (ok["cpu_util_pct"] > 0).all()
    assert (ok["device_name"].str.len() > 0).all() and (ok["system"].str.len() > 0).all()
    # progress is plain log lines when stderr is not a terminal
    assert "[1/4] cpu_bs16" in done.stderr and "step 6/6" in done.stderr
    assert "SYNTHETIC" in done.stderr


def test_run_directory_holds_every_file(synthetic_run):
    _, out, done = synthetic_run
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 12 and steps["warmup"].sum() == 4
    env = json.loads((out / "env.json").read_text())
    assert env["cpu"]["model"] and env["cpu"]["logical_cpus"] >= 1 and env["memory_bytes"] > 0
    assert env["packages"]["tensorflow"] == env["tensorflow"]["version"]
    assert env["command"].startswith("python -m bench run --devices cpu,gpu")
    summary = (out / "summary.md").read_text()
    assert "| Device" in summary and "| Images/s" in summary and "No GPU was measured" in summary
    assert "Speed-up vs CPU" not in summary            # CPU rows only: 1.00× throughout says nothing
    assert env["system"] in " ".join(summary.split())            # the header names the one machine
    assert summary in done.stdout
    for picture in ("throughput.png", "step_times.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timing_is_self_consistent(synthetic_run):
    _, out, _ = synthetic_run
    runs, steps = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "steps.csv")
    for _, cell in runs[runs["status"] == "ok"].iterrows():
        own = steps[steps["cell_id"] == cell["cell_id"]]
        steady = own[~own["warmup"]]
        median = np.median(steady["seconds"] / steady["steps"])
        # the statistics can be redone from steps.csv
        assert cell["step_median_s"] == pytest.approx(median, rel=1e-9)
        assert cell["images_per_s"] == pytest.approx(cell["batch_size"] / median, rel=1e-9)
        assert cell["images_per_s_wall"] == pytest.approx(
            cell["steady_steps"] * cell["batch_size"] / cell["steady_wall_s"], rel=1e-9)
        # the median-based and the wall-clock figures agree (steps run back to back)
        assert cell["images_per_s_wall"] == pytest.approx(cell["images_per_s"], rel=0.25)
        # step times fit inside the training wall time; start-up and loading are apart
        assert own["seconds"].sum() <= cell["train_s"]
        assert steady["seconds"].sum() <= cell["steady_wall_s"]
        assert cell["first_step_s"] == own["seconds"].iloc[0]
        assert cell["startup_s"] > 0 and cell["data_load_s"] > 0


def test_efficiency_and_sync_overhead_columns(synthetic_run):
    _, out, done = synthetic_run
    runs = pd.read_csv(out / "runs.csv")
    ok = runs[runs["status"] == "ok"]
    expected = auto_precision(cpu_device())           # the default precision is auto
    assert (ok["precision"] == expected).all() and (ok["xla"] == False).all()  # noqa: E712 - off on CPU
    np.testing.assert_allclose(ok["achieved_tflops"], ok["flops_per_image"] * ok["images_per_s"] / 1e12,
                               rtol=1e-9)
    # a peak measured while other processes used the machine is no yardstick: the row says so
    busy = ok["peak_note"].fillna("").str.startswith("efficiency not measured: the peak was measured while")
    assert (busy == ("measured on a busy machine" in done.stderr)).all()
    assert ok[busy]["efficiency_pct"].isna().all() and (ok[~busy]["peak_tflops"] > 0).all()
    quiet = ok[~busy]
    np.testing.assert_allclose(quiet["efficiency_pct"], 100 * quiet["achieved_tflops"] / quiet["peak_tflops"],
                               rtol=1e-9)
    assert (ok["unsynced_steps"] == 4).all() and (ok["unsynced_images_per_s"] > 0).all()
    np.testing.assert_allclose(ok["sync_overhead_pct"],
                               100 * (1 - ok["images_per_s"] / ok["unsynced_images_per_s"]), rtol=1e-9)
    summary = (out / "summary.md").read_text()
    for column in ("TFLOP/s", "Efficiency", "Unsynced images/s", "Sync overhead"):
        assert column in summary
    assert "XLA auto (off)" in summary
    assert f"peak cpu tensorflow {expected} (threads default)" in done.stderr


def test_precision_xla_and_data_placement_are_matrix_dimensions(tmp_path):
    done = bench("run", "--devices", "cpu", "--batch-sizes", "16", *TINY, "--precision",
                 "fp32,mixed_bfloat16", "--jit-compile", "off", "--data-placement", "auto,device",
                 "--no-peak", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = pd.read_csv(tmp_path / "run" / "runs.csv")
    assert list(runs["status"]) == ["ok"] * 4 and list(runs["jit_compile"]) == ["off"] * 4
    assert list(zip(runs["precision"], runs["data_placement"], runs["data_placement_requested"])) == [
        ("fp32", "host", "auto"), ("fp32", "device", "device"),
        ("mixed_bfloat16", "host", "auto"), ("mixed_bfloat16", "device", "device")]
    assert set(runs["data_device"]) == {"CPU:0"}
    assert runs["efficiency_pct"].isna().all() and "peak" not in done.stderr
    assert "| Precision" in done.stdout and "mixed_bfloat16" in done.stdout
    assert "| Data placement" in done.stdout


def test_summary_and_readme_commands(synthetic_run, tmp_path):
    root, out, _ = synthetic_run
    shown = bench("summary", "--run", out, cwd=root)
    assert shown.returncode == 0 and "| Median step" in shown.stdout
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:table:start -->\nold\n<!-- bench:table:end -->\ntail\n")
    first = bench("readme", "--run", out, "--readme", readme, cwd=root)
    assert first.returncode == 0 and "table updated" in first.stdout
    text = readme.read_text()
    assert "\nold\n" not in text and "| Device" in text and text.endswith("<!-- bench:table:end -->\ntail\n")
    assert "Produced by `python -m bench run" in text
    second = bench("readme", "--run", out, "--readme", readme, cwd=root)
    assert "already up to date" in second.stdout and readme.read_text() == text
    # without --run: the latest run under results/runs of the working directory
    assert_usage_error(bench("readme", "--readme", readme, cwd=tmp_path), "no runs here yet")
    readme.write_text("no markers\n")
    assert_usage_error(bench("readme", "--run", out, "--readme", readme, cwd=root), "markers")
    assert readme.read_text() == "no markers\n"


@pytest.mark.slow
def test_run_on_real_cifar10_reports_held_out_accuracy(real_cifar_dir, tmp_path):
    done = bench("run", "--devices", "cpu", "--batch-sizes", "32", "--steps", "12", "--warmup", "2",
                 "--data-dir", real_cifar_dir, "--no-download", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(tmp_path / "run" / "runs.csv").iloc[0]
    assert row["data"] == "cifar10" and row["heldout_images"] == 10_000
    assert 0 < row["heldout_accuracy"] < 1 and row["eval_s"] > 0
    assert "data: CIFAR-10 from" in done.stderr
    assert "whole held-out split (10,000 images, the official test set)" in done.stdout


def test_failed_cells_are_recorded_and_the_run_goes_on(tmp_path):
    done = bench("run", "--devices", "cpu", "--batch-sizes", "16,32", *TINY, "--cell-timeout", "0.5",
                 "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 4, done.stderr               # EXIT_CELL_FAILED
    runs = pd.read_csv(tmp_path / "run" / "runs.csv")
    assert list(runs["status"]) == ["failed", "failed"]
    assert runs["reason"].str.contains("timed out after 0.5 s").all()


def test_ctrl_c_keeps_every_finished_cell(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--devices", "cpu", "--batch-sizes", "16,24,32",
         "--steps", "40", "--warmup", "2", "--data", "synthetic", "--synthetic-images", "256",
         "--out", str(out)], cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "runs.csv").exists():
        time.sleep(0.2)
    assert (out / "runs.csv").exists(), "the first cell never finished"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    runs = pd.read_csv(out / "runs.csv")
    assert 1 <= len(runs) < 3 and (runs["status"] == "ok").all()
    assert "stopped by SIGINT" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert (out / "summary.md").exists() and "| Device" in stdout
    steps = pd.read_csv(out / "steps.csv")
    assert set(steps["cell_id"]) == set(runs["cell_id"])


@pytest.mark.parametrize("args, fragment", [
    (["--devices", "tpu"], "--devices: unknown device 'tpu'"),
    (["--batch-sizes", "64,0"], "--batch-sizes: '0' is not a positive integer"),
    (["--batch-sizes", "64,abc"], "--batch-sizes: 'abc' is not a positive integer"),
    (["--batch-sizes", "-8"], "--batch-sizes: '-8' is not a positive integer"),
    (["--epochs", "0"], "--epochs: '0'"),
    (["--warmup", "6", "--steps", "6"], "leaves no steady steps"),
    (["--precision", "fp8"], "--precision: unknown value 'fp8'"),
    (["--data-placement", "gpu"], "--data-placement: unknown value 'gpu'; choose from auto, host, device"),
    (["--cell-timeout", "soon"], "--cell-timeout: 'soon'"),
    (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    (["--data", "synthetic", "--data-dir", "."], "--data-dir is used only with --data cifar10"),
    (["--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--data-dir", "."], "no CIFAR-10 files"),
    (["--out", "a-file/run"], "is a file"),
    (["--out", "not-empty"], "already exists and is not empty"),
    (["--devices", "cpu,gpu:7", "--require-devices", "--data", "synthetic"], "gpu:7"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragment):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "not-empty").mkdir()
    (tmp_path / "not-empty" / "keep").write_text("x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert_usage_error(bench("run", *args, cwd=tmp_path, timeout=120), fragment)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_data_dir_from_the_environment_is_checked_too(tmp_path):
    env = dict(os.environ, CIFAR10_DIR=str(tmp_path / "missing"))
    assert_usage_error(bench("run", "--devices", "cpu", cwd=tmp_path, env=env), "CIFAR10_DIR")


def test_devices_command_lists_the_cpu_by_name():
    done = bench("devices", cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    assert "| cpu " in done.stdout and "TensorFlow 2." in done.stdout
    for backend in ("tensorflow", "jax", "torch"):     # each installed backend says what it sees
        assert f"backend {backend} " in done.stdout and "sees the CPU" in done.stdout
    assert "x86_64 |" not in done.stdout
