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

from fake_results import fake_result  # same folder: on sys.path when run as a script

MARK = "@@bench "


def emit(event, **fields):
    print(MARK + json.dumps({"event": event, **fields}), flush=True)


def result(spec):
    steps = spec["steps"] or 4
    step = spec["batch_size"] / 1000
    return fake_result(spec["batch_size"], [step * 3] + [step] * (steps - 1), spec["warmup"],
                       spec["data"], spec["split"])


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
