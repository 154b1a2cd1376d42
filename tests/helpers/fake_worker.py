"""A stand-in for ``python -m bench.worker`` that misbehaves on request, without a framework.

It speaks the real protocol (:mod:`bench.protocol`) and returns a real ``WorkerResult`` holding
a real ``cifar_model.TrainResult``, so it cannot drift from the contract unnoticed. The cell's
batch size picks the behaviour: 13 crashes, 14 hangs, 15 is killed by a signal, 16 reports an
error, 17 prints a result that breaks the protocol, 18 reports every step as warm-up, 19 trains
slowly (a progress line every 0.2 s for ``FAKE_SLOW_SECONDS``, default 60: a cell still running
when a test stops the run); anything else reports a plausible result whose steps take
``batch_size / 1000`` seconds each (``batch_size / 100`` for backend jax), times
``$FAKE_WORKER_SLOWDOWN`` (default 1): a deterministic slowdown no machine load can fake or
hide. Its math is every backend's default: an fp32 cell on a GPU ran in TF32.

Like the real worker it exits when its parent dies (:func:`bench.worker.watch_parent`), and
answers ``--probe`` (no GPU, a fake TensorFlow) and ``--peak`` (1 TFLOP/s in every precision, a
real ``bench.yardsticks.MeasuredPeak``).
With ``FAKE_WORKER_PIDS`` set, it appends "<pid> <batch size>" to that file on start, so a test
can find it and check it is gone. With ``--energy`` it sends an energy result: "not available"
unless ``FAKE_ENERGY_WATTS`` gives a power (idle: half of it), see :func:`fake_energy`.
"""

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # this checkout's bench, not an installed one
from fake_results import fake_result  # same folder: on sys.path when run as a script

from bench.energy import EnergyReading, EnergyResult, EnergySpec, steps_to_add
from bench.protocol import PROBE_MARK, CellSpec, PeakSpec, emit
from bench.worker import watch_parent
from cifar_model.settings import PRECISIONS

PROBE = {"tensorflow": "2.99.0-fake", "keras": "3.99.0-fake", "built_with_cuda": False, "gpus": [],
         "backend": "tensorflow", "versions": {"tensorflow": "2.99.0-fake", "keras": "3.99.0-fake"}}
SLOW_STEP_S = 0.2


def main():
    if sys.argv[1:] == ["--probe"]:
        print(PROBE_MARK + json.dumps(PROBE), flush=True)
        return
    watch_parent(poll_s=0.1)
    if sys.argv[1:] == ["--peak"]:
        from bench.yardsticks import MeasuredPeak  # imports pandas: only the peak fake pays for it

        peak = PeakSpec.from_dict(json.loads(sys.stdin.read())["peak"])
        emit("result", result={p: MeasuredPeak(p, "float32", peak.size, repeats=3, tflops=1.0, median_tflops=0.9,
                                               math="ieee", math_note="fake: IEEE fp32").as_dict()
                               for p in peak.precisions})
        return
    spec = CellSpec.from_json(sys.stdin.read())
    settings = spec.settings
    if os.environ.get("FAKE_WORKER_PIDS"):
        with open(os.environ["FAKE_WORKER_PIDS"], "a") as pids:
            pids.write(f"{os.getpid()} {settings.batch_size}\n")
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
    if behaviour == 19:
        slow_steps = max(1, round(float(os.environ.get("FAKE_SLOW_SECONDS", 60)) / SLOW_STEP_S))
        for done in range(1, slow_steps + 1):
            time.sleep(SLOW_STEP_S)
            emit("step", done=done, total=slow_steps)
    if behaviour == 17:
        emit("result", result={"train": "not a training result"})
        return
    steps = settings.epochs * (settings.max_steps_per_epoch or 4)
    step = settings.batch_size / (100 if settings.backend == "jax" else 1000)
    step *= float(os.environ.get("FAKE_WORKER_SLOWDOWN", "1"))
    emit("step", done=steps, total=steps)
    warmup = steps if behaviour == 18 else settings.warmup_steps
    math = PRECISIONS[settings.precision].math
    if math == "ieee" and spec.device_type == "GPU":
        math = "tf32"
    per_epoch = settings.max_steps_per_epoch or 4
    curve, steps = fake_curve(settings, per_epoch, steps, step)
    result = fake_result(settings.batch_size, [step * 3] + [step] * (steps - 1), warmup,
                         spec.data.kind, spec.data.split, settings.backend, precision=settings.precision,
                         math=math, math_note="fake: the backend's default", epochs=settings.epochs,
                         steps_per_epoch=per_epoch, curve=curve, curve_eval_seconds=sum(p.eval_seconds for p in curve),
                         target_accuracy=settings.target_accuracy)
    if spec.energy is not None:
        result = dataclasses.replace(result, energy=fake_energy(spec.energy, steps - warmup, step))
    emit("result", result=result.to_dict())


def fake_curve(settings, per_epoch: int, steps: int, step_s: float):
    """With ``eval_every``: an evaluation every that many epochs whose accuracy is 0.1 +
    ``$FAKE_CURVE_GAIN`` (default 0.2) per epoch trained (capped at 0.9), training stopped at
    the first reaching ``target_accuracy``; each evaluation takes 0.05 s. Returns the curve and the steps trained."""
    from cifar_model.curves import eval_interval_steps
    from cifar_model.results import CurvePoint

    if settings.eval_every is None:
        return [], steps
    every, curve, done = eval_interval_steps(settings.eval_every, per_epoch), [], 0
    while done < steps:
        done = min(steps, done + every)
        accuracy = min(0.9, 0.1 + float(os.environ.get("FAKE_CURVE_GAIN", "0.2")) * done / per_epoch)
        train_s = step_s * (done + 2)            # the first step counts 3 steps' time
        curve.append(CurvePoint(epoch=(done - 1) // per_epoch + 1, step=done, images_seen=done * settings.batch_size,
                                train_seconds=train_s, wall_seconds=train_s + 0.05 * (len(curve) + 1),
                                eval_seconds=0.05, heldout_accuracy=accuracy, heldout_loss=2.3 - accuracy))
        if settings.target_accuracy is not None and accuracy >= settings.target_accuracy:
            break
    return curve, done


def fake_energy(energy: EnergySpec, steady_steps: int, step_s: float) -> EnergyResult:
    """With ``$FAKE_ENERGY_WATTS`` a reading at that power over the steady steps, extended to the
    minimum window as the real worker extends it (a second segment); else why not."""
    covers = "GPU board" if energy.nvml_indices else "CPU package-0 (fake)"
    watts = os.environ.get("FAKE_ENERGY_WATTS")
    if watts is None:
        why = "fake worker: no energy counter"
        return EnergyResult(EnergyReading(covers, 0.0, unavailable=why), EnergyReading(covers, 0.0, unavailable=why))
    window = EnergyReading(covers, steady_steps * step_s, float(watts) * steady_steps * step_s, method="fake counter",
                           steps=steady_steps)
    extra = steps_to_add(window.seconds, step_s, energy.min_window_s)
    if extra:
        window = window.plus(EnergyReading(covers, extra * step_s, float(watts) * extra * step_s, steps=extra))
    return EnergyResult(window, EnergyReading(covers, 3.0, 3.0 * float(watts) / 2, method="fake counter"))


if __name__ == "__main__":
    main()
