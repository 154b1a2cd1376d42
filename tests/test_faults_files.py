"""Damaged, hostile and half-written result files through the real CLI: exit 2 with one line
naming the file (never a traceback, a hang or a wrong verdict), and what lands in a README
or a spreadsheet is inert.

Commands that only read files run ``bench.cli.main`` in this process (``cli``); the ones
that could hang (a FIFO, an endless device) run ``python -m bench`` with a timeout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import store

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import test_faults as faults
from runs import ENV, write_run
from test_faults import FAST, assert_one_line_error, assert_usage_error, bench

cli = faults.cli  # the fixture: python -m bench in this process
README = "# Project\n\n<!-- bench:table:start -->\nold\n<!-- bench:table:end -->\n\nafter\n"


def a_run(tmp_path: Path, name: str = "run", env: dict = ENV, **cells) -> Path:
    return write_run(tmp_path / name, cells or {32: [0.01, 0.011, 0.012], 64: [0.02, 0.021, 0.022]}, env=env)


# --------------------------------------------------------------------------- 6. damaged files

def test_deeply_nested_env_json_is_a_one_line_error(tmp_path, cli):
    run = a_run(tmp_path)
    (run / store.ENV_JSON).write_text("[" * 100_000 + "]" * 100_000)
    done = cli("summary", "--run", run)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "env.json", "nested too deeply")


def test_a_nested_value_where_a_scalar_is_compared_is_refused(tmp_path, cli):
    baseline, current = a_run(tmp_path, "base"), a_run(tmp_path, "cur")
    env = json.loads((current / store.ENV_JSON).read_text())
    env["python"] = {"version": ["3", {"11": None}]}
    (current / store.ENV_JSON).write_text(json.dumps(env))
    done = cli("check", "--baseline", baseline, "--run", current)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "env.json", "'python'")


def test_a_results_file_linked_to_an_endless_device_is_refused_unread(tmp_path):
    run = a_run(tmp_path)
    (run / store.RUNS_CSV).unlink()
    (run / store.RUNS_CSV).symlink_to("/dev/zero")
    done = bench("summary", "--run", "run", cwd=tmp_path, timeout=60)
    assert_usage_error(done, "runs.csv", "not a regular file")


def test_runs_and_baseline_list_show_a_damaged_entry_and_go_on(tmp_path, cli):
    for name in ("a-good", "b-deep", "c-good"):
        a_run(tmp_path / "results" / "runs", name)
    (tmp_path / "results" / "runs" / "b-deep" / store.ENV_JSON).write_text("{\"x\":" * 50_000)
    done = cli("runs", "--results-dir", tmp_path / "results")
    assert done.returncode == 0, done.stderr
    for name in ("a-good", "b-deep", "c-good"):
        assert (tmp_path / "results" / "runs" / name).exists()
    root = tmp_path / "results"
    run = store.read_run(root / "runs" / "a-good")
    for name in ("one", "two"):
        store.save_baseline(run, name, root)
    (root / "baselines" / "one" / store.BASELINE_JSON).write_text("[" * 100_000)
    listed = store.list_baselines(root)
    assert [m["name"] for m in listed] == ["one", "two"]
    assert "nested too deeply" in listed[0]["error"] and "error" not in listed[1]
    listing = {r.id: r for r in store.list_runs(root, baselines=False)}
    assert "nested too deeply" in listing["b-deep"].error
    assert listing["a-good"].error is None and listing["c-good"].error is None


# --------------------------------------------------------------------------- 7. a FIFO in place of a file

@pytest.mark.parametrize("command, victim", [
    (["summary", "--run", "run"], "run/runs.csv"),
    (["summary", "--run", "run"], "run/env.json"),
    (["check", "--baseline", "run", "--run", "run"], "run/steps.csv"),
    (["readme", "--run", "run", "--readme", "README.md"], "README.md"),
])
def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(tmp_path, command, victim):
    a_run(tmp_path)
    (tmp_path / "README.md").write_text(README)
    target = tmp_path / victim
    target.unlink()
    os.mkfifo(target)
    done = bench(*command, cwd=tmp_path, timeout=60)
    assert_usage_error(done, target.name, "not a regular file")


# --------------------------------------------------------------------------- 9. text that lands in the README

def test_a_label_cannot_plant_a_marker_in_the_readme(tmp_path, cli):
    a_run(tmp_path, env={**ENV, "machine_label": "<!-- bench:table:end -->"})
    (tmp_path / "README.md").write_text(README)
    done = cli("readme", "--run", tmp_path / "run", "--readme", tmp_path / "README.md")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "marker")
    assert (tmp_path / "README.md").read_text() == README
    # and the README still works for a run without one
    a_run(tmp_path, "clean")
    assert cli("readme", "--run", tmp_path / "clean", "--readme", tmp_path / "README.md").returncode == 0
    assert (tmp_path / "README.md").read_text().count("<!-- bench:table:end -->") == 1


def test_escaping_helpers_neutralise_what_each_destination_would_obey():
    from bench.text import csv_cell, html_text, markdown_cell, plain_text

    cell = markdown_cell("<!-- bench:table:end --> a|b\nc\u202ed")
    assert "<!--" not in cell and "-->" not in cell and "\n" not in cell and "\u202e" not in cell
    assert cell.count("|") == cell.count("\\|") == 1
    assert html_text('<b>"x"</b>') == "&lt;b&gt;&quot;x&quot;&lt;/b&gt;"
    assert [csv_cell(t) for t in ("=1+1", "+1", "-1", "@SUM(A1)", "ok", 3)] == ["'=1+1", "'+1", "'-1",
                                                                             "'@SUM(A1)", "ok", 3]
    assert csv_cell(csv_cell("=1")) == "'=1"
    assert plain_text("a\x1b[31m\u2066b") == "a\ufffd[31m\ufffdb"


# --------------------------------------------------------------------------- 10. absurd numbers

def _edit(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("victim, edit, fragment", [
    ("steps.csv", lambda f: f.__setitem__("seconds", "1e308"), "seconds"),
    ("runs.csv", lambda f: f.__setitem__("other_cpu_pct", "inf"), "other_cpu_pct"),
    ("runs.csv", lambda f: f.__setitem__("step_median_s", "1e300"), "step_median_s"),
])
def test_absurd_numbers_are_refused_naming_the_file(tmp_path, cli, victim, edit, fragment):
    baseline, current = a_run(tmp_path, "base"), a_run(tmp_path, "cur")
    _edit(current / victim, edit)
    done = cli("check", "--baseline", baseline, "--run", current)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, victim, fragment)


def test_a_duplicated_row_is_refused_not_counted_twice(tmp_path, cli):
    baseline, current = a_run(tmp_path, "base"), a_run(tmp_path, "cur")
    for name in (store.RUNS_CSV, store.STEPS_CSV):
        frame = pd.read_csv(current / name, dtype=str, keep_default_na=False)
        pd.concat([frame, frame.iloc[[0]]]).to_csv(current / name, index=False)
        done = cli("check", "--baseline", baseline, "--run", current)
        assert done.returncode == 2
        assert_one_line_error(done.stderr, name, "twice")
        frame.to_csv(current / name, index=False)


# --------------------------------------------------------------------------- 12. a run still being written

def test_without_run_the_latest_finished_run_is_taken(tmp_path, cli):
    root = tmp_path / "results"
    a_run(root / "runs", "20260101-000000")
    busy = a_run(root / "runs", "20260102-000000")
    held = store.lock_run_dir(busy)  # flock: a second open of the lock file, even in this process, is refused
    try:
        assert store.in_use(busy)
        assert store.latest_run(root).name == "20260101-000000"
        done = cli("baseline", "save", "--name", "nightly", "--results-dir", root)
        assert done.returncode == 0, done.stderr
        meta = json.loads((root / "baselines" / "nightly" / store.BASELINE_JSON).read_text())
        assert meta["run_id"] == "20260101-000000"
    finally:
        held.release()
    assert store.latest_run(root).name == "20260102-000000"


# --------------------------------------------------------------------------- 15. spreadsheet formulas

def test_a_formula_label_is_text_in_runs_csv(tmp_path):
    done = bench("run", *FAST, "--batch-sizes", "32", "--machine-label", "=HYPERLINK(\"x\")", "--out", "run",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    labels = pd.read_csv(tmp_path / "run" / store.RUNS_CSV, dtype=str)["machine_label"]
    assert list(labels) == ["'=HYPERLINK(\"x\")"]


def test_a_formula_run_name_is_text_in_every_csv_file_alike(tmp_path):
    done = bench("run", *FAST, "--batch-sizes", "32", "--out", "=cmd|' -C calc'!A0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "=cmd|' -C calc'!A0"
    for name in (store.RUNS_CSV, store.STEPS_CSV):
        run_ids = set(pd.read_csv(out / name, dtype=str)["run_id"])
        assert run_ids == {"'=cmd|' -C calc'!A0"}, name


# --------------------------------------------------------------------------- 17. claiming and locks

def test_a_run_leaves_no_lock_file_and_a_killed_claim_leaves_no_directory(tmp_path, monkeypatch):
    done = bench("run", *FAST, "--batch-sizes", "32", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "run" / store.RUN_LOCK).exists()

    real_open = open

    def refusing_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".claimed"):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(OSError):
        store.claim_run_dir(None, tmp_path / "results", run_id="20260101-000000")
    with pytest.raises(OSError):
        store.claim_run_dir(tmp_path / "fresh", tmp_path / "results")
    monkeypatch.undo()
    assert not (tmp_path / "results" / "runs" / "20260101-000000").exists()
    assert not (tmp_path / "fresh").exists()
    assert store.claim_run_dir(None, tmp_path / "results", run_id="20260101-000000").name == "20260101-000000"


def test_a_lock_removed_by_its_holder_cannot_let_two_in(tmp_path):
    first = store.lock_run_dir(tmp_path)
    with pytest.raises(store.ResultsError, match="in use"):
        store.lock_run_dir(tmp_path)
    first.release()
    assert not (tmp_path / store.RUN_LOCK).exists()
    second = store.lock_run_dir(tmp_path)
    assert store.in_use(tmp_path)
    second.release()
    assert not store.in_use(tmp_path)
