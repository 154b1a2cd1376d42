"""bench history: each cell's images/s over the runs under a results root, judged as check would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import cli, history

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import ENV, write_run


def steps(median: float, n: int = 60, seed: int = 0) -> np.ndarray:
    return median * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n))


def make_root(tmp_path: Path, medians: list[float], env: dict = ENV, batch: int = 32) -> Path:
    """A results root with one run per median, named so they sort oldest first."""
    root = tmp_path / "results"
    for i, median in enumerate(medians):
        write_run(root / "runs" / f"20260101-00000{i}", {batch: steps(median, seed=i)},
                  env={**env, "git": {"commit": f"{i:040d}"}})
    return root


def test_each_run_is_judged_against_the_previous_one_as_check_would(tmp_path):
    root = make_root(tmp_path, [0.10, 0.10, 0.25])
    found = history.history(root)
    assert len(found.series()) == 1
    first, second, third = found.points
    assert [p.run_id for p in found.points] == ["20260101-000000", "20260101-000001", "20260101-000002"]
    assert first.verdict is None and first.change_pct is None
    assert second.verdict == "within noise"
    assert third.verdict == "regression"
    assert third.change_pct == pytest.approx((0.10 / 0.25 - 1) * 100, abs=3)
    assert third.images_per_s == pytest.approx(32 / 0.25, rel=0.03)
    assert third.commit == "0" * 12


def test_the_text_table_keeps_the_last_n_runs_and_says_what_it_shows(tmp_path):
    found = history.history(make_root(tmp_path, [0.10, 0.10, 0.25]))
    text = history.history_table(found, last=1)
    rows = [line for line in text.splitlines() if line.startswith("| Test CPU")]
    assert len(rows) == 1 and "20260101-000002" in rows[0] and "regression" in rows[0]
    assert "+ is faster" in text and "Noise band" in text


def test_machines_are_separate_series(tmp_path):
    root = make_root(tmp_path, [0.10])
    other = {**ENV, "cpu": {**ENV["cpu"], "model": "Other CPU"}, "machine_label": "laptop"}
    write_run(root / "runs" / "20260101-000009", {32: steps(0.10)}, env=other)
    found = history.history(root)
    assert len(found.series()) == 2
    assert all(p.change_pct is None for p in found.points)    # nothing compared across machines


def test_an_unreadable_run_is_listed_not_fatal(tmp_path):
    root = make_root(tmp_path, [0.10, 0.12])
    broken = root / "runs" / "20260101-000005"
    broken.mkdir()
    (broken / "runs.csv").write_text("not,a\nresults,file\n")
    found = history.history(root)
    assert len(found.points) == 2
    assert any("20260101-000005" in problem for problem in found.problems)
    assert "Not read: run 20260101-000005" in history.history_table(found)


def test_a_baseline_saved_from_a_run_is_that_run_once_and_a_lone_baseline_is_a_point(tmp_path):
    from bench import store

    root = make_root(tmp_path, [0.10, 0.12])
    store.save_baseline(store.read_run(root / "runs" / "20260101-000000"), "main", root)
    write_run(tmp_path / "elsewhere" / "20251231-000000", {32: steps(0.1, seed=5)})
    store.save_baseline(store.read_run(tmp_path / "elsewhere" / "20251231-000000"), "old", root)
    found = history.history(root)
    assert {(p.run_id, p.kind, p.baselines) for p in found.points} == {   # one start date: order by name
        ("old", "baseline", ()), ("20260101-000000", "run", ("main",)), ("20260101-000001", "run", ())}
    assert "20260101-000000 (saved as baseline main)" in history.history_table(found)


def test_identical_noise_runs_give_the_cell_its_band(tmp_path):
    root = make_root(tmp_path, [0.10])
    for i, median in enumerate((0.095, 0.105)):
        write_run(root / "runs" / "20260102-000000-noise" / f"run-{i + 1}", {32: steps(median, seed=i)})
    found = history.history(root)
    assert len(found.points) == 1                    # the noise runs are the band, not history
    (band,) = found.bands
    assert band.series == found.points[0].series and band.runs == 2
    assert band.low == pytest.approx(32 / 0.105, rel=0.03) and band.high == pytest.approx(32 / 0.095, rel=0.03)


def test_cells_filter_keeps_matching_series(tmp_path):
    root = make_root(tmp_path, [0.10])
    write_run(root / "runs" / "20260101-000008", {64: steps(0.2)})
    assert {p.cell.split(", ")[1] for p in history.history(root, cells=["bs64"]).points} == {"bs64"}


# --------------------------------------------------------------------------- the command, through the real CLI

def command(argv: list[str]) -> int:
    """``python -m bench ARGV``'s exit status, through the real command line."""
    return cli.main(argv)


def test_command_prints_json_of_the_last_runs(tmp_path, capsys):
    root = make_root(tmp_path, [0.10, 0.10, 0.25])
    assert command(["history", "--results-dir", str(root), "--last", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["run_id"] for p in data["points"]] == ["20260101-000001", "20260101-000002"]
    assert data["points"][-1]["verdict"] == "regression"


@pytest.mark.parametrize("argv, message", [
    (["--cell", "no-such-cell"], "--cell no-such-cell: no cell matches"),
    (["--results-dir", "{missing}"], "no runs/ or baselines/ here"),
])
def test_command_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    root = make_root(tmp_path, [0.10])
    argv = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    assert command(["history", "--results-dir", str(root), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_command_refuses_a_last_of_zero(capsys):
    assert command(["history", "--last", "0"]) == 2
    err = capsys.readouterr().err
    assert "--last" in err and "'0'" in err and err.count("\n") == 1
