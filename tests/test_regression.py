"""bench.regression and the check/baseline commands: the decision rule, matching, baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import regression, store
from bench.environment import machine_id

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import ENV, TEST_CPU, write_run  # noqa: E402

from bench.devices import Device, Requested, usable_cpus  # noqa: E402


def step_times(median: float, n: int = 60, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median), spread, n)


# --------------------------------------------------------------------------- the decision rule

@pytest.mark.parametrize("seed", range(5))
def test_identical_distributions_are_not_a_regression(seed):
    base, cur = step_times(0.1, seed=seed), step_times(0.1, seed=seed + 100)
    assert regression.decide(base, cur).kind == regression.WITHIN_NOISE


def test_a_clear_2x_slowdown_is_a_regression():
    verdict = regression.decide(step_times(0.1), step_times(0.2, seed=1))
    assert verdict.kind == regression.REGRESSION and 1.8 < verdict.low <= verdict.ratio < 2.2


def test_a_small_shift_inside_the_noise_is_within_noise():
    # 4 % slower with 20 % step-to-step spread: not confidently beyond the 10 % threshold
    verdict = regression.decide(step_times(0.1, spread=0.2), step_times(0.104, spread=0.2, seed=1))
    assert verdict.kind == regression.WITHIN_NOISE and verdict.low < 1.1


def test_a_shift_just_above_the_threshold_but_noisy_is_not_flagged():
    # 15 % slower on average, but so noisy that a 10 % slowdown cannot be ruled out
    verdict = regression.decide(step_times(0.1, n=15, spread=0.4), step_times(0.115, n=15, spread=0.4, seed=3))
    assert verdict.kind == regression.WITHIN_NOISE


def test_run_to_run_variation_seen_through_repeats_is_not_a_regression():
    # each repeat is tight, but repeats disagree by up to 8 %: one repeat of each side would
    # look like a confident 7 % slowdown; with the repeats resampled it is within noise
    base = [step_times(m, spread=0.01, seed=i) for i, m in enumerate((0.100, 0.093, 0.101))]
    cur = [step_times(m, spread=0.01, seed=10 + i) for i, m in enumerate((0.107, 0.099, 0.094))]
    assert regression.decide(base[0], cur[0], max_slowdown=0.05).kind == regression.REGRESSION
    assert regression.decide(base, cur, max_slowdown=0.05).kind == regression.WITHIN_NOISE


def test_a_clear_speedup_is_faster():
    verdict = regression.decide(step_times(0.2), step_times(0.1, seed=1))
    assert verdict.kind == regression.FASTER and verdict.high < 1 / 1.1


@pytest.mark.parametrize("text, value", [("10%", 0.10), ("0.1", 0.10), ("2.5%", 0.025), ("150%", 1.5)])
def test_parse_slowdown(text, value):
    assert regression.parse_slowdown(text) == pytest.approx(value)


@pytest.mark.parametrize("text, message", [("fast", "not a slowdown"), ("-5%", "positive"), ("0", "positive"),
                                           ("nan", "positive"), ("10", "ambiguous"), ("1", "ambiguous")])
def test_parse_slowdown_rejects_the_ambiguous_and_the_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        regression.parse_slowdown(text)


# --------------------------------------------------------------------------- matching

def test_cells_are_matched_and_the_unmatched_listed(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1), 64: step_times(0.2)}))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.2, seed=1),
                                                        128: step_times(0.4)}))
    comparison = regression.compare(base, cur)
    assert [c.cell for c in comparison.cells] == ["CPU Test CPU, bs32"]
    assert comparison.cells[0].verdict == regression.REGRESSION
    assert comparison.only_in_baseline == ["CPU Test CPU, bs64"]
    assert comparison.only_in_current == ["CPU Test CPU, bs128"]
    report = regression.comparison_markdown(comparison)
    assert "REGRESSION" in report and "only in the baseline" in report and "bs128" in report


def test_repeats_of_a_cell_are_compared_as_repeats(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: [step_times(0.1, seed=s) for s in (1, 2, 3)]}))
    cur = store.read_run(write_run(tmp_path / "cur", {32: [step_times(0.1, seed=s) for s in (4, 5)]}))
    cell = regression.compare(base, cur).cells[0]
    assert (cell.baseline_repeats, cell.current_repeats) == (3, 2)
    assert (cell.baseline_steps, cell.current_steps) == (180, 120)
    assert "| 3/2 " in regression.comparison_markdown(regression.compare(base, cur))


def test_a_baseline_from_before_data_placement_matches_host_fed_cells(tmp_path):
    base = write_run(tmp_path / "base", {32: step_times(0.1)})
    runs = pd.read_csv(base / store.RUNS_CSV)
    runs.drop(columns=["data_placement", "data_placement_requested", "data_device", "backend"]).to_csv(
        base / store.RUNS_CSV, index=False)
    env = json.loads((base / store.ENV_JSON).read_text())
    del env["schema_version"]                      # written before versions were recorded
    (base / store.ENV_JSON).write_text(json.dumps(env))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.1, seed=1)}))
    comparison = regression.compare(store.read_run(base), cur)
    assert [c.cell for c in comparison.cells] == ["CPU Test CPU, bs32"]
    assert not comparison.only_in_baseline and not comparison.only_in_current


def test_another_device_name_does_not_match(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1)}))
    other = Requested("cpu", Device("cpu", "CPU", "Other CPU"))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.1)}, device=other))
    with pytest.raises(regression.BaselineError, match="nothing to compare"):
        regression.compare(base, cur)


def test_environment_differences_are_named(tmp_path):
    changed = {**ENV, "tensorflow": {**ENV["tensorflow"], "version": "2.20.0"},
               "cpu": {**ENV["cpu"], "usable_cpus": 1}}
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1)}))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.1, seed=2)}, env=changed))
    differences = regression.compare(base, cur).environment_differences
    assert "TensorFlow: 2.21.0 -> 2.20.0" in differences
    assert "CPUs usable by the process: 2 -> 1" in differences


# --------------------------------------------------------------------------- baselines

def test_save_and_load_a_baseline(tmp_path):
    run = store.read_run(write_run(tmp_path / "run", {32: step_times(0.1)}))
    root = tmp_path / "results"
    path = store.save_baseline(run, machine_id(run.env), root)
    assert path.name.startswith("test-cpu-2cpu-16gib-nogpu-")       # from the machine fingerprint
    assert sorted(p.name for p in path.iterdir()) == ["baseline.json", "env.json", "runs.csv", "steps.csv"]
    meta = json.loads((path / "baseline.json").read_text())
    assert meta["schema"] == store.BASELINE_SCHEMA and meta["cells"] == 1
    loaded = store.load_baseline(path.name, root)
    np.testing.assert_allclose(loaded.steady_steps(run.runs["cell_id"][0]),
                               run.steady_steps(run.runs["cell_id"][0]))
    with pytest.raises(store.BaselineError, match="already exists"):
        store.save_baseline(run, path.name, root)
    assert store.save_baseline(run, path.name, root, replace=True) == path
    assert [m["name"] for m in store.list_baselines(root)] == [path.name]


def test_malformed_and_foreign_baselines_are_refused(tmp_path):
    root = tmp_path / "results"
    with pytest.raises(store.BaselineError, match="not found"):
        store.load_baseline("missing", root)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "runs.csv").write_text("name,score\nalice,3\n")
    (foreign / "steps.csv").write_text("x\n1\n")
    with pytest.raises(regression.BaselineError, match="missing column"):
        store.load_baseline(str(foreign), root)
    wrong_schema = write_run(tmp_path / "wrong", {32: step_times(0.1)})
    (wrong_schema / "baseline.json").write_text('{"schema": "something-else/9"}')
    with pytest.raises(regression.BaselineError, match="not a cifar-bench baseline"):
        store.load_baseline(str(wrong_schema), root)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(store.BaselineError, match="not a baseline or run directory"):
        store.load_baseline(str(tmp_path / "a-file"), root)


# --------------------------------------------------------------------------- the real CLI

def bench(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def test_check_exit_statuses(tmp_path):
    write_run(tmp_path / "base", {32: step_times(0.1), 64: step_times(0.2)})
    write_run(tmp_path / "same", {32: step_times(0.1, seed=7), 64: step_times(0.2, seed=8)})
    write_run(tmp_path / "slow", {32: step_times(0.2, seed=9), 64: step_times(0.2, seed=10)})
    write_run(tmp_path / "other", {512: step_times(0.1)})

    same = bench("check", "--baseline", tmp_path / "base", "--run", tmp_path / "same", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout.count("| within noise ") == 2

    slow = bench("check", "--baseline", tmp_path / "base", "--run", tmp_path / "slow",
                 "--markdown", tmp_path / "report.md", "--json", tmp_path / "report.json", cwd=tmp_path)
    assert slow.returncode == 1, slow.stderr
    assert "regression: CPU Test CPU, bs32" in slow.stderr and "bs64" not in slow.stderr
    assert (tmp_path / "report.md").read_text() == slow.stdout.rstrip("\n") + "\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["verdict"] for c in report["cells"]] == ["regression", "within noise"]

    for args, fragment in [
        (["--baseline", tmp_path / "nowhere"], "not found"),
        (["--baseline", tmp_path / "base", "--run", tmp_path / "other"], "nothing to compare"),
        (["--baseline", tmp_path / "base", "--run", tmp_path / "same", "--max-slowdown", "lots"],
         "--max-slowdown"),
        (["--baseline", tmp_path / "base", "--run", tmp_path / "same", "--json", tmp_path], "directory"),
    ]:
        done = bench("check", *args, cwd=tmp_path)
        assert done.returncode == 2 and fragment in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_baseline_save_command(tmp_path):
    write_run(tmp_path / "results" / "runs" / "20260101-000000", {32: step_times(0.1)})
    saved = bench("baseline", "save", "--name", "nightly", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "results" / "baselines" / "nightly" / "baseline.json").exists()
    again = bench("baseline", "save", "--name", "nightly", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = bench("baseline", "list", cwd=tmp_path)
    assert listed.stdout.startswith("nightly: run 20260101-000000, 1 cell(s)")
    check = bench("check", "--baseline", "nightly", cwd=tmp_path)   # by name, latest run
    assert check.returncode == 0, check.stderr


FAKE_WORKER = Path(__file__).parent / "helpers" / "fake_worker.py"


def fake_python(directory: Path, name: str, slowdown: float = 1.0) -> Path:
    """A stand-in for an environment's python: a command that starts ``bench.worker`` (``-m
    bench.worker``, or :func:`bench.isolation.worker_command`'s bootstrap) starts the fake
    worker with a deterministic slowdown (its steps report ``slowdown`` times longer), anything
    else is the real interpreter (``bench ab`` asks it for its package versions)."""
    script = directory / name
    script.write_text(f"""#!/bin/sh
case "$*" in
    *bench.worker*) FAKE_WORKER_SLOWDOWN={slowdown} exec {sys.executable} {FAKE_WORKER} ;;
esac
exec {sys.executable} "$@"
""")
    script.chmod(0o755)
    return script


AB = ["--devices", "cpu", "--batch-sizes", "32", "--steps", "12", "--warmup", "2", "--repeats", "2",
      "--data", "synthetic", "--synthetic-images", "1280", "--precision", "fp32"]


def recorded_verdict(out: Path, statistical: str) -> str:
    """The verdict the contention rule gives ``statistical`` from what the arms recorded."""
    sides = [regression.side_contention(store.read_run(out / arm).runs) for arm in ("a", "b")]
    return regression.contention_verdict(statistical, *sides, 0.10)[0]


def test_ab_flags_a_deterministic_3x_slowdown_and_never_an_identical_arm(tmp_path):
    """Load can neither fake nor hide what this checks: the fake worker's step times do not
    depend on the machine, so the statistics are fixed (identical: +0 %, slow arm: +200 %),
    and only the measured contention may turn a verdict into 'inconclusive' -- never an
    identical arm into a regression, never the slow arm into a pass."""
    same_a, same_b = fake_python(tmp_path, "python-a"), fake_python(tmp_path, "python-b")
    slow = fake_python(tmp_path, "python-slow", slowdown=3)

    identical = bench("ab", "--python", same_a, "--python", same_b, *AB, "--out", tmp_path / "same",
                      "--json", tmp_path / "same.json", cwd=tmp_path)
    report = json_cells(identical, tmp_path / "same.json")
    assert report["statistical_verdict"] == regression.WITHIN_NOISE, identical.stdout + identical.stderr
    assert report["verdict"] in (regression.WITHIN_NOISE, regression.INCONCLUSIVE)
    assert report["verdict"] == recorded_verdict(tmp_path / "same", regression.WITHIN_NOISE)
    assert identical.returncode == (0 if report["verdict"] == regression.WITHIN_NOISE else 3)

    slower = bench("ab", "--python", same_a, "--python", slow, *AB, "--out", tmp_path / "slow",
                   "--json", tmp_path / "slow.json", cwd=tmp_path)
    report = json_cells(slower, tmp_path / "slow.json")
    assert report["statistical_verdict"] == regression.REGRESSION, slower.stdout + slower.stderr
    assert report["change_pct"] == pytest.approx(200, abs=1)
    assert report["verdict"] == recorded_verdict(tmp_path / "slow", regression.REGRESSION)
    assert slower.returncode == (1 if report["verdict"] == regression.REGRESSION else 3)
    assert "regression: CPU" in slower.stderr or "machine busy during the run" in slower.stdout
    # the arms ran interleaved, A B then B A, each repeat a fresh worker
    started = [pd.read_csv(tmp_path / "slow" / arm / store.RUNS_CSV)["cell_id"].tolist() for arm in "ab"]
    assert started == [["cpu_bs32_tf_fp32_xla-auto_thr0_spe1_data-host_r0",
                        "cpu_bs32_tf_fp32_xla-auto_thr0_spe1_data-host_r1"]] * 2
    assert (tmp_path / "slow" / "a" / store.SUMMARY_MD).exists()


def json_cells(done: subprocess.CompletedProcess, report: Path) -> dict:
    """The one compared cell of a ``bench ab --json`` report."""
    assert report.exists(), done.stdout + done.stderr
    cells = json.loads(report.read_text())["cells"]
    assert len(cells) == 1
    return cells[0]


@pytest.mark.slow
def test_identical_real_runs_are_never_a_regression(tmp_path):
    """The real worker, the same Python twice, interleaved: within noise, or inconclusive when
    the recorded contention says the machine was too busy -- never a regression."""
    done = bench("ab", "--python", sys.executable, "--python", sys.executable, "--devices", "cpu",
                 "--batch-sizes", "32", "--steps", "20", "--warmup", "3", "--data", "synthetic",
                 "--synthetic-images", "1280", "--no-eval", "--out", tmp_path / "ab", cwd=tmp_path,
                 timeout=600)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert "REGRESSION" not in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/taskset").exists() and not Path("/bin/taskset").exists(),
                    reason="needs taskset (util-linux)")
def test_a_run_pinned_to_one_cpu_names_the_environment_change(tmp_path):
    if usable_cpus().count < 2:
        pytest.skip("this process may use one CPU already: pinning it to one changes nothing")
    quick = ["run", "--devices", "cpu", "--batch-sizes", "32", "--steps", "20", "--warmup", "3",
             "--data", "synthetic", "--synthetic-images", "1280", "--no-eval", "--no-peak"]
    first = bench(*quick, "--out", tmp_path / "first", cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "bench", *quick, "--out",
                             tmp_path / "pinned"], cwd=tmp_path, text=True, capture_output=True,
                            timeout=600)
    assert pinned.returncode == 0, pinned.stderr
    assert "Restricted CPUs" in pinned.stdout
    check = bench("check", "--baseline", tmp_path / "first", "--run", tmp_path / "pinned", cwd=tmp_path)
    change = f"CPUs usable by the process: {usable_cpus().count} -> 1"   # 2 -> 1 on CI's 2 cores
    assert change in check.stdout
    # a regression names the change as its cause; only recorded contention may make it inconclusive
    assert check.returncode in (1, 3), check.stdout + check.stderr
    if check.returncode == 1:
        assert f"likely cause: {change}" in check.stderr


def test_cells_differing_only_in_a_value_that_prints_like_a_default_are_named_apart(tmp_path):
    cells = {(32, (("cpu_threads", 0),)): step_times(0.1), (32, (("cpu_threads", 1),)): step_times(0.2)}
    base = store.read_run(write_run(tmp_path / "base", cells))
    cur = store.read_run(write_run(tmp_path / "cur", {k: v * 1.5 for k, v in cells.items()}))
    comparison = regression.compare(base, cur)
    assert [c.cell for c in comparison.cells] == ["CPU Test CPU, bs32, cpu threads default",
                                                  "CPU Test CPU, bs32, cpu threads 1"]
    assert [c.verdict for c in comparison.cells] == [regression.REGRESSION] * 2


# --------------------------------------------------------------------------- contention and the verdict

QUIET = {"usable_cpus": 2, "other_cpu_pct": 3.0, "steal_pct": 0.0, "worker_cpu_pct": 85.0}
BUSY = {"usable_cpus": 2, "other_cpu_pct": 48.0, "steal_pct": 0.0, "worker_cpu_pct": 52.0}


def side(pressure, worker, usable=2, gpu=None):
    return regression.SideContention(pressure, worker, usable, gpu)


@pytest.mark.parametrize("verdict, base, cur, expected", [
    # quiet both: the statistics decide
    (regression.REGRESSION, side(3, 85), side(4, 84), regression.REGRESSION),
    (regression.WITHIN_NOISE, side(3, 85), side(4, 84), regression.WITHIN_NOISE),
    # busy run: its slowdown may be contention; its within-noise cannot hide a slowdown
    (regression.REGRESSION, side(3, 85), side(48, 52), regression.INCONCLUSIVE),
    (regression.WITHIN_NOISE, side(3, 85), side(48, 52), regression.WITHIN_NOISE),
    (regression.FASTER, side(3, 85), side(48, 52), regression.FASTER),
    # busy baseline: a speed-up may be an illusion and a slowdown may hide; a slowdown stands
    (regression.FASTER, side(48, 52), side(3, 85), regression.INCONCLUSIVE),
    (regression.WITHIN_NOISE, side(48, 52), side(3, 85), regression.INCONCLUSIVE),
    (regression.REGRESSION, side(40, 60), side(3, 85), regression.REGRESSION),
    # equal load on both sides (an interleaved A/B): it cannot fake a difference ...
    (regression.REGRESSION, side(40, 60), side(39, 61), regression.REGRESSION),
    # ... unless a side was saturated (other processes took half the CPUs or more)
    (regression.REGRESSION, side(48, 52), side(52, 48), regression.INCONCLUSIVE),
    (regression.FASTER, side(59, 40), side(67, 33), regression.INCONCLUSIVE),
    (regression.REGRESSION, side(75, 25), side(76, 24), regression.INCONCLUSIVE),
    # a worker share that fell on a quiet machine is the code's doing, not contention
    (regression.REGRESSION, side(3, 85), side(4, 50), regression.REGRESSION),
    # a little load that cannot move the step time by the 10 % threshold
    (regression.REGRESSION, side(3, 85), side(11, 84), regression.REGRESSION),
    # only the worker's share says how much: 12 % other load, worker 85 -> 60 %
    (regression.REGRESSION, side(3, 85), side(12, 60), regression.INCONCLUSIVE),
    # another process on the GPU cannot be quantified: it explains any difference
    (regression.REGRESSION, side(0, 90, gpu=0), side(0, 90, gpu=1), regression.INCONCLUSIVE),
    # an older run without contention records: decided as before
    (regression.REGRESSION, None, side(48, 52), regression.REGRESSION),
])
def test_the_contention_rule(verdict, base, cur, expected):
    assert regression.contention_verdict(verdict, base, cur, 0.10)[0] == expected


def test_a_resource_change_is_a_cause_of_its_own_even_on_a_saturated_machine():
    # pinned to 1 CPU on a saturated machine: the slowdown is blamed on the CPUs it lost
    base, pinned = side(68, 32), side(60, 40, usable=1)
    assert regression.contention_verdict(regression.REGRESSION, base, pinned, 0.10)[0] == \
        regression.INCONCLUSIVE
    assert regression.contention_verdict(regression.REGRESSION, base, pinned, 0.10,
                                         resources_changed=True)[0] == regression.REGRESSION
    # but a run that had less of its CPUs than the baseline stays inconclusive
    assert regression.contention_verdict(regression.REGRESSION, side(3, 85), side(48, 52, usable=1), 0.10,
                                         resources_changed=True)[0] == regression.INCONCLUSIVE


def test_shares_are_of_each_sides_own_cpus_so_fewer_usable_cpus_is_not_contention():
    # pinned to 1 of 2 CPUs: worker 95 % of 1 CPU vs 85 % of 2 -- no contention to blame
    assert regression.contention_factor(side(3, 85), side(4, 95, usable=1)) == 1.0
    # the larger of: CPU share left (97 % vs 52 %) and the worker's own share (85 % vs 52 %)
    assert regression.contention_factor(side(3, 85), side(48, 52)) == pytest.approx(97 / 52)


def test_a_busy_run_is_inconclusive_and_says_which_side_and_how_much(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1)}, contention=QUIET))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.233, seed=1)}, contention=BUSY))
    comparison = regression.compare(base, cur)
    cell = comparison.cells[0]
    assert cell.verdict == regression.INCONCLUSIVE and cell.statistical_verdict == regression.REGRESSION
    assert comparison.inconclusive == [cell] and not comparison.regressions
    assert cell.why == ("inconclusive: machine busy during the run (other processes used 48 % of the "
                        "2 usable CPUs; worker 52 % vs 85 % in the baseline)")
    report = regression.comparison_markdown(comparison)
    assert "1 inconclusive" in report and "other 3 %, worker 85 % / other 48 %, worker 52 %" in report


def test_a_busy_baseline_makes_a_speed_up_inconclusive(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.2)}, contention=BUSY))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.1, seed=1)}, contention=QUIET))
    cell = regression.compare(base, cur).cells[0]
    assert cell.verdict == regression.INCONCLUSIVE
    assert cell.why.startswith("inconclusive: machine busy during the baseline (other processes used 48 %")


def test_quiet_runs_still_catch_a_regression(tmp_path):
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1)}, contention=QUIET))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.2, seed=1)},
                                   contention={**QUIET, "other_cpu_pct": 6.0}))
    cell = regression.compare(base, cur).cells[0]
    assert cell.verdict == regression.REGRESSION and cell.why == ""


def test_an_environment_change_is_a_regressions_likely_cause_not_noise(tmp_path):
    pinned = {**ENV, "cpu": {**ENV["cpu"], "usable_cpus": 1}}
    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.1)}, contention=QUIET))
    cur = store.read_run(write_run(tmp_path / "cur", {32: step_times(0.2, seed=1)}, env=pinned,
                                   contention={**QUIET, "usable_cpus": 1, "worker_cpu_pct": 97.0}))
    comparison = regression.compare(base, cur)
    cell = comparison.cells[0]
    assert cell.verdict == regression.REGRESSION
    assert cell.why == "likely cause: CPUs usable by the process: 2 -> 1"
    assert "REGRESSION, likely cause: CPUs usable by the process: 2 -> 1" in \
        regression.comparison_markdown(comparison)


def test_check_exits_3_when_the_only_slowdown_is_a_busy_machines(tmp_path):
    write_run(tmp_path / "base", {32: step_times(0.1), 64: step_times(0.2)}, contention=QUIET)
    write_run(tmp_path / "busy", {32: step_times(0.2, seed=1), 64: step_times(0.2, seed=2)}, contention=BUSY)
    done = bench("check", "--baseline", tmp_path / "base", "--run", tmp_path / "busy", cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "inconclusive: CPU Test CPU, bs32" in done.stderr
    assert "machine busy during the run" in done.stdout


# --------------------------------------------------------------------------- exit statuses, retry, noise

def comparison_of(*verdicts) -> regression.Comparison:
    cells = [regression.CellComparison(f"cell {i}", {}, 1.0, 1.0, 0.0, 0.0, 0.0, v, 10, 10)
             for i, v in enumerate(verdicts)]
    return regression.Comparison(cells, [], [], [], 0.1, 0.95, "base", "run")


@pytest.mark.parametrize("verdicts, failed, status", [
    ((regression.WITHIN_NOISE, regression.FASTER), [], 0),
    ((regression.WITHIN_NOISE, regression.REGRESSION), [], 1),
    ((regression.INCONCLUSIVE,), [], 3),
    ((regression.INCONCLUSIVE, regression.REGRESSION), [], 1),          # regression wins
    ((regression.WITHIN_NOISE,), ["cpu_bs13_r0"], 4),
    ((regression.REGRESSION,), ["cpu_bs13_r0"], 1),                     # and is never hidden
    ((regression.INCONCLUSIVE,), ["cpu_bs13_r0"], 4),
])
def test_one_exit_status_names_everything(verdicts, failed, status, capsys):
    from bench import options

    assert options.gate_status(comparison_of(*verdicts), failed) == status
    said = capsys.readouterr().err
    assert ("regression: cell" in said) == (regression.REGRESSION in verdicts)
    assert ("inconclusive: cell" in said) == (regression.INCONCLUSIVE in verdicts)
    assert ("failed: cpu_bs13_r0" in said) == bool(failed)


def test_exit_statuses_are_documented_in_help(tmp_path):
    for command in ([], ["check"], ["run"], ["ab"]):
        text = " ".join(bench(*command, "--help", cwd=tmp_path).stdout.split())
        for status in ("0 ok", "1 a regression", "2 bad input", "3 inconclusive", "4 a cell failed"):
            assert status in text, (command, status)
        assert "1 wins over 4, and 4 over 3" in text


def test_retry_judges_a_cell_on_its_latest_attempt_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    from bench import matrix, runner, session
    from bench.config import RunConfig
    from bench.progress import Reporter
    from bench.protocol import DataSpec

    # baseline: the fake worker's bs32 steps (0.032 s), measured on a quiet machine
    config = RunConfig(plan=matrix.Plan({"batch_size": (32,), "precision": ("fp32",)}), epochs=1,
                       max_steps_per_epoch=12, warmup_steps=2, source=DataSpec("synthetic"), cell_timeout=60)
    cells = runner.plan_cells(config, [TEST_CPU])

    def measure(out, todo, contention, slowdown):
        monkeypatch.setenv("FAKE_WORKER_SLOWDOWN", str(slowdown))

        class Watched:
            def stop(self):
                return contention

        writer = writers.setdefault(out, store.RunWriter(out, out.name))
        context = runner.RunContext(config=config, run_id=out.name, log_dir=out / "logs", system="Test OS",
                                    worker_command=(sys.executable, str(FAKE_WORKER)),
                                    watch=lambda pid, cell: Watched(), contention_columns=lambda c: c)
        return runner.execute(todo, writer, context, Reporter(open("/dev/null", "w")))

    def in_memory(out):
        """The run as its writer holds it (what the session compares: no re-read from disk)."""
        writer = writers[out]
        return store.Run(out, writer.frame(), session.steps_frame(writer.steps), ENV)

    writers = {}
    for name in ("base", "run"):
        (tmp_path / name).mkdir()
        store.RunWriter(tmp_path / name, name).write_env(ENV)
    measure(tmp_path / "base", cells, QUIET, 1)
    # the run: 3x slower while the machine was busy -> inconclusive; the retry is quiet
    measure(tmp_path / "run", cells, BUSY, 3)
    said = []
    comparison = session.retry_checks(
        session.CheckRequest(store.read_run(tmp_path / "base"), 0.10, 2), lambda: in_memory(tmp_path / "run"),
        cells, config.repeats, lambda todo: measure(tmp_path / "run", todo, QUIET, 1), said.append)
    cell = comparison.cells[0]
    assert cell.verdict == regression.WITHIN_NOISE and cell.current_repeats == 1
    assert cell.attempts == ["inconclusive +200.0 %"]
    assert "(attempt 2; before: inconclusive +200.0 %)" in regression.comparison_markdown(comparison)
    assert len(said) == 1 and "attempt 2 of 3" in said[0]
    kept = pd.read_csv(tmp_path / "run" / store.RUNS_CSV)
    assert kept["cell_id"].str.endswith(("_r0", "_r1")).all() and len(kept) == 2


def test_retry_needs_a_check(tmp_path):
    done = bench("run", "--devices", "cpu", "--retry", "2", cwd=tmp_path)
    assert done.returncode == 2 and "--check-against" in done.stderr


def test_noise_suggests_the_smallest_threshold_identical_runs_support(tmp_path):
    for i in range(3):
        write_run(tmp_path / f"run{i}", {32: step_times(0.1, spread=0.05, seed=i)}, contention=QUIET)
    runs = [store.read_run(tmp_path / f"run{i}") for i in range(3)]
    report = regression.noise_report(runs)
    assert len(report.table) == 3 and report.busy == 0               # 3 pairs, 1 cell each
    suggestion = report.suggested_pct
    assert suggestion <= report.with_contention_pct == report.statistics_only_pct  # quiet: rule idle
    for first, second in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]:
        verdict = regression.compare(runs[first], runs[second], suggestion / 100).cells[0].verdict
        assert verdict == regression.WITHIN_NOISE                     # none fails, either way round
    done = bench("noise", "--run", tmp_path / "run0", "--run", tmp_path / "run1", "--run", tmp_path / "run2",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Suggested --max-slowdown: {suggestion:g}%" in done.stdout and "1 vs 3" in done.stdout
    one = bench("noise", "--run", tmp_path / "run0", cwd=tmp_path)
    assert one.returncode == 2 and "two or more" in one.stderr


def test_noise_on_a_busy_machine_leaves_contention_to_the_rule(tmp_path):
    """Identical code, one run 2x slower while other processes took 48 % of the CPUs: the
    statistics alone would need a 100 %+ threshold; with the rule that pair is inconclusive."""
    write_run(tmp_path / "quiet", {32: step_times(0.1)}, contention=QUIET)
    write_run(tmp_path / "quiet2", {32: step_times(0.1, seed=1)}, contention=QUIET)
    write_run(tmp_path / "busy", {32: step_times(0.2, seed=2)}, contention=BUSY)
    report = regression.noise_report([store.read_run(tmp_path / n) for n in ("quiet", "quiet2", "busy")])
    assert report.statistics_only_pct > 100 and report.busy == 2
    assert report.suggested_pct <= report.with_contention_pct < 10


def test_retry_does_not_measure_the_run_again_when_the_baseline_was_the_busy_side(tmp_path):
    from bench import session

    base = store.read_run(write_run(tmp_path / "base", {32: step_times(0.2)}, contention=BUSY))
    write_run(tmp_path / "run", {32: step_times(0.1, seed=1)}, contention=QUIET)

    def rerun(todo):
        raise AssertionError("a quiet run measured again cannot un-busy its baseline")

    comparison = session.retry_checks(session.CheckRequest(base, 0.10, 3), lambda: store.read_run(tmp_path / "run"),
                                      [], 1, rerun, print)
    assert comparison.cells[0].verdict == regression.INCONCLUSIVE
    assert comparison.cells[0].busy_side == "baseline"


def test_noise_on_a_saturated_machine_makes_no_suggestion(tmp_path):
    saturated = {**BUSY, "other_cpu_pct": 68.0, "worker_cpu_pct": 32.0}
    for i in range(2):
        write_run(tmp_path / f"run{i}", {32: step_times(0.1 * (i + 1), seed=i)}, contention=saturated)
    done = bench("noise", "--run", tmp_path / "run0", "--run", tmp_path / "run1", cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "No suggestion: every one of these 1 pair-cell(s) had a saturated side" in done.stdout
