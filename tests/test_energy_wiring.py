"""--energy, --energy-window and --price end to end (issue 24): options -> cell spec -> worker ->
row -> export, compare and plots. Through the real CLI with the fake worker
(tests/helpers/fake_worker.py), which sends an energy result when asked; the slow tests train the
real network to show the window extension and the reason a reading is missing on this machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import cli, export, process, store
from bench.energy import EnergyReading, EnergyResult, EnergySpec
from bench.protocol import CellSpec, ProtocolError, WorkerResult
from cifar_model.settings import SEED_RUN

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fake_results import fake_result

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = (sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py"))
FAST = ["--devices", "cpu", "--batch-sizes", "32,64", "--steps", "4", "--warmup", "1", "--no-peak",
        "--data", "synthetic", "--synthetic-images", "2048"]
PRICES = ["--price", "cpu=0.10,gpu:0=2.49"]


@pytest.fixture
def bench(tmp_path, monkeypatch, capsys):
    """``python -m bench ARGS`` in this process, from ``tmp_path``, with the fake worker."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(process, "WORKER_COMMAND", FAKE_WORKER)
    monkeypatch.delenv("FAKE_ENERGY_WATTS", raising=False)

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


def rows(directory: Path) -> pd.DataFrame:
    return store.read_run(directory).runs


def test_energy_where_it_cannot_be_measured_says_why_and_price_fills_the_cost(tmp_path, bench):
    status, _, err = bench("run", *FAST, "--energy", *PRICES, "--out", "metered")
    assert status == 0, err
    status, _, err = bench("run", *FAST, "--out", "plain")
    assert status == 0, err
    metered, plain = rows(tmp_path / "metered"), rows(tmp_path / "plain")
    assert len(metered) == 2 and (metered["status"] == "ok").all()
    # never 0, never a guess: the reason in the row, the numbers empty
    assert (metered["energy_covers"] == "not available: fake worker: no energy counter").all()
    assert metered[["energy_j", "energy_j_per_1k_images", "energy_seed_run_kwh"]].isna().all().all()
    # the cost: projected hours of the notebook's run x the CPU's price
    expected = metered["projected_seed_run_s"] / 3600 * 0.10
    assert metered["cost_seed_run_usd"].tolist() == pytest.approx(expected.tolist())
    assert (metered["cost_price_of"] == "cpu").all() and (metered["cost_usd_per_hour"] == 0.10).all()
    assert metered["cost_usd_per_million_images"].tolist() == pytest.approx(
        (1e6 / metered["global_images_per_s"] / 3600 * 0.10).tolist())
    # otherwise unchanged: the same timings, and a run without the flags has none of the columns filled
    assert metered["step_median_s"].tolist() == plain["step_median_s"].tolist()
    assert plain[["energy_covers", "cost_note"]].fillna("").eq("").all().all()
    assert plain[["energy_j", "cost_seed_run_usd"]].isna().all().all()
    assert (tmp_path / "metered" / "time_vs_cost.png").is_file()
    assert not (tmp_path / "metered" / "time_vs_energy.png").exists()     # nothing measured to draw
    assert not (tmp_path / "plain" / "time_vs_cost.png").exists()
    env = json.loads((tmp_path / "metered" / "env.json").read_text())
    assert env["config"]["energy"] is True and env["config"]["price"] == "cpu=0.1,gpu:0=2.49"


def test_a_measured_window_fills_every_energy_column_and_reaches_exports_compare_and_plots(
        tmp_path, bench, monkeypatch):
    monkeypatch.setenv("FAKE_ENERGY_WATTS", "50")
    status, _, err = bench("run", *FAST, "--energy", "--energy-window", "2", *PRICES, "--out", "a")
    assert status == 0, err
    monkeypatch.setenv("FAKE_ENERGY_WATTS", "60")
    status, _, err = bench("run", *FAST, "--energy", "--energy-window", "2", *PRICES, "--out", "b")
    assert status == 0, err
    a = rows(tmp_path / "a")
    # the fake's step takes batch/1000 s: 50 W is 0.05 J an image, 50 J per 1,000; idle is half of it
    assert a["energy_j_per_1k_images"].tolist() == pytest.approx([50.0, 50.0])
    assert a["energy_above_idle_j_per_1k_images"].tolist() == pytest.approx([25.0, 25.0])
    assert (a["energy_window_s"] >= 2).all()                         # extended to --energy-window
    assert a["energy_seed_run_kwh"].tolist() == pytest.approx(
        [0.05 * SEED_RUN.epochs * SEED_RUN.train_images / 3.6e6] * 2)
    assert (tmp_path / "a" / "time_vs_energy.png").is_file()

    run = store.read_run(tmp_path / "a")
    bmf = export.bencher(run)
    assert [cell["energy"]["value"] for cell in bmf.values()] == pytest.approx([50.0, 50.0])
    assert all("cost" in cell for cell in bmf.values())
    names = [entry["name"] for entry in export.github_action_benchmark(run)]
    assert sum(name.endswith("- energy per 1k images") for name in names) == 2
    assert sum(name.endswith("- cost per notebook run") for name in names) == 2

    status, out, err = bench("compare", "a", "b")
    assert status == 0, err
    assert "J/1k images (base / current)" in out and "50.0 / 60.0" in out
    assert "$ per notebook run (base / current)" in out


@pytest.mark.parametrize("args, named", [
    (["--price", "gpu:x=1"], "unknown device 'gpu:x'"),
    (["--price", "cpu=free"], "'free' for cpu is not a number"),
    (["--price", "cpu=-1"], "must be a positive"),
    (["--price", "cpu"], "needs DEVICE_OR_MACHINE=USD_PER_HOUR"),
    (["--energy", "--energy-window", "0"], "'0' is not a number of seconds above 0"),
    (["--energy-window", "5"], "--energy-window is used only with --energy"),
])
def test_bad_energy_or_price_options_are_one_line_and_exit_2_with_nothing_written(tmp_path, bench, args, named):
    status, _, err = bench("run", *FAST, *args, "--out", "run")
    errors = [line for line in err.splitlines() if line.startswith("bench: error:")]
    assert status == 2 and len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_energy_crosses_the_worker_boundary_typed_and_checked():
    spec = CellSpec.from_json(CellSpec("c", "GPU", settings(), data(), EnergySpec(5.0, (2, 3))).to_json())
    assert spec.energy == EnergySpec(5.0, (2, 3))
    reading = EnergyReading("GPU board", 31.0, 620.0, "NVML energy counter", steps=100, segments=2)
    result = fake_result(32, [0.1] * 4, 1)
    sent = WorkerResult(**{**result.__dict__, "energy": EnergyResult(reading, EnergyReading("GPU board", 3.0, 30.0))})
    assert WorkerResult.from_dict(json.loads(json.dumps(sent.to_dict()))) == sent
    broken = json.loads(json.dumps(sent.to_dict()))
    broken["energy"]["window"]["joules"] = "a lot"
    with pytest.raises(ProtocolError, match="joules"):
        WorkerResult.from_dict(broken)
    broken["energy"] = {"window": None}
    with pytest.raises(ProtocolError):
        WorkerResult.from_dict(broken)


def settings():
    from cifar_model.settings import TrainSettings

    return TrainSettings(batch_size=32)


def data():
    from bench.protocol import DataSpec

    return DataSpec()


# --------------------------------------------------------------------------- the real network


class ClockCounter:
    """A counter that rises 10 J every second of wall clock: a fake board at a steady 10 W."""

    def joules(self) -> float:
        return 10.0 * time.perf_counter()

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_a_short_window_is_extended_after_evaluation_without_touching_the_timed_run():
    from bench.energy import CounterMeter, energy_callback
    from cifar_model import TrainSettings, synthetic_dataset, train

    meter = CounterMeter(ClockCounter(), "fake board", "clock")
    window = energy_callback(meter, warmup_steps=1, min_window_s=1.0)
    result = train(synthetic_dataset(n_train=256, n_test=32, seed=1),
                   TrainSettings(batch_size=32, epochs=1, max_steps_per_epoch=3, warmup_steps=1, eval_images=0),
                   callbacks=[window])
    reading = window.reading
    assert result.total_steps == 3 and result.steady_steps == 2        # the planned run, as planned
    assert reading.segments >= 2 and reading.steps > 2                   # more steady steps were run ...
    assert reading.seconds >= 1.0                                        # ... until the window was long enough
    assert reading.watts == pytest.approx(10.0, rel=0.05)


class _Trainer:
    """Records each extension's fit; each fit's steps reach the callbacks like a real one."""

    def __init__(self):
        self.fits: list[int] = []

    def fit(self, pipeline, epochs, steps_per_epoch, shuffle, verbose, callbacks):
        self.fits.append(epochs * steps_per_epoch)
        for callback in callbacks:
            callback.ran(epochs * steps_per_epoch)


class _ShortWindow:
    """A window that gets only half the steady seconds it asked for from each extension (a
    busy machine that sped up), until its steps reach ``needed``."""

    def __init__(self, needed: float):
        self.needed, self.have = needed, 0.0

    def extra_steps_wanted(self) -> int:
        return max(0, int(self.needed - self.have))

    def ran(self, steps: int) -> None:
        self.have += steps / 2


def test_a_window_still_short_after_an_extension_is_extended_again_but_not_forever():
    from cifar_model.training import MAX_WINDOW_EXTENSIONS, _extend_measured_windows

    trainer = _Trainer()
    _extend_measured_windows(trainer, pipeline=None, steps=100, callbacks=[_ShortWindow(4)])
    assert trainer.fits == [4, 2, 1]                      # asked again after each, until 2 + 1 + 0.5 fills it

    stubborn = _Trainer()
    _extend_measured_windows(stubborn, pipeline=None, steps=100, callbacks=[_ShortWindow(10**6)])
    assert len(stubborn.fits) == MAX_WINDOW_EXTENSIONS     # bounded: a window that never fills stops

    enough = _Trainer()
    _extend_measured_windows(enough, pipeline=None, steps=3, callbacks=[_ShortWindow(0), object()])
    assert enough.fits == []                                # long enough: no extra steps


@pytest.mark.slow
def test_a_real_cell_with_energy_says_why_no_counter_could_be_read_here(tmp_path):
    import os
    import subprocess

    out = tmp_path / "run"
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--devices", "cpu", "--batch-sizes", "32", "--steps", "3",
         "--warmup", "1", "--no-peak", "--data", "synthetic", "--synthetic-images", "256", "--energy",
         "--energy-window", "1", *PRICES, "--out", str(out)],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ran.returncode == 0, ran.stderr
    [row] = rows(out).to_dict(orient="records")
    assert row["status"] == "ok" and row["cost_seed_run_usd"] > 0
    covers = row["energy_covers"]
    if covers.startswith("not available: "):      # this VM: no powercap interface, no NVIDIA driver
        assert len(covers) > len("not available: ") + 10 and pd.isna(row["energy_j"])
    else:                                          # a machine whose RAPL counters are readable
        assert row["energy_j"] > 0 and row["energy_window_s"] >= 1
