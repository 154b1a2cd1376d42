"""The typed result across the process boundary: the fake builds a real TrainResult, and a
worker's malformed result is one protocol error that costs its cell, never the run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from bench import matrix, process, runner
from bench.config import RunConfig
from bench.devices import Device, Requested
from bench.protocol import DataSpec, Event, ProtocolError, WorkerResult
from cifar_model import StepRecord, TrainResult

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))
from fake_results import fake_result, fake_train  # noqa: E402
from hostile_worker import DEEP, HOSTILE, damaged  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = [sys.executable, str(HELPERS / "fake_worker.py")]
HOSTILE_WORKER = [sys.executable, str(HELPERS / "hostile_worker.py")]


def spec_json(batch_size: int = 32) -> str:
    cfg = RunConfig(plan=matrix.Plan({"batch_size": (batch_size,), "precision": ("fp32",)}), epochs=1,
                    max_steps_per_epoch=6, warmup_steps=2, source=DataSpec("synthetic"))
    cpu = Requested("cpu", Device("cpu", "CPU", "Test CPU"))
    return runner.cell_spec(runner.plan_cells(cfg, [cpu])[0], cfg).to_json()


def test_the_fake_workers_result_parses_into_a_real_train_result(tmp_path):
    outcome = process.run_worker(spec_json(), {**os.environ}, tmp_path / "w.log", 60, command=FAKE_WORKER)
    assert outcome.result is not None, outcome.reason
    train = outcome.result.train
    assert isinstance(train, TrainResult) and all(isinstance(r, StepRecord) for r in train.records)
    assert (train.batch_size, train.total_steps, train.steady_steps) == (32, 6, 4)
    assert train.first_step_seconds == pytest.approx(3 * train.steady_step_seconds[0])


def test_a_result_round_trips_through_json_unchanged():
    result = fake_result(64, [0.3, 0.1, 0.1, 0.1], 1, unsynced_steps=8, unsynced_seconds=0.5)
    assert WorkerResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert result.train.unsynced_images_per_s == pytest.approx(8 * 64 / 0.5)


def test_the_fake_cannot_drift_from_the_train_result():
    with pytest.raises(TypeError, match="colour"):
        fake_train(32, [0.1], 0, colour="blue")


@pytest.mark.parametrize("batch_size", [b for b, (_, damage) in HOSTILE.items() if damage is not None],
                         ids=[why for why, damage in HOSTILE.values() if damage is not None])
def test_a_malformed_result_is_one_protocol_error_with_its_reason(batch_size):
    line = json.dumps({"event": "result", "result": damaged(batch_size)})
    event = Event.parse(line)
    with pytest.raises(ProtocolError, match="^bad worker result: "):
        WorkerResult.from_dict(event.fields["result"])


def test_missing_and_unknown_fields_are_named():
    good = fake_result(32, [0.1, 0.1], 0).to_dict()
    del good["train"]["math"]
    with pytest.raises(ProtocolError, match="TrainResult: missing field.s. math"):
        WorkerResult.from_dict(good)
    good = fake_result(32, [0.1, 0.1], 0).to_dict() | {"colour": "blue"}
    with pytest.raises(ProtocolError, match="WorkerResult: unknown field.s. colour"):
        WorkerResult.from_dict(good)


def test_a_line_nested_too_deep_or_too_long_is_a_protocol_error_not_a_crash(monkeypatch):
    with pytest.raises(ProtocolError, match="nested too deep"):
        Event.parse('{"event": "result", "result": ' + "[" * DEEP + "]" * DEEP + "}")
    monkeypatch.setattr("bench.protocol.MAX_LINE_CHARS", 100)
    with pytest.raises(ProtocolError, match="longer than"):
        Event.parse(json.dumps({"event": "step", "note": "x" * 200}))


def test_a_train_result_refuses_impossible_figures_where_it_is_made():
    good = fake_train(32, [0.1, 0.1], 0)
    for bad in ({"train_seconds": -1.0}, {"records": ()}, {"batch_size": 0}, {"epoch_seconds": (float("inf"),)}):
        with pytest.raises(ValueError):
            replace(good, **bad)
    with pytest.raises(ValueError, match="steps >= 1 .got epoch 0, step 0, steps 0"):
        StepRecord(epoch=0, step=0, steps=0, seconds=0.1, warmup=False)
    assert replace(good, train_loss=float("nan")).train_loss != 0     # a diverged run is still measured


def test_every_malformed_worker_costs_its_cell_and_the_run_goes_on(tmp_path):
    """Through the real CLI: one cell per hostile shape between two good ones."""
    sizes = [32, *HOSTILE, 33]
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_WORKER_COMMAND": shlex.join(HOSTILE_WORKER)}
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--devices", "cpu", "--batch-sizes",
                           ",".join(map(str, sizes)), "--steps", "6", "--warmup", "2", "--data", "synthetic",
                           "--synthetic-images", "256", "--no-peak", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    runs = pd.read_csv(tmp_path / "run" / "runs.csv")
    assert list(runs["batch_size"]) == sizes
    assert list(runs["status"]) == ["ok"] + ["failed"] * len(HOSTILE) + ["ok"]
    failed = runs[runs["status"] == "failed"]
    assert failed["reason"].str.len().gt(0).all()
    assert failed[failed["batch_size"] != 1]["reason"].str.contains("bad worker result").all()


def test_the_harness_holds_a_train_result_without_importing_a_framework():
    code = ("import sys, cifar_model, bench.protocol, bench.record, bench.yardsticks; cifar_model.TrainResult; "
            "print([m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
