"""Know what else ran: the contention a cell met, measured while its worker ran.

A shared machine makes a run slower without anything having changed. The runner starts a
:class:`ContentionSampler` when a cell's worker process starts and stops it when the worker
ends; the :class:`Contention` it returns becomes the cell's contention columns
(:meth:`Contention.columns`). Verdicts read those columns back (:mod:`bench.regression`,
with :data:`BUSY_PCT`), the table's notes name busy cells, and a measured peak taken on a
busy machine is not cached (:meth:`Contention.busy`).

Cheap by design: every ``interval_s`` the sampler reads the system-wide CPU times, the
load average, the CPU times of the worker's known process tree and (on a GPU cell) a
few NVML counters. Only every ``scan_every_s`` does it walk the process table, to find
the worker's new children and the busiest other process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from bench.devices import usable_cpus as detect_usable_cpus
from bench.nvml import GpuSensor

#: A cell was *busy* when other processes (+ steal) took at least this share of its usable CPUs,
#: or another process used its GPU. One threshold for every use: a measured peak taken on a busy
#: machine is not cached as a yardstick, a verdict with a busy side may be inconclusive
#: (:mod:`bench.regression`), and the table's notes name busy cells. (``SATURATED_PCT`` in
#: regression is another idea: the load at which speed stops following the CPU shares.)
BUSY_PCT = 10.0
SCAN_EVERY_S = 3.0                 # process-table walks: the worker's children, the busiest other



@dataclass(frozen=True)
class Sample:
    """The machine's CPU counters at one moment (seconds since boot, summed over the measured CPUs)."""

    t: float                  # time.monotonic()
    busy_s: float             # CPU-seconds the measured CPUs spent working
    steal_s: float | None     # CPU-seconds the hypervisor took (Linux only)
    worker_s: float           # CPU-seconds of the worker tree


@dataclass(frozen=True)
class CpuShares:
    """The CPU arithmetic of one window, in % of what the worker could use."""

    wall_s: float
    other_pct: float | None
    worker_pct: float | None
    steal_pct: float | None


def cpu_shares(first: Sample, last: Sample, usable_cpus: float, measured_cpus: int) -> CpuShares:
    """Other processes', the worker's and the hypervisor's share of the window from ``first`` to
    ``last``: other = all busy time − the worker tree's, as % of ``usable_cpus``; steal as % of
    the ``measured_cpus``' time. A pure function of its samples: no clock, no process table."""
    wall = last.t - first.t
    capacity = wall * usable_cpus
    worker = max(0.0, last.worker_s - first.worker_s)
    other = max(0.0, last.busy_s - first.busy_s - worker)
    steal = (100 * (last.steal_s - first.steal_s) / (wall * measured_cpus)
             if first.steal_s is not None and last.steal_s is not None and wall > 0 else None)
    return CpuShares(wall_s=round(wall, 3),
                     other_pct=round(100 * other / capacity, 1) if capacity > 0 else None,
                     worker_pct=round(100 * worker / capacity, 1) if capacity > 0 else None,
                     steal_pct=round(steal, 1) if steal is not None else None)


@dataclass(frozen=True)
class Contention:
    """What else used the machine while one cell ran. Percentages are of wall time.

    wall_s                  the window measured: from start to the worker's end (last seen alive)
    usable_cpus             the CPUs the run may use (affinity and cgroup quota), the 100 % below
    samples                 how many samples were taken
    other_cpu_pct           CPU time of every process but the worker tree, as % of the usable
                            CPUs (system-wide busy time minus the worker tree's; it includes
                            the harness itself; above 100 % only when a quota is tighter than
                            the CPUs the process may be scheduled on)
    worker_cpu_pct          the worker and its children's CPU time, as % of the usable CPUs
    steal_pct               time the hypervisor gave the measured CPUs to other VMs, as % of
                            their time (Linux only; None elsewhere)
    load_avg_1m_max/_mean   the 1-minute load average over the samples
    busiest_other_name      "name (pid N)" of the other process that used the most CPU
    busiest_other_cpu_pct   its CPU time, as % of the usable CPUs (from process-table scans)
    gpu_other_processes     the most processes other than the worker tree seen on the GPU
                            (NVML; in a container NVML may report host pids, which all count)
    gpu_sm_clock_min_mhz / _mean_mhz   the SM clock seen (idle moments lower the minimum)
    gpu_sm_clock_max_mhz    the GPU's maximum SM clock, the yardstick for the two above
    gpu_throttle_reasons    every clock event reason seen active, GPU idle excepted
    notes                   why a field is missing ("NVML unavailable ...")
    """

    wall_s: float
    usable_cpus: float
    samples: int = 0
    other_cpu_pct: float | None = None
    worker_cpu_pct: float | None = None
    steal_pct: float | None = None
    load_avg_1m_max: float | None = None
    load_avg_1m_mean: float | None = None
    busiest_other_name: str | None = None
    busiest_other_cpu_pct: float | None = None
    gpu_other_processes: int | None = None
    gpu_sm_clock_min_mhz: int | None = None
    gpu_sm_clock_mean_mhz: float | None = None
    gpu_sm_clock_max_mhz: int | None = None
    gpu_throttle_reasons: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    #: runs.csv's contention columns: name -> (doc, dtype). Declared once; :meth:`columns`
    #: gives their values and ``bench.record`` their schema.
    COLUMNS = {
        "usable_cpus": ("CPUs the worker could use (affinity and cgroup quota)", "float"),
        "other_cpu_pct": ("CPU used by other processes while the cell ran, % of the usable CPUs", "float"),
        "steal_pct": ("CPU time stolen by the hypervisor while the cell ran, % of wall time", "float"),
        "worker_cpu_pct": ("the worker's CPU share while the cell ran, % of the usable CPUs "
                           "(a multi-worker cell's local workers together)", "float"),
        "load_avg_max": ("highest 1-minute load average seen while the cell ran", "float"),
        "gpu_other_processes": ("other processes on the cell's GPU while it ran (NVML)", "int"),
        "gpu_sm_clock_min_mhz": ("lowest SM clock seen while the cell ran (NVML, MHz)", "float"),
        "gpu_throttle_reasons": ("GPU throttle reasons seen while the cell ran, other than idle", "text"),
        "contention_note": ("what else used the machine while the cell ran", "text"),
    }

    def columns(self) -> dict:
        """This contention as runs.csv values, one per :data:`COLUMNS` entry."""
        values = {"usable_cpus": self.usable_cpus, "other_cpu_pct": self.other_cpu_pct,
                  "steal_pct": self.steal_pct, "worker_cpu_pct": self.worker_cpu_pct,
                  "load_avg_max": self.load_avg_1m_max, "gpu_other_processes": self.gpu_other_processes,
                  "gpu_sm_clock_min_mhz": self.gpu_sm_clock_min_mhz,
                  "gpu_throttle_reasons": ", ".join(self.gpu_throttle_reasons or ()) or None,
                  "contention_note": self.describe()}
        return {name: values[name] for name in self.COLUMNS}

    def busy(self, threshold_pct: float = BUSY_PCT) -> bool:
        """Whether the cell competed for its hardware: other processes' CPU plus steal time
        reached ``threshold_pct`` of the usable CPUs, or another process used its GPU.
        Throttle reasons are reported, not judged: a GPU at its power cap is normal."""
        cpu = (self.other_cpu_pct or 0.0) + (self.steal_pct or 0.0)
        return cpu >= threshold_pct or bool(self.gpu_other_processes)

    def describe(self) -> str:
        """One line for a log or a table note."""
        cpus = f"{self.usable_cpus:g}"
        if self.other_cpu_pct is None:
            parts = ["contention not measured"]
        else:
            parts = [f"other processes used {self.other_cpu_pct:.0f} % of the {cpus} usable CPUs"
                     + (f" (busiest: {self.busiest_other_name}, {self.busiest_other_cpu_pct:.0f} %)"
                        if self.busiest_other_name else "")]
            if self.steal_pct is not None:
                parts.append(f"steal {self.steal_pct:.0f} %")
            parts.append(f"worker {self.worker_cpu_pct:.0f} %")
        if self.gpu_other_processes is not None:
            parts.append(f"GPU: {self.gpu_other_processes} other process(es)")
        if self.gpu_sm_clock_min_mhz is not None:
            parts.append(f"SM clock {self.gpu_sm_clock_min_mhz}–{self.gpu_sm_clock_max_mhz} MHz")
        if self.gpu_throttle_reasons:
            parts.append("throttled: " + ", ".join(self.gpu_throttle_reasons))
        return "; ".join(parts)


def _busy_and_steal(times) -> tuple[float, float | None]:
    """CPU-seconds spent working and (Linux) stolen, from psutil cpu_times.

    Idle and I/O wait are not work; on Linux guest time is already inside user time, and
    steal is time the CPU was not ours at all, counted apart.
    """
    values = times._asdict()
    not_busy = sum(values.get(k, 0.0) for k in ("idle", "iowait", "steal", "guest", "guest_nice"))
    return sum(values.values()) - not_busy, values.get("steal")


def _cpu_seconds(process: psutil.Process) -> float:
    """The process's CPU time including children it has reaped (a finished subprocess.run)."""
    t = process.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


class ContentionSampler:
    """Samples the machine in a background thread while one worker process runs.

    ``cell_pids`` are the cell's other processes (the local peer workers of a multi-worker
    cell): they and their descendants count as the cell's own CPU time, not as other load.

    ``start()`` takes the first sample at once, ``stop()`` takes a last one and returns a
    :class:`Contention`. Call ``stop()`` as soon as the worker ends: the window ends at the
    last sample that saw the worker alive, so nothing after the cell is counted.
    """

    def __init__(self, worker_pid: int, usable_cpus: float | None = None, interval_s: float = 0.5,
                 gpu_index: int | None = None, scan_every_s: float = SCAN_EVERY_S,
                 cell_pids: Iterable[int] = ()):
        self.worker_pid = worker_pid
        self.cell_pids = tuple(cell_pids)   # the cell's other processes (its local peer workers)
        self.usable_cpus = usable_cpus or detect_usable_cpus().count
        self.interval_s = interval_s
        self.gpu_index = gpu_index
        self.scan_every_s = scan_every_s
        self.cpus = self._measured_cpus()
        self.notes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="contention-sampler", daemon=True)
        self._tree: dict[int, psutil.Process] = {}       # the worker and its descendants
        self._other_cpu: dict[tuple[int, float], tuple[str, float, float]] = {}  # (pid, created)
        # -> (name, CPU-seconds at first scan, at last scan)
        self._last_scan = 0.0
        self._first: Sample | None = None
        self._last_alive: Sample | None = None      # the last sample that saw the worker alive
        self._loads: list[float] = []
        self._gpu: GpuSensor | None = None
        self._started_at = time.time()              # reset by start()
        self.samples = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ContentionSampler:
        self._started_at = time.time()
        try:
            self._tree = {self.worker_pid: psutil.Process(self.worker_pid)}
        except psutil.Error:
            self.notes.append("worker had ended before sampling started")
        for pid in self.cell_pids:       # the cell's own work, not competition
            try:
                self._tree[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        if self.gpu_index is not None:
            self._gpu = GpuSensor(self.gpu_index)
            if self._gpu.error:
                self.notes.append(self._gpu.error)
        self._scan()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> Contention:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 4 * self.interval_s))
        self._scan()
        self._sample()
        if self._gpu is not None:
            self._gpu.close()
        return self._result()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if time.monotonic() - self._last_scan >= self.scan_every_s:
                self._scan()
            self._sample()

    # ------------------------------------------------------------------ measuring

    def _measured_cpus(self) -> list[int] | None:
        """The CPU numbers the process may run on, when that is fewer than all of them:
        load on the other CPUs does not compete and is not counted."""
        try:
            affinity = sorted(psutil.Process().cpu_affinity())
        except (AttributeError, psutil.Error, OSError):
            return None
        total = psutil.cpu_count(logical=True) or 0
        return affinity if 0 < len(affinity) < total else None

    def _system_times(self) -> tuple[float, float | None]:
        if self.cpus is None:
            return _busy_and_steal(psutil.cpu_times())
        per_cpu = psutil.cpu_times(percpu=True)
        pairs = [_busy_and_steal(per_cpu[i]) for i in self.cpus if i < len(per_cpu)]
        steals = [s for _, s in pairs if s is not None]
        return sum(b for b, _ in pairs), (sum(steals) if len(steals) == len(pairs) else None)

    def _worker_seconds(self) -> tuple[float, bool]:
        """CPU-seconds of the worker tree's live members, and whether the worker is alive."""
        total, alive = 0.0, False
        for pid, process in list(self._tree.items()):
            try:
                total += _cpu_seconds(process)
                alive |= pid == self.worker_pid and process.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                self._tree.pop(pid, None)
        return total, alive

    def _sample(self) -> None:
        now = time.monotonic()
        try:
            busy, steal = self._system_times()
            worker, alive = self._worker_seconds()
        except (psutil.Error, OSError):
            return
        point = Sample(now, busy, steal, worker)
        if self._first is None:
            self._first = point
        if alive or self._last_alive is None:
            self._last_alive = point
        elif self.samples:
            return                      # the worker has ended: outside the cell's window
        self.samples += 1
        try:
            self._loads.append(psutil.getloadavg()[0])
        except (OSError, AttributeError):
            pass
        if self._gpu is not None:
            self._gpu.sample(set(self._tree) | {self.worker_pid})

    def _scan(self) -> None:
        """Walk the process table: adopt the worker's new descendants, account other processes."""
        self._last_scan = time.monotonic()
        processes = list(psutil.process_iter(["ppid", "name", "cpu_times", "create_time"],
                                             ad_value=None))
        tree_pids = set(self._tree)
        children: dict[int | None, list[psutil.Process]] = {}
        for process in processes:
            children.setdefault(process.info["ppid"], []).append(process)
        stack = list(tree_pids)
        while stack:
            for child in children.get(stack.pop(), []):
                if child.pid not in tree_pids:
                    tree_pids.add(child.pid)
                    self._tree[child.pid] = child
                    stack.append(child.pid)
        for process in processes:
            info = process.info
            if process.pid in tree_pids or info["cpu_times"] is None or info["create_time"] is None:
                continue
            seconds = info["cpu_times"].user + info["cpu_times"].system
            key = (process.pid, info["create_time"])
            if key in self._other_cpu:
                name, first, _ = self._other_cpu[key]
                self._other_cpu[key] = (name, first, seconds)
            else:            # born during the cell: all of its time counts
                born_inside = info["create_time"] >= self._started_at
                self._other_cpu[key] = (info["name"] or "?", 0.0 if born_inside else seconds,
                                        seconds)

    # ------------------------------------------------------------------ the result

    def _result(self) -> Contention:
        if self._first is None or self._last_alive is None:
            return Contention(wall_s=0.0, usable_cpus=self.usable_cpus, notes=tuple(self.notes))
        measured_cpus = len(self.cpus) if self.cpus else psutil.cpu_count(logical=True) or 1
        shares = cpu_shares(self._first, self._last_alive, self.usable_cpus, measured_cpus)
        capacity = shares.wall_s * self.usable_cpus
        (busiest_pid, _), busiest = max(self._other_cpu.items(), key=lambda kv: kv[1][2] - kv[1][1],
                                        default=((None, None), None))
        gpu = self._gpu.reading() if self._gpu is not None else None
        return Contention(
            wall_s=shares.wall_s, usable_cpus=self.usable_cpus, samples=self.samples,
            other_cpu_pct=shares.other_pct, worker_cpu_pct=shares.worker_pct, steal_pct=shares.steal_pct,
            load_avg_1m_max=round(max(self._loads), 2) if self._loads else None,
            load_avg_1m_mean=round(sum(self._loads) / len(self._loads), 2) if self._loads else None,
            busiest_other_name=f"{busiest[0]} (pid {busiest_pid})" if busiest else None,
            busiest_other_cpu_pct=(round(100 * (busiest[2] - busiest[1]) / capacity, 1)
                                   if busiest and capacity > 0 else None),
            gpu_other_processes=gpu.other_processes if gpu else None,
            gpu_sm_clock_min_mhz=gpu.sm_clock_min_mhz if gpu else None,
            gpu_sm_clock_mean_mhz=gpu.sm_clock_mean_mhz if gpu else None,
            gpu_sm_clock_max_mhz=gpu.sm_clock_max_mhz if gpu else None,
            gpu_throttle_reasons=gpu.throttle_reasons if gpu else None,
            notes=tuple(self.notes))
