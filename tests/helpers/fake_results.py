"""A worker result of the right type, from given step times: for tests that need no framework.

It builds a real :class:`cifar_model.TrainResult` (framework-free), so a field added to,
renamed in or removed from the result breaks the fake at once instead of drifting from it.
"""

from __future__ import annotations

from bench.protocol import WorkerResult
from cifar_model.results import StepRecord, TrainResult


def fake_train(batch_size: int, step_seconds: list[float], warmup: int, data: str = "synthetic",
               split: str = "standard", backend: str = "tensorflow", **fields) -> TrainResult:
    """A training result with the given step times; ``fields`` override any other field."""
    records = [StepRecord(epoch=0, step=i, steps=1, seconds=float(s), warmup=i < warmup)
               for i, s in enumerate(step_seconds)]
    steady = [r.seconds for r in records if not r.warmup]
    values = dict(
        batch_size=batch_size, epochs=1, steps_per_epoch=len(records), warmup_steps=warmup,
        precision="fp32", jit_compile="auto", steps_per_execution=1, device="cpu:0",
        data=data, split=split, records=records, epoch_seconds=[sum(step_seconds)],
        train_seconds=sum(step_seconds) + 0.01, steady_wall_seconds=sum(steady) + 0.001 if steady else None,
        data_seconds=0.5, build_seconds=0.2, eval_seconds=None, train_loss=2.3, train_accuracy=0.1,
        heldout_loss=None, heldout_accuracy=None, heldout_images=0,
        accuracy_note="not measured: synthetic data", training_flops_per_image=519544320,
        params=1454922, xla=False, backend=backend, compile_note="fake", unsynced_steps=0,
        unsynced_seconds=None, data_placement="host", data_device="CPU:0", replicas=1, workers=1,
        task_index=0, strategy="none", math="ieee", math_note="fake: IEEE fp32",
    )
    return TrainResult(**{**values, **fields})


def fake_result(batch_size: int, step_seconds: list[float], warmup: int, data: str = "synthetic",
                split: str = "standard", backend: str = "tensorflow", **train_fields) -> WorkerResult:
    return WorkerResult(
        train=fake_train(batch_size, step_seconds, warmup, data, split, backend, **train_fields),
        data_source=data, data_note="", startup_seconds=0.1, peak_rss_bytes=2**30,
        peak_gpu_bytes=None, cpu_util_pct=90.0, device_name=None,
        versions={backend: "fake", "keras": "fake", "numpy": "fake", "python": "3"},
        started_at="2026-01-01T00:00:00+00:00")
