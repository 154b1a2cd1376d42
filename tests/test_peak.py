"""bench.peak: the measured peak, its per-machine cache, and the peak command."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import peak
from bench.devices import Device, Requested

ENV = {"cpu": {"model": "Test CPU", "logical_cpus": 2}, "memory_bytes": 2**34, "gpus": [],
       "machine": "x86_64", "system": "Test OS"}
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU"))


def test_cache_round_trip_named_by_machine(tmp_path):
    cache = peak.PeakCache(ENV, root=tmp_path)
    assert cache.path.name.startswith("test-cpu-2cpu-16gib-nogpu-") and cache.entries == {}
    key = peak.cache_key("cpu", "fp32", 0, "2.21.0")
    cache.put(key, {"tflops": 0.2, "size": 2048})
    cache.save()
    assert peak.PeakCache(ENV, root=tmp_path).get(key) == {"tflops": 0.2, "size": 2048}
    assert peak.cache_key("cpu", "fp32", 0, "2.22.0") != key   # a TensorFlow upgrade re-measures


def test_a_damaged_cache_is_ignored_entry_by_entry(tmp_path):
    cache = peak.PeakCache(ENV, root=tmp_path)
    cache.path.write_text(json.dumps({"good": {"tflops": 0.2}, "negative": {"tflops": -1},
                                      "text": {"tflops": "fast"}, "list": [1]}))
    assert list(peak.PeakCache(ENV, root=tmp_path).entries) == ["good"]
    cache.path.write_text("{not json")
    assert peak.PeakCache(ENV, root=tmp_path).entries == {}


def test_cached_peaks_are_not_measured_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = peak.PeakCache(ENV)
    cache.put(peak.cache_key("cpu", "fp32", 0, "2.21.0"), {"tflops": 0.2, "size": 2048})
    cache.save()
    measured = []

    def fake_measure(device, precisions, threads, log_path, timeout_s=0):
        measured.append(precisions)
        return {p: {"tflops": 0.4, "size": 2048} for p in precisions}

    monkeypatch.setattr(peak, "measure", fake_measure)
    found = peak.peaks_for([(CPU, "fp32", 0), (CPU, "mixed_bfloat16", 0)], ENV, "2.21.0",
                           tmp_path / "logs", say=lambda text: None)
    assert measured == [["mixed_bfloat16"]]
    assert found[("cpu", "fp32", 0)] == {"tflops": 0.2, "size": 2048, "cached": True}
    assert found[("cpu", "mixed_bfloat16", 0)]["cached"] is False
    assert peak.PeakCache(ENV).get(peak.cache_key("cpu", "mixed_bfloat16", 0, "2.21.0"))["tflops"] == 0.4


def test_a_failed_measurement_is_said_and_the_rest_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("peak measurement on cpu failed: worker killed by SIGKILL")

    monkeypatch.setattr(peak, "measure", broken)
    said = []
    assert peak.peaks_for([(CPU, "fp32", 0)], ENV, "2.21.0", tmp_path / "logs", say=said.append) == {}
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
    assert cells[:4] == ["cpu", "fp32", "default", "2048×2048 float32"]
    assert float(cells[4]) > 0 and float(cells[4]) >= float(cells[5]) and cells[-1] == "no"
    assert len(list((tmp_path / "results" / "peaks").glob("*.json"))) == 1
    second = run()
    assert cpu_row(second.stdout)[-1] == "yes" and cpu_row(second.stdout)[4] == cells[4]
    assert "(cached)" in second.stderr


def test_peak_command_rejects_bad_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "peak", "--precision", "int4"],
                          cwd=tmp_path, text=True, capture_output=True, timeout=60)
    assert done.returncode == 2 and "--precision: unknown value 'int4'" in done.stderr
    assert not (tmp_path / "results").exists()
