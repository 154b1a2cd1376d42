"""bench export: Bencher Metric Format and github-action-benchmark files, checked against JSON
schemas written from the published formats; and the CI recipe's bench commands, end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from runs import ENV, write_run  # noqa: E402

from bench import cli, export, store  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CI_RECIPE = REPO_ROOT / "docs" / "ci" / "github-actions.yml"

#: https://bencher.dev/bmf.json: benchmark name -> measure name -> {"value" (required),
#: "lower_value", "upper_value"}, all numbers.
BMF_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema", "type": "object",
    "patternProperties": {".+": {"type": "object", "patternProperties": {".+": {
        "type": "object", "required": ["value"], "additionalProperties": False,
        "properties": {"value": {"type": "number"}, "lower_value": {"type": "number"},
                       "upper_value": {"type": "number"}}}}}}}
#: github-action-benchmark's BenchmarkResult (src/extract.ts), what its custom tools read:
#: an array of {name: string, value: number, unit: string, range?: string, extra?: string}.
GAB_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema", "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["name", "value", "unit"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "number"},
                             "unit": {"type": "string"}, "range": {"type": "string"},
                             "extra": {"type": "string"}}}}
CIFAR = {"data": "cifar10", "heldout_accuracy": 0.42, "heldout_images": 10_000,
         "accuracy_note": "whole held-out split"}


def steps(median: float, n: int = 30, seed: int = 0) -> np.ndarray:
    return median * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n))


def labelled(label: str = "ci") -> dict:
    return {**ENV, "machine_label": label}


def test_bencher_export_follows_the_published_schema_with_the_bootstrap_interval(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {64: steps(0.1), 128: steps(0.2)},
                                   env=labelled(), train=CIFAR))
    bmf = export.bencher(run)
    jsonschema.validate(bmf, BMF_SCHEMA)
    assert list(bmf) == ["ci: CPU Test CPU, bs64, precision fp32", "ci: CPU Test CPU, bs128, precision fp32"]
    row = run.runs.iloc[0]
    latency = bmf["ci: CPU Test CPU, bs64, precision fp32"]["latency"]
    assert latency["value"] == pytest.approx(row["step_median_s"] * 1e9)
    assert (latency["lower_value"], latency["upper_value"]) == pytest.approx(
        (row["step_median_ci_low_s"] * 1e9, row["step_median_ci_high_s"] * 1e9))
    assert latency["lower_value"] < latency["value"] < latency["upper_value"]
    throughput = bmf["ci: CPU Test CPU, bs64, precision fp32"]["throughput"]
    assert throughput["value"] == pytest.approx(row["images_per_s"])
    assert throughput["lower_value"] < throughput["value"] < throughput["upper_value"]
    assert bmf["ci: CPU Test CPU, bs64, precision fp32"]["accuracy"] == {"value": pytest.approx(42.0)}


def test_no_accuracy_measure_where_accuracy_was_not_measured(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {64: steps(0.1)}))   # synthetic
    assert set(export.bencher(run)["CPU Test CPU, bs64, precision fp32"]) == {"latency", "throughput"}


def test_github_action_benchmark_export_is_smaller_is_better_step_time(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {64: steps(0.1)}, env=labelled(), train=CIFAR))
    entries = export.github_action_benchmark(run)
    jsonschema.validate(entries, GAB_SCHEMA)
    (entry,) = entries
    assert entry["name"] == "ci: CPU Test CPU, bs64, precision fp32 - median step" and entry["unit"] == "ms"
    assert entry["value"] == pytest.approx(run.runs["step_median_s"].iloc[0] * 1000, rel=1e-4)
    assert "held-out accuracy: 42.00 %" in entry["extra"] and "images/s (every replica): " in entry["extra"]


def test_names_are_stable_across_runs_and_name_every_varying_dimension(tmp_path):
    cells = {(64, (("precision", "fp32"),)): steps(0.1), (64, (("precision", "mixed_bfloat16"),)): steps(0.05)}
    first = export.bencher(store.read_run(write_run(tmp_path / "a", cells)))
    later = {key: times * 1.3 for key, times in cells.items()}        # slower, same matrix
    second = export.bencher(store.read_run(write_run(tmp_path / "b", later)))
    assert list(first) == list(second) == ["CPU Test CPU, bs64, precision fp32",
                                           "CPU Test CPU, bs64, precision mixed_bfloat16"]
    assert first != second


def test_repeats_are_one_entry_whose_interval_spans_them(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {64: [steps(0.1, seed=1), steps(0.12, seed=2)]}))
    (cell,) = export.cell_figures(run)
    assert cell.repeats == 2
    assert cell.step_ci_low_s == pytest.approx(run.runs["step_median_ci_low_s"].min())
    assert cell.step_ci_high_s == pytest.approx(run.runs["step_median_ci_high_s"].max())


def test_export_cli_writes_the_file_and_refuses_bad_input(tmp_path, capsys):
    run = write_run(tmp_path / "run", {64: steps(0.1)})
    out = tmp_path / "bmf.json"
    assert cli.main(["export", "--run", str(run), "--format", "bencher", "--out", str(out)]) == 0
    jsonschema.validate(json.loads(out.read_text()), BMF_SCHEMA)
    capsys.readouterr()
    assert cli.main(["export", "--run", str(tmp_path / "none" / "run"), "--format", "json"]) == 2
    assert cli.main(["export", "--run", str(run), "--format", "csv"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "no such run directory" in errors[0] and "invalid choice: 'csv'" in errors[1]


# --------------------------------------------------------------------------- the CI recipe

def bench_commands(recipe: Path) -> list[str]:
    """Every `python -m bench ...` line of the workflow's `run:` steps, in order."""
    workflow = yaml.safe_load(recipe.read_text())
    lines = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
             for line in str(step.get("run", "")).splitlines()]
    return [line for line in lines if line.startswith("python -m bench ")]


def test_the_ci_recipe_runs_end_to_end_except_the_run_and_the_upload(tmp_path):
    commands = bench_commands(CI_RECIPE)
    assert [c.split()[3] for c in commands] == ["run", "check", "export"]
    assert "--devices cpu" in commands[0] and "--out results/ci-run" in commands[0]
    # the run step trains; here a run directory made with the real writer takes its place,
    # and the committed baseline is saved from it
    run = store.read_run(write_run(tmp_path / "results" / "ci-run", {64: steps(0.1), 128: steps(0.2)},
                                   env=labelled("github-ubuntu")))
    store.save_baseline(run, "github-ubuntu", tmp_path / "benchmarks")
    # `python` in the recipe is this interpreter, as it is the job's after setup-python
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands[1:]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "0 regression(s), 0 inconclusive in 2 matched cell(s)" in (tmp_path / "results" / "check.md").read_text()
    uploaded = json.loads((tmp_path / "results" / "benchmark.json").read_text())
    jsonschema.validate(uploaded, GAB_SCHEMA)
    assert [e["name"] for e in uploaded] == ["github-ubuntu: CPU Test CPU, bs64, precision fp32 - median step",
                                             "github-ubuntu: CPU Test CPU, bs128, precision fp32 - median step"]
    upload = [step for step in yaml.safe_load(CI_RECIPE.read_text())["jobs"]["benchmark"]["steps"]
              if str(step.get("uses", "")).startswith("benchmark-action/github-action-benchmark")]
    assert upload[0]["with"]["tool"] == "customSmallerIsBetter"
    assert upload[0]["with"]["output-file-path"] == "results/benchmark.json"
