"""Energy of a cell's steady window: GPU board (NVML) or CPU package and DRAM (RAPL powercap).

Three layers, each usable on its own:

* **Counters** read a cumulative energy figure: the GPU board's energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer), the board's power integrated
  over samples where that counter is missing, or the RAPL ``energy_uj`` files of the
  packages (and DRAM) the cell's CPUs belong to, with wrap-around handled.
* **Meters** (:class:`CounterMeter`): ``start()`` / ``stop()`` -> an :class:`EnergyReading`.
  Where nothing can be measured, :class:`UnavailableMeter` gives a reading that says why
  instead of a number: never 0, never a guess.
* **The Keras callback** (:func:`energy_callback`, worker only: it imports Keras) starts the
  meter at the first steady step and stops it when ``fit`` ends, both right after a synced
  step; a window shorter than the minimum asks the training loop for more steady steps
  (:func:`steps_to_add`).

:class:`EnergyColumns` declares the runs.csv columns once. Zeus (PyPI ``zeus``) does the
measuring part too, but pulls scikit-learn, pydantic, httpx, tyro and amdsmi, polls RAPL in
one process per file under a fixed ``/sys`` path, and does not attribute a shared package
to the CPUs a cell could use; these readers are small and testable against fake directories.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

try:
    import pynvml  # nvidia-ml-py
except ImportError:  # pragma: no cover - a declared dependency
    pynvml = None

POWERCAP_ROOT = Path("/sys/class/powercap")
CPU_SYSFS = Path("/sys/devices/system/cpu")
#: Energy counters update about every 100 ms and power drifts as a device warms: windows
#: shorter than this are extended with more steady steps (``--energy-window``).
DEFAULT_MIN_WINDOW_S = 30.0
#: Idle power is measured over this long before the cell trains (several counter updates).
IDLE_WINDOW_S = 3.0
#: How often the RAPL counters are read while a window is open, so that no wrap is missed:
#: a package counter spans about 262 kJ, which even 1 kW takes minutes to fill.
RAPL_POLL_S = 10.0
#: How often board power is sampled on a GPU without an energy counter.
POWER_SAMPLE_S = 0.1

_RAPL_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")   # AMD exposes the same names
_PACKAGE_NAME = re.compile(r"^package-(\d+)(?:-die-\d+)?$")


class EnergyUnavailable(Exception):
    """A counter cannot be read; the message says why, for the row."""


@dataclass(frozen=True)
class EnergyReading:
    """What a meter measured over one window, or why it could not (``joules`` None).

    Crosses the worker/runner boundary (``to_dict``/``from_dict``). ``steps`` are the
    training steps inside the window (the callback sets them; an idle reading has none).
    """

    covers: str                      # "GPU board", "CPU package-0 + DRAM, 4 of 16 CPUs attributed"
    seconds: float                   # window length (wall clock, edges synced)
    joules: float | None = None
    method: str = ""                 # how: "NVML energy counter", "RAPL powercap counters", ...
    unavailable: str = ""            # why joules is None
    steps: int = 0
    segments: int = 1                # windows summed into this one (each extension adds one)

    def __post_init__(self):
        """Checked when made: a worker's reading crosses a process boundary as untrusted JSON."""
        from cifar_model.results import check_types

        check_types(self)
        numbers = (self.seconds, *(() if self.joules is None else (self.joules,)))
        if not all(math.isfinite(n) and n >= 0 for n in numbers) or self.steps < 0 or self.segments < 1:
            raise ValueError(f"EnergyReading: seconds, joules and steps must be finite and >= 0 "
                             f"(got {self.seconds!r}, {self.joules!r}, {self.steps!r})")

    @property
    def watts(self) -> float | None:
        return self.joules / self.seconds if self.joules is not None and self.seconds > 0 else None

    def plus(self, later: EnergyReading) -> EnergyReading:
        """This window and a later one of the same meter, as one (energy, time and steps add)."""
        joules = None if self.joules is None or later.joules is None else self.joules + later.joules
        return replace(self, seconds=self.seconds + later.seconds, joules=joules,
                       unavailable=self.unavailable or later.unavailable,
                       steps=self.steps + later.steps, segments=self.segments + later.segments)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> EnergyReading:
        if not isinstance(data, Mapping):
            raise TypeError(f"EnergyReading: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EnergyReading: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------- counters


class EnergyCounter(Protocol):
    """A cumulative energy figure in joules from an arbitrary zero; raises EnergyUnavailable."""

    def joules(self) -> float: ...

    def close(self) -> None: ...


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read(64)          # counters are short numbers: bound what is read


@dataclass(frozen=True)
class RaplDomain:
    """One powercap zone: a package (``package-N``) or its DRAM subzone."""

    path: Path
    name: str                        # "package-0", "dram"
    package: int
    max_range_uj: int


class RaplCounter:
    """The energy of some RAPL domains, with wrap-around, times the share attributed to the cell.

    ``energy_uj`` counts up to ``max_energy_range_uj`` and starts again at 0; each read
    adds the difference to the last read, so a counter read at least once per wrap
    (:data:`RAPL_POLL_S`) is never short.
    """

    def __init__(self, domains: Sequence[RaplDomain], share: float = 1.0,
                 read: Callable[[Path], str] = _read_text):
        self.domains = tuple(domains)
        self.share = share
        self.read = read
        self._last_uj: dict[Path, int] = {}
        self._total_uj: dict[Path, int] = {d.path: 0 for d in self.domains}

    def joules(self) -> float:
        for domain in self.domains:
            raw = _read_energy_uj(domain.path / "energy_uj", self.read)
            last = self._last_uj.get(domain.path)
            if last is not None:
                self._total_uj[domain.path] += raw - last if raw >= last else domain.max_range_uj - last + raw
            self._last_uj[domain.path] = raw
        return self.share * sum(self._total_uj.values()) / 1e6

    def close(self) -> None:
        pass


def _read_energy_uj(path: Path, read: Callable[[Path], str]) -> int:
    try:
        return int(read(path).strip())
    except PermissionError:
        raise EnergyUnavailable(f"{path} is readable only by root on this kernel (RAPL); run as root "
                                f"or grant read access (chmod o+r {path.parent}/energy_uj)") from None
    except (OSError, ValueError) as error:
        raise EnergyUnavailable(f"cannot read {path}: {error}") from None


class NvmlEnergyCounter:
    """The boards' cumulative energy counters (mJ since the driver loaded; Volta and newer)."""

    def __init__(self, handles: Sequence):
        self.handles = tuple(handles)

    def joules(self) -> float:
        try:
            return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles) / 1000
        except pynvml.NVMLError as error:
            raise EnergyUnavailable(f"NVML energy counter failed: {error}") from None

    def close(self) -> None:
        _nvml_shutdown()


class NvmlPowerIntegrator:
    """Board power (mW) sampled on every read and integrated by the trapezoid rule.

    For GPUs older than Volta, which have no energy counter: the meter reads it every
    :data:`POWER_SAMPLE_S`, and the reading says that the energy was sampled.
    """

    def __init__(self, handles: Sequence, clock: Callable[[], float] = time.perf_counter):
        self.handles = tuple(handles)
        self.clock = clock
        self._total_j = 0.0
        self._last: tuple[float, float] | None = None      # (time, watts)

    def joules(self) -> float:
        try:
            watts = sum(pynvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000
        except pynvml.NVMLError as error:
            raise EnergyUnavailable(f"NVML power reading failed: {error}") from None
        now = self.clock()
        if self._last is not None:
            self._total_j += (now - self._last[0]) * (watts + self._last[1]) / 2
        self._last = (now, watts)
        return self._total_j

    def close(self) -> None:
        _nvml_shutdown()


def _nvml_shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass


# ---------------------------------------------------------------------------- meters


class EnergyMeter(Protocol):
    covers: str

    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...

    def close(self) -> None: ...


class CounterMeter:
    """Energy between ``start()`` and ``stop()`` from a counter, read in the background every
    ``poll_s`` where the counter needs it (RAPL wraps, sampled power); ``None``: only at the edges.
    """

    def __init__(self, counter: EnergyCounter, covers: str, method: str, poll_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.counter = counter
        self.covers = covers
        self.method = method
        self.poll_s = poll_s
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: tuple[float, float] | None = None   # (time, joules) at start
        self._error: str = ""

    def start(self) -> None:
        self._error = ""
        self._started = (self.clock(), self._read())
        if self.poll_s:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="energy-poll", daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReading:
        if self._started is None:
            raise RuntimeError("stop() before start()")
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        ended, joules = self.clock(), self._read()
        started_at, started_joules = self._started
        self._started = None
        seconds = ended - started_at
        if self._error or math.isnan(joules) or math.isnan(started_joules):
            return EnergyReading(self.covers, seconds, method=self.method,
                                 unavailable=self._error or "the counter failed")
        return EnergyReading(self.covers, seconds, joules - started_joules, method=self.method)

    def close(self) -> None:
        self.counter.close()

    def _read(self) -> float:
        with self._lock:
            try:
                return self.counter.joules()
            except EnergyUnavailable as error:
                self._error = self._error or str(error)
                return math.nan

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._read()


class UnavailableMeter:
    """A meter for what cannot be measured here: its readings carry the reason, no number."""

    def __init__(self, covers: str, reason: str, clock: Callable[[], float] = time.perf_counter):
        self.covers = covers
        self.reason = reason
        self.clock = clock
        self._started: float | None = None

    def start(self) -> None:
        self._started = self.clock()

    def stop(self) -> EnergyReading:
        seconds = self.clock() - self._started if self._started is not None else 0.0
        return EnergyReading(self.covers, seconds, unavailable=self.reason)

    def close(self) -> None:
        pass


def gpu_meter(nvml_indices: Sequence[int]) -> EnergyMeter:
    """The boards' energy counter, or their power sampled where a board has none, or why not.

    ``nvml_indices`` are NVML's (PCI order; NVML ignores ``CUDA_VISIBLE_DEVICES``): a
    cell on ``gpu:N`` passes ``[N]``.
    """
    covers = "GPU board" if len(nvml_indices) == 1 else f"{len(nvml_indices)} GPU boards"
    if pynvml is None:
        return UnavailableMeter(covers, "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return UnavailableMeter(covers, f"NVML unavailable ({error}): no NVIDIA driver or no GPU access")
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in nvml_indices]
    except pynvml.NVMLError as error:
        _nvml_shutdown()
        return UnavailableMeter(covers, f"NVML has no GPU {list(nvml_indices)}: {error}")
    counter = NvmlEnergyCounter(handles)
    try:
        counter.joules()
        return CounterMeter(counter, covers, "NVML energy counter")
    except EnergyUnavailable as missing:
        sampled = NvmlPowerIntegrator(handles)
        try:
            sampled.joules()
        except EnergyUnavailable as error:
            _nvml_shutdown()
            return UnavailableMeter(covers, f"{missing}; {error}")
        return CounterMeter(sampled, covers, f"NVML power sampled every {POWER_SAMPLE_S:g} s "
                                             "(no energy counter on this GPU: before Volta)", POWER_SAMPLE_S)


def rapl_domains(root: Path = POWERCAP_ROOT, read: Callable[[Path], str] = _read_text) -> list[RaplDomain]:
    """Every RAPL package and DRAM zone under ``root`` (other subzones and psys are left out:
    the package already holds core and uncore, and psys spans the whole platform)."""
    names = {}
    for zone in sorted(root.glob("intel-rapl:*")):
        match = _RAPL_ZONE.match(zone.name)
        if match and (zone / "name").is_file():
            names[zone.name] = (match, read(zone / "name").strip())
    domains = []
    for zone_name, (match, name) in names.items():
        parent = names.get(f"intel-rapl:{match.group(1)}")
        package = _PACKAGE_NAME.match(parent[1]) if parent else None
        if package is None or (match.group(2) is not None and name != "dram"):
            continue
        path = root / zone_name
        max_range = int(read(path / "max_energy_range_uj").strip())
        domains.append(RaplDomain(path, name, int(package.group(1)), max_range))
    return domains


def package_cpus(cpu_root: Path = CPU_SYSFS, read: Callable[[Path], str] = _read_text) -> dict[int, int]:
    """Logical CPU number -> the package (socket) it belongs to."""
    out = {}
    for path in cpu_root.glob("cpu[0-9]*/topology/physical_package_id"):
        out[int(path.parent.parent.name[3:])] = int(read(path).strip())
    return out


def cpu_meter(affinity: Collection[int], usable: float, root: Path = POWERCAP_ROOT,
              cpu_root: Path = CPU_SYSFS, read: Callable[[Path], str] = _read_text) -> EnergyMeter:
    """RAPL energy of the packages (and DRAM) the cell's CPUs are on, attributed to it by CPUs.

    ``affinity``: the CPUs the worker may run on; ``usable``: how many it may use (the
    cgroup quota can be fewer, :func:`bench.devices.usable_cpus`). When the packages have
    more CPUs than that, the cell is attributed ``usable ÷ package CPUs`` of their energy,
    and the reading says so.
    """
    if not root.is_dir():
        return UnavailableMeter("CPU package", f"no powercap interface ({root} is missing: a VM or "
                                               "container without RAPL, or not Linux)")
    try:
        domains = rapl_domains(root, read)
        package_of = package_cpus(cpu_root, read)
    except (OSError, ValueError) as error:
        return UnavailableMeter("CPU package", f"cannot read RAPL zones under {root}: {error}")
    packages = {package_of.get(cpu, 0) for cpu in affinity} or {0}
    domains = [d for d in domains if d.package in packages]
    if not any(d.name.startswith("package") for d in domains):
        return UnavailableMeter("CPU package", f"no RAPL package zone under {root} for package(s) "
                                               f"{sorted(packages)}")
    total_cpus = sum(1 for p in package_of.values() if p in packages) or len(affinity)
    share = min(1.0, usable / total_cpus) if total_cpus else 1.0
    covers = "CPU " + "+".join(sorted({d.name for d in domains if d.name != "dram"}))
    covers += " + DRAM" if any(d.name == "dram" for d in domains) else " (no DRAM zone)"
    if share < 1.0:
        covers += f", {usable:g} of {total_cpus} package CPUs attributed"
    counter = RaplCounter(domains, share, read)
    try:
        counter.joules()                  # permission and format problems show now, not mid-run
    except EnergyUnavailable as error:
        return UnavailableMeter(covers, str(error))
    return CounterMeter(counter, covers, "RAPL powercap counters", RAPL_POLL_S)


def measure_idle(meter: EnergyMeter, seconds: float = IDLE_WINDOW_S,
                 sleep: Callable[[float], None] = time.sleep) -> EnergyReading:
    """The device's power while nothing is asked of it: call before the cell trains."""
    if isinstance(meter, UnavailableMeter):     # nothing to wait for
        return EnergyReading(meter.covers, 0.0, unavailable=meter.reason)
    meter.start()
    sleep(seconds)
    return meter.stop()


# ---------------------------------------------------------------------------- across the boundary


@dataclass(frozen=True)
class EnergySpec:
    """What the runner asks a worker to measure (in the cell spec; absent: ``--energy`` is off)."""

    min_window_s: float = DEFAULT_MIN_WINDOW_S
    nvml_indices: tuple[int, ...] = ()   # the cell's GPUs in NVML's (PCI) numbering; () for a CPU cell

    def open_meter(self, root: Path = POWERCAP_ROOT, cpu_root: Path = CPU_SYSFS) -> EnergyMeter:
        """The meter for this cell, opened inside the worker (whose CPUs and quota it reads)."""
        if self.nvml_indices:
            return gpu_meter(self.nvml_indices)
        import psutil

        from bench.devices import usable_cpus

        try:
            affinity = psutil.Process().cpu_affinity()
        except (AttributeError, psutil.Error, OSError):    # macOS has no affinity
            affinity = range(psutil.cpu_count() or 1)
        return cpu_meter(affinity, usable_cpus().count, root, cpu_root)

    def to_dict(self) -> dict:
        return {"min_window_s": self.min_window_s, "nvml_indices": list(self.nvml_indices)}

    @classmethod
    def from_dict(cls, data: Mapping) -> EnergySpec:
        return cls(float(data["min_window_s"]), tuple(int(i) for i in data["nvml_indices"]))


@dataclass(frozen=True)
class EnergyResult:
    """What the worker measured: the steady window and the idle power before it."""

    window: EnergyReading
    idle: EnergyReading

    def to_dict(self) -> dict:
        return {"window": self.window.to_dict(), "idle": self.idle.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> EnergyResult:
        if not isinstance(data, Mapping):
            raise TypeError(f"EnergyResult: expected an object, got {type(data).__name__}")
        return cls(EnergyReading.from_dict(data["window"]), EnergyReading.from_dict(data["idle"]))


# ---------------------------------------------------------------------------- the window


def steps_to_add(window_s: float, seconds_per_step: float, min_window_s: float) -> int:
    """More steady steps needed for the energy window to last ``min_window_s`` (0: long enough).

    Counters update about every 100 ms and power drifts while a device warms, so a short
    window measures the counter's granularity, not the work.
    """
    if not window_s < min_window_s:
        return 0
    if not (seconds_per_step > 0 and math.isfinite(seconds_per_step)):
        raise ValueError(f"seconds_per_step must be a positive number, got {seconds_per_step!r}")
    return math.ceil(round((min_window_s - window_s) / seconds_per_step, 9))


def energy_callback(meter: EnergyMeter, warmup_steps: int, min_window_s: float = DEFAULT_MIN_WINDOW_S):
    """The Keras callback that measures the steady window (imports Keras: worker only).

    The meter starts at the first steady step's start and stops after the last step of the
    ``fit`` (Keras's ``self.params``: epochs and steps; else when ``fit`` ends); because
    the callback overrides ``on_train_batch_end``, Keras runs every step synchronously and
    fetches its loss, so both edges come after finished device work. Another ``fit`` with
    the same callback (the extension) adds a window: ``reading`` sums them.
    """
    import keras

    class EnergyWindow(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.meter = meter
            self.warmup_steps = warmup_steps
            self.min_window_s = min_window_s
            self.windows: list[EnergyReading] = []
            self._steps_done = 0          # over every fit, warm-up included
            self._window_steps = 0
            self._measuring = False
            self._first_step = 0
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self._first_step = batch
            if not self._measuring and self._steps_done >= self.warmup_steps:
                self.meter.start()
                self._measuring, self._window_steps = True, 0

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])        # device -> host: the step's work is finished
            steps = batch - self._first_step + 1
            self._steps_done += steps
            if self._measuring:
                self._window_steps += steps
                if self._last_step_of_fit(batch):
                    self._close_window()     # right after the last synced step

        def on_train_end(self, logs=None):
            self._close_window()             # a loop that did not say how many steps it runs

        def _last_step_of_fit(self, batch) -> bool:
            epochs, steps = (self.params or {}).get("epochs"), (self.params or {}).get("steps")
            return epochs is not None and steps is not None and self._epoch == epochs - 1 and batch + 1 >= steps

        def _close_window(self):
            if self._measuring:
                self.windows.append(replace(self.meter.stop(), steps=self._window_steps))
                self._measuring = False

        @property
        def reading(self) -> EnergyReading:
            if not self.windows:
                return EnergyReading(self.meter.covers, 0.0, unavailable=(
                    f"no steady steps to measure (all {self._steps_done} steps were warm-up)"))
            total = self.windows[0]
            for later in self.windows[1:]:
                total = total.plus(later)
            return total

        def extra_steps_wanted(self) -> int:
            """Steady steps the training loop should still run (another fit) for a long enough window."""
            window = self.reading
            if window.joules is None or window.steps == 0:
                return 0                   # nothing to extend: the reading says why
            return steps_to_add(window.seconds, window.seconds / window.steps, self.min_window_s)

    return EnergyWindow()


# ---------------------------------------------------------------------------- the row


def column(doc: str, dtype: str = "float"):
    """A declared runs.csv column: empty by default, its doc and CSV type in its metadata."""
    return field(default=None, metadata={"doc": doc, "dtype": dtype})


class DeclaredColumns:
    """Columns declared once as dataclass fields (:func:`column`): the schema and the row
    derive from the declaration (energy here, cost in :mod:`bench.cost`)."""

    @classmethod
    def schema(cls) -> dict[str, tuple[str, str]]:
        """Column name -> (doc, dtype), the shape ``bench.matrix.columns()`` has."""
        # the subclasses are dataclasses; the mixin itself cannot say so to the type checker
        return {f.name: (f.metadata["doc"], f.metadata["dtype"]) for f in fields(cls)}  # type: ignore[arg-type]

    def as_row(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # a dataclass subclass, as above


@dataclass(frozen=True)
class EnergyColumns(DeclaredColumns):
    """The energy columns of a runs.csv row, declared once (each field's metadata is its doc).

    Numbers are empty where nothing was measured; ``energy_covers`` then says
    "not available: <reason>".
    """

    energy_covers: str | None = column("what the energy covers (GPU board; CPU package-N with or without "
                                        "DRAM, and the share attributed to the cell's CPUs), or "
                                        "'not available: <reason>'", "text")
    energy_method: str | None = column("how it was read: NVML energy counter, NVML power sampled (GPUs "
                                        "before Volta), RAPL powercap counters", "text")
    energy_window_s: float | None = column("length of the measured steady window (wall clock, synced at "
                                            "both edges; extended to --energy-window with more steps)")
    energy_window_images: int | None = column("images trained inside the window (steps x global batch)", "int")
    energy_j: float | None = column("energy over the window (J)")
    energy_avg_w: float | None = column("energy_j / energy_window_s (W)")
    energy_j_per_1k_images: float | None = column("1000 x energy_j / energy_window_images")
    energy_idle_w: float | None = column("the device's power while idle, measured for a few seconds before "
                                          "the cell trained (same coverage as energy_covers)")
    energy_above_idle_j_per_1k_images: float | None = column(
        "1000 x (energy_avg_w - energy_idle_w) x energy_window_s / energy_window_images")
    energy_seed_run_kwh: float | None = column("projected energy of the notebook's run (26 epochs x "
                                                "40,000 images) at energy_j_per_1k_images (kWh)")

    @classmethod
    def build(cls, window: EnergyReading, idle: EnergyReading | None, global_batch_size: int,
              seed_run_images: int) -> EnergyColumns:
        """The row's figures from the steady window and the idle reading before it."""
        if window.joules is None:
            return cls(energy_covers=f"not available: {window.unavailable}", energy_method=window.method or None)
        images = window.steps * global_batch_size
        per_image = window.joules / images if images else None
        idle_w = idle.watts if idle is not None else None
        window_w = window.watts
        above = (None if idle_w is None or window_w is None or not images
                 else (window_w - idle_w) * window.seconds / images)
        return cls(energy_covers=window.covers, energy_method=window.method,
                   energy_window_s=window.seconds, energy_window_images=images, energy_j=window.joules,
                   energy_avg_w=window.watts,
                   energy_j_per_1k_images=None if per_image is None else 1000 * per_image,
                   energy_idle_w=idle_w,
                   energy_above_idle_j_per_1k_images=None if above is None else 1000 * above,
                   energy_seed_run_kwh=None if per_image is None else per_image * seed_run_images / 3.6e6)


def describe_energy(row: Mapping) -> str:
    """A table cell: J per 1,000 images and what it covers, or why there is no figure."""
    value = row.get("energy_j_per_1k_images")
    covers = row.get("energy_covers")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:,.1f} J/1k images ({covers})"
    if isinstance(covers, str) and covers:
        return covers
    return "not measured (run without --energy)"
