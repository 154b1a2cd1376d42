"""cifar_model.training: one timed run; its counts, timings and result fields agree."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cifar_model import TrainResult, TrainSettings, synthetic_dataset, train
from cifar_model.training import NO_EVAL_NOTE

REPO_ROOT = Path(__file__).resolve().parents[1]


def settings(**overrides) -> TrainSettings:
    """Small runs: batch 32, one epoch, evaluation skipped unless a test asks for it."""
    return TrainSettings(**{"batch_size": 32, "epochs": 1, "warmup_steps": 1, "eval_images": 0,
                            **overrides})


@pytest.fixture(scope="module")
def tiny():
    return synthetic_dataset(n_train=256, n_test=32, seed=1)


@pytest.fixture(scope="module")
def short_run(tiny):
    return train(tiny, settings(epochs=2, max_steps_per_epoch=5, warmup_steps=2, seed=0,
                                eval_images=None))


def test_step_count_and_warmup_flags(short_run):
    records = short_run.records
    assert [(r.epoch, r.step) for r in records] == [(e, s) for e in range(2) for s in range(5)]
    assert [r.warmup for r in records] == [True, True] + [False] * 8
    assert short_run.total_steps == 10 and short_run.steady_steps == 8
    assert short_run.first_step_seconds == records[0].seconds
    assert len(short_run.epoch_seconds) == 2


def test_timings_are_consistent(short_run):
    step_sum = sum(r.seconds for r in short_run.records)
    assert 0 < step_sum <= short_run.train_seconds
    assert sum(short_run.epoch_seconds) <= short_run.train_seconds
    steady = np.array(short_run.steady_step_seconds)
    # Steady steps are timed back to back: their sum fits inside their wall-clock span and
    # fills most of it (a timer that caught only the dispatch would leave it mostly empty).
    assert steady.sum() <= short_run.steady_wall_seconds
    assert steady.sum() >= 0.8 * short_run.steady_wall_seconds
    # The first step traces the function: it is reported apart, and is the slowest.
    assert short_run.first_step_seconds > np.median(steady)
    assert short_run.data_seconds >= 0 and short_run.build_seconds > 0


def test_result_fields(short_run, tiny):
    assert short_run.data == "synthetic" and short_run.heldout_accuracy is None
    assert "synthetic" in short_run.accuracy_note and short_run.heldout_images == 0
    assert math.isfinite(short_run.train_loss) and 0 <= short_run.train_accuracy <= 1
    assert short_run.params == 1_454_922 and short_run.training_flops_per_image > 5e8
    import tensorflow as tf
    # jit_compile="auto": Keras turns XLA on only when TensorFlow sees a GPU
    assert short_run.xla is bool(tf.config.list_physical_devices("GPU"))
    assert (short_run.batch_size, short_run.steps_per_epoch, short_run.epochs) == (32, 5, 2)
    assert short_run.backend == "tensorflow"
    assert short_run.compile_note == f"XLA {'on' if short_run.xla else 'off'} (auto)"
    # fp32 on a CPU is IEEE fp32 (on an Ampere-or-newer GPU it would be TF32: test_backends)
    assert (short_run.math, short_run.math_note) == ("ieee", "a CPU computes fp32 in IEEE fp32")


def test_result_round_trips_through_json(short_run):
    restored = TrainResult.from_dict(json.loads(json.dumps(short_run.to_dict())))
    assert restored == short_run
    assert restored.records[3] == short_run.records[3] and restored.records[3].warmup is False
    assert restored.steady_steps == 8
    with pytest.raises(ValueError, match="TrainResult: unknown field.*colour"):
        TrainResult.from_dict({**short_run.to_dict(), "colour": "blue"})


def test_steps_per_execution_records_blocks_of_steps(tiny):
    result = train(tiny, settings(max_steps_per_epoch=6, warmup_steps=2, steps_per_execution=2,
                                  seed=0))
    assert [r.steps for r in result.records] == [2, 2, 2]
    assert [r.step for r in result.records] == [0, 2, 4]
    assert [r.warmup for r in result.records] == [True, False, False]
    assert result.total_steps == 6 and len(result.steady_step_seconds) == 2


def test_a_run_that_is_all_warm_up_has_no_steady_wall_time(tiny):
    """Full epochs of 8 steps with 10 warm-up steps (settings can only refuse this when the
    steps are capped): the run ends, with no steady figures instead of invented ones."""
    result = train(tiny, settings(warmup_steps=10))
    assert result.steps_per_epoch == 8 and not result.steady_records
    assert result.steady_wall_seconds is None


def test_settings_refuse_bad_values_where_they_are_made():
    with pytest.raises(ValueError) as refused:
        TrainSettings(batch_size=0, precision="fp8", eval_images=-1, backend="mxnet", seed=-3)
    message = str(refused.value)
    for problem in ("batch_size must be an integer >= 1", "precision must be one of",
                    "eval_images must be None or a non-negative integer",
                    "backend must be one of tensorflow, jax, torch", "seed must be None"):
        assert problem in message
    with pytest.raises(ValueError, match="warmup_steps 10 leaves no steady step"):
        TrainSettings(max_steps_per_epoch=5, epochs=2, warmup_steps=10)
    with pytest.raises(ValueError, match="unknown training setting.*batchsize"):
        TrainSettings.from_dict({"batchsize": 64})
    assert TrainSettings.from_dict(TrainSettings(seed=1).to_dict()) == TrainSettings(seed=1)


def test_settings_for_another_backend_are_refused_before_any_work(tiny):
    with pytest.raises(ValueError, match="ask for the jax backend but Keras runs on tensorflow"):
        train(tiny, settings(backend="jax", max_steps_per_epoch=2))


def test_evaluation_skipped_is_said_so(tiny):
    result = train(_as_real(tiny), settings(max_steps_per_epoch=2, eval_images=0))
    assert result.accuracy_note == NO_EVAL_NOTE == "not measured: evaluation skipped (--no-eval)"
    assert result.heldout_accuracy is None and result.heldout_images == 0
    assert result.eval_seconds is None


def test_evaluation_on_part_of_the_split_never_passes_for_the_whole(tiny):
    result = train(_as_real(tiny), settings(max_steps_per_epoch=2, eval_images=10))
    assert result.heldout_images == 10 and 0 <= result.heldout_accuracy <= 1
    assert result.accuracy_note == "first 10 of the 32 held-out images of the standard split (not the whole split)"
    assert "whole held-out split" not in result.accuracy_note
    assert math.isfinite(result.heldout_loss) and result.eval_seconds > 0


def _as_real(dataset):
    """The tiny random set, labelled as real so that it gets evaluated (its accuracy means
    nothing; only the bookkeeping is under test)."""
    return dataclasses.replace(dataset, synthetic=False, source="test")


def test_unsynced_phase_times_a_block_with_one_sync(tiny):
    result = train(tiny, settings(max_steps_per_epoch=6, warmup_steps=2, seed=0, unsynced_steps=5))
    assert result.unsynced_steps == 5 and result.unsynced_seconds > 0
    assert result.unsynced_images_per_s == 5 * 32 / result.unsynced_seconds
    assert result.total_steps == 6          # the unsynced block is not in the timed records
    # both are throughput of the same network on the same data: same order of magnitude
    steady = 32 / np.median(result.steady_step_seconds)
    assert 0.5 < result.unsynced_images_per_s / steady < 2


def test_xla_setting_is_resolved(tiny):
    on = train(tiny, settings(max_steps_per_epoch=3, jit_compile="on"))
    assert on.xla is True and on.jit_compile == "on" and on.compile_note == "XLA on"


def test_a_training_set_kept_on_the_device_trains_exactly_like_one_fed_from_the_host(tiny):
    runs = {placement: train(tiny, settings(epochs=2, max_steps_per_epoch=4, seed=3,
                                            data_placement=placement))
            for placement in ("host", "device")}
    host, device = runs["host"], runs["device"]
    assert (host.data_placement, device.data_placement) == ("host", "device")
    assert host.data_device == "CPU:0" and device.data_device == "CPU:0"
    # same shuffled batches, same initial weights, same dropout: the same training
    assert device.train_loss == pytest.approx(host.train_loss, rel=1e-5)
    assert device.train_accuracy == pytest.approx(host.train_accuracy)
    assert device.params == host.params == 1_454_922      # the resident images are no weights
    assert device.training_flops_per_image == host.training_flops_per_image
    assert device.total_steps == host.total_steps == 8


def test_auto_data_placement_keeps_a_cpu_run_on_the_host(tiny):
    result = train(tiny, settings(max_steps_per_epoch=2, data_placement="auto"), device="cpu:0")
    assert result.data_placement == "host"


def test_the_resident_training_set_lives_on_the_training_device():
    """With two logical CPUs, training on cpu:1 must put the images on CPU:1, not CPU:0:
    the same code path that puts them in a GPU's memory (none here)."""
    script = textwrap.dedent("""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from cifar_model import TrainSettings, synthetic_dataset, train
        tiny = synthetic_dataset(n_train=128, n_test=16, seed=1)
        out = {}
        for placement in ("device", "host"):
            r = train(tiny, TrainSettings(batch_size=32, max_steps_per_epoch=2, warmup_steps=1,
                                          data_placement=placement, eval_images=0),
                      device="cpu:1")
            out[placement] = [r.data_placement, r.data_device]
        print("@@" + json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1",
                                              "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.split("@@", 1)[1])
    assert out == {"device": ["device", "CPU:1"], "host": ["host", "CPU:0"]}


def test_both_tf_pipelines_run_without_autotuning_or_graph_rewrites(tiny):
    from cifar_model.pipelines import tf_host_pipeline, tf_index_pipeline
    host = tf_host_pipeline(tiny.x_train, tiny.y_train, 32, seed=0)
    resident = tf_index_pipeline(tiny.y_train, 32, seed=0)
    for pipeline in (host, resident):
        options = pipeline.options()
        assert options.autotune.enabled is False
        assert options.experimental_optimization.apply_default_optimizations is False
    images, labels = next(iter(host))
    indices, resident_labels = next(iter(resident))
    assert images.shape == (32, 32, 32, 3) and indices.shape == (32,)
    # same seed, same shuffle: the resident stream's indices select the host stream's batch
    np.testing.assert_array_equal(images.numpy(), tiny.x_train[indices.numpy()])
    np.testing.assert_array_equal(labels.numpy(), resident_labels.numpy())


def test_numpy_pipelines_shuffle_every_epoch_and_agree_with_each_other(tiny):
    from cifar_model.pipelines import numpy_host_batches, numpy_index_batches
    host = numpy_host_batches(tiny.x_train, tiny.y_train, 100, seed=0)
    resident = numpy_index_batches(tiny.y_train, 100, seed=0)
    epochs = [[next(resident)[0] for _ in range(2)] for _ in range(2)]   # 256 images: 2 full batches
    for batches in epochs:
        seen = np.concatenate(batches)
        assert len(np.unique(seen)) == 200 and seen.dtype == np.int32     # no image twice an epoch
    assert not np.array_equal(epochs[0][0], epochs[1][0])                # reshuffled
    images, labels = next(host)
    first = next(numpy_index_batches(tiny.y_train, 100, seed=0))[0]
    np.testing.assert_array_equal(images, tiny.x_train[first])
    np.testing.assert_array_equal(labels.argmax(axis=1), tiny.y_train[first])


def test_the_workers_progress_counts_steps_from_keras_own_params(tiny, capsys):
    """bench.worker_callbacks.Progress reads epochs and steps from Keras (no second count),
    and counts steps, not calls, when one call runs several (steps_per_execution)."""
    from bench.protocol import MARK, Event
    from bench.worker_callbacks import Progress

    train(tiny, settings(epochs=2, max_steps_per_epoch=6, warmup_steps=2, steps_per_execution=2, seed=0),
          callbacks=[Progress(evaluates=False)])
    events = [Event.parse(line[len(MARK):]) for line in capsys.readouterr().out.splitlines()
              if line.startswith(MARK)]
    done = [e.fields["done"] for e in events if e.kind == "step"]
    assert {e.fields["total"] for e in events if e.kind == "step"} == {12}
    assert done == sorted(done) and done[-1] == 12 and len(done) <= 12
    assert [e.fields["phase"] for e in events if e.kind == "phase"] == ["training", "finishing"]
