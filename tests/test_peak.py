"""bench.peak: the measured peak, its per-machine cache (keyed by usable CPUs), the peak command."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from bench import files, peak, record
from bench.devices import Device, Requested

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fake_results import fake_result  # noqa: E402

ENV = {"cpu": {"model": "Test CPU", "logical_cpus": 2, "usable_cpus": 2}, "memory_bytes": 2**34,
       "gpus": [], "machine": "x86_64", "system": "Test OS"}
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU"))
H100 = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA H100 80GB HBM3", compute_capability="9.0"))
VERSIONS = {"tensorflow": "2.21.0"}


def fake_measure(calls, **extra):
    def measure(device, precisions, threads, backend, log_path, timeout_s=0, command=None):
        calls.append((tuple(precisions), threads, backend))
        return {p: {"tflops": 0.4, "size": 2048, "repeats": 3, "dtype": p, **extra} for p in precisions}
    return measure


def test_cached_peaks_are_not_measured_again(tmp_path, monkeypatch):
    path = peak.cache_path(ENV, tmp_path)
    assert path.name.startswith("test-cpu-2cpu-16gib-nogpu-")
    path.write_text(json.dumps({peak.cache_key("cpu", "fp32", 0, "tensorflow", "2.21.0", 2):
                                {"tflops": 0.2, "size": 2048}}))
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow"), (CPU, "mixed_bfloat16", 0, "tensorflow")],
                           ENV, VERSIONS, tmp_path, tmp_path / "logs", say=lambda text: None)
    assert calls == [(("mixed_bfloat16",), 0, "tensorflow")]
    assert found[("cpu", "fp32", 0, "tensorflow")] == {"tflops": 0.2, "size": 2048, "cached": True}
    assert found[("cpu", "mixed_bfloat16", 0, "tensorflow")]["cached"] is False
    assert len(json.loads(path.read_text())) == 2


def test_a_peak_measured_with_fewer_usable_cpus_is_never_the_yardstick_of_more(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    pinned = {**ENV, "cpu": {**ENV["cpu"], "usable_cpus": 1}}
    peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], pinned, VERSIONS, tmp_path, tmp_path / "l", say=print)
    peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l", say=print)
    assert len(calls) == 2            # the unpinned run measured its own peak
    peak.peaks_for([(CPU, "fp32", 0, "jax")], ENV, {"jax": "0.10"}, tmp_path, tmp_path / "l", say=print)
    assert len(calls) == 3            # and another backend is another yardstick


def test_a_damaged_cache_is_ignored_entry_by_entry(tmp_path, monkeypatch):
    path = peak.cache_path(ENV, tmp_path)
    good = peak.cache_key("cpu", "fp32", 0, "tensorflow", "2.21.0", 2)
    path.write_text(json.dumps({good: {"tflops": 0.2}, "negative": {"tflops": -1},
                                "text": {"tflops": "fast"}, "list": [1], "bool": {"tflops": True}}))
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l", say=print)
    assert calls == [] and found[("cpu", "fp32", 0, "tensorflow")]["tflops"] == 0.2
    path.write_text("{not json")
    peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l", say=print)
    assert calls and json.loads(path.read_text())[good]["tflops"] == 0.4


def _add_entry(args):
    path, i = args
    files.update_json(path, lambda current: {**current, f"key{i}": {"tflops": float(i + 1)}})


def test_concurrent_cache_updates_lose_nothing(tmp_path):
    path = tmp_path / "peaks.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_add_entry, [(path, i) for i in range(16)])
    assert sorted(json.loads(path.read_text())) == sorted(f"key{i}" for i in range(16))


def test_a_cache_path_that_is_a_directory_is_said_and_the_run_goes_on(tmp_path, monkeypatch):
    path = peak.cache_path(ENV, tmp_path)
    path.mkdir(parents=True)
    monkeypatch.setattr(peak, "measure", fake_measure([]))
    said = []
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l",
                           say=said.append)
    assert found and any("not updated" in line for line in said)


def test_a_failed_measurement_is_said_and_the_rest_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("peak measurement on cpu failed: worker killed by SIGKILL")

    monkeypatch.setattr(peak, "measure", broken)
    said = []
    assert peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path,
                          tmp_path / "logs", say=said.append) == {}
    assert any("SIGKILL" in line for line in said)


def test_peak_command_measures_then_uses_the_cache(tmp_path):
    def run():
        return subprocess.run([sys.executable, "-m", "bench", "peak", "--devices", "cpu",
                               "--precision", "fp32"], cwd=tmp_path, text=True, capture_output=True,
                              timeout=300)

    def cpu_row(stdout):
        row = next(line for line in stdout.splitlines() if line.startswith("| cpu"))
        return [c.strip() for c in row.strip("|").split("|")]

    first = run()
    assert first.returncode == 0, first.stderr
    cells = cpu_row(first.stdout)
    assert cells[:5] == ["cpu", "tensorflow", "fp32", "default", "2048×2048 float32 (ieee)"]
    assert float(cells[5]) > 0 and float(cells[5]) >= float(cells[6]) and cells[-1] == "no"
    if "not cached" in first.stderr:      # measured while other work ran: never a yardstick
        assert not list((tmp_path / "results" / "peaks").glob("*.json"))
        return
    assert len(list((tmp_path / "results" / "peaks").glob("*.json"))) == 1
    second = run()
    assert cpu_row(second.stdout)[-1] == "yes" and cpu_row(second.stdout)[5] == cells[5]
    assert "(cached)" in second.stderr


def test_peak_command_rejects_bad_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "peak", "--precision", "int4"],
                          cwd=tmp_path, text=True, capture_output=True, timeout=60)
    assert done.returncode == 2 and "unknown value 'int4'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_a_peak_measured_on_a_busy_machine_is_used_but_never_cached(tmp_path, monkeypatch):
    def busy(device, precisions, threads, backend, log_path, timeout_s=0, command=None):
        return {p: {"tflops": 0.1, "size": 2048, "repeats": 3, "dtype": p,
                    "busy": "other processes used 60 % of the 2 usable CPUs"} for p in precisions}

    monkeypatch.setattr(peak, "measure", busy)
    said = []
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l",
                           say=said.append)
    assert found[("cpu", "fp32", 0, "tensorflow")]["tflops"] == 0.1
    assert any("not cached" in line for line in said)
    assert not peak.cache_path(ENV, tmp_path).exists()


# --------------------------------------------------------------------------- the math a peak ran in

def test_a_gpu_peak_cached_before_peaks_said_their_math_is_measured_again(tmp_path, monkeypatch):
    """An old "fp32" GPU entry may be a TF32 matmul (JAX, TensorFlow) or an IEEE one (PyTorch):
    it cannot be the yardstick of either. On a CPU fp32 is always IEEE: old entries hold."""
    path = peak.cache_path(ENV, tmp_path)
    gpu_key = peak.cache_key("gpu:0", "fp32", 0, "torch", "2.13.0", 2)
    path.write_text(json.dumps({gpu_key: {"tflops": 51.0, "size": 8192},
                                peak.cache_key("cpu", "fp32", 0, "torch", "2.13.0", 2): {"tflops": 0.2}}))
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls, math="tf32"))
    combos = [(H100, "fp32", 0, "torch"), (CPU, "fp32", 0, "torch")]
    found = peak.peaks_for(combos, ENV, {"torch": "2.13.0"}, tmp_path, tmp_path / "l", say=print)
    assert calls == [(("fp32",), 0, "torch")]                           # the GPU only
    assert found[("gpu:0", "fp32", 0, "torch")]["math"] == "tf32"
    assert found[("cpu", "fp32", 0, "torch")] == {"tflops": 0.2, "cached": True}
    assert json.loads(path.read_text())[gpu_key]["math"] == "tf32"      # the old entry replaced
    again = peak.peaks_for(combos, ENV, {"torch": "2.13.0"}, tmp_path, tmp_path / "l", say=print)
    assert len(calls) == 1 and again[("gpu:0", "fp32", 0, "torch")]["cached"]


def _row(precision: str, math: str, peak_entry: dict) -> dict:
    result = fake_result(64, [0.01] * 10, 2)
    result.train.update(precision=precision, math=math, math_note="the backend's setting")
    planned = {"run_id": "r", "cell_id": "gpu0_bs64_r0", "device_id": "gpu:0", "device_type": "GPU",
               "device_name": "NVIDIA H100 80GB HBM3", "batch_size": 64, "precision": precision,
               "system": "Test OS"}
    return record.as_dict(record.ok_row(planned, result, peak=peak_entry))


@pytest.mark.parametrize("cell_math, peak_math", [("ieee", "tf32"), ("tf32", "ieee")])
def test_a_peak_measured_in_another_math_is_never_an_fp32_cells_yardstick(cell_math, peak_math):
    row = _row("fp32", cell_math, {"tflops": 341.0, "math": peak_math})
    assert row["efficiency_pct"] is None and row["peak_tflops"] is None
    assert row["math"] == cell_math and row["math_note"] == (
        f"the backend's setting; measured peak not used: its matmul ran in {peak_math}, the cell in "
        f"{cell_math} (python -m bench peak --refresh measures it again)")


def test_a_peak_in_the_cells_own_math_is_its_yardstick():
    row = _row("fp32", "tf32", {"tflops": 341.0, "math": "tf32"})
    assert row["peak_tflops"] == 341.0 and row["efficiency_pct"] == pytest.approx(
        100 * row["achieved_tflops"] / 341.0)
    assert row["math_note"] == "the backend's setting"
    # a mixed cell's yardstick may be a faster float32 matmul (bench.worker.run_peak)
    assert _row("mixed_bfloat16", "bf16", {"tflops": 341.0, "math": "tf32"})["efficiency_pct"] is not None
