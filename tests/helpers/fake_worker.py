"""A stand-in for ``python -m bench.worker`` that misbehaves on request, without TensorFlow.

The cell's batch size picks the behaviour: 13 crashes, 14 hangs, 15 is killed by a
signal, 16 reports an error; anything else reports a plausible result whose steps take
``batch_size / 1000`` seconds each.
"""

import json
import os
import signal
import sys
import time

MARK = "@@bench "


def emit(event, **fields):
    print(MARK + json.dumps({"event": event, **fields}), flush=True)


def result(spec):
    step = spec["batch_size"] / 1000
    steps = spec["steps"] or 4
    records = [{"epoch": 0, "step": i, "steps": 1, "seconds": step * (3 if i == 0 else 1),
                "warmup": i < spec["warmup"]} for i in range(steps)]
    steady = [r for r in records if not r["warmup"]]
    return {
        "records": records, "batch_size": spec["batch_size"], "epochs": 1,
        "steps_per_epoch": steps, "warmup_steps": spec["warmup"], "data": spec["data"],
        "split": spec["split"], "train_seconds": sum(r["seconds"] for r in records) + 0.01,
        "data_seconds": 0.5, "startup_seconds": 0.1, "build_seconds": 0.2, "eval_seconds": None,
        "epoch_seconds": [sum(r["seconds"] for r in records)],
        "steady_wall_seconds": sum(r["seconds"] for r in steady) + 0.001,
        "train_loss": 2.3, "train_accuracy": 0.1, "heldout_accuracy": None, "heldout_loss": None,
        "heldout_images": 0, "accuracy_note": "not measured: synthetic data",
        "peak_rss_bytes": 2**30, "peak_gpu_bytes": None, "cpu_util_pct": 90.0,
        "training_flops_per_image": 519544320, "started_at": "2026-01-01T00:00:00+00:00",
        "versions": {"tensorflow": "fake", "keras": "fake", "numpy": "fake", "python": "3"},
        "device_name": None,
    }


def main():
    spec = json.loads(sys.stdin.read())
    emit("started", startup_seconds=0.1, pid=os.getpid())
    behaviour = spec["batch_size"]
    print("some library chatter on stdout", flush=True)
    if behaviour == 13:
        print("Traceback: something broke in the worker", file=sys.stderr, flush=True)
        sys.exit(3)
    if behaviour == 14:
        time.sleep(600)
    if behaviour == 15:
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == 16:
        emit("error", reason="out of memory (ResourceExhaustedError): OOM when allocating")
        sys.exit(1)
    emit("step", done=1, total=1)
    emit("result", result=result(spec))


if __name__ == "__main__":
    main()
