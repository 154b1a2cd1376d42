"""cifar_model.training: one timed run; its counts, timings and result fields agree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cifar_model import load_dataset, synthetic_dataset, train
from cifar_model.training import plan_steps


@pytest.fixture(scope="module")
def tiny():
    return synthetic_dataset(n_train=256, n_test=32, seed=1)


@pytest.fixture(scope="module")
def short_run(tiny):
    return train(tiny, batch_size=32, epochs=2, max_steps_per_epoch=5, warmup_steps=2, seed=0)


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
    steady = short_run.steady_step_seconds
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
    restored = json.loads(json.dumps(short_run.to_dict()))
    assert len(restored["records"]) == 10 and restored["records"][3]["warmup"] is False


def test_steps_per_execution_records_blocks_of_steps(tiny):
    result = train(tiny, batch_size=32, epochs=1, max_steps_per_epoch=6, warmup_steps=2,
                   steps_per_execution=2, seed=0, evaluate=False)
    assert [r.steps for r in result.records] == [2, 2, 2]
    assert [r.step for r in result.records] == [0, 2, 4]
    assert [r.warmup for r in result.records] == [True, False, False]
    assert result.total_steps == 6 and len(result.steady_step_seconds) == 2


def test_plan_steps():
    assert plan_steps(40_000, 128, None) == 312          # the notebook's "Total batches are 312"
    assert plan_steps(40_000, 128, 50) == 50
    assert plan_steps(100, 32, 10) == 3
    with pytest.raises(ValueError, match="larger than"):
        plan_steps(10, 32, None)


@pytest.mark.slow
def test_the_network_learns_on_real_cifar10(real_cifar_dir):
    dataset = load_dataset(real_cifar_dir, split="standard")
    result = train(dataset, batch_size=64, epochs=1, max_steps_per_epoch=150, warmup_steps=3, seed=0)
    # Accuracy on the *whole* official test split, never a sampled batch.
    assert result.heldout_images == 10_000 and "whole held-out split" in result.accuracy_note
    # Chance is 10 %; its standard error on 10,000 images is 0.3 %.
    assert result.heldout_accuracy > 0.15
    assert result.heldout_loss < 2.30                      # below log(10): better than uniform
    assert result.data == "cifar10" and result.eval_seconds > 0


def test_unsynced_phase_times_a_block_with_one_sync(tiny):
    result = train(tiny, batch_size=32, epochs=1, max_steps_per_epoch=6, warmup_steps=2, seed=0,
                   unsynced_steps=5)
    assert result.unsynced_steps == 5 and result.unsynced_seconds > 0
    assert result.unsynced_images_per_s == 5 * 32 / result.unsynced_seconds
    assert result.total_steps == 6          # the unsynced block is not in the timed records
    # both are throughput of the same network on the same data: same order of magnitude
    steady = 32 / np.median(result.steady_step_seconds)
    assert 0.5 < result.unsynced_images_per_s / steady < 2


def test_xla_setting_is_resolved(tiny):
    on = train(tiny, batch_size=32, epochs=1, max_steps_per_epoch=3, warmup_steps=1,
               jit_compile="on", evaluate=False)
    assert on.xla is True and on.jit_compile == "on"


def test_a_training_set_kept_on_the_device_trains_exactly_like_one_fed_from_the_host(tiny):
    runs = {placement: train(tiny, batch_size=32, epochs=2, max_steps_per_epoch=4, warmup_steps=1,
                             seed=3, data_placement=placement, evaluate=False)
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
    result = train(tiny, batch_size=32, epochs=1, max_steps_per_epoch=2, warmup_steps=1,
                   data_placement="auto", device="cpu:0", evaluate=False)
    assert result.data_placement == "host"


def test_the_resident_training_set_lives_on_the_training_device():
    """With two logical CPUs, training on cpu:1 must put the images on CPU:1, not CPU:0:
    the same code path that puts them in a GPU's memory (none here)."""
    script = textwrap.dedent("""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from cifar_model import synthetic_dataset, train
        tiny = synthetic_dataset(n_train=128, n_test=16, seed=1)
        out = {}
        for placement in ("device", "host"):
            r = train(tiny, batch_size=32, epochs=1, max_steps_per_epoch=2, warmup_steps=1,
                      device="cpu:1", data_placement=placement, evaluate=False)
            out[placement] = [r.data_placement, r.data_device]
        print("@@" + json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.split("@@", 1)[1])
    assert out == {"device": ["device", "CPU:1"], "host": ["host", "CPU:0"]}


def test_both_pipelines_run_without_autotuning_or_graph_rewrites(tiny):
    from cifar_model.training import make_resident_inputs, make_train_pipeline
    host = make_train_pipeline(tiny.x_train, tiny.y_train, 32, seed=0)
    _, resident = make_resident_inputs(tiny.x_train, tiny.y_train, 32, seed=0, device="cpu:0")
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
