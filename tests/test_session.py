"""One home for a run's life: run, ab and noise share exit statuses, skips and records; a resumed
run keeps every setting it was started with; nothing below the commands knows argparse; and the
fault-campaign groups of the command line (issue 20: 5, 11, 13, 14, 16, 18).

Through the real CLI with the fake worker (tests/helpers/fake_worker.py): in subprocesses where a
fault needs its own interpreter, else ``bench.cli.main`` in this process.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import cli, devices, process, runner, store
from bench.config import SETTINGS, RunConfig
from bench.options import run_config_from

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py")]
FAST = ["--steps", "4", "--warmup", "1", "--no-peak", "--data", "synthetic", "--synthetic-images", "2048"]
TIMEOUT_S = 120


def environment(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_WORKER_COMMAND": shlex.join(FAKE_WORKER), **extra}


def bench(tmp_path: Path, *args, env: dict | None = None, script: str | None = None) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` (or ``python -c SCRIPT ARGS``, the CLI with a fault injected)."""
    command = [sys.executable, "-m", "bench"] if script is None else [sys.executable, "-c", script]
    return subprocess.run([*command, *map(str, args)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env or environment(tmp_path))


def fake_python(directory: Path, name: str = "python-arm") -> Path:
    """An arm's Python for ``ab``: starting ``bench.worker`` (:func:`bench.isolation.worker_command`)
    starts the fake worker, anything else the real Python."""
    script = directory / name
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *\"'bench.worker'\"*) exec {shlex.join(FAKE_WORKER)};; esac\n"
                      f"exec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return script


def arms(tmp_path: Path) -> list[str]:
    return ["--python", str(fake_python(tmp_path, "a")), "--python", str(fake_python(tmp_path, "b"))]


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def cli_main(tmp_path, monkeypatch, capsys):
    """``python -m bench ARGS`` in this process, from ``tmp_path``, with the fake worker's device probe."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(process, "WORKER_COMMAND", tuple(FAKE_WORKER))

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


# --------------------------------------------------------------------------- run and ab: one life

#: the CLI with env.json's write refused as a full disk refuses it
ENV_JSON_REFUSED = """
import errno, sys
from bench import cli, store
real = store.RunWriter.write_env
def write_env(self, env):
    raise OSError(errno.ENOSPC, "No space left on device")
store.RunWriter.write_env = write_env
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fault, status", [("full-disk", 5), ("missing-device", 2), ("failed-cell", 4)])
def test_run_and_ab_give_the_same_exit_status_for_the_same_fault(tmp_path, fault, status):
    args, script = ["--devices", "cpu", "--batch-sizes", "32", *FAST], None
    if fault == "full-disk":
        script = ENV_JSON_REFUSED
    elif fault == "missing-device":
        args = ["--devices", "cpu,gpu:7", "--require-devices", *args[2:]]
    else:
        args = ["--devices", "cpu", "--batch-sizes", "32,13", *FAST]
    ran = bench(tmp_path, "run", *args, "--out", "run", script=script)
    ab = bench(tmp_path, "ab", *arms(tmp_path), *args, "--out", "ab", script=script)
    assert (ran.returncode, ab.returncode) == (status, status), (ran.stderr, ab.stderr)
    if status in (2, 5):
        assert one_error(ran.stderr).split(":")[2:3] == one_error(ab.stderr).split(":")[2:3] or status == 5
        assert "No space left on device" in one_error(ab.stderr) if status == 5 else "gpu:7" in one_error(ab.stderr)
    else:
        assert "failed: " in ran.stderr and "failed: arm A" in ab.stderr


def test_ab_skips_a_replicas_cell_beyond_the_gpus_present_with_a_reason(tmp_path, cli_main, monkeypatch):
    gpu = devices.Device("gpu:0", "GPU", "Test GPU", memory_bytes=2**34)
    real_detect = devices.detect

    def one_gpu(*args, **kwargs):
        found = real_detect(*args, **kwargs)
        return devices.Inventory(**{**found.__dict__, "devices": [*found.devices, gpu]})

    monkeypatch.setattr(devices, "detect", one_gpu)
    status, _, err = cli_main("ab", *arms(tmp_path), "--devices", "gpu", "--replicas", "2", "--batch-sizes", "32",
                              *FAST, "--out", "ab")
    assert status == 0, err
    for arm in ("a", "b"):
        rows = pd.read_csv(tmp_path / "ab" / arm / store.RUNS_CSV).set_index("replicas")
        assert rows.loc[1, "status"] == "ok" and rows.loc[2, "status"] == "skipped"
        assert "needs 2 GPUs" in rows.loc[2, "reason"] and "this machine has 1" in rows.loc[2, "reason"]


def test_noise_records_in_each_run_the_run_command_that_makes_it(tmp_path, cli_main):
    status, _, err = cli_main("noise", "--repeat", "2", "--devices", "cpu", "--batch-sizes", "32", *FAST,
                              "--out", "calibration")
    # 3: a saturated machine leaves noise no suggestion to make; its runs are recorded either way
    assert status in (0, 3), err
    for i in (1, 2):
        env = json.loads((tmp_path / "calibration" / f"run-{i}" / store.ENV_JSON).read_text())
        command = shlex.split(env["command"])
        assert command[:4] == ["python", "-m", "bench", "run"] and "--repeat" not in command, env["command"]
        assert command[-2:] == ["--out", f"calibration/run-{i}"]
        assert env["noise_command"].startswith("python -m bench noise --repeat 2")
        # the recorded command makes the same run, setting for setting
        args = cli.build_parser().parse_args(command[3:])
        args.out = None                                            # it exists now: the run made it
        remade, recorded = run_config_from(args).to_dict(), RunConfig.from_dict(env["config"]).to_dict()
        assert {**remade, "source": None} == {**recorded, "source": None}


# --------------------------------------------------------------------------- resume keeps every setting

def example_args(tmp_path: Path, skip: set[str]) -> list[str]:
    """Every run-wide setting at its declared example (another value than its default)."""
    from conftest import write_python_layout

    write_python_layout(tmp_path / "cifar-10-batches-py")
    out = []
    for s in SETTINGS:
        if s.name not in skip:
            out += [s.flag] + ([] if s.example is None else [s.example])
    return out


# ``--data synthetic`` and ``--data-dir`` exclude each other, as do a target accuracy and
# synthetic data, and evaluation during training and the two workers of ``--cluster``: each
# group is started once
GROUPS = [{"data_dir", "eval_every", "target_accuracy"}, {"data", "synthetic_images", "cluster", "task_index"}]


@pytest.mark.parametrize("skip", GROUPS, ids=["synthetic", "data-dir"])
def test_resume_keeps_every_setting_the_run_was_started_with(tmp_path, cli_main, monkeypatch, skip):
    def stop_at_once(cells, writer, context, reporter):
        raise runner.Stopped(signal.SIGTERM)

    monkeypatch.setattr(runner, "execute", stop_at_once)
    started = example_args(tmp_path, skip)
    status, _, err = cli_main("run", *started, "--out", "run")
    assert status == 143, err                                   # a run that can be resumed
    seen = []

    def capture(cells, writer, context, reporter):
        seen.append(context.config)
        return runner.Outcome(rows=writer.rows)

    monkeypatch.setattr(runner, "execute", capture)
    status, _, err = cli_main("run", "--resume", "run")
    assert status == 0, err
    [config] = seen
    for s in SETTINGS:
        if s.name in skip:
            continue
        expected = True if s.example is None else s.decode(s.example)
        assert getattr(config, s.name) == expected, s.flag


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.flag for s in SETTINGS])
def test_a_setting_given_again_on_resume_is_refused_naming_its_flag(tmp_path, cli_main, setting):
    write_run(tmp_path / "run", {32: [0.01, 0.01]})
    given = [setting.flag] + ([] if setting.example is None else [setting.example])
    status, _, err = cli_main("run", "--resume", "run", *given)
    assert status == 2 and f"drop {setting.flag}" in one_error(err)


# --------------------------------------------------------------------------- layering

#: the modules that may know the command line
COMMAND_LINE = {"bench.__main__", "bench.cli", "bench.options"}


def test_nothing_below_the_commands_imports_argparse():
    offenders = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module in COMMAND_LINE or module.startswith("bench.commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module} imports {n}" for n in names
                          if n.split(".")[0] == "argparse" or n in COMMAND_LINE or n.startswith("bench.commands")]
    assert offenders == []


# --------------------------------------------------------------------------- fault groups (issue 20)

ROW_BUILD_FAILS = """
import sys
from bench import cli, record
real = record.ok_row
def ok_row(planned, result, *args, **kwargs):
    if result.train.batch_size == 64:
        raise KeyError("records")
    return real(planned, result, *args, **kwargs)
record.ok_row = ok_row
sys.exit(cli.main(sys.argv[1:]))
"""


def test_5_a_row_that_cannot_be_built_is_that_cells_failed_row_and_the_run_goes_on(tmp_path):
    done = bench(tmp_path, "run", "--devices", "cpu", "--batch-sizes", "32,64,128", *FAST, "--out", "run",
                 script=ROW_BUILD_FAILS)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    rows = pd.read_csv(tmp_path / "run" / store.RUNS_CSV).set_index("batch_size")
    assert list(rows["status"]) == ["ok", "failed", "ok"]
    assert "could not be recorded (KeyError" in rows.loc[64, "reason"]


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "3", "--steps-per-execution", "1000"], "--steps-per-execution 1000 is more than the 3 step(s)"),
    (["--repeats", "1000000000"], "--repeats: '1000000000' is more than 1,000"),
    (["--batch-sizes", ",".join(map(str, range(1, 65))), "--cpu-threads", ",".join(map(str, range(64))),
      "--repeats", "25"], "at most 10,000"),
    (["--connect-timeout", str(10**12)], "--connect-timeout: '1000000000000' is more than 86,400"),
    (["--epochs", "100000"], "--epochs"),
    (["--cell-timeout", "1e12"], "--cell-timeout"),
])
def test_11_counts_that_multiply_the_work_are_bounded_before_anything_runs(tmp_path, cli_main, args, fragment):
    status, _, err = cli_main("run", "--devices", "cpu", *FAST, *args, "--out", "run")
    assert status == 2 and fragment in one_error(err), err
    assert list(tmp_path.iterdir()) == []


def test_11_dry_run_prints_the_plan_and_its_estimate_and_writes_nothing(tmp_path, cli_main):
    status, out, err = cli_main("run", "--devices", "cpu", "--batch-sizes", "32,64", "--repeats", "3",
                                "--steps-per-execution", "3", *FAST, "--dry-run", "--results-dir", "results")
    assert status == 0, err
    # 6 cells; each 4 capped steps run as 2 calls of 3 steps = 6 steps
    assert "6 cell(s), 36 training step(s), 1,728 images" in out and "roughly" in out and "images/s" in out
    assert list(tmp_path.iterdir()) == []


def test_11_a_run_says_its_size_and_estimate_before_it_starts(tmp_path):
    done = bench(tmp_path, "run", "--devices", "cpu", "--batch-sizes", "32", *FAST, "--out", "run")
    assert done.returncode == 0, done.stderr
    assert "1 cell(s) -> run: 1 cell(s), 4 training step(s), 128 images; roughly" in done.stderr


@pytest.mark.parametrize("field, value, shown", [
    ("epochs", "many", "config.epochs"),
    ("epochs", -3, "config.epochs"),
    ("repeats", 10**12, "config.repeats"),
    ("connect_timeout", 10**12, "config.connect_timeout"),
    ("no_peak", "yes", "config.no_peak"),
    ("devices", ["tpu"], "config.devices"),
    ("plan", {"batch_size": [0]}, "config.plan.batch_size"),
    ("plan", {"backend": ["__import__('os')"]}, "config.plan.backend"),
    ("source", {"kind": "cifar10", "path": 7}, "config.source.path"),
])
def test_13_a_tampered_config_is_refused_on_resume_naming_the_file_and_field(tmp_path, cli_main, monkeypatch,
                                                                             field, value, shown):
    monkeypatch.setattr(runner, "execute", lambda cells, writer, context, reporter:
                        (_ for _ in ()).throw(runner.Stopped(signal.SIGTERM)))
    assert cli_main("run", "--devices", "cpu", "--batch-sizes", "32", *FAST, "--out", "run")[0] == 143
    env_path = tmp_path / "run" / store.ENV_JSON
    env = json.loads(env_path.read_text())
    env["config"][field] = value
    env_path.write_text(json.dumps(env))
    status, _, err = cli_main("run", "--resume", "run")
    assert status == 2 and f"{env_path.relative_to(tmp_path)}: {shown}" in one_error(err), err


@pytest.mark.parametrize("tf_config, fragment", [
    ({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"index": "x"}}, "TF_CONFIG"),
    ({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"index": 5}}, "task index 5"),
    ({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"index": -1}}, "TF_CONFIG"),
    ({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"index": True}}, "TF_CONFIG"),
    ({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": "chief"}, "TF_CONFIG"),
])
def test_14_a_malformed_tf_config_task_index_is_refused_up_front(tmp_path, cli_main, monkeypatch, tf_config, fragment):
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    status, _, err = cli_main("run", "--devices", "cpu", "--batch-sizes", "32", *FAST, "--out", "run")
    assert status == 2 and fragment in one_error(err), err
    assert list(tmp_path.iterdir()) == []


def test_16_a_stdout_that_cannot_encode_the_summary_costs_nothing(tmp_path):
    ascii_out = environment(tmp_path, PYTHONIOENCODING="ascii")
    done = bench(tmp_path, "run", "--devices", "cpu", "--batch-sizes", "32,64", *FAST, "--out", "run", env=ascii_out)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    printed = " ".join(done.stdout.split())
    assert "batch size ? median steady step time" in printed   # the "÷" replaced, the rest printed
    written = " ".join((tmp_path / "run" / store.SUMMARY_MD).read_text(encoding="utf-8").split())
    assert "batch size ÷ median steady step time" in written
    shown = bench(tmp_path, "summary", "--run", "run", env=ascii_out)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr and "| Device" in shown.stdout


#: Ctrl-C arriving while the harness still imports its modules (pandas, the first heavy one)
INTERRUPTED_IMPORT = """
import runpy, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv[0] = "bench"
runpy.run_module("bench", run_name="__main__")
"""


@pytest.mark.parametrize("command", [["summary"], ["run", "--devices", "cpu"], ["--help"]])
def test_18_ctrl_c_while_importing_is_exit_130_without_a_traceback(tmp_path, command):
    done = bench(tmp_path, *command, script=INTERRUPTED_IMPORT)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip() == "bench: interrupted"


# --------------------------------------------------------------------------- the data source, decided once

def test_resolve_source_checks_a_copy_without_reading_every_batch(tmp_path, monkeypatch):
    from conftest import write_python_layout

    from cifar_model import DataError, load_dataset, resolve_source

    copy = write_python_layout(tmp_path / "cifar-10-batches-py")
    (copy / "data_batch_3").write_bytes(b"not a pickle")          # a later batch: the worker's to read
    assert resolve_source(copy).kind == "cifar10" and resolve_source(copy).path == str(copy)
    (copy / "data_batch_1").write_bytes(b"not a pickle")          # the first: read in full, refused
    with pytest.raises(DataError, match="data_batch_1"):
        resolve_source(copy)
    (copy / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4: missing"):
        resolve_source(copy)
    # no copy anywhere: the one fallback, said as such, by the source and by load_dataset alike
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.chdir(tmp_path)
    fallback = resolve_source(download=False)
    assert fallback.kind == "synthetic" and fallback.note.startswith("synthetic fallback: no CIFAR-10 copy")
    loaded = load_dataset(download=False, synthetic_size=(64, 16))
    assert loaded.synthetic and loaded.note.startswith(fallback.note)
