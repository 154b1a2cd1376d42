"""``bench peak``: each device's peak TFLOP/s per precision (a large dense matmul), cached per machine."""

from __future__ import annotations

import sys

from bench import devices, environment, matrix, store, yardsticks
from bench.launch import backend_missing
from bench.options import EXIT_CELL_FAILED, EXIT_OK, device_list, results_dir_parent, show, stderr, typed


def _values(name: str, example: str):
    return typed(matrix.comma_list(matrix.BY_NAME[name].parse, example), name)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("peak", parents=[results_dir_parent()],
                                   help="measure each device's peak TFLOP/s per precision (large dense "
                                        "matmul), cached per machine")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--devices", type=device_list, help="as for run (default: every device found)")
    parser.add_argument("--precision", type=_values("precision", "fp32"),
                        default=("fp32", "mixed_bfloat16", "mixed_float16"),
                        help="comma-separated (default: fp32,mixed_bfloat16,mixed_float16)")
    parser.add_argument("--cpu-threads", type=_values("cpu_threads", "0"), default=(0,),
                        help="intra-op threads, comma-separated; 0 = default (default: 0)")
    parser.add_argument("--backend", type=_values("backend", "tensorflow"), default=("tensorflow",),
                        help="comma-separated (default: tensorflow)")
    parser.add_argument("--refresh", action="store_true", help="measure again even when cached")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    inventory = devices.detect()
    requested = devices.resolve(args.devices or ["all"], inventory)
    for r in requested:
        if r.found is None or not r.found.usable:
            stderr(f"{r.id}: skipped: {r.reason}")
    env = environment.fingerprint(inventory)
    combos = [(r, precision, threads, backend) for r in requested
              if r.found is not None and r.found.usable
              for backend in args.backend if backend_missing(backend) is None
              for precision in args.precision for threads in args.cpu_threads]
    found = yardsticks.measured_peaks(combos, env, root, store.peaks_dir(root) / "logs", args.refresh, say=stderr)
    if found:
        show(yardsticks.peak_table(found))
    show(f"\ncache: {yardsticks.cache_path(env, store.peaks_dir(root))} (per machine, usable "
         f"CPUs {(env.get('cpu') or {}).get('usable_cpus')})")
    return EXIT_OK if found else EXIT_CELL_FAILED
