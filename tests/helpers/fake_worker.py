"""A stand-in for ``python -m bench.worker`` that misbehaves on request, without a framework.

It speaks the real protocol (:mod:`bench.protocol`) and returns a real ``WorkerResult``, so
it cannot drift from the contract unnoticed. The cell's batch size picks the behaviour: 13
crashes, 14 hangs, 15 is killed by a signal, 16 reports an error, 17 prints a result that
breaks the protocol, 18 reports every step as warm-up; anything else reports a plausible result whose steps take
``batch_size / 1000`` seconds each (``batch_size / 100`` for backend jax).
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # this checkout's bench, not an installed one
from fake_results import fake_result  # same folder: on sys.path when run as a script

from bench.protocol import CellSpec, emit


def main():
    spec = CellSpec.from_json(sys.stdin.read())
    settings = spec.settings
    emit("started", startup_seconds=0.1, pid=os.getpid(), backend=os.environ.get("KERAS_BACKEND"))
    emit("phase", phase="loading data")
    behaviour = settings.batch_size
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
    if behaviour == 17:
        emit("result", result={"train": "not a training result"})
        return
    steps = settings.epochs * (settings.max_steps_per_epoch or 4)
    step = settings.batch_size / (100 if settings.backend == "jax" else 1000)
    emit("step", done=steps, total=steps)
    warmup = steps if behaviour == 18 else settings.warmup_steps
    result = fake_result(settings.batch_size, [step * 3] + [step] * (steps - 1), warmup,
                         spec.data.kind, spec.data.split, settings.backend)
    emit("result", result=result.to_dict())


if __name__ == "__main__":
    main()
