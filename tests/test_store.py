"""bench.store: run directories, atomic writes, schema upgrades, validation, baselines, races."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import record, store

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published"


def good_run(tmp_path) -> Path:
    return write_run(tmp_path / "run", {64: [0.2] * 10})


def test_a_written_run_reads_back(tmp_path):
    run = store.read_run(good_run(tmp_path))
    assert run.runs["batch_size"].iloc[0] == 64 and run.runs["backend"].iloc[0] == "tensorflow"
    cell = run.runs["cell_id"].iloc[0]
    assert run.steady_steps(cell).tolist() == [0.2] * 10
    assert run.env["schema_version"] == store.SCHEMA_VERSION


@pytest.mark.parametrize("directory", sorted(PUBLISHED.iterdir()) if PUBLISHED.is_dir() else [],
                         ids=lambda p: p.name)
def test_every_published_run_still_reads_as_what_it_was(directory):
    run = store.read_run(directory)
    ok = run.runs[run.runs["status"] == "ok"]
    assert len(ok) and set(ok["backend"]) <= {"tensorflow", "jax", "torch"}
    raw = json.loads((directory / store.ENV_JSON).read_text())
    if "schema_version" not in raw:                                   # version 1: TensorFlow only
        assert (ok["backend"] == "tensorflow").all()
    assert set(ok["data_placement"]) <= {"host", "device"}
    for cell_id in ok["cell_id"]:
        assert len(run.steady_steps(cell_id)) > 0


def test_old_files_are_upgraded_in_one_named_step(tmp_path):
    directory = good_run(tmp_path)
    runs = pd.read_csv(directory / store.RUNS_CSV)
    runs.drop(columns=["backend", "data_placement", "data_placement_requested"]).to_csv(
        directory / store.RUNS_CSV, index=False)
    env = json.loads((directory / store.ENV_JSON).read_text())
    del env["schema_version"]
    (directory / store.ENV_JSON).write_text(json.dumps(env))
    run = store.read_run(directory)
    assert run.runs["backend"].tolist() == ["tensorflow"] and run.runs["data_placement"].tolist() == ["host"]
    assert list(store.UPGRADES) == [1, 2]


def test_a_run_from_before_the_engine_dimension_reads_as_keras(tmp_path):
    """Schema 2 runs were written before --engine: every cell trained through Keras."""
    directory = good_run(tmp_path)
    runs = pd.read_csv(directory / store.RUNS_CSV)
    runs.drop(columns=["engine"]).to_csv(directory / store.RUNS_CSV, index=False)
    env = json.loads((directory / store.ENV_JSON).read_text())
    env["schema_version"] = 2
    (directory / store.ENV_JSON).write_text(json.dumps(env))
    assert store.read_run(directory).runs["engine"].tolist() == ["keras"]


def test_a_run_from_before_the_math_columns_reads_with_them_empty(tmp_path):
    directory = good_run(tmp_path)
    runs = pd.read_csv(directory / store.RUNS_CSV)
    assert runs["math"].tolist() == ["ieee"]                   # what is written now
    runs.drop(columns=["math", "math_note"]).to_csv(directory / store.RUNS_CSV, index=False)
    run = store.read_run(directory)
    assert run.runs["math"].tolist() == [""] and run.runs["math_note"].tolist() == [""]


def _corrupt(directory: Path, filename: str, column: str, value) -> None:
    frame = pd.read_csv(directory / filename, dtype=str, keep_default_na=False)
    frame.loc[len(frame) - 1, column] = value
    frame.to_csv(directory / filename, index=False)


@pytest.mark.parametrize("filename, column, value, message", [
    (store.STEPS_CSV, "seconds", "0", "positive, finite"),
    (store.STEPS_CSV, "seconds", "-1", "positive, finite"),
    (store.STEPS_CSV, "seconds", "inf", "positive, finite"),
    (store.STEPS_CSV, "steps", "0", "whole number >= 1"),
    (store.STEPS_CSV, "warmup", "maybe", "True/False"),
    (store.RUNS_CSV, "batch_size", "__import__('os')", "non-number"),
    (store.RUNS_CSV, "batch_size", "-3", "whole number >= 1"),
    (store.RUNS_CSV, "status", "exploded", "one of ok"),
    (store.RUNS_CSV, "step_median_s", "-0.5", "positive, finite"),
    (store.RUNS_CSV, "step_median_s", "nan", "non-number"),
])
def test_malformed_values_are_refused_naming_the_file(tmp_path, filename, column, value, message):
    directory = good_run(tmp_path)
    _corrupt(directory, filename, column, value)
    with pytest.raises(store.ResultsError, match=message) as caught:
        store.read_run(directory)
    assert str(directory / filename) in str(caught.value)


@pytest.mark.parametrize("env_text, message", [
    ("[1, 2]", "JSON object"), ("{not json", "not readable JSON"),
    ('{"cpu": "fast"}', "'cpu' must be a JSON object"), ('{"gpus": [1]}', "'gpus' must be"),
    ('{"schema_version": 99}', "newer cifar-bench"), ('{"schema_version": "2"}', "positive integer"),
])
def test_a_malformed_env_json_is_refused(tmp_path, env_text, message):
    directory = good_run(tmp_path)
    (directory / store.ENV_JSON).write_text(env_text)
    with pytest.raises(store.ResultsError, match=message):
        store.read_run(directory)


def test_a_run_directory_without_columns_is_not_a_results_file(tmp_path):
    directory = good_run(tmp_path)
    (directory / store.RUNS_CSV).write_text("a,b\n1,2\n")
    with pytest.raises(store.ResultsError, match="missing column"):
        store.read_run(directory)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "runs.csv"
    target.write_text("old\n")

    def refuse(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError):
        store.write_atomically(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["runs.csv"]


def _claim(root):
    return str(store.claim_run_dir(None, Path(root), run_id="20260101-000000"))


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.map(_claim, [tmp_path] * 8)
    assert len(set(claimed)) == 8
    assert sorted(Path(p).name for p in claimed)[:2] == ["20260101-000000", "20260101-000000-2"]


def test_an_out_directory_is_claimed_once(tmp_path):
    out = tmp_path / "run"
    store.claim_run_dir(out, tmp_path)
    with pytest.raises(FileExistsError):
        store.claim_run_dir(out, tmp_path)


def _save(args):
    run_dir, root, replace = args
    try:
        store.save_baseline(store.read_run(run_dir), "shared", Path(root), replace=replace)
        return "saved"
    except store.BaselineError as exc:
        return str(exc)


@pytest.mark.parametrize("replace", [False, True])
def test_concurrent_saves_of_one_name_leave_one_complete_baseline(tmp_path, replace):
    runs = [write_run(tmp_path / f"run{i}", {64: [0.1 * (i + 1)] * 5}) for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        said = pool.map(_save, [(str(r), str(tmp_path / "root"), replace) for r in runs])
    if not replace:
        assert said.count("saved") == 1 and all("already exists" in s for s in said if s != "saved")
    else:
        assert said == ["saved"] * 4
    kept = store.load_baseline("shared", tmp_path / "root")       # complete and readable
    assert len(kept.runs) == 1 and len(kept.steps) == 8
    base = store.baselines_dir(tmp_path / "root")
    assert sorted(p.name for p in base.iterdir() if not p.name.endswith(".lock")) == ["shared"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 101, ""])
def test_baseline_names_are_plain_and_bounded(tmp_path, name):
    with pytest.raises(store.BaselineError, match="plain name"):
        store.save_baseline(store.read_run(good_run(tmp_path)), name, tmp_path / "root")


def test_a_foreign_baseline_is_refused(tmp_path):
    directory = good_run(tmp_path)
    (directory / store.BASELINE_JSON).write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(store.BaselineError, match="not a cifar-bench baseline"):
        store.load_baseline(str(directory), tmp_path)


def test_latest_run_and_no_runs(tmp_path):
    with pytest.raises(store.ResultsError, match="no runs here yet"):
        store.latest_run(tmp_path)
    write_run(tmp_path / "runs" / "20260101-000000", {64: [0.2] * 3})
    write_run(tmp_path / "runs" / "20260102-000000", {64: [0.2] * 3})
    assert store.latest_run(tmp_path).name == "20260102-000000"


def test_the_results_root_comes_from_the_option_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(store.RESULTS_ENV, raising=False)
    assert store.results_root(None) == Path("results")
    monkeypatch.setenv(store.RESULTS_ENV, str(tmp_path))
    assert store.results_root(None) == tmp_path and store.results_root("x") == Path("x")


def test_every_column_is_documented_with_a_dtype():
    for name, column in {**record.RUN_COLUMNS, **record.STEP_COLUMNS}.items():
        assert column.doc and column.dtype in ("int", "float", "text", "bool"), name
