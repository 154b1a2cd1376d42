"""Does ``--energy`` slow the timed steps of a real cell? The same CPU cell in fresh workers
(``python -m bench.worker``), with and without an energy spec, in rotated order (ABBA...), so
drift and other load hit both arms alike.

    PYTHONPATH=$PWD python tests/helpers/energy_wiring_overhead.py [--pairs 3] [--steps 40]

Prints each worker's median steady step, the machine's CPU use and 1-minute load while it ran
(the contention), and the ratio of the arms' medians of medians (with ÷ without). On a machine
without readable counters the energy arm runs the callback and the idle probe only (what a
user of such a machine gets); with counters it also polls them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import psutil

from bench.energy import EnergySpec
from bench.protocol import MARK, CellSpec, DataSpec, Event, WorkerResult
from cifar_model.settings import TrainSettings


def one_cell(energy: bool, steps: int) -> tuple[float, str, float, float]:
    """(median steady step s, what the energy columns would say, machine CPU %, max load) of one worker."""
    spec = CellSpec("overhead", "CPU", TrainSettings(batch_size=64, epochs=1, max_steps_per_epoch=steps,
                                                     warmup_steps=5, eval_images=0),
                    DataSpec("synthetic", split="standard", synthetic_images=4096),
                    EnergySpec(min_window_s=1.0) if energy else None)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "KERAS_BACKEND": "tensorflow", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    psutil.cpu_percent()
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-m", "bench.worker"], input=spec.to_json(), capture_output=True,
                          check=False, text=True, env=env, timeout=900)
    busy, load = psutil.cpu_percent(), max(load, os.getloadavg()[0])
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(MARK))
    event = Event.parse(line[len(MARK):])
    if event.kind != "result":
        raise SystemExit(f"worker failed: {event.fields}")
    result = WorkerResult.from_dict(event.fields["result"])
    covers = "" if result.energy is None else (result.energy.window.unavailable or result.energy.window.covers)
    return statistics.median(result.train.steady_step_seconds), covers, busy, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    arms: dict[bool, list[float]] = {False: [], True: []}
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for energy in order:
            median, covers, busy, load = one_cell(energy, args.steps)
            arms[energy].append(median)
            print(f"pair {pair} {'with   ' if energy else 'without'} --energy: median step {median * 1000:.1f} ms; "
                  f"machine CPU {busy:.0f} %, load {load:.1f}" + (f"; energy: {covers}" if energy else ""), flush=True)
    with_, without = statistics.median(arms[True]), statistics.median(arms[False])
    print(f"median step with --energy / without: {with_ * 1000:.1f} / {without * 1000:.1f} ms = "
          f"{with_ / without:.3f} (median of {args.pairs} fresh workers per arm)")


if __name__ == "__main__":
    main()
