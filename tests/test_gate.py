"""The CI gate a new user tries first: old runs upgraded, baselines that can match, exports that
keep their names, a run that measured nothing, A/B arms that run their own code, and the
README's gate section run as written (with short settings and the fake worker)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from runs import ENV, TEST_CPU, write_run  # noqa: E402

from bench import export, isolation, matrix, regression, store  # noqa: E402
from bench.devices import Requested  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published"
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py")]
TINY = ["--devices", "cpu", "--steps", "6", "--warmup", "2", "--data", "synthetic",
        "--synthetic-images", "256", "--no-peak"]


def fake_environment(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_WORKER_COMMAND": shlex.join(FAKE_WORKER), **extra}


def bench(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=fake_environment())


def steps(median: float, n: int = 30, seed: int = 0) -> np.ndarray:
    return median * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n))


def as_version_1(directory: Path, drop: tuple[str, ...] = (), blank: tuple[str, ...] = ()) -> Path:
    """Make a run directory look written before schema versions: columns dropped or left empty."""
    runs = pd.read_csv(directory / store.RUNS_CSV, dtype=str, keep_default_na=False)
    runs = runs.drop(columns=list(drop))
    for column in blank:
        runs[column] = ""
    runs.to_csv(directory / store.RUNS_CSV, index=False)
    env = json.loads((directory / store.ENV_JSON).read_text())
    env.pop("schema_version", None)
    (directory / store.ENV_JSON).write_text(json.dumps(env))
    return directory


# --------------------------------------------------------------------------- 1. old files upgraded

@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_version_1_run_reads_every_added_dimension_as_what_it_did(tmp_path, how):
    added = ("replicas", "workers", "backend", "data_placement", "data_placement_requested")
    directory = write_run(tmp_path / "old", {32: steps(0.1)})
    as_version_1(directory, **({"drop": added} if how == "missing" else {"blank": added}))
    runs = store.read_run(directory).runs
    for column, value in matrix.legacy_values().items():
        assert matrix.plain(runs[column].iloc[0]) == value, column
    assert runs["total_replicas"].iloc[0] == 1 and runs["global_batch_size"].iloc[0] == 32
    assert runs["global_images_per_s"].iloc[0] == pytest.approx(runs["images_per_s"].iloc[0])


def test_a_version_1_baseline_matches_todays_cells(tmp_path):
    old = as_version_1(write_run(tmp_path / "old", {32: steps(0.1)}), drop=("replicas", "workers"))
    comparison = regression.compare(store.read_run(old), store.read_run(write_run(tmp_path / "new", {32: steps(0.1)})))
    assert [c.cell for c in comparison.cells] == ["CPU Test CPU, bs32"]


def test_compare_reads_the_published_runs_written_before_schema_versions(tmp_path):
    done = bench("compare", PUBLISHED / "2026-11-24-quick", PUBLISHED / "2026-11-24-quick-v2", "--json",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    comparison = json.loads(done.stdout)
    assert len(comparison["cells"]) == 3 and not comparison["only_in_baseline"]
    # the two differ in a data directory and a few KiB of memory: nothing that changes speed
    assert comparison["environment_differences"] == []


# --------------------------------------------------------------------------- 1. matchable before measuring

def planned(*batches: int, device: Requested = TEST_CPU, **values) -> list[matrix.Cell]:
    axes = matrix.Plan({"batch_size": batches, "precision": ("fp32",), **{k: (v,) for k, v in values.items()}})
    return matrix.plan(axes, [device], 1, 50_000)


def test_a_baseline_that_can_match_has_no_problem(tmp_path):
    baseline = store.read_run(write_run(tmp_path / "base", {32: steps(0.1), 64: steps(0.2)}))
    assert regression.matchable(baseline, planned(64, 128)) == []


def test_another_machines_baseline_is_refused_before_measuring(tmp_path):
    baseline = store.load_baseline(str(PUBLISHED / "2026-11-24-quick"), tmp_path)
    (problem,) = regression.matchable(baseline, planned(64))
    assert "CPU 'AMD EPYC'" in problem and "CPU 'Test CPU'" in problem
    assert "baseline save" in problem


def test_a_baseline_of_other_settings_names_the_settings(tmp_path):
    baseline = store.read_run(write_run(tmp_path / "base", {32: steps(0.1)}))
    (problem,) = regression.matchable(baseline, planned(64, 128))
    assert "batch_size: baseline 32; planned 128, 64" in problem
    assert "precision" not in problem            # that one agrees


def test_nothing_to_match_when_no_planned_device_is_there(tmp_path):
    baseline = store.read_run(write_run(tmp_path / "base", {32: steps(0.1)}))
    missing = Requested("gpu:0", None, "no GPU detected on this machine")
    (problem,) = regression.matchable(baseline, planned(32, device=missing))
    assert "every requested device is missing" in problem


def test_a_baseline_without_a_successful_cell_cannot_match(tmp_path):
    directory = write_run(tmp_path / "base", {32: steps(0.1)})
    runs = pd.read_csv(directory / store.RUNS_CSV, dtype=str, keep_default_na=False)
    runs["status"], runs["reason"] = "failed", "crashed"
    runs.to_csv(directory / store.RUNS_CSV, index=False)
    (problem,) = regression.matchable(store.read_run(directory), planned(32))
    assert "no successful cell" in problem


def test_run_refuses_an_unmatchable_baseline_before_measuring(tmp_path):
    store.save_baseline(store.load_baseline(str(PUBLISHED / "2026-11-24-quick"), tmp_path), "nightly",
                        tmp_path / "results")
    done = bench("run", "--check-against", "nightly", *TINY, "--batch-sizes", "32", "--out", tmp_path / "run",
                 cwd=tmp_path)
    assert done.returncode == 2 and "AMD EPYC" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()          # nothing measured, nothing written


# --------------------------------------------------------------------------- 9. nothing measured

def rows_of(*statuses: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"status": s, "device_id": d, "reason": r} for s, d, r in statuses])


def test_a_run_whose_every_cell_was_skipped_measured_nothing_and_says_why():
    why = regression.nothing_measured(rows_of(("skipped", "gpu:0", "no GPU detected on this machine"),
                                              ("skipped", "gpu:0", "no GPU detected on this machine"),
                                              ("skipped", "cpu", "backend jax: JAX is not installed")))
    assert why.startswith("nothing measured: all 3 cell(s) were skipped")
    assert "gpu:0: no GPU detected on this machine (2 cell(s))" in why
    assert "cpu: backend jax: JAX is not installed (1 cell(s))" in why


def test_a_measured_or_failed_cell_is_not_nothing_measured():
    assert regression.nothing_measured(rows_of(("skipped", "gpu:0", "no GPU"), ("ok", "cpu", ""))) is None
    assert regression.nothing_measured(rows_of(("failed", "cpu", "crashed"))) is None   # status 4 says it


def test_run_on_a_missing_gpu_exits_nothing_measured(tmp_path):
    done = bench("run", *TINY, "--devices", "gpu", "--batch-sizes", "32", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 6 and "nothing measured" in done.stderr


# --------------------------------------------------------------------------- 4, 5. what a comparison names

def compared(tmp_path, base_env: dict, current_env: dict, current_steps=None) -> regression.Comparison:
    base = store.read_run(write_run(tmp_path / "base", {32: steps(0.1)}, env=base_env))
    cur = store.read_run(write_run(tmp_path / "cur", {32: current_steps if current_steps is not None
                                                      else steps(0.1, seed=1)}, env=current_env))
    return regression.compare(base, cur)


def test_trivia_is_not_named_as_a_cause(tmp_path):
    base = {**ENV, "memory_bytes": 25_276_514_304, "environment": {"CIFAR10_DIR": "/data/a"}, "hostname": "a"}
    current = {**ENV, "memory_bytes": 25_276_514_304 - 440 * 1024, "environment": {"CIFAR10_DIR": "/b"},
               "hostname": "b"}
    comparison = compared(tmp_path, base, current, steps(0.2, seed=1))
    assert comparison.environment_differences == []
    assert comparison.regressions and comparison.regressions[0].why == ""


def test_memory_beyond_the_tolerance_and_speed_variables_are_named(tmp_path):
    base = {**ENV, "memory_bytes": 16 * 2**30, "environment": {"OMP_NUM_THREADS": "2"}}
    current = {**ENV, "memory_bytes": 32 * 2**30, "environment": {"OMP_NUM_THREADS": "1"}}
    assert compared(tmp_path, base, current).environment_differences == [
        "memory: 16.0 GiB -> 32.0 GiB", "environment variables: OMP_NUM_THREADS changed"]


def test_two_cpus_of_one_name_differ_by_family_model_and_stepping(tmp_path):
    epyc = {**ENV, "cpu": {**ENV["cpu"], "model": "AMD EPYC", "family": 23, "model_number": 49, "stepping": 0,
                           "microcode": "0x830107a"}}
    newer = {**ENV, "cpu": {**epyc["cpu"], "family": 25, "model_number": 1, "stepping": 1, "microcode": "0xa0011d1"}}
    differences = compared(tmp_path, epyc, newer, steps(0.2, seed=1)).environment_differences
    assert differences == ["CPU family: 23 -> 25", "CPU model number: 49 -> 1", "CPU stepping: 0 -> 1",
                           "CPU microcode: 0x830107a -> 0xa0011d1"]


def test_an_env_json_without_the_cpu_identity_is_unknown_not_different(tmp_path):
    new = {**ENV, "cpu": {**ENV["cpu"], "family": 25, "model_number": 1, "stepping": 1, "microcode": "0x1"}}
    assert compared(tmp_path, ENV, new).environment_differences == []


def test_a_cell_whose_math_changed_names_it_as_the_cause(tmp_path):
    base = write_run(tmp_path / "base", {32: steps(0.1)}, train={"math": "ieee"})
    cur = write_run(tmp_path / "cur", {32: steps(0.2, seed=1)}, train={"math": "tf32"})
    (cell_,) = regression.compare(store.read_run(base), store.read_run(cur)).cells
    assert cell_.verdict == regression.REGRESSION and cell_.why == "likely cause: math: ieee -> tf32"


# --------------------------------------------------------------------------- 6, 7. exports

def test_a_cell_name_depends_on_the_cell_alone():
    row = {"device_type": "CPU", "device_name": "Xeon", "batch_size": 64.0, "backend": "tensorflow",
           "precision": "mixed_bfloat16", "precision_requested": "auto", "jit_compile": "auto",
           "cpu_threads": 0.0, "steps_per_execution": 1.0, "data_placement": "host",
           "data_placement_requested": "auto", "replicas": 1.0, "workers": 1.0}
    assert export.cell_name(row) == "CPU Xeon, bs64"
    assert export.cell_name(row, "ci") == "ci: CPU Xeon, bs64"
    asked = {**row, "precision_requested": "mixed_bfloat16", "cpu_threads": 2.0, "replicas": 2.0}
    assert export.cell_name(asked) == "CPU Xeon, bs64, precision mixed_bfloat16, cpu threads 2, replicas 2"


def test_multi_replica_cells_export_the_whole_cells_throughput(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {(32, (("replicas", 2),)): steps(0.1)}))
    figures = {c.name: c for c in export.cell_figures(run)}
    two = figures["CPU Test CPU, bs32, precision fp32, replicas 2"]
    assert two.global_batch_size == 64 and two.images_per_s == pytest.approx(64 / two.step_median_s)
    assert export.bencher(run)[two.name]["throughput"]["value"] == pytest.approx(64 / two.step_median_s)


def test_json_export_counts_cells_and_keeps_every_flag(tmp_path):
    busy = {"other_cpu_pct": 40.0, "steal_pct": 0.0, "worker_cpu_pct": 55.0, "usable_cpus": 2}
    directory = write_run(tmp_path / "run", {32: steps(0.1), 64: steps(0.2)}, contention=busy)
    run = store.read_run(directory)
    data = export.export(run, "json")
    assert export.count("json", data) == data["count"] == 2 and len(data["cells"]) == 2
    flags = data["cells"][0]["flags"]
    assert flags["synthetic"] and flags["busy"] and "40 %" in flags["busy_note"]
    assert any("SYNTHETIC" in w for w in export.warnings(run))
    assert "machine busy: other processes used 40 %" in export.github_action_benchmark(run)[0]["extra"]
    assert export.count("bencher", export.export(run, "bencher")) == 2


def test_summary_json_has_numbers_with_units_and_every_flag(tmp_path):
    directory = write_run(tmp_path / "run", {32: steps(0.1)}, train={"data": "cifar10", "heldout_accuracy": 0.1628,
                                                                      "heldout_images": 10_000})
    writer_rows = store.read_run(directory).runs
    failed = writer_rows.iloc[[0]].assign(status="failed", reason="crashed (exit 3)", cell_id="cpu_bs64_r0",
                                          batch_size=64, step_median_s=np.nan)
    runs = pd.concat([writer_rows, failed], ignore_index=True)
    out = export.summary_json(runs, ENV)
    ok, bad = out["cells"]
    assert isinstance(ok["images_per_s"], float) and isinstance(ok["median_step_s"], float)
    assert ok["images_per_s"] == pytest.approx(32 / ok["median_step_s"])
    assert ok["heldout_accuracy_fraction"] == pytest.approx(0.1628) and ok["batch_size"] == 32
    assert ok["synthetic"] is False and ok["busy"] is False and ok["warnings"] == []
    assert bad["status"] == "failed" and bad["reason"] == "crashed (exit 3)" and bad["median_step_s"] is None
    assert bad["warnings"] == ["failed: crashed (exit 3)"]
    json.dumps(out, allow_nan=False)            # strict JSON: no NaN anywhere


def test_summary_json_of_several_runs_keeps_each_runs_cells_and_machine(tmp_path):
    first = store.read_run(write_run(tmp_path / "a", {32: steps(0.1)}, env={**ENV, "machine_label": "laptop"}))
    second = store.read_run(write_run(tmp_path / "b", {32: steps(0.2), 64: steps(0.3)}))
    out = export.summary_json_of_runs([first, second])
    assert [r["run"] for r in out["runs"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert [len(r["cells"]) for r in out["runs"]] == [1, 2]
    assert out["runs"][0]["cells"][0]["name"] == "laptop: CPU Test CPU, bs32, precision fp32"
    assert out["runs"][1]["cells"][1]["median_step_s"] == pytest.approx(second.runs["step_median_s"].iloc[1])


def test_summary_json_command_prints_numbers(tmp_path):
    done = bench("summary", "--run", write_run(tmp_path / "run", {32: steps(0.1)}), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout)["cells"][0]["images_per_s"], float)


def test_export_json_command_reports_the_number_of_cells(tmp_path):
    directory = write_run(tmp_path / "run", {32: steps(0.1), 64: steps(0.2), 128: steps(0.3)})
    done = bench("export", "--run", directory, "--format", "json", "--out", tmp_path / "x.json", cwd=tmp_path)
    assert done.returncode == 0 and "(3 benchmark(s)" in done.stderr, done.stderr


def test_a_failed_cell_does_not_rename_the_other_cells_series(tmp_path):
    """Through the real CLI: one run has a failed cell (batch 13 crashes the fake worker), the
    other an extra cell on another thread count. The cell they share keeps its name."""
    with_failure = bench("run", *TINY, "--batch-sizes", "32,13", "--out", tmp_path / "a", cwd=tmp_path)
    assert with_failure.returncode == 4, with_failure.stderr          # a cell failed
    grown = bench("run", *TINY, "--batch-sizes", "32", "--cpu-threads", "0,1", "--out", tmp_path / "b", cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    names = []
    for run in ("a", "b"):
        done = bench("export", "--run", tmp_path / run, "--format", "bencher", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        names.append(list(json.loads(done.stdout)))
    (shared,) = names[0]
    assert shared.endswith(", bs32") and shared in names[1]
    assert len(names[1]) == 2 and any(name.endswith(", cpu threads 1") for name in names[1])


# --------------------------------------------------------------------------- 2. A/B arms run their own code

def environment_with_bench(directory: Path, says: str) -> Path:
    """A virtual environment whose installed ``bench.worker`` prints ``says``; returns its python."""
    venv.EnvBuilder(with_pip=False).create(directory)
    (site,) = directory.glob("lib/python3*/site-packages")
    (site / "bench").mkdir()
    (site / "bench" / "__init__.py").write_text("")
    (site / "bench" / "worker.py").write_text(f"import sys\nprint({says!r}, sys.argv[1:])\n")
    return directory / "bin" / "python"


def test_each_arm_runs_its_own_environments_bench(tmp_path):
    checkout = tmp_path / "checkout"               # the current directory, and on PYTHONPATH
    (checkout / "bench").mkdir(parents=True)
    (checkout / "bench" / "__init__.py").write_text("")
    (checkout / "bench" / "worker.py").write_text("print('checkout')\n")
    arms = {says: environment_with_bench(tmp_path / says, says) for says in ("arm-a", "arm-b")}
    env = {**os.environ, "PYTHONPATH": str(checkout)}

    def started(command):
        return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=60).stdout

    for says, python in arms.items():
        assert started([str(python), "-m", "bench.worker"]).strip() == "checkout"     # the bug
        assert started([*isolation.worker_command(python), "--probe"]).strip() == f"{says} ['--probe']"


# --------------------------------------------------------------------------- the README's gate, as written

def readme_gate_commands() -> list[str]:
    """The `python -m bench` lines of the README's CI-gate block."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"Guard training speed in CI.*?```sh\n(.*?)```", text, re.DOTALL).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("python -m bench ")]


def test_the_readme_gate_runs_end_to_end(tmp_path):
    """Each command as the README writes it, in a fresh directory; ``run`` gets short settings
    and the fake worker. A busy machine may make the check inconclusive (3): never a failure."""
    commands = readme_gate_commands()
    assert [c.split()[3] for c in commands] == ["run", "baseline", "run", "export"]
    for command in commands:
        args = shlex.split(command)[3:]
        if args[0] == "run":
            args += [*TINY, "--batch-sizes", "32,64"]
        done = bench(*args, cwd=tmp_path)
        allowed = (0, 3) if "--check-against" in args else (0,)
        assert done.returncode in allowed, f"{command}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        if done.returncode == 3:
            assert "inconclusive" in done.stderr
    assert json.loads((tmp_path / "results" / "bencher.json").read_text())



def test_a_comparison_that_fails_after_the_run_keeps_the_summary(tmp_path):
    """Every cell of the checked run fails (its worker cannot start): nothing to compare, but the
    run's summary is written and the status says a cell failed."""
    first = bench("run", *TINY, "--batch-sizes", "32", "--out", tmp_path / "ref", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert bench("baseline", "save", "--run", tmp_path / "ref", "--name", "nightly", cwd=tmp_path).returncode == 0
    broken = {**fake_environment(), "BENCH_WORKER_COMMAND": shlex.join([sys.executable, "-c", "raise SystemExit(3)"])}
    done = subprocess.run([sys.executable, "-m", "bench", "run", *TINY, "--batch-sizes", "32", "--check-against",
                           "nightly", "--out", str(tmp_path / "run")], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300, env=broken)
    assert done.returncode == 4 and "nothing to compare" in done.stderr, done.stderr
    assert (tmp_path / "run" / store.SUMMARY_MD).is_file()


# --------------------------------------------------------------------------- 10. runs of any directory

def test_runs_lists_any_directory_of_runs():
    listed = store.list_directory(PUBLISHED)
    published = sorted(p.name for p in PUBLISHED.iterdir() if (p / store.RUNS_CSV).is_file())
    assert sorted(r.id for r in listed) == published
    assert not [r.error for r in listed if r.error] and all(r.ok for r in listed)
    (itself,) = store.list_directory(PUBLISHED / "2026-11-24-quick")
    assert itself.id == "2026-11-24-quick" and itself.ok == 3


def test_a_noise_folder_lists_its_runs_not_itself_as_damaged(tmp_path):
    noise = store.runs_dir(tmp_path) / "20260101-000000-noise"
    for name in ("run-1", "run-2"):
        write_run(noise / name, {32: steps(0.1)})
    (store.runs_dir(tmp_path) / "empty").mkdir()
    listed = {r.id: r for r in store.list_runs(tmp_path)}
    assert set(listed) == {"20260101-000000-noise/run-1", "20260101-000000-noise/run-2", "empty"}
    assert listed["20260101-000000-noise/run-1"].ok == 1 and listed["20260101-000000-noise/run-1"].error is None
    assert "missing" in listed["empty"].error            # a folder with no run is still shown, as damaged
    assert [r.id for r in store.list_directory(tmp_path)] == [r.id for r in store.list_runs(tmp_path)]
    with pytest.raises(store.ResultsError, match="no such directory"):
        store.list_directory(tmp_path / "nowhere")


def test_runs_command_lists_the_published_runs(tmp_path):
    done = bench("runs", PUBLISHED, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {r["id"] for r in json.loads(done.stdout)} >= {"2026-11-24-quick", "gpu-quick"}
    missing = bench("runs", tmp_path / "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "no such directory" in missing.stderr and "Traceback" not in missing.stderr


def generated_blocks(document: Path) -> list[tuple[str, str]]:
    """(marker, the run its 'Produced by' line names with --out) of each generated block."""
    text = document.read_text(encoding="utf-8")
    return [(name, re.search(r"--out (\S+?)`", body).group(1))
            for name, body in re.findall(r"<!-- bench:([\w-]+):start -->(.*?)<!-- bench:\1:end -->", text, re.DOTALL)]


def test_the_methods_generated_blocks_regenerate_byte_for_byte(tmp_path):
    copy = tmp_path / "method.md"
    copy.write_bytes((REPO / "docs" / "method.md").read_bytes())
    blocks = generated_blocks(copy)
    assert len(blocks) == 4
    for marker, run in blocks:   # as documented: from the repository's root, the run's path as written
        done = bench("readme", "--readme", copy, "--marker", marker, "--run", run, cwd=REPO)
        assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == (REPO / "docs" / "method.md").read_bytes()


# --------------------------------------------------------------------------- 8. the CI recipe's first run

def recipe_step(name_starts: str) -> dict:
    import yaml

    workflow = yaml.safe_load((REPO / "docs" / "ci" / "github-actions.yml").read_text())
    return next(step for step in workflow["jobs"]["benchmark"]["steps"] if step.get("name", "").startswith(name_starts))


def test_the_recipe_makes_gh_pages_once_on_a_push_and_never_on_a_pull_request(tmp_path):
    """The step's own shell, against a local bare repository standing in for GitHub."""
    step = recipe_step("Make the gh-pages branch")
    remote, clone = tmp_path / "remote.git", tmp_path / "clone"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run([*git, "clone", "-q", str(remote), str(clone)], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "main"], cwd=clone, check=True)
    subprocess.run([*git, "push", "-q", "origin", "HEAD:main"], cwd=clone, check=True)

    def run_step(event: str) -> str:
        output = tmp_path / "output"
        output.unlink(missing_ok=True)
        done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=clone, text=True, capture_output=True,
                              env={**os.environ, **step["env"], "GITHUB_EVENT_NAME": event,
                                   "GITHUB_OUTPUT": str(output)})
        assert done.returncode == 0, done.stderr
        return output.read_text()

    def branches() -> str:
        return subprocess.run(["git", "ls-remote", "--heads", "origin"], cwd=clone, text=True,
                              capture_output=True, check=True).stdout

    assert run_step("pull_request") == "exists=false\n" and "gh-pages" not in branches()
    assert run_step("push") == "exists=true\n" and "refs/heads/gh-pages" in branches()
    made = branches()
    assert run_step("push") == "exists=true\n" and branches() == made      # made once, then left alone
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, text=True, capture_output=True).stdout == ""
    # what github-action-benchmark does first, which failed before the branch existed
    subprocess.run(["git", "fetch", "-q", "origin", "gh-pages:gh-pages"], cwd=clone, check=True)


def test_the_chart_never_fails_the_job_and_writes_only_on_push():
    chart = recipe_step("Chart the history")
    assert chart["continue-on-error"] is True and chart["with"]["fail-on-alert"] is False
    assert chart["with"]["auto-push"] == "${{ github.event_name == 'push' }}"
    assert "head.repo.full_name == github.repository" in chart["with"]["comment-on-alert"]
    assert "steps.pages.outputs.exists == 'true'" in chart["if"]


def test_the_ci_recipe_passes_its_first_run_and_the_next(tmp_path):
    """The workflow's shell steps as written, in a fresh directory, `bench run` with short settings
    and the fake worker: the first run (no baseline committed yet) passes and says so; after the
    baseline is saved as docs/ci.md says, the next run is checked against it (3, inconclusive,
    only if the machine was busy)."""
    import yaml

    steps_ = yaml.safe_load((REPO / "docs" / "ci" / "github-actions.yml").read_text())["jobs"]["benchmark"]["steps"]
    shell = [s for s in steps_ if "python -m bench" in str(s.get("run", "")) or s.get("name") == "Report"]
    assert [s["name"] for s in shell] == ["Benchmark (quick profile, CPU)", "Check against the committed baseline",
                                          "Export for the chart", "Report"]
    env = {**fake_environment(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}

    def run_steps() -> list[int]:
        codes = []
        for step in shell:
            script = step["run"].replace("--out results/ci-run", "--out results/ci-run " + shlex.join(
                [*TINY, "--batch-sizes", "32,64"]))
            done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=300)
            assert "Traceback" not in done.stderr, done.stderr
            codes.append(done.returncode)
        return codes

    assert run_steps() == [0, 0, 0, 0]
    assert "No committed baseline yet" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "results" / "benchmark.json").read_text())
    saved = bench("baseline", "save", "--run", "results/ci-run", "--name", "github-ubuntu", "--results-dir",
                  "benchmarks", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    subprocess.run(["rm", "-rf", str(tmp_path / "results")], check=True)
    codes = run_steps()
    assert codes[0] == 0 and codes[1] in (0, 3) and codes[2:] == [0, 0]
    assert "matched cell(s)" in (tmp_path / "results" / "check.md").read_text()
