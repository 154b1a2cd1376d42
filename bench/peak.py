"""The device's measured peak per precision: the yardstick for a cell's efficiency.

Measured here rather than taken from a datasheet: a large dense matrix multiply through the
cell's own backend, in the precision's compute dtype, timed in a worker subprocess that sees
only that device. A peak is a property of what the process could use, so it is keyed by
device, precision, threads, backend and its version, *and the CPUs the process may use*
(affinity, cgroup quota): a run pinned to one core can never become the yardstick of a
run on two. A peak measured while other processes competed for the device is used for
that run only and never cached. Cached per machine in ``<results>/peaks/<machine>.json``, read and updated
under a lock so concurrent runs lose nothing.

Each entry says the math its matmul ran in (``math``: ``ieee``, ``tf32``, ``bf16``, ``fp16``;
see :func:`cifar_model.backends.cell_math`): on an Ampere-or-newer GPU an "fp32" matmul may
run in TF32, several times faster than IEEE fp32. A GPU entry from before entries said
so is never reused (measured again); on a CPU, fp32 is always IEEE, so old entries still hold.
A row uses a peak only in its cell's own math (:func:`bench.record.ok_row`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench import process
from bench.contention import ContentionSampler
from bench.devices import Requested
from bench.environment import machine_id
from bench.files import read_json_object, update_json
from bench.protocol import PeakSpec
from bench.runner import worker_environment
from bench.stats import finite_positive

MATMUL_SIZE = {"CPU": 2048, "GPU": 8192}   # large enough to reach the plateau (2048 ~ 4096 on a CPU)
PEAK_TIMEOUT_S = 600
PEAK_COMMAND = (*process.WORKER_COMMAND, "--peak")


def cache_key(device_id: str, precision: str, cpu_threads: int, backend: str,
              version: str | None, usable_cpus) -> str:
    return (f"{device_id}|{precision}|threads={cpu_threads}|{backend}={version}"
            f"|usable_cpus={usable_cpus}")


def cache_path(env: dict, root: Path) -> Path:
    return Path(root) / f"{machine_id(env)}.json"


def valid(entry) -> bool:
    return isinstance(entry, dict) and finite_positive(entry.get("tflops"))


def reusable(entry, device_type: str) -> bool:
    """A cached entry this device may use: valid and, on a GPU, saying its math."""
    return valid(entry) and (device_type != "GPU" or isinstance(entry.get("math"), str))


def measure(device: Requested, precisions: list[str], cpu_threads: int, backend: str,
            log_path: Path, timeout_s: float = PEAK_TIMEOUT_S, command=PEAK_COMMAND) -> dict[str, dict]:
    """Time the matrix multiply on ``device`` in each precision (one worker process)."""
    spec = PeakSpec(tuple(precisions), MATMUL_SIZE[device.found.type], cpu_threads, backend)
    gpu = device.found.index if device.found.type == "GPU" else None
    outcome = process.run_worker(
        spec.to_json(), worker_environment(device, backend), log_path, timeout_s, command=command,
        parse_result=_peak_result,
        watch=lambda pid: ContentionSampler(pid, gpu_index=gpu, interval_s=0.25).start())
    if outcome.result is None:
        raise RuntimeError(f"peak measurement on {device.id} ({backend}) failed: {outcome.reason}")
    contention = outcome.watched
    busy = contention is not None and contention.busy()
    return {precision: {**value, "busy": contention.describe() if busy else ""}
            for precision, value in outcome.result.items()}


def _peak_result(raw) -> dict:
    if not isinstance(raw, dict) or not all(valid(v) for v in raw.values()):
        raise ValueError("a peak result maps each precision to a positive, finite tflops")
    return raw


def peaks_for(combos: Iterable[tuple[Requested, str, int, str]], env: dict, versions: dict,
              root: Path, log_dir: Path, refresh: bool = False, say=print,
              command=PEAK_COMMAND) -> dict[tuple[str, str, int, str], dict]:
    """Peak of each (device, precision, threads, backend), from the cache or measured now.

    A device whose measurement fails gets no peak (its cells have no efficiency) and the
    reason is said; the run goes on.
    """
    usable = (env.get("cpu") or {}).get("usable_cpus")
    path = cache_path(env, root)
    cached = {k: v for k, v in read_json_object(path).items() if valid(v)}
    wanted: dict[tuple[str, int, str], tuple[Requested, list[str]]] = {}
    found: dict[tuple[str, str, int, str], dict] = {}
    keys = {}
    for device, precision, threads, backend in combos:
        key = cache_key(device.id, precision, threads, backend, versions.get(backend), usable)
        keys[(device.id, precision, threads, backend)] = key
        if not refresh and reusable(cached.get(key), device.found.type):
            found[(device.id, precision, threads, backend)] = {**cached[key], "cached": True}
        else:
            entry = wanted.setdefault((device.id, threads, backend), (device, []))
            if precision not in entry[1]:
                entry[1].append(precision)
    if wanted:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the measurement does not need its log; it says so itself
            say(f"warning: {log_dir}: cannot create ({exc.strerror or exc}); peak logs not kept")
    measured_now: dict[str, dict] = {}
    for (device_id, threads, backend), (device, precisions) in wanted.items():
        say(f"measuring peak on {device_id} with {backend} ({', '.join(precisions)}, "
            f"threads {threads or 'default'})")
        try:
            measured = measure(device, precisions, threads, backend,
                               log_dir / f"peak_{device_id.replace(':', '')}_thr{threads}_{backend}.log",
                               command=command)
        except RuntimeError as exc:
            say(str(exc))
            continue
        for precision, value in measured.items():
            if value.get("busy"):
                # a peak measured while other work ran is too low: a yardstick that later runs
                # would beat (efficiency above 100 %). Use it now, say so, never keep it.
                say(f"peak {device_id} {backend} {precision} measured on a busy machine "
                    f"({value['busy']}): used for this run only, not cached")
            else:
                measured_now[keys[(device_id, precision, threads, backend)]] = value
            found[(device_id, precision, threads, backend)] = {**value, "cached": False}
    if measured_now:
        try:
            update_json(path, lambda current: {**{k: v for k, v in current.items() if valid(v)},
                                               **measured_now})
        except OSError as exc:
            say(f"warning: peak cache {path} not updated ({exc.strerror or exc}); "
                "the peaks measured now are used for this run only")
    return found


def peak_table(found: dict[tuple[str, str, int, str], dict]) -> str:
    """The measured peaks as a Markdown table, each saying how it was measured."""
    import pandas as pd

    def math_text(value: dict) -> str:
        return f" ({value['math']})" if isinstance(value.get("math"), str) and value["math"] else ""

    rows = [{"Device": device_id, "Backend": backend, "Precision": precision,
             "Threads": threads or "default",
             "Matmul": f"{v['size']}×{v['size']} {v['dtype']}{math_text(v)}",
             "Peak TFLOP/s (best)": f"{v['tflops']:.3f}", "Median TFLOP/s": f"{v['median_tflops']:.3f}",
             "Repeats": v["repeats"], "Cached": "yes" if v["cached"] else "no"}
            for (device_id, precision, threads, backend), v in found.items()]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
