"""Time to accuracy through the real CLI (issue 23): ``--eval-every``, ``--target-accuracy`` and
the ``seed-tta`` profile reach every cell; runs.csv says the time to target, or that it was not
reached; curves.csv holds the held-out curve at the cadence asked and survives a resume;
accuracy.png is drawn; exports and ``check`` carry the time to target; bad values exit 2.

The fake worker (tests/helpers/fake_worker.py) sends a curve whose accuracy is 0.1 +
$FAKE_CURVE_GAIN per epoch (default 0.2) and stops at the target, as the real worker does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import cli, process, regression, store, tta
from bench.config import PROFILES

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from conftest import write_python_layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = (sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py"))
#: 3 epochs of 4 steps, evaluated twice an epoch: evaluations after steps 2, 4, 6, ...
TTA = ["--profile", "seed-tta", "--devices", "cpu", "--epochs", "3", "--steps", "4", "--warmup", "1",
       "--eval-every", "0.5", "--target-accuracy", "0.5", "--no-peak", "--no-download"]


@pytest.fixture
def bench(tmp_path, monkeypatch, capsys):
    """``python -m bench ARGS`` in this process, from ``tmp_path``, with the fake worker and a tiny CIFAR-10 copy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(process, "WORKER_COMMAND", FAKE_WORKER)
    data = write_python_layout(tmp_path / "cifar-10-batches-py")

    def run(*args, data_dir: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main([str(a) for a in args] + (["--data-dir", str(data)] if data_dir else []))
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


def test_the_curve_is_kept_at_the_cadence_asked_and_the_time_to_target_is_mlperfs_clock(bench, tmp_path):
    status, _, err = bench("run", *TTA, "--repeats", "2", "--out", tmp_path / "run")
    assert status == 0, err
    run = store.read_run(tmp_path / "run")
    curves = run.curves
    assert set(curves["repeat"]) == {0, 1}
    for cell_id, points in curves.groupby("cell_id"):
        # twice an epoch, stopped at the evaluation that reached 0.5 (0.1 + 0.2 x 2 epochs)
        assert points["step"].tolist() == [2, 4, 6, 8]
        assert points["heldout_accuracy"].iloc[-1] == pytest.approx(0.5)
        row = run.runs.set_index("cell_id").loc[cell_id]
        assert row["target_accuracy"] == 0.5
        assert row["time_to_target_s"] == pytest.approx(row["data_load_s"] + points["wall_seconds"].iloc[-1])
        assert row["train_time_to_target_s"] == pytest.approx(points["train_seconds"].iloc[-1])
        assert row["epochs_to_target"] == pytest.approx(2.0)
        assert row["images_to_target"] == 8 * 128
        assert row["curve_evals"] == 4
        assert pd.isna(row["target_note"]) or row["target_note"] == ""
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 0


def test_a_target_not_reached_is_said_and_never_given_a_time(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CURVE_GAIN", "0.05")      # 0.25 after 3 epochs: short of 0.5
    status, _, err = bench("run", *TTA, "--out", tmp_path / "run")
    assert status == 0, err
    row = store.read_run(tmp_path / "run").runs.iloc[0]
    assert row["target_note"] == "not reached in 3 epochs"
    assert pd.isna(row["time_to_target_s"]) and pd.isna(row["epochs_to_target"])
    assert len(store.read_run(tmp_path / "run").curves) == 6     # the whole budget, evaluated twice an epoch

    status, out, _ = bench("export", "--run", tmp_path / "run", "--format", "json", data_dir=False)
    target = json.loads(out)["cells"][0]["time_to_target"]
    assert target["seconds"] is None and target["reached"] == 0
    assert target["note"] == "not reached in 3 epochs, by 1 of 1 run(s)"
    status, out, _ = bench("export", "--run", tmp_path / "run", "--format", "github-action-benchmark",
                           data_dir=False)
    entries = json.loads(out)
    assert [e["name"].endswith("median step") for e in entries] == [True]
    assert "not reached in 3 epochs" in entries[0]["extra"]


def test_time_to_target_is_exported_smaller_is_better(bench, tmp_path):
    assert bench("run", *TTA, "--repeats", "3", "--out", tmp_path / "run")[0] == 0
    status, out, _ = bench("export", "--run", tmp_path / "run", "--format", "bencher", data_dir=False)
    measure = next(iter(json.loads(out).values()))["time-to-target"]
    times = store.read_run(tmp_path / "run").runs["time_to_target_s"]
    assert measure["lower_value"] == pytest.approx(times.min())
    assert measure["upper_value"] == pytest.approx(times.max())
    assert measure["lower_value"] <= measure["value"] <= measure["upper_value"]
    status, out, _ = bench("export", "--run", tmp_path / "run", "--format", "github-action-benchmark",
                           data_dir=False)
    timed = [e for e in json.loads(out) if e["name"].endswith("time to 50% accuracy")]
    assert len(timed) == 1 and timed[0]["unit"] == "s"
    assert "olympic mean of 3" in timed[0]["extra"]


def test_check_fails_a_run_that_stops_reaching_the_target(bench, tmp_path, monkeypatch):
    assert bench("run", *TTA, "--out", tmp_path / "base")[0] == 0
    monkeypatch.setenv("FAKE_CURVE_GAIN", "0.05")
    assert bench("run", *TTA, "--out", tmp_path / "worse")[0] == 0
    status, out, err = bench("check", "--baseline", tmp_path / "base", "--run", tmp_path / "worse", data_dir=False)
    assert status == 1, out + err
    assert "stopped reaching the target" in out + err
    assert "not reached in 1 run(s)" in out + err


def test_a_resumed_run_keeps_the_curves_of_the_cells_it_keeps(bench, tmp_path):
    assert bench("run", *TTA, "--repeats", "2", "--out", tmp_path / "run")[0] == 0
    before = store.read_run(tmp_path / "run")
    runs = before.runs.copy()
    runs.loc[runs["repeat"] == 1, "status"] = "failed"      # as if repeat 1 had crashed
    runs.to_csv(tmp_path / "run" / store.RUNS_CSV, index=False)
    status, _, err = bench("run", "--resume", tmp_path / "run", "--rerun-failed", data_dir=False)
    assert status == 0, err
    after = store.read_run(tmp_path / "run").curves
    assert len(after) == len(before.curves)
    kept = before.curves[before.curves["repeat"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(after[after["repeat"] == 0].reset_index(drop=True), kept)


@pytest.mark.parametrize(("args", "message"), [
    (["--target-accuracy", "1.5"], "'1.5' is not a fraction above 0 and at most 1"),
    (["--eval-every", "0"], "'0' is not a number of epochs above 0"),
    (["--profile", "quick", "--target-accuracy", "0.5"], "needs --eval-every"),
    (["--profile", "seed-tta", "--data", "synthetic"], "needs CIFAR-10"),
])
def test_bad_values_exit_2_and_write_nothing(bench, tmp_path, args, message):
    status, _, err = bench("run", "--devices", "cpu", "--steps", "4", "--warmup", "1", "--no-peak", *args,
                           "--out", tmp_path / "run", data_dir=False)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_target_refused_when_cifar10_falls_back_to_synthetic(bench, no_dataset_anywhere, tmp_path):
    status, _, err = bench("run", "--profile", "seed-tta", "--devices", "cpu", "--no-peak", "--no-download",
                           "--out", tmp_path / "run", data_dir=False)
    assert status == 2 and "needs CIFAR-10" in err
    assert not (tmp_path / "run").exists()


def test_the_seed_tta_profile_is_the_notebook_recipe_evaluated_every_epoch():
    assert PROFILES["seed-tta"] == {**PROFILES["seed"], "eval_every": 1.0, "target_accuracy": 0.64}


def _rows(times: list[float | None], target: float | None = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"target_accuracy": [target] * len(times), "time_to_target_s": times})


@pytest.mark.parametrize(("base", "current", "kind"), [
    ([10.0, 11.0, 12.0], [10.5, 11.5, 12.5], "same"),          # spreads overlap: no verdict
    ([10.0, 11.0, 12.0], [14.0, 15.0, 16.0], "later"),         # every run repeat > slowest base + 10 %
    ([10.0, 11.0, 12.0], [13.0, 15.0, 16.0], "same"),          # 13 < 12 x 1.1: within the spread
    ([10.0, 11.0, 12.0], [10.0, None, 12.0], "stopped"),
    ([10.0, None, 12.0], [None, None, None], "missed"),        # not reached on both sides: said, not judged
])
def test_target_verdict(base, current, kind):
    verdict = regression.target_verdict(_rows(base), _rows(current), max_slowdown=0.10)
    assert verdict.kind == kind
    assert verdict.regression == (kind in ("stopped", "later"))


def test_target_verdict_says_not_reached_plainly_and_refuses_different_targets():
    verdict = regression.target_verdict(_rows([10.0]), _rows([None]))
    assert "baseline 10.0 s (1/1 reached), run not reached in 1 run(s)" in verdict.text
    assert regression.target_verdict(_rows([10.0], 0.5), _rows([10.0], 0.6)).kind == "not compared"
    assert regression.target_verdict(_rows([10.0], None), _rows([10.0], None)) is None


# --------------------------------------------------------------------------- a target chosen afterwards

def test_summary_and_readme_score_a_target_from_the_curves_as_a_run_with_it_would(bench, tmp_path):
    """A run stopped at 0.5 re-scored at 0.3 gives what a run with --target-accuracy 0.3
    records; a higher target than it stopped at is refused (its curve ends there)."""
    assert bench("run", *TTA, "--out", tmp_path / "at-50")[0] == 0
    low = [a if a != "0.5" else "0.3" for a in TTA]
    assert bench("run", *low, "--out", tmp_path / "at-30")[0] == 0
    measured = store.read_run(tmp_path / "at-30").runs.iloc[0]
    run = store.read_run(tmp_path / "at-50")
    rescored = tta.rescored(run.runs, run.curves, 0.3).iloc[0]
    for column in ("epochs_to_target", "images_to_target"):
        assert rescored[column] == measured[column], column
    curve = run.curves.set_index("step")
    assert rescored["time_to_target_s"] == pytest.approx(rescored["data_load_s"] + curve.loc[4, "wall_seconds"])
    assert rescored["train_time_to_target_s"] == pytest.approx(curve.loc[4, "train_seconds"])

    status, out, err = bench("summary", "--run", tmp_path / "at-50", "--target-accuracy", "0.3", data_dir=False)
    assert status == 0, err
    assert "Time to 30%" in out and "Time to 50%" not in out
    assert "Time to target scored from the curves at `--target-accuracy 0.3`." in out

    status, _, err = bench("summary", "--run", tmp_path / "at-50", "--target-accuracy", "0.7", data_dir=False)
    assert status == 2 and "stopped at its own target 0.5" in err and err.count("\n") == 1

    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:table:start -->\n<!-- bench:table:end -->\n")
    status, _, err = bench("readme", "--readme", readme, "--run", tmp_path / "at-50", "--target-accuracy", "0.3",
                           data_dir=False)
    assert status == 0, err
    assert "`--target-accuracy 0.3`" in readme.read_text() and "Time to 30%" in readme.read_text()


def test_a_target_without_curves_or_out_of_range_is_one_line_exit_2(bench, tmp_path):
    plain = ["--devices", "cpu", "--steps", "3", "--warmup", "1", "--no-peak", "--no-download", "--batch-sizes", "32"]
    assert bench("run", *plain, "--out", tmp_path / "plain")[0] == 0
    status, _, err = bench("summary", "--run", tmp_path / "plain", "--target-accuracy", "0.3", data_dir=False)
    assert status == 2 and "has no held-out curve" in err and "--eval-every" in err and err.count("\n") == 1
    for bad in ("1.5", "0", "x"):
        status, _, err = bench("summary", "--run", tmp_path / "plain", "--target-accuracy", bad, data_dir=False)
        assert status == 2 and "fraction above 0 and at most 1" in err, err
