"""Energy meters against fake counters (NVML monkeypatched, powercap in tmp_path), the row's
figures against hand-computed values, --price parsing, and the time-against-energy plot."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from bench import cost, energy
from bench.energy import EnergyColumns, EnergyReading

SEED_RUN_IMAGES = 26 * 40_000


class FakeClock:
    """Seconds that advance only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- RAPL


def zone(root: Path, name: str, label: str, energy_uj: int = 0, max_uj: int = 1_000_000) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


@pytest.fixture
def machine(tmp_path):
    """Two packages of 4 CPUs: package-0 with a DRAM zone, package-1 without; psys, a core
    subzone and the MMIO duplicate of package-0 that must not be counted twice."""
    powercap, cpus = tmp_path / "powercap", tmp_path / "cpu"
    zones = {"pkg0": zone(powercap, "intel-rapl:0", "package-0", 900_000),
             "core0": zone(powercap, "intel-rapl:0:0", "core", 5),
             "dram0": zone(powercap, "intel-rapl:0:1", "dram", 100_000),
             "pkg1": zone(powercap, "intel-rapl:1", "package-1", 0, max_uj=2_000_000),
             "psys": zone(powercap, "intel-rapl:2", "psys", 7),
             "mmio": zone(powercap, "intel-rapl-mmio:0", "package-0", 9)}
    for cpu in range(8):
        topology = cpus / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{cpu // 4}\n")
    return powercap, cpus, zones


def set_uj(path: Path, value: int) -> None:
    (path / "energy_uj").write_text(f"{value}\n")


def test_rapl_zones_are_packages_and_their_dram_only(machine):
    powercap, _, _ = machine
    found = {(d.name, d.package, d.max_range_uj) for d in energy.rapl_domains(powercap)}
    assert found == {("package-0", 0, 1_000_000), ("dram", 0, 1_000_000), ("package-1", 1, 2_000_000)}


def test_rapl_energy_with_wrap_around_attributed_to_the_usable_cpus(machine):
    powercap, cpus, zones = machine
    meter = energy.cpu_meter(affinity={0, 1}, usable=2, root=powercap, cpu_root=cpus)
    clock = FakeClock()
    meter.clock = clock
    meter.poll_s = None                      # the edges only: no thread in a unit test
    meter.start()
    set_uj(zones["pkg0"], 50)                # wrapped: 1,000,000 - 900,000 + 50 = 100,050 uJ
    set_uj(zones["dram0"], 130_000)          # 30,000 uJ
    set_uj(zones["pkg1"], 555_555)           # another package: not the cell's
    clock.now = 2.0
    reading = meter.stop()
    assert reading.joules == pytest.approx(0.5 * (100_050 + 30_000) / 1e6)   # 2 of 4 CPUs
    assert reading.seconds == 2.0
    assert reading.watts == pytest.approx(0.5 * 0.130050 / 2.0)
    assert reading.covers == "CPU package-0 + DRAM, 2 of 4 package CPUs attributed"
    assert reading.method == "RAPL powercap counters"


def test_rapl_counter_counts_each_wrap_it_is_read_between(machine):
    """The poll thread reads at least once per wrap; each read adds what passed since the last."""
    powercap, _, zones = machine
    pkg1 = [d for d in energy.rapl_domains(powercap) if d.name == "package-1"]
    counter = energy.RaplCounter(pkg1)
    readings = []
    for value in (1_500_000, 500_000, 1_900_000, 100_000):   # wraps twice (max 2,000,000)
        set_uj(zones["pkg1"], value)
        readings.append(counter.joules())
    # 1.5M -> 0.5M: 0.5M + 0.5M = 1.0M; -> 1.9M: 1.4M; -> 0.1M: 0.1M + 0.1M = 0.2M
    assert readings == pytest.approx([0.0, 1.0, 2.4, 2.6])


def test_a_package_without_dram_says_so_and_a_whole_package_is_not_scaled(machine):
    powercap, cpus, zones = machine
    meter = energy.cpu_meter(affinity=range(4, 8), usable=4, root=powercap, cpu_root=cpus)
    meter.poll_s = None
    meter.start()
    set_uj(zones["pkg1"], 250_000)
    reading = meter.stop()
    assert reading.covers == "CPU package-1 (no DRAM zone)"
    assert reading.joules == pytest.approx(0.25)


def test_a_cgroup_quota_attributes_less_than_the_affinity(machine):
    powercap, cpus, _ = machine
    meter = energy.cpu_meter(affinity=range(8), usable=1.5, root=powercap, cpu_root=cpus)
    assert meter.counter.share == pytest.approx(1.5 / 8)
    assert "1.5 of 8 package CPUs attributed" in meter.covers


def test_rapl_without_read_permission_is_not_available_and_says_why(machine):
    powercap, cpus, _ = machine

    def root_only(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    meter = energy.cpu_meter(affinity={0}, usable=1, root=powercap, cpu_root=cpus, read=root_only)
    meter.start()
    reading = meter.stop()
    assert reading.joules is None
    assert "readable only by root" in reading.unavailable and "energy_uj" in reading.unavailable


def test_no_powercap_interface_is_not_available_and_says_why(tmp_path):
    reading = energy.measure_idle(energy.cpu_meter({0}, 1, root=tmp_path / "absent"), 0.0, sleep=lambda s: None)
    assert reading.joules is None and reading.watts is None
    assert reading.unavailable.startswith("no powercap interface")


def test_a_counter_that_fails_mid_window_gives_no_number():
    class Failing:
        calls = itertools.count()

        def joules(self):
            if next(self.calls):
                raise energy.EnergyUnavailable("counter vanished")
            return 1.0

        def close(self):
            pass

    meter = energy.CounterMeter(Failing(), "GPU board", "test counter")
    meter.start()
    reading = meter.stop()
    assert reading.joules is None and reading.unavailable == "counter vanished"


def test_the_poll_thread_reads_while_the_window_is_open_and_ends_with_it():
    class Counting:
        def __init__(self):
            self.calls = 0
            self.polled = threading.Event()

        def joules(self):
            self.calls += 1
            if self.calls >= 3:               # start's read, then two polls
                self.polled.set()
            return 10.0 * self.calls

        def close(self):
            pass

    counter = Counting()
    meter = energy.CounterMeter(counter, "CPU package-0", "test counter", poll_s=0.001)
    meter.start()
    assert counter.polled.wait(timeout=120)   # bounds a hang only; normally milliseconds
    reading = meter.stop()
    calls = counter.calls
    assert reading.joules == 10.0 * (calls - 1) and calls >= 4
    assert not any(t.name == "energy-poll" for t in threading.enumerate())


def test_the_modules_import_no_framework():
    code = "import sys, bench.energy, bench.cost; print([m for m in ('keras', 'tensorflow', 'jax', 'torch') " \
           "if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- NVML


class FakeNvml:
    """The pynvml calls the GPU meter makes, scripted."""

    def __init__(self, monkeypatch, energy_mj=None, power_mw=None, init_error=None):
        nvml = energy.pynvml
        self.shutdowns = 0

        def init():
            if init_error:
                raise nvml.NVMLError(init_error)

        def total_energy(handle):
            if energy_mj is None:
                raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
            return next(energy_mj)

        def power(handle):
            if power_mw is None:
                raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
            return next(power_mw)

        def shutdown():
            self.shutdowns += 1

        monkeypatch.setattr(nvml, "nvmlInit", init)
        monkeypatch.setattr(nvml, "nvmlShutdown", shutdown)
        monkeypatch.setattr(nvml, "nvmlDeviceGetHandleByIndex", lambda i: f"handle-{i}")
        monkeypatch.setattr(nvml, "nvmlDeviceGetTotalEnergyConsumption", total_energy)
        monkeypatch.setattr(nvml, "nvmlDeviceGetPowerUsage", power)


def test_gpu_energy_counter_in_millijoules(monkeypatch):
    # probe, start, stop
    nvml = FakeNvml(monkeypatch, energy_mj=iter([1_000_000, 1_000_000, 1_450_500]))
    meter = energy.gpu_meter([0])
    meter.clock = FakeClock()
    meter.start()
    meter.clock.now = 1.5
    reading = meter.stop()
    assert (reading.covers, reading.method) == ("GPU board", "NVML energy counter")
    assert reading.joules == pytest.approx(450.5)
    assert reading.watts == pytest.approx(450.5 / 1.5)
    meter.close()
    assert nvml.shutdowns == 1


def test_gpu_without_energy_counter_samples_power_and_says_so(monkeypatch):
    FakeNvml(monkeypatch, power_mw=iter([90_000]))
    meter = energy.gpu_meter([0])
    assert "power sampled" in meter.method and "no energy counter" in meter.method
    assert meter.poll_s == energy.POWER_SAMPLE_S


def test_power_integration_is_the_trapezoid_rule(monkeypatch):
    FakeNvml(monkeypatch, power_mw=iter([100_000, 200_000, 200_000, 50_000]))
    clock = FakeClock()
    integrator = energy.NvmlPowerIntegrator(["h"], clock)
    totals = []
    for t in (0.0, 1.0, 1.5, 3.5):
        clock.now = t
        totals.append(integrator.joules())
    # 1 s at (100+200)/2 W, 0.5 s at 200 W, 2 s at (200+50)/2 W
    assert totals == pytest.approx([0.0, 150.0, 250.0, 500.0])


def test_gpu_without_nvml_is_not_available_and_says_why(monkeypatch):
    FakeNvml(monkeypatch, init_error=energy.pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    meter = energy.gpu_meter([0])
    meter.start()
    reading = meter.stop()
    assert reading.joules is None
    assert reading.unavailable.startswith("NVML unavailable") and "driver" in reading.unavailable.lower()


def test_gpu_with_neither_counter_nor_power_is_not_available(monkeypatch):
    FakeNvml(monkeypatch)
    reading = energy.measure_idle(energy.gpu_meter([0]), 0.0, sleep=lambda s: None)
    assert reading.joules is None and "energy counter" in reading.unavailable and "power" in reading.unavailable


# ---------------------------------------------------------------------------- the row


def test_row_figures_against_hand_computed_values():
    window = EnergyReading("GPU board", seconds=20.0, joules=4000.0, method="NVML energy counter", steps=100)
    idle = EnergyReading("GPU board", seconds=3.0, joules=150.0, method="NVML energy counter")
    row = EnergyColumns.build(window, idle, global_batch_size=128, seed_run_images=SEED_RUN_IMAGES)
    assert row.energy_window_images == 12_800
    assert row.energy_avg_w == pytest.approx(200.0)
    assert row.energy_j_per_1k_images == pytest.approx(312.5)
    assert row.energy_idle_w == pytest.approx(50.0)
    assert row.energy_above_idle_j_per_1k_images == pytest.approx(1000 * 150 * 20 / 12_800)   # 234.375
    assert row.energy_seed_run_kwh == pytest.approx(4000 / 12_800 * 1_040_000 / 3.6e6)        # 0.0903
    assert row.energy_window_s == 20.0 and row.energy_covers == "GPU board"
    assert energy.describe_energy(row.as_row()) == "312.5 J/1k images (GPU board)"


def test_an_unmeasured_row_says_why_and_has_no_numbers():
    window = EnergyReading("CPU package", seconds=31.0, unavailable="no powercap interface (VM)")
    row = EnergyColumns.build(window, None, global_batch_size=64, seed_run_images=SEED_RUN_IMAGES)
    assert row.energy_covers == "not available: no powercap interface (VM)"
    numbers = {k: v for k, v in row.as_row().items() if k not in ("energy_covers", "energy_method")}
    assert all(v is None for v in numbers.values())
    assert energy.describe_energy(row.as_row()) == "not available: no powercap interface (VM)"
    assert energy.describe_energy({}) == "not measured (run without --energy)"


def test_every_column_is_declared_with_a_doc_and_a_dtype():
    schema = EnergyColumns.schema()
    assert list(schema) == list(EnergyColumns().as_row())
    assert all(doc and dtype in ("float", "int", "text") for doc, dtype in schema.values())
    assert set(cost.CostColumns.schema()) == set(cost.CostColumns().as_row())


def test_a_reading_crosses_the_process_boundary_and_refuses_unknown_fields():
    reading = EnergyReading("GPU board", 2.0, 10.0, "NVML energy counter", steps=7, segments=2)
    assert EnergyReading.from_dict(reading.to_dict()) == reading
    with pytest.raises(ValueError, match="unknown field"):
        EnergyReading.from_dict({**reading.to_dict(), "jules": 1})


def test_the_spec_and_the_result_cross_the_process_boundary():
    spec = energy.EnergySpec(min_window_s=45.0, nvml_indices=(2, 3))
    assert energy.EnergySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    result = energy.EnergyResult(EnergyReading("GPU board", 30.0, 9000.0, "NVML energy counter", steps=300),
                                 EnergyReading("GPU board", 3.0, unavailable="lost"))
    assert energy.EnergyResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_spec_opens_the_cells_meter(monkeypatch, machine):
    FakeNvml(monkeypatch, energy_mj=iter([5, 5]))
    assert energy.EnergySpec(nvml_indices=(1, 2)).open_meter().covers == "2 GPU boards"
    powercap, cpus, _ = machine
    assert energy.EnergySpec().open_meter(powercap, cpus).covers.startswith("CPU package-0")
    assert energy.EnergySpec().open_meter(powercap / "absent", cpus).covers == "CPU package"


def test_windows_add_up():
    first = EnergyReading("GPU board", 4.0, 800.0, "NVML energy counter", steps=40)
    total = first.plus(EnergyReading("GPU board", 26.0, 5720.0, "NVML energy counter", steps=260))
    assert (total.seconds, total.joules, total.steps, total.segments) == (30.0, 6520.0, 300, 2)
    assert first.plus(EnergyReading("GPU board", 1.0, unavailable="lost")).joules is None


# ---------------------------------------------------------------------------- the window


@pytest.mark.parametrize("window_s, seconds_per_step, expected", [
    (12.0, 0.25, 72),       # 18 s more at 0.25 s a step
    (29.7, 0.1, 3),         # not 4: float noise in 0.3 / 0.1 is not a step
    (29.75, 0.1, 3),        # 2.5 steps -> 3
    (30.0, 0.5, 0),
    (45.0, 0.5, 0),
])
def test_steps_to_add(window_s, seconds_per_step, expected):
    assert energy.steps_to_add(window_s, seconds_per_step, 30.0) == expected


def test_steps_to_add_refuses_a_step_time_it_cannot_use():
    with pytest.raises(ValueError, match="seconds_per_step"):
        energy.steps_to_add(1.0, math.nan, 30.0)


class ScriptedMeter:
    """A meter whose windows last as long as the test says."""

    covers = "GPU board"

    def __init__(self, window_seconds):
        self.window_seconds = iter(window_seconds)
        self.starts = 0

    def start(self):
        self.starts += 1

    def stop(self):
        seconds = next(self.window_seconds)
        return EnergyReading(self.covers, seconds, 100.0 * seconds, "scripted")


def drive(callback, epochs: int, steps: int, per_call: int = 1) -> None:
    """What Keras's fit does with a callback (steps_per_execution = per_call)."""
    callback.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    callback.on_train_begin()
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch)
        for first in range(0, steps, per_call):
            callback.on_train_batch_begin(first)
            callback.on_train_batch_end(min(first + per_call, steps) - 1, {"loss": 1.0})
        callback.on_epoch_end(epoch)
    callback.on_train_end()


def test_callback_measures_the_steady_steps_and_asks_for_the_extension():
    meter = ScriptedMeter([2.0, 28.5])
    callback = energy.energy_callback(meter, warmup_steps=2, min_window_s=30.0)
    drive(callback, epochs=2, steps=3)
    assert meter.starts == 1 and callback.reading.steps == 4          # 6 steps, 2 of them warm-up
    assert callback.extra_steps_wanted() == 56                        # 28 s more at 0.5 s a step
    drive(callback, epochs=1, steps=56)                               # the extension: another fit
    total = callback.reading
    assert (total.steps, total.seconds, total.segments, total.joules) == (60, 30.5, 2, 3050.0)
    assert callback.extra_steps_wanted() == 0


def test_callback_counts_steps_per_call_when_keras_runs_several():
    meter = ScriptedMeter([10.0])
    callback = energy.energy_callback(meter, warmup_steps=4, min_window_s=1.0)
    drive(callback, epochs=1, steps=12, per_call=4)
    assert callback.reading.steps == 8


def test_callback_with_only_warm_up_steps_says_there_was_nothing_to_measure():
    callback = energy.energy_callback(ScriptedMeter([]), warmup_steps=10)
    drive(callback, epochs=1, steps=5)
    reading = callback.reading
    assert reading.joules is None and "all 5 steps were warm-up" in reading.unavailable
    assert callback.extra_steps_wanted() == 0


def test_callback_in_a_real_keras_fit():
    import keras
    import numpy as np

    meter = ScriptedMeter([1.0])
    callback = energy.energy_callback(meter, warmup_steps=1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=2, verbose=0, callbacks=[callback])
    assert meter.starts == 1 and callback.reading.steps == 7       # 2 epochs x 4 steps, 1 warm-up


# ---------------------------------------------------------------------------- prices


def test_prices_parse_and_match_the_most_specific_key():
    prices = cost.parse_prices("cpu=0.10, GPU:0=2.49,gpu=1.5,lab box=0.8")
    assert prices.usd_per_hour == {"cpu": 0.10, "gpu:0": 2.49, "gpu": 1.5, "lab box": 0.8}
    assert prices.lookup("gpu:0", "lab box") == ("gpu:0", 2.49)
    assert prices.lookup("gpu:1", "lab box") == ("gpu", 1.5)
    assert prices.lookup("cpu") == ("cpu", 0.10)
    assert cost.parse_prices("lab box=0.8").lookup("gpu:3", "lab box") == ("lab box", 0.8)
    assert cost.parse_prices("cpu=1").lookup("gpu:0", "other") is None
    assert cost.parse_prices("gpu-box=3").lookup("gpu:0", "gpu-box") == ("gpu-box", 3.0)   # a label


@pytest.mark.parametrize("text, problem", [
    ("cpu", "needs DEVICE_OR_MACHINE=USD_PER_HOUR"),
    ("=2", "needs DEVICE_OR_MACHINE=USD_PER_HOUR"),
    ("cpu=0.1,,gpu=1", "empty entry"),
    ("cpu=cheap", "'cheap' for cpu is not a number"),
    ("cpu=-1", "positive, finite"),
    ("gpu:0=nan", "positive, finite"),
    ("cpu=0.1,CPU=0.2", "gives cpu twice"),
    ("gpu:x=1", "unknown device 'gpu:x'"),
    ("CPU:0=1", "unknown device 'CPU:0'"),
    ("a|b=1", "without '|'"),
])
def test_price_errors_name_the_problem_and_the_fix(text, problem):
    with pytest.raises(ValueError) as error:
        cost.parse_prices(text)
    message = str(error.value)
    assert problem in message and "\n" not in message


def test_cost_is_hours_times_price():
    prices = cost.parse_prices("gpu:0=2.49")
    row = cost.CostColumns.build(prices, "gpu:0", None, projected_seed_run_s=1800.0, global_images_per_s=10_000.0)
    assert row.cost_seed_run_usd == pytest.approx(0.5 * 2.49)
    assert row.cost_usd_per_million_images == pytest.approx(100 / 3600 * 2.49)
    assert row.cost_note == "$2.49/h for gpu:0 (--price), hours x price"
    unpriced = cost.CostColumns.build(prices, "cpu", "box", 1800.0, 10.0)
    assert unpriced.cost_seed_run_usd is None and unpriced.cost_note == "no --price for cpu or box"


# ---------------------------------------------------------------------------- the picture


def test_pareto_front_keeps_only_points_nothing_beats_on_both_axes():
    points = [(10, 1.0), (2, 5.0), (3, 6.0), (1, 9.0), (10, 0.5)]
    assert sorted(cost.pareto_front(points)) == [1, 3, 4]


def runs_with_gaps() -> pd.DataFrame:
    base = {"run_id": "r1", "status": "ok", "device_name": "", "energy_method": None}
    return pd.DataFrame([
        {**base, "device_id": "cpu", "batch_size": 64, "projected_seed_run_s": 3600.0,
         "energy_seed_run_kwh": None, "energy_covers": "not available: no powercap interface"},
        {**base, "device_id": "cpu", "batch_size": 128, "projected_seed_run_s": 3000.0,
         "energy_seed_run_kwh": None, "energy_covers": "not available: no powercap interface"},
        {**base, "device_id": "gpu:0", "batch_size": 64, "projected_seed_run_s": 300.0,
         "energy_seed_run_kwh": 0.02, "energy_covers": "GPU board"},
        {**base, "device_id": "gpu:0", "batch_size": 128, "projected_seed_run_s": 200.0,
         "energy_seed_run_kwh": 0.025, "energy_covers": "GPU board"},
        {**base, "device_id": "gpu:0", "batch_size": 256, "projected_seed_run_s": 400.0,
         "energy_seed_run_kwh": 0.03, "energy_covers": "GPU board"},
        {**base, "status": "failed", "device_id": "gpu:0", "batch_size": 512, "projected_seed_run_s": None,
         "energy_seed_run_kwh": None, "energy_covers": None},
    ])


def test_plot_draws_with_energy_missing_on_some_rows_and_lists_them(tmp_path):
    fig = cost.trade_off_figure(runs_with_gaps())
    texts = "\n".join(t.get_text() for t in fig.texts)
    assert "cpu, batch size 64: not available: no powercap interface" in texts
    assert "cpu, batch size 128" in texts and "512" not in texts    # a failed cell is no point
    labels = {a.get_text() for a in fig.axes[0].texts}
    assert labels == {"gpu:0, batch size 64", "gpu:0, batch size 128", "gpu:0, batch size 256"}
    front = next(c for c in fig.axes[0].collections if "Pareto" in c.get_label())
    assert sorted(map(tuple, front.get_offsets().tolist())) == [(200 / 60, 0.025), (300 / 60, 0.02)]
    matplotlib.pyplot.close(fig)
    assert cost.trade_off_plot(runs_with_gaps(), tmp_path / "t.png").stat().st_size > 10_000


def test_plot_of_cost_lists_the_unpriced_cells_and_draws_nothing_without_figures(tmp_path):
    runs = runs_with_gaps().assign(cost_seed_run_usd=[None, None, 0.2, 0.14, 0.28, None],
                                   cost_note=["no --price for cpu", "no --price for cpu", "", "", "", ""])
    fig = cost.trade_off_figure(runs, "cost")
    assert "cpu, batch size 64: no --price for cpu" in "\n".join(t.get_text() for t in fig.texts)
    matplotlib.pyplot.close(fig)
    assert cost.trade_off_plot(runs.assign(energy_seed_run_kwh=None), tmp_path / "none.png") is None
