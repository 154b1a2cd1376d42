"""A worker result of the right shape, from given step times: for tests that need no TensorFlow."""

from __future__ import annotations


def fake_result(batch_size: int, step_seconds: list[float], warmup: int, data: str = "synthetic",
                split: str = "standard") -> dict:
    records = [{"epoch": 0, "step": i, "steps": 1, "seconds": float(s), "warmup": i < warmup}
               for i, s in enumerate(step_seconds)]
    steady = [r["seconds"] for r in records if not r["warmup"]]
    return {
        "records": records, "batch_size": batch_size, "epochs": 1,
        "steps_per_epoch": len(records), "warmup_steps": warmup, "data": data, "split": split,
        "train_seconds": sum(step_seconds) + 0.01, "data_seconds": 0.5, "startup_seconds": 0.1,
        "build_seconds": 0.2, "eval_seconds": None, "epoch_seconds": [sum(step_seconds)],
        "steady_wall_seconds": sum(steady) + 0.001, "train_loss": 2.3, "train_accuracy": 0.1,
        "heldout_accuracy": None, "heldout_loss": None, "heldout_images": 0,
        "accuracy_note": "not measured: synthetic data", "peak_rss_bytes": 2**30,
        "peak_gpu_bytes": None, "cpu_util_pct": 90.0, "training_flops_per_image": 519544320,
        "started_at": "2026-01-01T00:00:00+00:00",
        "versions": {"tensorflow": "fake", "keras": "fake", "numpy": "fake", "python": "3"},
        "device_name": None,
    }
