"""The device's measured peak per precision: the yardstick for a cell's efficiency.

Measured here rather than taken from a datasheet: a large dense matrix multiply in
TensorFlow, in the precision's compute dtype, timed in a worker subprocess that sees only
that device. Results are cached per machine fingerprint in ``results/peaks/<machine>.json``,
keyed by device, precision, CPU threads and TensorFlow version, so an upgrade re-measures.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

from bench import results, runner
from bench.devices import Requested
from bench.environment import machine_id

PEAKS_DIR = Path("results") / "peaks"
MATMUL_SIZE = {"CPU": 2048, "GPU": 8192}   # large enough to reach the plateau (2048 ~ 4096 on a CPU)
PEAK_TIMEOUT_S = 600


def cache_key(device_id: str, precision: str, cpu_threads: int, tensorflow: str | None) -> str:
    return f"{device_id}|{precision}|threads={cpu_threads}|tensorflow={tensorflow}"


class PeakCache:
    """``results/peaks/<machine>.json``: plain JSON, checked when read (it is untrusted)."""

    def __init__(self, env: dict, root: Path = PEAKS_DIR):
        self.path = Path(root) / f"{machine_id(env)}.json"
        self.entries: dict[str, dict] = {}
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):
            self.entries = {k: v for k, v in loaded.items() if _valid(v)}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results.write_atomically(self.path, json.dumps(self.entries, indent=2, sort_keys=True) + "\n")


def _valid(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("tflops"), (int, float))
            and math.isfinite(entry["tflops"]) and entry["tflops"] > 0)


def measure(device: Requested, precisions: list[str], cpu_threads: int, log_path: Path,
            timeout_s: float = PEAK_TIMEOUT_S) -> dict[str, dict]:
    """Time the matrix multiply on ``device`` in each precision (one worker process)."""
    spec = {"precisions": precisions, "cpu_threads": cpu_threads,
            "size": MATMUL_SIZE[device.device.type]}
    outcome = runner.run_worker(spec, runner.worker_environment(device), log_path, timeout_s,
                                command=[sys.executable, "-m", "bench.worker", "--peak"])
    if outcome.result is None:
        raise RuntimeError(f"peak measurement on {device.id} failed: {outcome.reason}")
    return outcome.result


def peaks_for(combos: Iterable[tuple[Requested, str, int]], env: dict, tensorflow: str | None,
              log_dir: Path, refresh: bool = False, say=print) -> dict[tuple[str, str, int], dict]:
    """Peak of each (device, precision, threads), from the cache or measured now.

    A device whose measurement fails gets no peak (its cells have no efficiency) and the
    reason is said; the run goes on.
    """
    cache = PeakCache(env)
    wanted: dict[tuple[str, int], tuple[Requested, list[str]]] = {}
    found: dict[tuple[str, str, int], dict] = {}
    for device, precision, threads in combos:
        key = cache_key(device.id, precision, threads, tensorflow)
        if not refresh and cache.get(key):
            found[(device.id, precision, threads)] = {**cache.get(key), "cached": True}
        else:
            entry = wanted.setdefault((device.id, threads), (device, []))
            if precision not in entry[1]:
                entry[1].append(precision)
    log_dir.mkdir(parents=True, exist_ok=True)
    for (device_id, threads), (device, precisions) in wanted.items():
        say(f"measuring peak on {device_id} ({', '.join(precisions)}, threads {threads or 'default'})")
        try:
            measured = measure(device, precisions, threads,
                               log_dir / f"peak_{device_id.replace(':', '')}_thr{threads}.log")
        except RuntimeError as exc:
            say(str(exc))
            continue
        for precision, value in measured.items():
            cache.put(cache_key(device_id, precision, threads, tensorflow), value)
            found[(device_id, precision, threads)] = {**value, "cached": False}
    if wanted:
        cache.save()
    return found
