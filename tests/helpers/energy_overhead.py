"""Does an open energy window slow the timed steps? Times a fixed workload with and without a
meter polling in the background, in interleaved rounds (drift hits both arms alike).

    PYTHONPATH=$PWD python tests/helpers/energy_overhead.py [--rounds 15] [--poll-s 0.1]

The meter is the real RAPL one (:func:`bench.energy.cpu_meter`: thread, lock, sysfs-style
reads) over a fake powercap directory, polled at ``--poll-s`` (0.1 s: how often a GPU without
an energy counter has its power sampled; RAPL is polled every 10 s). Two workloads: a numpy
matmul (releases the GIL, like a framework's kernels) and pure Python (holds it, like Keras's
loop between steps). Prints the median with/without ratio per workload, and the CPU time of
one counter read (thread CPU time: what the poll costs, however busy the machine is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import energy


def fake_powercap(root: Path) -> tuple[Path, Path]:
    powercap, cpus = root / "powercap", root / "cpu"
    for name, label in (("intel-rapl:0", "package-0"), ("intel-rapl:0:1", "dram")):
        (powercap / name).mkdir(parents=True)
        (powercap / name / "name").write_text(label)
        (powercap / name / "energy_uj").write_text("123456")
        (powercap / name / "max_energy_range_uj").write_text("262143328850")
    (cpus / "cpu0" / "topology").mkdir(parents=True)
    (cpus / "cpu0" / "topology" / "physical_package_id").write_text("0")
    return powercap, cpus


def matmul_step(a: np.ndarray) -> None:
    for _ in range(5):
        a @ a


def python_step(_) -> None:
    total = 0
    for i in range(200_000):
        total += i * i


def time_steps(step, arg, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step(arg)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=energy.POWER_SAMPLE_S)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        powercap, cpus = fake_powercap(Path(tmp))
        meter = energy.cpu_meter({0}, 1, root=powercap, cpu_root=cpus)
        meter.poll_s = args.poll_s
        reads = 2000
        cpu_started = time.thread_time()
        for _ in range(reads):
            meter.counter.joules()
        read_cpu_s = (time.thread_time() - cpu_started) / reads
        print(f"one counter read (2 zones): {read_cpu_s * 1e6:.1f} us of CPU; polled every {args.poll_s:g} s "
              f"that is {100 * read_cpu_s / args.poll_s:.3f} % of one CPU")
        a = np.random.default_rng(0).standard_normal((256, 256))
        for name, step, arg in (("numpy matmul", matmul_step, a), ("pure Python", python_step, None)):
            time_steps(step, arg, 2)                           # warm caches
            ratios, polls = [], 0
            for _ in range(args.rounds):
                without = time_steps(step, arg, args.steps)
                meter.start()
                with_meter = time_steps(step, arg, args.steps)
                reading = meter.stop()
                polls += int(reading.seconds / args.poll_s)
                ratios.append(with_meter / without)
            print(f"{name}: median step-time ratio with/without the meter = {statistics.median(ratios):.4f} "
                  f"(min {min(ratios):.4f}, max {max(ratios):.4f}; {args.rounds} interleaved rounds of "
                  f"{args.steps} steps, ~{polls} polls every {args.poll_s:g} s; "
                  f"{without / args.steps * 1000:.1f} ms a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
