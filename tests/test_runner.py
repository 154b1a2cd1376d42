"""bench.runner: the matrix, device isolation, and what happens when a cell misbehaves.

A fake worker (tests/helpers/fake_worker.py) stands in for TensorFlow so that crashes,
hangs and signals are exercised in well under a second each.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from bench import results, runner
from bench.devices import Device, Requested

FAKE_WORKER = [sys.executable, str(Path(__file__).parent / "helpers" / "fake_worker.py")]
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU", 2, 2, 2**34))
BF16_CPU = Requested("cpu", Device("cpu", "CPU", "BF16 CPU", features=("avx512f", "avx512_bf16")))
AMPERE = Requested("gpu:0", Device("gpu:0", "GPU", "A100", compute_capability="8.0"))
MAXWELL = Requested("gpu:1", Device("gpu:1", "GPU", "GTX 960M", compute_capability="5.0"))
GPU1 = Requested("gpu:1", Device("gpu:1", "GPU", "Test GPU", memory_bytes=2**34))
NO_GPU = Requested("gpu:0", None, "no GPU detected on this machine")
CONFIG = runner.RunConfig(batch_sizes=(32, 64), epochs=1, steps=6, warmup=2, data="synthetic",
                          cell_timeout=20)
CONTEXT = {"run_id": "test-run", "system": "Test OS", "git_commit": None}


def spec(batch_size: int) -> dict:
    cell = runner.Cell(CPU, batch_size, "fp32", "auto", 0, 1, 0)
    return runner.worker_spec(cell, CONFIG)


def test_plan_is_devices_by_batch_sizes_by_settings_with_repeats_outermost():
    config = runner.RunConfig(batch_sizes=(64, 128), epochs=1, steps=5, warmup=1, repeats=2,
                              precisions=("fp32", "mixed_bfloat16"))
    cells = runner.plan(config, [CPU, NO_GPU])
    assert len(cells) == 2 * 2 * 2 * 2
    assert [c.repeat for c in cells] == [0] * 8 + [1] * 8
    assert [(c.device.id, c.batch_size, c.precision) for c in cells[:4]] == [
        ("cpu", 64, "fp32"), ("cpu", 64, "mixed_bfloat16"), ("cpu", 128, "fp32"),
        ("cpu", 128, "mixed_bfloat16")]
    assert len({c.cell_id for c in cells}) == len(cells)


def test_worker_sees_only_its_own_device():
    base = {"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"}
    cpu_env = runner.worker_environment(CPU, base)
    gpu_env = runner.worker_environment(GPU1, base)
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert gpu_env["CUDA_VISIBLE_DEVICES"] == "1" and gpu_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert base["CUDA_VISIBLE_DEVICES"] == "0,1" and gpu_env["PATH"] == "/bin"


def test_a_good_worker_returns_its_result_and_progress(tmp_path):
    events = []
    outcome = runner.run_worker(spec(32), {}, tmp_path / "w.log", 20, events.append, FAKE_WORKER)
    assert outcome.result is not None and outcome.result["batch_size"] == 32
    assert [e["event"] for e in events] == ["started", "step", "result"]
    assert "library chatter" in (tmp_path / "w.log").read_text()  # non-protocol stdout is logged


@pytest.mark.parametrize("batch_size, reason", [
    (13, "exited with status 3 without a result; last log line: Traceback: something broke"),
    (15, "killed by SIGKILL"),
    (16, "out of memory (ResourceExhaustedError)"),
])
def test_a_failing_worker_says_why(tmp_path, batch_size, reason):
    outcome = runner.run_worker(spec(batch_size), {}, tmp_path / "w.log", 20, command=FAKE_WORKER)
    assert outcome.result is None and reason in outcome.reason


def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path):
    outcome = runner.run_worker(spec(14), {}, tmp_path / "w.log", 1.5, command=FAKE_WORKER)
    assert outcome.result is None and "timed out after 1.5 s" in outcome.reason


def test_one_failing_cell_does_not_stop_the_run(tmp_path):
    config = runner.RunConfig(batch_sizes=(32, 13, 14, 64), epochs=1, steps=6, warmup=2,
                              data="synthetic", cell_timeout=2)
    cells = runner.plan(config, [CPU, NO_GPU])
    writer = results.RunWriter(tmp_path, "test-run")
    rows = runner.execute(config, cells, writer, CONTEXT, runner.Reporter(stream=open("/dev/null", "w")),
                          tmp_path / "logs", worker_command=FAKE_WORKER)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "ok"] + ["skipped"] * 4
    on_disk = pd.read_csv(tmp_path / results.RUNS_CSV)
    assert list(on_disk["status"]) == [r["status"] for r in rows]
    assert "timed out" in on_disk["reason"][2] and "status 3" in on_disk["reason"][1]
    skipped = on_disk[on_disk["status"] == "skipped"].iloc[0]
    assert skipped["reason"] == "no GPU detected on this machine" and skipped["epochs"] == 1
    steps = pd.read_csv(tmp_path / results.STEPS_CSV)
    assert set(steps["cell_id"]) == {cells[0].cell_id, cells[3].cell_id} and len(steps) == 12
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{c.cell_id}.log" for c in cells[:4])


def test_rows_are_on_disk_before_the_next_cell_starts(tmp_path):
    seen = []

    class Spy(runner.Reporter):
        def cell_started(self, index, total, cell):
            path = tmp_path / results.RUNS_CSV
            seen.append(len(pd.read_csv(path)) if path.exists() else 0)

    config = runner.RunConfig(batch_sizes=(32, 64, 128), epochs=1, steps=4, warmup=1, data="synthetic")
    runner.execute(config, runner.plan(config, [CPU]), results.RunWriter(tmp_path, "r"), CONTEXT,
                   Spy(), tmp_path / "logs", worker_command=FAKE_WORKER)
    assert seen == [0, 1, 2]


def test_auto_precision_is_resolved_per_device_and_deduplicated():
    config = runner.RunConfig(batch_sizes=(64,), epochs=1, steps=5, warmup=1,
                              precisions=("auto", "mixed_bfloat16", "fp32"))
    planned = {(c.device.id, c.precision) for c in runner.plan(config, [BF16_CPU, CPU, AMPERE, MAXWELL])}
    assert planned == {("cpu", "mixed_bfloat16"), ("cpu", "fp32"), ("gpu:0", "mixed_bfloat16"),
                       ("gpu:0", "fp32"), ("gpu:1", "fp32"), ("gpu:1", "mixed_bfloat16")}
    cells = runner.plan(runner.RunConfig(batch_sizes=(64,), epochs=1, steps=5, warmup=1,
                                         precisions=("auto",)), [BF16_CPU, CPU, NO_GPU])
    assert [(c.device.device.name if c.device.device else None, c.precision) for c in cells] == [
        ("BF16 CPU", "mixed_bfloat16"), ("Test CPU", "fp32"), (None, "auto")]


def test_data_placement_is_resolved_per_device():
    big = Requested("gpu:0", Device("gpu:0", "GPU", "H100", memory_bytes=80 * 2**30))
    small = Requested("gpu:1", Device("gpu:1", "GPU", "GTX 960M", memory_bytes=2 * 2**30))
    config = runner.RunConfig(batch_sizes=(64,), epochs=1, steps=5, warmup=1)
    cells = runner.plan(config, [CPU, big, small, NO_GPU])
    assert [(c.device.id, c.data_placement) for c in cells] == [
        ("cpu", "host"), ("gpu:0", "device"), ("gpu:1", "host"), ("gpu:0", "auto")]
    assert {c.columns()["data_placement_requested"] for c in cells} == {"auto"}
    assert "_data-device_" in cells[1].cell_id and runner.worker_spec(cells[1], config)["data_placement"] == "device"
    # asking for both gives both, and "auto" that resolves to one of them is planned once
    both = runner.plan(replace(config, data_placements=("auto", "host", "device")), [CPU])
    assert [c.data_placement for c in both] == ["host", "device"]


def test_peaks_are_needed_once_per_usable_device_precision_and_threads():
    config = runner.RunConfig(batch_sizes=(32, 64), epochs=1, steps=5, warmup=1, repeats=2,
                              precisions=("fp32", "mixed_bfloat16"))
    combos = runner.peak_combinations(runner.plan(config, [CPU, NO_GPU]))
    assert [(d.id, p, t) for d, p, t in combos] == [("cpu", "fp32", 0), ("cpu", "mixed_bfloat16", 0)]
