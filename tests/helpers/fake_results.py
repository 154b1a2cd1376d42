"""A worker result of the right type, from given step times: for tests that need no framework."""

from __future__ import annotations

from bench.protocol import WorkerResult


def fake_train(batch_size: int, step_seconds: list[float], warmup: int, data: str = "synthetic",
               split: str = "standard", backend: str = "tensorflow") -> dict:
    """What ``cifar_model.TrainResult.to_dict()`` holds, with the given step times."""
    records = [{"epoch": 0, "step": i, "steps": 1, "seconds": float(s), "warmup": i < warmup}
               for i, s in enumerate(step_seconds)]
    steady = [r["seconds"] for r in records if not r["warmup"]]
    return {
        "records": records, "batch_size": batch_size, "epochs": 1, "backend": backend,
        "steps_per_epoch": len(records), "warmup_steps": warmup, "data": data, "split": split,
        "train_seconds": sum(step_seconds) + 0.01, "data_seconds": 0.5,
        "build_seconds": 0.2, "eval_seconds": None, "epoch_seconds": [sum(step_seconds)],
        "steady_wall_seconds": sum(steady) + 0.001 if steady else float("nan"),
        "train_loss": 2.3, "train_accuracy": 0.1,
        "heldout_accuracy": None, "heldout_loss": None, "heldout_images": 0,
        "accuracy_note": "not measured: synthetic data", "training_flops_per_image": 519544320,
        "params": 1454922, "xla": False, "compile_note": "fake", "unsynced_steps": 0,
        "unsynced_seconds": None, "data_placement": "host", "data_device": "CPU:0",
        "math": "ieee", "math_note": "fake: IEEE fp32",
    }


def fake_result(batch_size: int, step_seconds: list[float], warmup: int, data: str = "synthetic",
                split: str = "standard", backend: str = "tensorflow") -> WorkerResult:
    return WorkerResult(
        train=fake_train(batch_size, step_seconds, warmup, data, split, backend),
        data_source=data, data_note="", startup_seconds=0.1, peak_rss_bytes=2**30,
        peak_gpu_bytes=None, cpu_util_pct=90.0, device_name=None,
        versions={backend: "fake", "keras": "fake", "numpy": "fake", "python": "3"},
        started_at="2026-01-01T00:00:00+00:00")
