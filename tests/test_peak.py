"""bench.yardsticks: the measured peak, its per-machine cache (keyed by usable CPUs, read as
untrusted), which yardstick a cell is measured against, the peak command."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from bench import files, matrix, record, runner
from bench import yardsticks as peak
from bench.config import RunConfig
from bench.devices import Device, Requested
from bench.protocol import DataSpec
from bench.yardsticks import MeasuredPeak

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fake_results import fake_result  # noqa: E402

ENV = {"cpu": {"model": "Test CPU", "logical_cpus": 2, "usable_cpus": 2}, "memory_bytes": 2**34,
       "gpus": [], "machine": "x86_64", "system": "Test OS"}
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU"))
H100 = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA H100 80GB HBM3", compute_capability="9.0"))
VERSIONS = {"tensorflow": "2.21.0"}


def entry(tflops: float = 0.2, precision: str = "fp32", **fields) -> MeasuredPeak:
    return MeasuredPeak(**{"precision": precision, "dtype": "float32", "size": 2048, "repeats": 3,
                           "tflops": tflops, "median_tflops": tflops * 0.9, "math": "ieee", **fields})


def fake_measure(calls, **extra):
    def measure(device, precisions, threads, backend, log_path, timeout_s=0, command=None):
        calls.append((tuple(precisions), threads, backend))
        return {p: entry(0.4, p, **extra) for p in precisions}
    return measure


def test_cached_peaks_are_not_measured_again(tmp_path, monkeypatch):
    path = peak.cache_path(ENV, tmp_path)
    assert path.name.startswith("test-cpu-2cpu-16gib-nogpu-")
    path.write_text(json.dumps({peak.cache_key("cpu", "fp32", 0, "tensorflow", "2.21.0", 2): entry().as_dict()}))
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow"), (CPU, "mixed_bfloat16", 0, "tensorflow")],
                           ENV, VERSIONS, tmp_path, tmp_path / "logs", say=lambda text: None)
    assert calls == [(("mixed_bfloat16",), 0, "tensorflow")]
    assert found[("cpu", "fp32", 0, "tensorflow")] == entry(cached=True)
    assert found[("cpu", "mixed_bfloat16", 0, "tensorflow")].cached is False
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({good: entry().as_dict(), "negative": entry().as_dict() | {"tflops": -1},
                                "text": entry().as_dict() | {"tflops": "fast"}, "list": [1],
                                "bool": entry().as_dict() | {"tflops": True},
                                "missing": {"tflops": 0.2}, "unknown": entry().as_dict() | {"colour": 1}}))
    calls, said = [], []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l",
                           say=said.append)
    assert calls == [] and found[("cpu", "fp32", 0, "tensorflow")].tflops == 0.2
    assert [line for line in said if "warning" in line] == [
        f"warning: peak cache {path}: 6 damaged entries (MeasuredPeak.tflops must be a finite number "
        "above 0 (got -1)); ignored, those peaks are measured again"]
    path.write_text("{not json")
    peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l", say=print)
    assert calls and json.loads(path.read_text())[good]["tflops"] == 0.4


@pytest.mark.parametrize("damage, why", [
    (lambda path: path.write_text("[" * 100_000 + "]" * 100_000), "nested too deep"),
    (lambda path: path.symlink_to("/dev/zero"), "not a regular file"),
    (lambda path: path.write_bytes(b" " * (peak.MAX_CACHE_BYTES + 1)), "larger than 16 MiB"),
    (lambda path: path.write_text("[1, 2]"), "not a JSON object"),
])
def test_a_damaged_cache_file_reads_as_empty_with_one_warning_and_is_replaced(tmp_path, monkeypatch, damage, why):
    path = peak.cache_path(ENV, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    damage(path)
    calls, said = [], []
    monkeypatch.setattr(peak, "measure", fake_measure(calls))
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l",
                           say=said.append)
    assert calls == [(("fp32",), 0, "tensorflow")] and found[("cpu", "fp32", 0, "tensorflow")].tflops == 0.4
    assert [line for line in said if "warning" in line] == [
        f"warning: peak cache {path}: {why}; ignored, those peaks are measured again"]
    assert not path.is_symlink() and list(json.loads(path.read_text()).values()) == [entry(0.4).as_dict()]


def test_a_peak_result_of_the_wrong_shape_fails_the_measurement_not_the_run():
    wrong = ({"fp32": {"tflops": 1.0}}, {"bf16": entry().as_dict()}, [1], {"fp32": entry().as_dict() | {"size": "x"}})
    for raw in wrong:
        with pytest.raises(ValueError):
            peak._peak_result(raw, ["fp32"])
    assert peak._peak_result({"fp32": entry().as_dict()}, ["fp32"]) == {"fp32": entry()}


def _add_entry(args):
    path, i = args
    files.update_json(path, lambda current: {**current, f"key{i}": entry(float(i + 1)).as_dict()})


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


BUSY = "other processes used 60 % of the 2 usable CPUs (busiest: stress, 58 %), steal 0 %, worker 100 %"


def test_a_peak_measured_on_a_busy_machine_is_never_cached(tmp_path, monkeypatch):
    def busy(device, precisions, threads, backend, log_path, timeout_s=0, command=None):
        return {p: entry(0.1, p, busy=BUSY) for p in precisions}

    monkeypatch.setattr(peak, "measure", busy)
    said = []
    found = peak.peaks_for([(CPU, "fp32", 0, "tensorflow")], ENV, VERSIONS, tmp_path, tmp_path / "l",
                           say=said.append)
    assert found[("cpu", "fp32", 0, "tensorflow")].busy == BUSY      # the peak command shows it
    assert any("not a yardstick" in line and "not cached" in line for line in said)
    assert not peak.cache_path(ENV, tmp_path).exists()


def _cell(precision: str = "fp32", device: Requested = CPU):
    cfg = RunConfig(plan=matrix.Plan({"batch_size": (64,), "precision": (precision,)}), epochs=1,
                    max_steps_per_epoch=6, warmup_steps=2, source=DataSpec("synthetic"))
    [cell] = runner.plan_cells(cfg, [device])
    return cell


def test_a_busy_peak_is_never_a_yardstick_and_the_row_says_why():
    """Issue 21: a busy peak is too low; used as the yardstick, it read 113-154 % efficiency."""
    cell, result = _cell(), fake_result(64, [0.01] * 10, 2)
    theoretical = {("cpu", "fp32"): peak.TheoreticalPeak(1.0, "a test datasheet")}
    key = ("cpu", "fp32", 0, "tensorflow")
    busy = peak.for_cell(cell, result.train, {key: entry(0.001, busy=BUSY)}, theoretical)
    row = record.as_dict(record.ok_row({"cell_id": cell.cell_id}, result, busy))
    assert row["efficiency_pct"] is None and row["peak_tflops"] is None
    assert row["peak_note"] == (f"efficiency not measured: the peak was measured while {BUSY}, so it is too low "
                                "to be a yardstick (python -m bench peak --refresh on a quiet machine)")
    assert row["efficiency_theoretical_pct"] == pytest.approx(100 * row["achieved_tflops"])  # still there
    quiet = peak.for_cell(cell, result.train, {key: entry(0.5)}, theoretical)
    row = record.as_dict(record.ok_row({"cell_id": cell.cell_id}, result, quiet))
    assert row["efficiency_pct"] == pytest.approx(100 * row["achieved_tflops"] / 0.5) and row["peak_note"] == ""


# --------------------------------------------------------------------------- the math a peak ran in

def test_a_gpu_peak_cached_before_peaks_said_their_math_is_measured_again(tmp_path, monkeypatch):
    """An old "fp32" GPU entry may be a TF32 matmul (JAX, TensorFlow) or an IEEE one (PyTorch):
    it cannot be the yardstick of either. On a CPU fp32 is always IEEE: old entries hold."""
    path = peak.cache_path(ENV, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gpu_key = peak.cache_key("gpu:0", "fp32", 0, "torch", "2.13.0", 2)
    old = {k: v for k, v in entry().as_dict().items() if k not in ("math", "math_note", "cached")}
    path.write_text(json.dumps({gpu_key: old | {"tflops": 51.0, "size": 8192},
                                peak.cache_key("cpu", "fp32", 0, "torch", "2.13.0", 2): old}))
    calls = []
    monkeypatch.setattr(peak, "measure", fake_measure(calls, math="tf32"))
    combos = [(H100, "fp32", 0, "torch"), (CPU, "fp32", 0, "torch")]
    found = peak.peaks_for(combos, ENV, {"torch": "2.13.0"}, tmp_path, tmp_path / "l", say=print)
    assert calls == [(("fp32",), 0, "torch")]                           # the GPU only
    assert found[("gpu:0", "fp32", 0, "torch")].math == "tf32"
    assert found[("cpu", "fp32", 0, "torch")] == MeasuredPeak(**old, cached=True)
    assert json.loads(path.read_text())[gpu_key]["math"] == "tf32"      # the old entry replaced
    again = peak.peaks_for(combos, ENV, {"torch": "2.13.0"}, tmp_path, tmp_path / "l", say=print)
    assert len(calls) == 1 and again[("gpu:0", "fp32", 0, "torch")].cached


def _row(precision: str, math: str, peak_entry: MeasuredPeak) -> dict:
    cell = _cell(precision, H100)
    result = fake_result(64, [0.01] * 10, 2, precision=precision, math=math, math_note="the backend's setting")
    yardstick = peak.for_cell(cell, result.train, {("gpu:0", precision, 0, "tensorflow"): peak_entry}, {})
    planned = {"run_id": "r", "cell_id": "gpu0_bs64_r0", "device_id": "gpu:0", "device_type": "GPU",
               "device_name": "NVIDIA H100 80GB HBM3", "batch_size": 64, "precision": precision,
               "system": "Test OS"}
    return record.as_dict(record.ok_row(planned, result, yardstick))


@pytest.mark.parametrize("cell_math, peak_math", [("ieee", "tf32"), ("tf32", "ieee")])
def test_a_peak_measured_in_another_math_is_never_an_fp32_cells_yardstick(cell_math, peak_math):
    row = _row("fp32", cell_math, entry(341.0, math=peak_math))
    assert row["efficiency_pct"] is None and row["peak_tflops"] is None
    assert row["math"] == cell_math and row["math_note"] == "the backend's setting"
    assert row["peak_note"] == (f"measured peak not used: its matmul ran in {peak_math}, the cell in "
                                f"{cell_math} (python -m bench peak --refresh measures it again)")


def test_a_peak_in_the_cells_own_math_is_its_yardstick():
    row = _row("fp32", "tf32", entry(341.0, math="tf32"))
    assert row["peak_tflops"] == 341.0 and row["efficiency_pct"] == pytest.approx(
        100 * row["achieved_tflops"] / 341.0)
    assert row["math_note"] == "the backend's setting" and row["peak_note"] == ""
    # a mixed cell's yardstick may be a faster float32 matmul (bench.worker.run_peak)
    assert _row("mixed_bfloat16", "bf16", entry(341.0, "mixed_bfloat16", math="tf32"))["efficiency_pct"] is not None
