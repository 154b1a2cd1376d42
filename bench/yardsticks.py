"""Yardsticks: what a cell's speed is measured against, and which one each cell gets.

Two yardsticks, kept apart:

- the **measured peak** (:class:`MeasuredPeak`): a large dense matrix multiply through the
  cell's own backend, in the precision's compute dtype, timed in a worker subprocess that
  sees only that device. A peak is a property of what the process could use, so it is keyed
  by device, precision, threads, backend and its version, *and the CPUs the process may use*
  (affinity, cgroup quota): a run pinned to one core can never become the yardstick of a run
  on two. Cached per machine in ``<results>/peaks/<machine>.json``, read and updated under a
  lock so concurrent runs lose nothing. The cache is untrusted: it is read bounded, each entry
  parsed strictly, and a damaged one is measured again (one warning line).
- the **theoretical peak** (:class:`TheoreticalPeak`): what the hardware could compute at
  best, from the datasheet (GPU) or cores x clock x FLOPs/cycle scaled to the usable CPUs
  (CPU). Unknown means None with a reason, never a guess.

Each measured peak says the math its matmul ran in (``math``, one of
:data:`cifar_model.settings.MATHS`): on an Ampere-or-newer GPU an "fp32" matmul may run in
TF32, several times faster than IEEE fp32. A GPU entry from before entries said so is never
reused (measured again); on a CPU, fp32 is always IEEE, so old entries still hold.

:func:`for_cell` decides, once, what a finished cell is measured against: never a peak in
another math than the cell's, never one measured while other processes competed for the
device (it would be too low: efficiency above 100 %), never one device's peak for a cell of
several replicas; each refusal says why in the row's ``peak_note``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import devices, files, matrix, process, store
from bench.contention import ContentionSampler
from bench.devices import Requested
from bench.environment import machine_id
from bench.launch import backend_missing, worker_environment
from bench.protocol import PeakSpec
from cifar_model.results import TrainResult, check_types, strict_fields
from cifar_model.settings import PRECISIONS

MATMUL_SIZE = {"CPU": 2048, "GPU": 8192}   # large enough to reach the plateau (2048 ~ 4096 on a CPU)
PEAK_TIMEOUT_S = 600
PEAK_COMMAND = (*process.WORKER_COMMAND, "--peak")
#: The largest peak cache read: a few hundred bytes an entry, thousands of entries.
MAX_CACHE_BYTES = 16 * 2**20

PeakKey = tuple[str, str, int, str]        # (device id, precision, threads, backend)


def math_of(precision: str) -> str:
    """The math a precision computes in (``tf32`` passes through: a GPU's fp32 alternative)."""
    return PRECISIONS[precision].math if precision in PRECISIONS else precision


def _prose(math_word: str) -> str:
    return "fp32" if math_word == "ieee" else math_word


# --------------------------------------------------------------------------- measured

@dataclass(frozen=True)
class MeasuredPeak:
    """One device's measured matmul peak in one precision: the record a peak worker sends, the
    cache keeps and a row is measured against. Its fields are declared here only; ``as_dict``
    and the strict ``from_dict`` derive from them."""

    precision: str
    dtype: str                          # the dtype the matmul ran in
    size: int                           # size x size matrices
    repeats: int                        # timed multiplies
    tflops: float                       # the best of them
    median_tflops: float
    math: str = ""                      # ieee, tf32, bf16, fp16 ("": from before peaks said)
    math_note: str = ""                 # the backend setting that decided ``math``
    compute_dtype_tflops: float | None = None   # the precision's own dtype, when a float32 one won
    note: str = ""                      # why the yardstick is another dtype's matmul
    busy: str = ""                      # what else used the machine meanwhile ("": nothing notable)
    cached: bool = False                # read from the cache, not measured by this run

    def __post_init__(self):
        check_types(self)
        for name in ("tflops", "median_tflops", "compute_dtype_tflops"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"MeasuredPeak.{name} must be a finite number above 0 (got {value!r})")
        if self.size < 1 or self.repeats < 1:
            raise ValueError(f"MeasuredPeak: size and repeats must be >= 1 (got {self.size}, {self.repeats})")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> MeasuredPeak:
        """Strictly: a missing or unknown field or a value of the wrong type is a ValueError."""
        try:
            return cls(**strict_fields(cls, data))
        except TypeError as exc:
            raise ValueError(f"MeasuredPeak: {exc}") from None

    def reusable_on(self, device_type: str) -> bool:
        """Whether a cached entry may serve now: on a GPU only one that says its math."""
        return device_type != "GPU" or bool(self.math)

    def describe(self) -> str:
        """One line: the rate, how it was measured, where it came from."""
        return (f"{self.tflops:.3f} TFLOP/s, best of {self.repeats} {self.size}x{self.size} {self.dtype} "
                f"matmuls{f' ({self.math})' if self.math else ''}{' (cached)' if self.cached else ''}")


def cache_key(device_id: str, precision: str, cpu_threads: int, backend: str,
              version: str | None, usable_cpus) -> str:
    return (f"{device_id}|{precision}|threads={cpu_threads}|{backend}={version}"
            f"|usable_cpus={usable_cpus}")


def cache_path(env: dict, root: Path) -> Path:
    return Path(root) / f"{machine_id(env)}.json"


def read_cache(path: Path) -> tuple[dict[str, MeasuredPeak], str]:
    """The cache's valid entries, and what was wrong with it ("" when nothing was). Bounded: a
    file that is not a regular one (a link to ``/dev/zero``), too large, not JSON, nested too
    deep or not an object reads as empty; an entry that is not a :class:`MeasuredPeak` is left out."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return {}, "not a regular file"
        with open(path, "rb") as file:
            raw = file.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"unreadable ({exc.strerror or exc})"
    if len(raw) > MAX_CACHE_BYTES:
        return {}, f"larger than {MAX_CACHE_BYTES // 2**20} MiB"
    try:
        loaded = json.loads(raw)
    except RecursionError:
        return {}, "nested too deep"
    except ValueError:
        return {}, "not JSON"
    if not isinstance(loaded, dict):
        return {}, "not a JSON object"
    entries, damaged = {}, []
    for key, value in loaded.items():
        try:
            entries[key] = MeasuredPeak.from_dict(value)
        except ValueError as exc:
            damaged.append(str(exc))
    why = f"{len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'} ({damaged[0][:200]})" if damaged else ""
    return entries, why


def measure(device: Requested, precisions: list[str], cpu_threads: int, backend: str,
            log_path: Path, timeout_s: float = PEAK_TIMEOUT_S, command=PEAK_COMMAND) -> dict[str, MeasuredPeak]:
    """Time the matrix multiply on ``device`` in each precision (one worker process); each peak
    says, in ``busy``, whether other processes competed for the device meanwhile."""
    if device.found is None:
        raise ValueError(f"{device.id}: no peak for a device not on this machine ({device.reason})")
    spec = PeakSpec(tuple(precisions), MATMUL_SIZE[device.found.type], cpu_threads, backend)
    gpu = device.found.index if device.found.type == "GPU" else None
    outcome = process.run_worker(
        spec.to_json(), worker_environment(device, backend), log_path, timeout_s, command=command,
        parse_result=lambda raw: _peak_result(raw, precisions),
        watch=lambda pid: ContentionSampler(pid, gpu_index=gpu, interval_s=0.25).start())
    if outcome.result is None:
        raise RuntimeError(f"peak measurement on {device.id} ({backend}) failed: {outcome.reason}")
    contention = outcome.watched
    busy = contention.describe() if contention is not None and contention.busy() else ""
    return {precision: dataclasses.replace(value, busy=busy) for precision, value in outcome.result.items()}


def _peak_result(raw, precisions: list[str]) -> dict[str, MeasuredPeak]:
    """A peak worker's result: each precision asked for, mapped to a :class:`MeasuredPeak`."""
    if not isinstance(raw, dict) or sorted(raw) != sorted(precisions):
        raise ValueError(f"a peak result maps each of {', '.join(precisions)} to a measured peak")
    return {precision: MeasuredPeak.from_dict(value) for precision, value in raw.items()}


def peaks_for(combos: Iterable[tuple[Requested, str, int, str]], env: dict, versions: dict,
              root: Path, log_dir: Path, refresh: bool = False, say=print,
              command=PEAK_COMMAND) -> dict[PeakKey, MeasuredPeak]:
    """Peak of each (device, precision, threads, backend), from the cache or measured now.

    A device whose measurement fails gets no peak (its cells have no efficiency) and the
    reason is said; the run goes on. A peak measured on a busy machine is returned (the
    ``peak`` command shows it) but never cached, and :func:`for_cell` never uses it.
    """
    usable = (env.get("cpu") or {}).get("usable_cpus")
    path = cache_path(env, root)
    cached, damage = read_cache(path)
    if damage:
        say(f"warning: peak cache {path}: {damage}; ignored, those peaks are measured again")
    wanted: dict[tuple[str, int, str], tuple[Requested, list[str]]] = {}
    found: dict[PeakKey, MeasuredPeak] = {}
    keys = {}
    for device, precision, threads, backend in combos:
        if device.found is None:
            raise ValueError(f"{device.id}: no peak for a device not on this machine ({device.reason})")
        key = cache_key(device.id, precision, threads, backend, versions.get(backend), usable)
        keys[(device.id, precision, threads, backend)] = key
        entry = cached.get(key)
        if not refresh and entry is not None and entry.reusable_on(device.found.type):
            found[(device.id, precision, threads, backend)] = dataclasses.replace(entry, cached=True)
        else:
            todo = wanted.setdefault((device.id, threads, backend), (device, []))
            if precision not in todo[1]:
                todo[1].append(precision)
    if wanted:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the measurement does not need its log; it says so itself
            say(f"warning: {log_dir}: cannot create ({exc.strerror or exc}); peak logs not kept")
    measured_now: dict[str, MeasuredPeak] = {}
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
            if value.busy:
                say(f"peak {device_id} {backend} {precision} measured on a busy machine ({value.busy}): "
                    "not a yardstick (no efficiency this run) and not cached")
            else:
                measured_now[keys[(device_id, precision, threads, backend)]] = value
            found[(device_id, precision, threads, backend)] = value
    if measured_now:
        try:
            files.update_json(path, lambda current: {
                **{k: v.as_dict() for k, v in read_cache(path)[0].items()},
                **{k: v.as_dict() for k, v in measured_now.items()}})
        except OSError as exc:
            say(f"warning: peak cache {path} not updated ({exc.strerror or exc}); "
                "the peaks measured now are used for this run only")
    return found


def measured_peaks(combos, env: dict, root: Path, log_dir: Path, refresh: bool, say) -> dict[PeakKey, MeasuredPeak]:
    """:func:`peaks_for` with the backends' versions from ``env``, each peak said in one line."""
    versions = {b: v.get("version") for b, v in (env.get("backends") or {}).items() if isinstance(v, dict)}
    versions.setdefault("tensorflow", (env.get("tensorflow") or {}).get("version"))  # runs before "backends"
    found = peaks_for(combos, env, versions, store.peaks_dir(root), log_dir, refresh=refresh, say=say)
    for (device_id, precision, threads, backend), value in found.items():
        say(f"peak {device_id} {backend} {precision} (threads {threads or 'default'}): {value.describe()}")
    return found


def peak_table(found: dict[PeakKey, MeasuredPeak]) -> str:
    """The measured peaks as a Markdown table, each saying how it was measured."""
    import pandas as pd

    rows = [{"Device": device_id, "Backend": backend, "Precision": precision,
             "Threads": threads or "default",
             "Matmul": f"{v.size}×{v.size} {v.dtype}{f' ({v.math})' if v.math else ''}",
             "Peak TFLOP/s (best)": f"{v.tflops:.3f}", "Median TFLOP/s": f"{v.median_tflops:.3f}",
             "Repeats": v.repeats, "Cached": "yes" if v.cached else "no"}
            for (device_id, precision, threads, backend), v in found.items()]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def peak_combinations(cells: list[matrix.Cell]) -> list[tuple[Requested, str, int, str]]:
    """Each (usable device, precision, threads, backend) the cells need a peak for, in plan order."""
    combos: dict[tuple[str, str, int, str], tuple[Requested, str, int, str]] = {}
    for cell in cells:
        if cell.device.found is not None and cell.device.found.usable and backend_missing(cell["backend"]) is None:
            key = (cell.device.id, cell["precision"], cell["cpu_threads"], cell["backend"])
            combos.setdefault(key, (cell.device, *key[1:]))
    return list(combos.values())


# --------------------------------------------------------------------------- theoretical

@dataclass(frozen=True)
class TheoreticalPeak:
    """A theoretical peak in TFLOP/s, or None; ``basis`` says how it was reached or why not."""

    tflops: float | None
    basis: str


# fp32 FLOPs per cycle per core, by the widest vector unit: lanes x 2 (an FMA is two FLOPs)
# x FMA units. A peak must be an upper bound (efficiency above 100 % means a wrong
# yardstick), so where the unit count varies between models the larger count is taken:
# on this project's Zen 5 EPYC, training reached 0.335 bf16 TFLOP/s, above the 0.33 that
# one 512-bit FMA unit would allow. Models with fewer units reach half of what is written.
CPU_FP32_FLOPS_PER_CYCLE = (
    ("avx512f", 64, "AVX-512: 16 lanes x 2 (FMA) x 2 FMA units (Xeon Gold/Platinum, Sapphire "
                    "Rapids, Zen 5; Xeon Silver, client Ice Lake and Zen 4 reach half)"),
    ("fma", 32, "AVX2+FMA: 8 lanes x 2 (FMA) x 2 FMA units (Haswell and later, Zen 2 and later)"),
    ("avx", 16, "AVX without FMA: one 8-lane add + one 8-lane multiply per cycle"),
    ("asimd", 16, "Arm NEON: 4 lanes x 2 (FMA) x 2 FMA pipes (Neoverse N1 class; Apple M and "
                  "Neoverse V cores have 4: double this)"),
    ("sse2", 8, "SSE: one 4-lane add + one 4-lane multiply per cycle"),
)


def cpu_flops_per_cycle(flags: set[str], math: str) -> tuple[int | None, str]:
    """FLOPs per cycle per core in ``math`` ("ieee", "bf16", "fp16"), and why that number."""
    flags = {f.lower().replace("_", "") for f in flags}
    fp32 = next(((n, why) for flag, n, why in CPU_FP32_FLOPS_PER_CYCLE if flag in flags), None)
    if fp32 is None:
        return None, "no known vector instruction set in the CPU flags"
    n, why = fp32
    if math == "bf16" and "amxbf16" in flags:
        return None, ("unknown: AMX present (Intel quotes 1,024 bf16 FLOPs/cycle/core; "
                      "not verified here, and oneDNN decides per layer whether to use it)")
    if math == "bf16" and "avx512bf16" in flags:
        return 2 * n, f"AVX512_BF16 dot products: 2 x fp32 ({why})"
    if math == "fp16" and "avx512fp16" in flags:
        return 2 * n, f"AVX512_FP16: 2 x fp32 ({why})"
    if math in ("bf16", "fp16"):
        return n, f"no native {math} arithmetic: computed in fp32 ({why})"
    return n, why


def cpu_clock_hz() -> float | None:
    """The CPU's highest clock, when the OS reports one (psutil's maximum frequency), else None.

    py-cpuinfo's advertised figure is the base clock (or, on a VM, the current one), which
    turbo exceeds: a peak built on it is no upper bound. Measured here: a VM reporting
    2.60 GHz ran a bf16 matmul at 0.81 TFLOP/s against a "theoretical" 0.665. So without a
    reported maximum the theoretical peak is unknown, and says why.
    """
    freq = psutil.cpu_freq()
    return freq.max * 1e6 if freq and freq.max else None


def cpu_peak(precision: str = "fp32", *, flags: set[str] | None = None,
             physical_cores: int | None = None, logical_cpus: int | None = None,
             clock_hz: float | None = None, usable_cpus: float | None = None) -> TheoreticalPeak:
    """Cores x clock x FLOPs/cycle, scaled to the usable CPUs; the machine's values by default.

    With SMT, two logical CPUs share one core's vector units: a process allowed 1 of 2
    logical CPUs on 1 core gets half that core.
    """
    math = math_of(precision)
    flags = devices.cpu_flags() if flags is None else flags
    logical_cpus = logical_cpus or psutil.cpu_count(logical=True) or 1
    physical_cores = physical_cores or psutil.cpu_count(logical=False) or logical_cpus
    clock_hz = clock_hz or cpu_clock_hz()
    usable = devices.usable_cpus().count if usable_cpus is None else usable_cpus
    per_cycle, why = cpu_flops_per_cycle(flags, math)
    if per_cycle is None:
        return TheoreticalPeak(None, why)
    if not clock_hz:
        return TheoreticalPeak(None, "unknown: the OS reports no maximum CPU clock (a VM shows its base or "
                          "current clock, which turbo exceeds)")
    cores = physical_cores * min(1.0, usable / logical_cpus)
    return TheoreticalPeak(cores * clock_hz * per_cycle / 1e12,
                f"{cores:g} cores ({usable:g} of {logical_cpus} logical CPUs usable) x "
                f"{clock_hz / 1e9:.2f} GHz x {per_cycle} {_prose(math)} FLOPs/cycle: {why}")


# Dense (no structured sparsity) TFLOP/s from NVIDIA's datasheets; tensor-core figures use
# fp32 accumulation, as frameworks do. Patterns match NVML names, most specific first.
GPU_DATASHEET = (
    (r"\bH100\b.*\bPCIe\b", {"ieee": 51, "tf32": 378, "bf16": 756, "fp16": 756},
     "NVIDIA H100 datasheet (PCIe), sparsity figures halved"),
    (r"\bH100\b.*\b(SXM|HBM3)", {"ieee": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
     "NVIDIA H100 datasheet (SXM), sparsity figures halved"),
    (r"\bH200\b(?!.*\bNVL\b)", {"ieee": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
     "NVIDIA H200 datasheet (SXM), sparsity figures halved"),
    (r"\bA100\b", {"ieee": 19.5, "tf32": 156, "bf16": 312, "fp16": 312},
     "NVIDIA A100 datasheet (SXM and PCIe alike)"),
    (r"\bV100\b.*\bSXM", {"ieee": 15.7, "fp16": 125}, "NVIDIA V100 datasheet (SXM2)"),
    (r"\bV100\b.*\bPCIE", {"ieee": 14, "fp16": 112}, "NVIDIA V100 datasheet (PCIe)"),
    (r"\bT4\b", {"ieee": 8.1, "fp16": 65}, "NVIDIA T4 datasheet"),
    (r"\bL4\b", {"ieee": 30.3, "tf32": 60, "bf16": 121, "fp16": 121},
     "NVIDIA L4 datasheet, sparsity figures halved"),
    (r"\bA10\b", {"ieee": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125},
     "NVIDIA A10 datasheet, sparsity figures halved"),
    (r"\bRTX 4090\b(?!.*\b(Laptop|D)\b)", {"ieee": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
     "NVIDIA Ada Lovelace architecture whitepaper (fp32 accumulate)"),
    (r"\bRTX 3090\b(?!.*\bTi\b)", {"ieee": 35.6, "tf32": 35.6, "bf16": 71, "fp16": 71},
     "NVIDIA Ampere GA102 whitepaper (fp32 accumulate)"),
    (r"\bGTX 960M\b", {"ieee": 1.5},
     "640 CUDA cores x 2 FLOPs x 1176 MHz boost (NVIDIA GTX 960M specifications)"),
)


def gpu_peak(name: str, precision: str = "fp32") -> TheoreticalPeak:
    """The datasheet peak of the GPU named ``name`` (as NVML names it) in ``precision``."""
    math = math_of(precision)
    for pattern, tflops, source in GPU_DATASHEET:
        if re.search(pattern, name, re.IGNORECASE):
            if math in tflops:
                return TheoreticalPeak(float(tflops[math]), source)
            word = _prose(math)
            return TheoreticalPeak(None, f"unknown: {source} gives no {word} figure (no {word} hardware)")
    return TheoreticalPeak(None, f"unknown GPU '{name}': not in the datasheet table")


def theoretical_peak(device: devices.Device, precision: str = "fp32") -> TheoreticalPeak:
    """The theoretical peak of ``device`` for a cell in ``precision``."""
    if device.type == "GPU":
        return gpu_peak(device.name, precision)
    return cpu_peak(precision)


def theoretical_peaks(cells: list[matrix.Cell]) -> dict[tuple[str, str], TheoreticalPeak]:
    """The theoretical peak of each (device, precision) the cells use, for this process's CPUs;
    for a GPU with fp32 cells also its TF32 figure, as (device, "tf32"): whether an fp32 cell
    runs in TF32 is the backend's setting, which only its worker can read
    (:func:`for_cell` picks when the row is made)."""
    wanted = {(c.device.id, c["precision"]): c.device.found for c in cells
              if c.device.found is not None and c.device.found.usable}
    wanted.update({(device_id, "tf32"): device for (device_id, precision), device
                   in list(wanted.items()) if precision == "fp32" and device.type == "GPU"})
    return {(device_id, precision): theoretical_peak(device, precision)
            for (device_id, precision), device in wanted.items()}


# --------------------------------------------------------------------------- which one a cell gets

@dataclass(frozen=True)
class Yardstick:
    """What one finished cell is measured against: a measured peak (None: none applies, and
    ``peak_note`` says why when one was measured) and a theoretical one (None: not known)."""

    measured: MeasuredPeak | None = None
    peak_note: str = ""
    theoretical: TheoreticalPeak | None = None


def for_cell(cell: matrix.Cell, train: TrainResult, measured: Mapping[PeakKey, MeasuredPeak],
             theoretical: Mapping[tuple[str, str], TheoreticalPeak]) -> Yardstick:
    """The yardsticks of ``cell``, which trained and reported ``train``."""
    peak = measured.get((cell.device.id, cell["precision"], cell["cpu_threads"], cell["backend"]))
    return Yardstick(*_measured_for(train, peak), theoretical=_theoretical_for(theoretical, cell, train))


def _measured_for(train: TrainResult, peak: MeasuredPeak | None) -> tuple[MeasuredPeak | None, str]:
    if peak is None:
        return None, ""
    if peak.busy:
        return None, (f"efficiency not measured: the peak was measured while {peak.busy}, so it is "
                      "too low to be a yardstick (python -m bench peak --refresh on a quiet machine)")
    # Only fp32 cells are checked: a mixed cell's yardstick may rightly be a float32 matmul
    # (the faster one, see bench.worker.run_peak). A peak that does not say its math agrees
    # (the cache re-measures such GPU entries; on a CPU fp32 is always IEEE).
    if train.precision == "fp32" and peak.math and peak.math != train.math:
        return None, (f"measured peak not used: its matmul ran in {peak.math}, the cell in {train.math} "
                      "(python -m bench peak --refresh measures it again)")
    if train.total_replicas > 1:
        return None, ""          # the peak is one device's; the summary says so for such rows
    return peak, ""


def _theoretical_for(theoretical: Mapping[tuple[str, str], TheoreticalPeak], cell: matrix.Cell,
                     train: TrainResult) -> TheoreticalPeak | None:
    """Its precision's theoretical peak, but for an fp32 cell whose worker reports its
    convolutions ran in TF32 the GPU's TF32 figure, saying why; never the fp32 one, which
    TF32 work can exceed several times over. None: not known."""
    if cell["precision"] != "fp32" or train.math != "tf32":
        return theoretical.get((cell.device.id, cell["precision"]))
    tf32 = theoretical.get((cell.device.id, "tf32"))
    if tf32 is None:
        return None
    return TheoreticalPeak(tf32.tflops, "tf32 (fp32 cells run their convolutions in TF32 on this GPU: "
                                        f"{train.math_note or 'the backend default'}); {tf32.basis}")
