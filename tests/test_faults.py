"""Fault injection through the real CLI: nothing measured is ever lost, and nothing hangs.

Cases with workers, signals, concurrency or pipes run ``python -m bench ...`` in a subprocess
with the fake worker (tests/helpers/fake_worker.py, through the ``BENCH_WORKER_COMMAND`` test
hook); cases that only validate input call ``bench.cli.main`` in this process (the same code,
without a second of interpreter start-up each). Each checks what a user and CI get: the exit
status, a one-line ``bench: error:`` instead of a traceback, the files left (runs.csv,
steps.csv, summary.md) and the processes left (no orphan worker). Every wait is bounded, so
a regression fails here instead of hanging CI.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from bench import process, store
from bench.cli import main
from cifar_model.settings import MAX_SEED

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py")]
#: every cell fast, no peak (it would time a matmul), synthetic data: a run takes about a second
FAST = ["--devices", "cpu", "--steps", "4", "--warmup", "1", "--no-peak", "--data", "synthetic",
        "--synthetic-images", "2048"]
SLOW_BATCH = 19          # the fake worker's slow cell: runs FAKE_SLOW_SECONDS (default 60 s)
RUN_TIMEOUT_S = 60


def environment(tmp_path: Path, **extra: str) -> dict:
    """This checkout's bench (not an installed one) with the fake worker; worker pids recorded."""
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_WORKER_COMMAND": shlex.join(FAKE_WORKER),
            "FAKE_WORKER_PIDS": str(tmp_path / "worker-pids"), **extra}


def bench(*args, cwd: Path, env: dict | None = None, timeout: float = RUN_TIMEOUT_S,
          **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env or environment(cwd), **kwargs)


class Ran:
    """What ``cli`` returns: the same fields as a CompletedProcess."""

    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``python -m bench ARGS`` in this process, from ``tmp_path``; an escaping exception fails."""
    monkeypatch.chdir(tmp_path)

    def run(*args) -> Ran:
        capsys.readouterr()
        status = main([str(a) for a in args])
        return Ran(status, capsys.readouterr().err)
    return run


class Started:
    """A ``bench`` process in its own session, its output in files (no pipe to fill up)."""

    def __init__(self, args, cwd: Path, env: dict, name: str = "bench"):
        self.stdout_path, self.stderr_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd,
                                            env=env, stdout=out, stderr=err, start_new_session=True)
        self.pid = self.process.pid

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def started(tmp_path):
    """Start ``bench`` processes; whatever a failed test leaves running is killed."""
    processes: list[Started] = []

    def start(*args, env: dict | None = None, name: str = "bench") -> Started:
        processes.append(Started(args, tmp_path, env or environment(tmp_path), name))
        return processes[-1]

    yield start
    for p in processes:
        p.kill()
    for pid in worker_pids(tmp_path):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def worker_pids(tmp_path: Path) -> dict[int, int]:
    """pid -> batch size of every fake worker started so far."""
    try:
        lines = (tmp_path / "worker-pids").read_text().split("\n")
    except FileNotFoundError:
        return {}
    return {int(pid): int(batch) for pid, batch in (line.split() for line in lines if line.strip())}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def slow_worker(tmp_path: Path, timeout: float = 20) -> int:
    """The pid of the slow cell's worker, once it runs."""
    return wait_for(lambda: next((p for p, b in worker_pids(tmp_path).items() if b == SLOW_BATCH), None),
                    timeout, "the slow cell's worker to start")


def rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / store.RUNS_CSV)


def row_count(run_dir: Path) -> int:
    try:
        return len(rows(run_dir))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """The whole of stderr's error report: one line, 'bench: error: ...', no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], stderr


def assert_usage_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert_one_line_error(done.stderr, *fragments)


def no_temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith((".tmp", ".partial", ".old"))]


# --------------------------------------------------------------------------- 1. checked up front

def test_a_cell_without_steady_steps_is_a_row_and_the_run_goes_on(tmp_path):
    done = bench("run", *FAST, "--batch-sizes", "32,18,64", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = rows(tmp_path / "run")
    assert list(runs["batch_size"]) == [32, 18, 64]
    assert list(runs["status"]) == ["ok"] * 3
    assert "no steady steps" in runs.set_index("batch_size").loc[18, "reason"]
    summary = (tmp_path / "run" / store.SUMMARY_MD).read_text()
    assert "no steady steps" in summary and "nan" not in summary


@pytest.mark.parametrize("args, fragment", [
    (["--synthetic-images", "100", "--batch-sizes", "256"], "larger than the 100 training images"),
    (["--steps", "3", "--warmup", "5"], "--warmup 5 leaves no steady steps"),
    (["--seed", str(MAX_SEED + 1)], f"passes {MAX_SEED}"),
    (["--seed", str(MAX_SEED), "--repeats", "2"], f"passes {MAX_SEED}"),
    (["--batch-sizes", ""], "--batch-sizes"),
    (["--batch-sizes", ","], "--batch-sizes"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--epochs", "0"], "--epochs"),
    (["--repeats", "0"], "--repeats"),
    (["--steps", "-1"], "--steps"),
    (["--synthetic-images", "0"], "--synthetic-images"),
    (["--cell-timeout", "0"], "--cell-timeout"),
    (["--cell-timeout", "nan"], "--cell-timeout"),
    (["--devices", ""], "--devices"),
    (["--rerun-failed"], "--rerun-failed goes with --resume"),
])
def test_what_can_be_checked_up_front_is_exit_2_with_nothing_written(tmp_path, cli, args, fragment):
    assert_usage_error(cli("run", *FAST, *args, "--out", "run", "--results-dir", "results"), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_up_front_error_from_the_real_interpreter_is_one_line(tmp_path):
    assert_usage_error(bench("run", *FAST, "--steps", "3", "--warmup", "5", "--out", "run", cwd=tmp_path),
                       "--warmup 5 leaves no steady steps")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 2. concurrent runs

def test_two_runs_into_one_out_directory_one_wins_and_its_rows_are_intact(tmp_path, started):
    runs = [started("run", *FAST, "--batch-sizes", "32,64", "--out", "run", name=f"run{i}")
            for i in range(2)]
    statuses = sorted(r.wait() for r in runs)
    assert statuses == [0, 2], [r.stderr for r in runs]
    loser = next(r for r in runs if r.process.returncode == 2)
    assert_one_line_error(loser.stderr, "--out run", "already exists")
    kept = store.read_run(tmp_path / "run")
    assert list(kept.runs["batch_size"]) == [32, 64] and set(kept.runs["run_id"]) == {"run"}
    assert set(kept.steps["cell_id"]) == set(kept.runs["cell_id"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    again = bench("run", *FAST, "--batch-sizes", "32", "--out", "run", cwd=tmp_path)
    assert_usage_error(again, "already exists")
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}


def test_two_default_runs_started_together_get_their_own_directories(tmp_path, started):
    runs = [started("run", *FAST, "--batch-sizes", "32", "--results-dir", "results", name=f"run{i}")
            for i in range(2)]
    assert [r.wait() for r in runs] == [0, 0], [r.stderr for r in runs]
    directories = sorted((tmp_path / "results" / "runs").iterdir())
    assert len(directories) == 2
    for directory in directories:
        assert set(store.read_run(directory).runs["run_id"]) == {directory.name}


def test_a_run_id_taken_in_the_same_second_gets_a_suffix(tmp_path):
    first = store.claim_run_dir(None, tmp_path, run_id="20260101-000000")
    second = store.claim_run_dir(None, tmp_path, run_id="20260101-000000")
    assert (first.name, second.name) == ("20260101-000000", "20260101-000000-2")


# --------------------------------------------------------------------------- 3. signals

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_keeps_the_finished_cells_and_says_how_to_resume(tmp_path, started, signum):
    run = started("run", *FAST, "--batch-sizes", f"32,{SLOW_BATCH},64", "--out", "run")
    worker = slow_worker(tmp_path)
    assert row_count(tmp_path / "run") == 1
    os.kill(run.pid, signum)
    assert run.wait(timeout=20) == 128 + signum, run.stderr
    wait_for(lambda: not alive(worker), 3, "the worker to be gone")
    kept = store.read_run(tmp_path / "run")
    assert list(kept.runs["batch_size"]) == [32]
    assert "| 32 " in (tmp_path / "run" / store.SUMMARY_MD).read_text()
    assert "Traceback" not in run.stderr
    assert "python -m bench run --resume run" in run.stderr.strip().splitlines()[-1]
    assert 64 not in worker_pids(tmp_path).values()
    assert not no_temporaries(tmp_path / "run")


def test_repeated_signals_while_stopping_still_end_cleanly(tmp_path, started):
    run = started("run", *FAST, "--batch-sizes", f"32,{SLOW_BATCH}", "--out", "run")
    worker = slow_worker(tmp_path)
    for _ in range(5):
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    assert run.wait(timeout=20) == 128 + signal.SIGTERM, run.stderr
    assert "Traceback" not in run.stderr
    wait_for(lambda: not alive(worker), 3, "the worker to be gone")
    assert list(store.read_run(tmp_path / "run").runs["batch_size"]) == [32]


def test_a_killed_harness_leaves_no_orphan_and_its_run_can_be_resumed(tmp_path, started):
    run = started("run", *FAST, "--batch-sizes", f"{SLOW_BATCH},32", "--out", "run")
    worker = slow_worker(tmp_path)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    wait_for(lambda: not alive(worker), 3, "the orphaned worker to notice and exit")
    # killed during its first cell: the run directory is still a run that can be finished
    done = bench("run", "--resume", "run", cwd=tmp_path,      # the run keeps its --no-peak
                 env=environment(tmp_path, FAKE_SLOW_SECONDS="0.2"))
    assert done.returncode == 0, done.stderr
    assert sorted(store.read_run(tmp_path / "run").runs["batch_size"]) == [SLOW_BATCH, 32]


def test_failing_workers_cost_one_row_each_and_leave_no_process(tmp_path):
    done = bench("run", *FAST, "--batch-sizes", "13,14,15,16,17,32", "--cell-timeout", "2",
                 "--out", "run", cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    runs = rows(tmp_path / "run").set_index("batch_size")
    assert list(runs["status"]) == ["failed"] * 5 + ["ok"]
    assert "timed out" in runs.loc[14, "reason"] and "SIGKILL" in runs.loc[15, "reason"]
    assert "out of memory" in runs.loc[16, "reason"] and "protocol" in runs.loc[17, "reason"]
    assert not [pid for pid in worker_pids(tmp_path) if alive(pid)]


# --------------------------------------------------------------------------- 4. a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where it cannot be mounted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_disk_that_fills_up_mid_run_stops_it_with_exit_5(tmp_path, started, small_disk):
    out = small_disk / "run"
    run = started("run", *FAST, "--batch-sizes", f"32,{SLOW_BATCH},64", "--out", out,
                  env=environment(tmp_path, FAKE_SLOW_SECONDS="1"))
    slow_worker(tmp_path)
    assert row_count(out) == 1
    fill(small_disk)
    assert run.wait(timeout=30) == 5, run.stderr
    assert_one_line_error(run.stderr, "No space left on device", "stopped")
    kept = store.read_run(out)
    assert list(kept.runs["batch_size"]) == [32]
    assert set(kept.steps["cell_id"]) == set(kept.runs["cell_id"])
    assert 64 not in worker_pids(tmp_path).values()
    assert not no_temporaries(out)


#: runs the real CLI with one write failing as a full disk would (where no tmpfs can be mounted)
FAILING_WRITE = """
import errno, sys
from bench import cli, process, store
real = store.write_atomically
def write_atomically(path, text):
    if path.name == "runs.csv" and text.count("\\n") >= 3:   # from the second cell's row on
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(path, text)
store.write_atomically = write_atomically
if "--log-to-dev-full" in sys.argv:
    sys.argv.remove("--log-to-dev-full")
    store.write_atomically = real
    process._open_log = lambda path, outcome: open("/dev/full", "w")
sys.exit(cli.main(sys.argv[1:]))
"""


def bench_with_faults(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAILING_WRITE, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=environment(tmp_path))


def test_a_refused_write_stops_the_run_with_exit_5_and_keeps_earlier_rows(tmp_path):
    done = bench_with_faults(tmp_path, "run", *FAST, "--batch-sizes", "32,64,128", "--out", "run")
    assert done.returncode == 5, done.stderr
    assert_one_line_error(done.stderr, "No space left on device")
    assert list(store.read_run(tmp_path / "run").runs["batch_size"]) == [32]
    assert 128 not in worker_pids(tmp_path).values()


def test_an_unwritable_cell_log_costs_the_log_not_the_cell(tmp_path):
    done = bench_with_faults(tmp_path, "run", *FAST, "--batch-sizes", "32,64", "--out", "run",
                             "--log-to-dev-full")
    assert done.returncode == 0, done.stderr
    assert "warning: cell log not fully written" in done.stderr
    assert list(rows(tmp_path / "run")["status"]) == ["ok", "ok"]


# --------------------------------------------------------------------------- 5. malformed baselines

@pytest.fixture
def two_runs(tmp_path):
    """A baseline-to-be and a current run, written through the real writer."""
    cells = {32: [0.010, 0.011, 0.010, 0.012, 0.011], 64: [0.020, 0.021, 0.020, 0.022, 0.021]}
    return write_run(tmp_path / "baseline", cells), write_run(tmp_path / "current", cells)


def _edit_csv(path: Path, column: str, value: str) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, column] = value
    frame.to_csv(path, index=False)


def _edit_env(path: Path, key: str, value) -> None:
    env = json.loads(path.read_text())
    env[key] = value
    path.write_text(json.dumps(env))


@pytest.mark.parametrize("damage, file", [
    (lambda b: _edit_csv(b / "steps.csv", "seconds", "0"), "steps.csv"),
    (lambda b: _edit_csv(b / "steps.csv", "seconds", "-0.01"), "steps.csv"),
    (lambda b: _edit_csv(b / "steps.csv", "seconds", "inf"), "steps.csv"),
    (lambda b: _edit_csv(b / "steps.csv", "seconds", "fast"), "steps.csv"),
    (lambda b: _edit_csv(b / "steps.csv", "steps", "0"), "steps.csv"),
    (lambda b: _edit_csv(b / "runs.csv", "step_median_s", "inf"), "runs.csv"),
    (lambda b: _edit_csv(b / "runs.csv", "batch_size", "-32"), "runs.csv"),
    (lambda b: _edit_env(b / "env.json", "cpu", "fast"), "env.json"),
    (lambda b: _edit_env(b / "env.json", "gpus", [1]), "env.json"),
    (lambda b: _edit_env(b / "env.json", "memory_bytes", "lots"), "env.json"),
    (lambda b: _edit_env(b / "env.json", "cpu", {"model": ["A"], "logical_cpus": 2}), "env.json"),
    (lambda b: _edit_env(b / "env.json", "gpus", [{"name": 7}]), "env.json"),
    (lambda b: (b / "env.json").write_text("[1, 2]"), "env.json"),
    (lambda b: (b / "env.json").write_bytes(b"\xff\xfe{"), "env.json"),
    (lambda b: (b / "runs.csv").write_bytes(b"\x00\xff" * 100), "runs.csv"),
    (lambda b: (b / "steps.csv").unlink(), "steps.csv"),
    (lambda b: (b / "baseline.json").write_text('{"schema": "x"}'), "baseline.json"),
])
def test_a_malformed_baseline_is_exit_2_naming_the_file_never_exit_1(cli, two_runs, damage, file):
    baseline, current = two_runs
    damage(baseline)
    assert_usage_error(cli("check", "--baseline", baseline, "--run", current), str(baseline / file))
    if file != "baseline.json":  # a run directory's baseline.json is no part of the run
        assert_usage_error(cli("baseline", "save", "--run", baseline, "--results-dir", "results"),
                           str(baseline / file))


# --------------------------------------------------------------------------- 6. hostile paths and names

LONG_NAME = "x" * 300
TOO_DEEP = "/".join(["d" * 200] * 25)           # every name legal, the whole path too long
UNDECODABLE = os.fsdecode(b"\xff-report")


@pytest.mark.parametrize("path", [LONG_NAME, TOO_DEEP, UNDECODABLE], ids=["long-name", "too-deep", "undecodable"])
def test_hostile_output_paths_are_one_line_errors(tmp_path, cli, two_runs, path):
    baseline, current = two_runs
    assert_usage_error(cli("run", *FAST, "--batch-sizes", "32", "--out", path))
    for option in ("--markdown", "--json"):
        assert_usage_error(cli("check", "--baseline", baseline, "--run", current, option, path))
    for command in (["summary"], ["readme"], ["baseline", "save"], ["check", "--baseline", baseline]):
        assert_usage_error(cli(*command, "--run", path))
    assert_usage_error(cli("readme", "--run", current, "--readme", path))
    assert_usage_error(cli("summary", "--results-dir", path))
    assert_usage_error(cli("run", "--resume", path))
    assert_usage_error(cli("run", *FAST, "--data", "cifar10", "--data-dir", path))


def test_an_undecodable_path_from_the_real_interpreter_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--out", os.fsencode(UNDECODABLE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=environment(tmp_path))
    assert_usage_error(done, "not valid UTF-8")


def test_hostile_baseline_names_are_one_line_errors(tmp_path, cli, two_runs):
    _, current = two_runs
    for name in (LONG_NAME, "../escape", UNDECODABLE, ".hidden", "", "a/b"):
        assert_usage_error(cli("baseline", "save", "--run", current, "--name", name, "--results-dir", "results"))
    for name in (LONG_NAME, TOO_DEEP, UNDECODABLE):
        assert_usage_error(cli("check", "--baseline", name, "--run", current, "--results-dir", "results"))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "results" / "baselines").exists()


@pytest.mark.parametrize("replace", [False, True], ids=["first-wins", "replace"])
def test_concurrent_saves_of_one_baseline_leave_one_complete_baseline(tmp_path, two_runs, started, replace):
    _, current = two_runs
    savers = [started("baseline", "save", "--run", current, "--name", "shared", "--results-dir", "results",
                      *(["--replace"] if replace else []), name=f"save{i}") for i in range(4)]
    statuses = [s.wait(timeout=RUN_TIMEOUT_S) for s in savers]
    assert statuses.count(0) == (4 if replace else 1), [s.stderr for s in savers]
    for saver in savers:
        if saver.process.returncode:
            assert saver.process.returncode == 2
            assert_one_line_error(saver.stderr, "'shared' already exists")
    base = tmp_path / "results" / "baselines"
    assert [p.name for p in base.iterdir() if not p.name.startswith(".")] == ["shared"]
    assert sorted(p.name for p in (base / "shared").iterdir()) == \
        ["baseline.json", "env.json", "runs.csv", "steps.csv"]
    assert not no_temporaries(base)
    assert bench("check", "--baseline", "shared", "--run", str(current), "--results-dir", "results",
                 cwd=tmp_path).returncode == 0


def test_a_peak_cache_that_is_a_directory_does_not_stop_the_run(tmp_path):
    first = bench("peak", "--devices", "cpu", "--precision", "fp32", "--results-dir", "results", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the command names the cache; a peak measured on a busy machine is not in it
    cache = tmp_path / first.stdout.split("\ncache: ")[1].split(" (per machine")[0]
    cache.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    done = bench("run", *[a for a in FAST if a != "--no-peak"], "--batch-sizes", "32", "--precision", "fp32",
                 "--out", "run", "--results-dir", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"peak cache results/peaks/{cache.name}: not a regular file; ignored" in done.stderr
    assert (f"peak cache results/peaks/{cache.name} not updated" in done.stderr
            or "measured on a busy machine" in done.stderr)           # a busy peak is never written
    measured = rows(tmp_path / "run")
    busy = measured["peak_note"].fillna("").str.contains("the peak was measured while")
    assert measured[~busy]["efficiency_pct"].notna().all() and measured[busy]["efficiency_pct"].isna().all()


def test_a_peaks_directory_that_is_a_file_costs_the_cache_not_the_measurement(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "peaks").write_text("not a directory")
    done = bench("peak", "--devices", "cpu", "--precision", "fp32", "--results-dir", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "peak cache results/peaks/" in done.stderr
    assert "| cpu " in done.stdout


def test_labels_far_out_of_range_are_a_one_line_error(tmp_path):
    from conftest import write_python_layout

    data = write_python_layout(tmp_path / "cifar-10-batches-py")
    batch_file = data / "data_batch_1"
    batch = pickle.loads(batch_file.read_bytes())
    batch[b"labels"] = [10**6] * len(batch[b"labels"])
    batch_file.write_bytes(pickle.dumps(batch, protocol=2))
    done = bench("run", *FAST[:-4], "--batch-sizes", "4", "--data", "cifar10", "--data-dir", str(data),
                 "--no-download", "--out", "run", cwd=tmp_path)
    assert_usage_error(done, "label")
    assert not (tmp_path / "run").exists()


def closed_stdout(*args, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    """Run bench with its stdout a pipe nobody reads any more (``| head -1`` that has exited)."""
    process = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, env=env or environment(cwd),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    try:
        _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_a_closed_stdout_pipe_is_no_traceback(tmp_path, two_runs):
    baseline, current = two_runs
    for args in (["summary", "--json", "--run", str(current)],
                 ["check", "--baseline", str(baseline), "--run", str(current)]):
        status, stderr = closed_stdout(*args, cwd=tmp_path)
        assert stderr == "" and status in (0, 128 + signal.SIGPIPE), (args, status, stderr)
    shell = subprocess.run(f"{shlex.quote(sys.executable)} -m bench summary --run {shlex.quote(str(current))} "
                           "| head -1", shell=True, cwd=tmp_path, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S, env=environment(tmp_path))
    assert shell.stdout.count("\n") == 1 and shell.stderr == ""


def test_a_run_whose_stdout_is_closed_still_writes_everything(tmp_path):
    status, stderr = closed_stdout("run", *FAST, "--batch-sizes", "32,64", "--out", "run", cwd=tmp_path)
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert (tmp_path / "run" / store.SUMMARY_MD).is_file() and row_count(tmp_path / "run") == 2


# --------------------------------------------------------------------------- 7. readme

README = "# Title\r\n\r\nText before.\n<!-- bench:table:start -->\nold\n<!-- bench:table:end -->\nAfter. ü\n"


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: a read-only tmpfs for root, else chmod."""
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() != 0:
        (directory / "README.md").write_text(README, newline="")
        directory.chmod(0o555)
        (directory / "README.md").chmod(0o444)
        yield directory
        directory.chmod(0o755)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                          capture_output=True, timeout=10)
    if done.returncode != 0:
        pytest.skip("cannot make a read-only directory as root here")
    (directory / "README.md").write_text(README, newline="")
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True, capture_output=True, timeout=10)
    yield directory
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=10)


def test_readme_refusals_are_one_line_and_leave_the_file_alone(tmp_path, cli, two_runs, read_only_dir):
    _, current = two_runs
    read_only = read_only_dir / "README.md"
    assert_usage_error(cli("readme", "--run", current, "--readme", read_only), str(read_only))
    assert read_only.read_bytes() == README.encode()
    assert_usage_error(cli("readme", "--run", current, "--readme", "missing.md"), "missing.md")
    no_markers = tmp_path / "plain.md"
    no_markers.write_bytes(b"# Just text\r\n")
    assert_usage_error(cli("readme", "--run", current, "--readme", no_markers), "bench:table:start")
    assert no_markers.read_bytes() == b"# Just text\r\n"
    assert_usage_error(cli("readme", "--run", current, "--readme", tmp_path), str(tmp_path))
    # (bytes outside the markers on a successful update: tests/test_readme.py, bench/readme.py's owner)


# --------------------------------------------------------------------------- 8. resume

def stopped_run(tmp_path: Path, started, batches: str = f"32,{SLOW_BATCH},64,128") -> Path:
    """A run stopped by SIGTERM during its slow second cell: one of four cells done."""
    run = started("run", *FAST, "--batch-sizes", batches, "--out", "run")
    slow_worker(tmp_path)
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(timeout=20) == 143, run.stderr
    return tmp_path / "run"


def resume(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return bench("run", "--resume", "run", *args, cwd=tmp_path,
                 env=environment(tmp_path, FAKE_SLOW_SECONDS="0.2"))


def test_resume_runs_only_the_missing_cells_into_the_same_files(tmp_path, started):
    run_dir = stopped_run(tmp_path, started)
    env_before = json.loads((run_dir / "env.json").read_text())
    first_line = (run_dir / "runs.csv").read_text().splitlines()[1]
    steps_before = (run_dir / "steps.csv").read_text()
    # a resume stopped in its turn (the slow cell is slow again) is a run that can be resumed
    stopped = started("run", "--resume", "run", name="resume")
    wait_for(lambda: list(worker_pids(tmp_path).values()).count(SLOW_BATCH) == 2, 20, "the rerun slow cell")
    assert_usage_error(resume(tmp_path), "in use by another bench run")  # one at a time
    os.kill(stopped.pid, signal.SIGINT)
    assert stopped.wait(timeout=20) == 130, stopped.stderr
    assert "1 of 4 cell(s) finished" in stopped.stderr and "--resume run" in stopped.stderr

    done = resume(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 of 4 cell(s) kept, 3 to run" in done.stderr and "peak" not in done.stderr   # --no-peak kept
    assert sorted(worker_pids(tmp_path).values()) == [19, 19, 19, 32, 64, 128]      # 32 ran once
    kept = store.read_run(run_dir)
    assert list(kept.runs["batch_size"]) == [32, SLOW_BATCH, 64, 128]
    assert kept.runs["cell_id"].is_unique and set(kept.runs["run_id"]) == {"run"}
    assert (run_dir / "runs.csv").read_text().splitlines()[1] == first_line    # kept as written
    assert (run_dir / "steps.csv").read_text().startswith(steps_before)        # appended, same format
    assert kept.steps.groupby("cell_id").size().to_dict() == dict.fromkeys(kept.runs["cell_id"], 4)
    env_after = json.loads((run_dir / "env.json").read_text())
    assert env_after["command"] == env_before["command"] and env_after["config"] == env_before["config"]
    assert [r["command"] for r in env_after["resumed"]] == ["python -m bench run --resume run"] * 2
    summary = (run_dir / store.SUMMARY_MD).read_text()
    assert all(f"| {b} " in summary for b in (32, SLOW_BATCH, 64, 128))

    files = {p: p.read_bytes() for p in (run_dir / "runs.csv", run_dir / "steps.csv", run_dir / "env.json")}
    again = resume(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stderr
    assert files == {p: p.read_bytes() for p in files}


def _edit_run_env(run_dir: Path, path: tuple[str, str], value) -> None:
    env = json.loads((run_dir / "env.json").read_text())
    env[path[0]][path[1]] = value
    (run_dir / "env.json").write_text(json.dumps(env))


def test_resume_refuses_another_run_and_reruns_failed_cells_only_when_asked(tmp_path, cli, monkeypatch):
    first = bench("run", *FAST, "--batch-sizes", "32,13", "--out", "run", cwd=tmp_path)
    assert first.returncode == 4, first.stderr
    run_dir = tmp_path / "run"
    files = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    # refused with one line and nothing written: other settings, other places, not a run
    for flag, value in (("--batch-sizes", "64"), ("--steps", "0"), ("--cell-timeout", "5"), ("--out", "x"),
                        ("--machine-label", "lab"), ("--devices", "cpu")):
        assert_usage_error(cli("run", "--resume", "run", flag, value), f"drop {flag}")
    assert_usage_error(cli("run", "--resume", "missing"), "missing")
    (tmp_path / "empty").mkdir()
    assert_usage_error(cli("run", "--resume", "empty"), "empty")
    write_run(tmp_path / "old", {32: [0.01, 0.01]})                 # written before runs kept their config
    assert_usage_error(cli("run", "--resume", "old"), "recorded settings are incomplete")
    monkeypatch.setattr(process, "WORKER_COMMAND", tuple(FAKE_WORKER))    # the device probe
    for field, value, difference in ((("cpu", "model"), "Another CPU", "CPU model"),
                                     (("tensorflow", "version"), "2.0.0", "TensorFlow: 2.0.0 ->")):
        _edit_run_env(run_dir, field, value)
        assert_usage_error(cli("run", "--resume", "run"), "not the machine or software", difference)
        (run_dir / "env.json").write_bytes(files[run_dir / "env.json"])
    assert files == {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == []

    kept = resume(tmp_path)
    assert kept.returncode == 4 and "nothing to run" in kept.stderr and "--rerun-failed" in kept.stderr, kept.stderr
    assert sorted(worker_pids(tmp_path).values()) == [13, 32]
    rerun = resume(tmp_path, "--rerun-failed")
    assert rerun.returncode == 4, rerun.stderr
    assert "1 of 2 cell(s) kept, 1 to run" in rerun.stderr
    assert sorted(worker_pids(tmp_path).values()) == [13, 13, 32]
    assert sorted(rows(run_dir)["batch_size"]) == [13, 32]
