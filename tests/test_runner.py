"""bench.runner and bench.process: isolation, and what happens when a cell misbehaves.

A fake worker (tests/helpers/fake_worker.py) speaks the real protocol without a framework,
so crashes, hangs and signals are exercised in well under a second each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import matrix, process, runner, store, yardsticks
from bench.config import RunConfig
from bench.devices import Device, Requested
from bench.progress import Reporter
from bench.protocol import DataSpec

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fake_results import fake_train  # noqa: E402

FAKE_WORKER = [sys.executable, str(Path(__file__).parent / "helpers" / "fake_worker.py")]
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU", 2, 2, 2**34))
GPU1 = Requested("gpu:1", Device("gpu:1", "GPU", "Test GPU", memory_bytes=2**34))
NO_GPU = Requested("gpu:0", None, "no GPU detected on this machine")
H100 = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30,
                                 compute_capability="9.0"))
QUIET = Reporter(stream=open("/dev/null", "w"))


def config(batch_sizes=(32, 64), **kwargs) -> RunConfig:
    values = {"batch_size": tuple(batch_sizes), "precision": ("fp32",), **kwargs.pop("values", {})}
    return RunConfig(plan=matrix.Plan(values), epochs=1, max_steps_per_epoch=kwargs.pop("steps", 6),
                     warmup_steps=kwargs.pop("warmup", 2), source=DataSpec("synthetic"),
                     cell_timeout=kwargs.pop("cell_timeout", 20), **kwargs)


def context(cfg: RunConfig, log_dir: Path, **kwargs) -> runner.RunContext:
    return runner.RunContext(config=cfg, run_id="test-run", log_dir=log_dir, system="Test OS",
                             worker_command=tuple(FAKE_WORKER), **kwargs)


def payload(batch_size: int) -> str:
    cfg = config((batch_size,))
    return runner.cell_spec(runner.plan_cells(cfg, [CPU])[0], cfg).to_json()


def test_worker_sees_only_its_own_device_and_backend():
    base = {"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin", "JAX_PLATFORMS": "cuda"}
    cpu_env = runner.worker_environment(CPU, "jax", base)
    gpu_env = runner.worker_environment(GPU1, "torch", base)
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == "-1" and cpu_env["KERAS_BACKEND"] == "jax"
    assert cpu_env["JAX_PLATFORMS"] == "cpu" and "JAX_PLATFORMS" not in gpu_env
    assert gpu_env["CUDA_VISIBLE_DEVICES"] == "1" and gpu_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert gpu_env["KERAS_BACKEND"] == "torch"
    assert base["CUDA_VISIBLE_DEVICES"] == "0,1" and gpu_env["PATH"] == "/bin"


def test_a_good_worker_returns_its_typed_result_and_progress(tmp_path):
    events = []
    outcome = process.run_worker(payload(32), {}, tmp_path / "w.log", 20, events.append, FAKE_WORKER)
    assert outcome.result is not None and outcome.result.train.batch_size == 32
    assert [e.kind for e in events] == ["started", "phase", "step", "result"]
    assert "library chatter" in (tmp_path / "w.log").read_text()  # non-protocol stdout is logged


@pytest.mark.parametrize("batch_size, reason", [
    (13, "exited with status 3 without a result; last log line: Traceback: something broke"),
    (15, "killed by SIGKILL"),
    (16, "out of memory (ResourceExhaustedError)"),
    (17, "does not follow the protocol"),
])
def test_a_failing_worker_says_why(tmp_path, batch_size, reason):
    outcome = process.run_worker(payload(batch_size), {}, tmp_path / "w.log", 20, command=FAKE_WORKER)
    assert outcome.result is None and reason in outcome.reason


def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path):
    outcome = process.run_worker(payload(14), {}, tmp_path / "w.log", 1.5, command=FAKE_WORKER)
    assert outcome.result is None and "timed out after 1.5 s" in outcome.reason


def test_an_unwritable_log_costs_the_log_not_the_cell(tmp_path):
    outcome = process.run_worker(payload(32), {}, tmp_path / "missing-dir" / "w.log", 20,
                                 command=FAKE_WORKER)
    assert outcome.result is not None and "not written" in outcome.log_error


def test_a_log_write_failing_mid_run_never_hangs(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    outcome = process.run_worker(payload(32), {}, Path("/dev/full"), 20, command=FAKE_WORKER)
    assert outcome.result is not None and "not fully written" in outcome.log_error


def test_one_failing_cell_does_not_stop_the_run(tmp_path):
    cfg = config((32, 13, 14, 64), cell_timeout=2)
    cells = runner.plan_cells(cfg, [CPU, NO_GPU])
    writer = store.RunWriter(tmp_path, "test-run")
    outcome = runner.execute(cells, writer, context(cfg, tmp_path / "logs"), QUIET)
    assert [r["status"] for r in outcome.rows] == ["ok", "failed", "failed", "ok"] + ["skipped"] * 4
    on_disk = pd.read_csv(tmp_path / store.RUNS_CSV)
    assert list(on_disk["status"]) == [r["status"] for r in outcome.rows]
    assert "timed out" in on_disk["reason"][2] and "status 3" in on_disk["reason"][1]
    skipped = on_disk[on_disk["status"] == "skipped"].iloc[0]
    assert skipped["reason"] == "no GPU detected on this machine" and skipped["epochs"] == 1
    steps = pd.read_csv(tmp_path / store.STEPS_CSV)
    assert set(steps["cell_id"]) == {cells[0].cell_id, cells[3].cell_id} and len(steps) == 12
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{c.cell_id}.log" for c in cells[:4])


def test_rows_are_on_disk_before_the_next_cell_starts(tmp_path):
    seen = []

    class Spy(Reporter):
        def cell_started(self, index, total, cell):
            path = tmp_path / store.RUNS_CSV
            seen.append(len(pd.read_csv(path)) if path.exists() else 0)

    cfg = config((32, 64, 128), steps=4, warmup=1)
    runner.execute(runner.plan_cells(cfg, [CPU]), store.RunWriter(tmp_path, "r"), context(cfg, tmp_path / "logs"),
                   Spy())
    assert seen == [0, 1, 2]


def test_a_missing_backend_is_a_skipped_row_naming_the_install_command(tmp_path, monkeypatch):
    real = runner.backend_missing
    monkeypatch.setattr(runner, "backend_missing",
                        lambda b: "the torch backend is not installed (pip install 'cifar-bench[torch]')"
                        if b == "torch" else real(b))
    cfg = config((32,), values={"backend": ("tensorflow", "torch")})
    outcome = runner.execute(runner.plan_cells(cfg, [CPU]), store.RunWriter(tmp_path, "r"),
                             context(cfg, tmp_path / "logs"), QUIET)
    assert [(r["backend"], r["status"]) for r in outcome.rows] == [("tensorflow", "ok"), ("torch", "skipped")]
    assert "cifar-bench[torch]" in outcome.rows[1]["reason"]


def test_a_cell_without_steady_steps_is_a_clear_row_and_the_run_goes_on(tmp_path):
    # e.g. a small data set allows fewer steps than the warm-up: the fake's batch 18 does that
    cfg = config((18, 32), steps=3, warmup=1)
    outcome = runner.execute(runner.plan_cells(cfg, [CPU]), store.RunWriter(tmp_path, "r"),
                             context(cfg, tmp_path / "logs"), QUIET)
    assert [r["status"] for r in outcome.rows] == ["ok", "ok"]
    assert "no steady steps" in outcome.rows[0]["reason"] and outcome.rows[0]["images_per_s"] is None
    assert outcome.rows[1]["images_per_s"] > 0


def test_a_full_disk_stops_the_run_cleanly_keeping_what_was_written(tmp_path, monkeypatch):
    cfg = config((32, 64, 128), steps=4, warmup=1)
    writer = store.RunWriter(tmp_path, "r")
    real_flush, calls = writer.flush, []

    def flush():
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_flush()

    monkeypatch.setattr(writer, "flush", flush)
    outcome = runner.execute(runner.plan_cells(cfg, [CPU]), writer, context(cfg, tmp_path / "logs"), QUIET)
    assert "No space left on device" in outcome.write_error and len(outcome.rows) == 2
    assert len(pd.read_csv(tmp_path / store.RUNS_CSV)) == 1   # the first cell survived on disk


def test_peaks_are_needed_once_per_usable_device_precision_threads_and_backend():
    cfg = config((32, 64), repeats=2, values={"precision": ("fp32", "mixed_bfloat16")})
    combos = yardsticks.peak_combinations(runner.plan_cells(cfg, [CPU, NO_GPU]))
    assert [(d.id, p, t, b) for d, p, t, b in combos] == [
        ("cpu", "fp32", 0, "tensorflow"), ("cpu", "mixed_bfloat16", 0, "tensorflow")]


# --------------------------------------------------------------------------- TF32: fp32 cells' yardsticks

def theoretical_of(cell, theoretical, **train):
    return yardsticks.for_cell(cell, fake_train(32, [0.1] * 4, 1, **train), {}, theoretical).theoretical


def test_an_fp32_gpu_cell_is_measured_against_tf32_only_when_its_worker_says_it_ran_tf32():
    fp32, bf16 = runner.plan_cells(config((32,), values={"precision": ("fp32", "mixed_bfloat16")}), [H100])
    theoretical = yardsticks.theoretical_peaks([fp32, bf16])
    assert theoretical[("gpu:0", "fp32")].tflops == 67 and theoretical[("gpu:0", "tf32")].tflops == 494.7
    setting = "torch.backends.cudnn.allow_tf32=True (convolutions)"
    tf32 = theoretical_of(fp32, theoretical, math="tf32", math_note=setting)
    assert tf32.tflops == 494.7
    assert tf32.basis == ("tf32 (fp32 cells run their convolutions in TF32 on this GPU: "
                          f"{setting}); NVIDIA H100 datasheet (SXM), sparsity figures halved")
    assert theoretical_of(fp32, theoretical, math="ieee").tflops == 67
    assert theoretical_of(bf16, theoretical, precision="mixed_bfloat16", math="bf16").tflops == 989.4


def test_a_tf32_cell_on_a_gpu_without_a_tf32_figure_gets_none_never_the_fp32_one():
    gpu = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA GeForce GTX 960M", compute_capability="5.0"))
    [cell] = runner.plan_cells(config((32,)), [gpu])
    theoretical = yardsticks.theoretical_peaks([cell])
    assert theoretical[("gpu:0", "fp32")].tflops == 1.5
    peak = theoretical_of(cell, theoretical, math="tf32", math_note="x")
    assert peak.tflops is None and "no tf32 figure" in peak.basis
    assert ("cpu", "tf32") not in yardsticks.theoretical_peaks(runner.plan_cells(config((32,)), [CPU]))


def test_a_run_on_an_ampere_gpu_records_tf32_and_its_yardsticks(tmp_path):
    cfg = config((32,))
    cells = runner.plan_cells(cfg, [H100])
    writer = store.RunWriter(tmp_path, "test-run")
    peaks = {("gpu:0", "fp32", 0, "tensorflow"): yardsticks.MeasuredPeak(
        "fp32", "float32", 8192, repeats=3, tflops=341.0, median_tflops=340.0, math="tf32")}
    outcome = runner.execute(cells, writer, context(cfg, tmp_path / "logs", measured_peaks=peaks,
                                                    theoretical=yardsticks.theoretical_peaks(cells)), QUIET)
    [row] = outcome.rows
    assert row["status"] == "ok" and row["math"] == "tf32"
    assert row["theoretical_tflops"] == 494.7 and row["theoretical_basis"].startswith(
        "tf32 (fp32 cells run their convolutions in TF32 on this GPU: fake: the backend's default)")
    assert row["efficiency_pct"] == pytest.approx(100 * row["achieved_tflops"] / 341.0)
    assert store.read_run(tmp_path).runs["math"].tolist() == ["tf32"]   # a documented column


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": (64, 512), "warmup": 1}, "larger than the 256 training images"),
    ({"batch_sizes": (32,), "warmup": 6}, "--warmup 6 leaves no steady steps"),
    ({"batch_sizes": (32,), "seed": 2**32 - 1, "repeats": 2}, "--seed"),
])
def test_what_cannot_work_is_known_before_the_run(kwargs, message):
    batch_sizes = kwargs.pop("batch_sizes")
    cfg = config(batch_sizes, **kwargs)
    cfg = RunConfig(**{**cfg.__dict__, "source": DataSpec("synthetic", synthetic_images=256)})
    assert any(message in p for p in cfg.problems())


def test_run_config_round_trips_through_env_json():
    import json
    cfg = config((32, 64), values={"backend": ("jax",)}, repeats=2)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.to_dict() == cfg.to_dict() and back.plan.of("backend") == ("jax",)
    assert runner.plan_cells(back, [CPU]) == runner.plan_cells(cfg, [CPU])


def test_contention_is_sampled_while_each_worker_runs(tmp_path):
    cfg = config((14,), steps=4, warmup=1, cell_timeout=1.5)     # the fake's batch 14 hangs
    outcome = runner.execute(runner.plan_cells(cfg, [CPU]), store.RunWriter(tmp_path, "r"),
                             context(cfg, tmp_path / "logs", usable_cpus=2,
                                     watch=runner.contention_sampler(2, interval_s=0.1)), QUIET)
    row = outcome.rows[0]
    assert row["other_cpu_pct"] is not None and 0 <= row["worker_cpu_pct"]
    assert row["usable_cpus"] == 2 and "other processes used" in row["contention_note"]
    assert "other_cpu_pct" in pd.read_csv(tmp_path / store.RUNS_CSV).dropna(axis=1).columns
