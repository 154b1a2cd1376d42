"""Theoretical peaks: what the hardware could compute at best, per precision.

The measured peak (:mod:`bench.peak`) is the everyday yardstick; this one says how far even
that is from the datasheet. A CPU's peak is scaled to the CPUs the process may use: half the
cores, half the peak. Unknown means None with a reason, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil

from bench import devices


@dataclass(frozen=True)
class Peak:
    """A theoretical peak in TFLOP/s, or None; ``basis`` says how it was reached or why not."""

    tflops: float | None
    basis: str


# Project precisions -> the arithmetic they run in. An "fp32" cell on an Ampere or newer GPU
# may run its convolutions in TF32 (every backend's default there; its worker reports it as
# the row's math): "tf32" is then that cell's yardstick (bench.runner.theoretical_for).
MATH = {"fp32": "fp32", "mixed_float16": "fp16", "mixed_bfloat16": "bf16",
        "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "tf32": "tf32"}

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
    """FLOPs per cycle per core in ``math`` ("fp32", "bf16", "fp16"), and why that number."""
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
             clock_hz: float | None = None, usable_cpus: float | None = None) -> Peak:
    """Cores x clock x FLOPs/cycle, scaled to the usable CPUs; the machine's values by default.

    With SMT, two logical CPUs share one core's vector units: a process allowed 1 of 2
    logical CPUs on 1 core gets half that core.
    """
    math = MATH.get(precision, precision)
    flags = devices.cpu_flags() if flags is None else flags
    logical_cpus = logical_cpus or psutil.cpu_count(logical=True) or 1
    physical_cores = physical_cores or psutil.cpu_count(logical=False) or logical_cpus
    clock_hz = clock_hz or cpu_clock_hz()
    usable = devices.usable_cpus().count if usable_cpus is None else usable_cpus
    per_cycle, why = cpu_flops_per_cycle(flags, math)
    if per_cycle is None:
        return Peak(None, why)
    if not clock_hz:
        return Peak(None, "unknown: the OS reports no maximum CPU clock (a VM shows its base or "
                          "current clock, which turbo exceeds)")
    cores = physical_cores * min(1.0, usable / logical_cpus)
    return Peak(cores * clock_hz * per_cycle / 1e12,
                f"{cores:g} cores ({usable:g} of {logical_cpus} logical CPUs usable) x "
                f"{clock_hz / 1e9:.2f} GHz x {per_cycle} {math} FLOPs/cycle: {why}")


# Dense (no structured sparsity) TFLOP/s from NVIDIA's datasheets; tensor-core figures use
# fp32 accumulation, as frameworks do. Patterns match NVML names, most specific first.
GPU_DATASHEET = (
    (r"\bH100\b.*\bPCIe\b", {"fp32": 51, "tf32": 378, "bf16": 756, "fp16": 756},
     "NVIDIA H100 datasheet (PCIe), sparsity figures halved"),
    (r"\bH100\b.*\b(SXM|HBM3)", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
     "NVIDIA H100 datasheet (SXM), sparsity figures halved"),
    (r"\bH200\b(?!.*\bNVL\b)", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
     "NVIDIA H200 datasheet (SXM), sparsity figures halved"),
    (r"\bA100\b", {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312},
     "NVIDIA A100 datasheet (SXM and PCIe alike)"),
    (r"\bV100\b.*\bSXM", {"fp32": 15.7, "fp16": 125}, "NVIDIA V100 datasheet (SXM2)"),
    (r"\bV100\b.*\bPCIE", {"fp32": 14, "fp16": 112}, "NVIDIA V100 datasheet (PCIe)"),
    (r"\bT4\b", {"fp32": 8.1, "fp16": 65}, "NVIDIA T4 datasheet"),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121},
     "NVIDIA L4 datasheet, sparsity figures halved"),
    (r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125},
     "NVIDIA A10 datasheet, sparsity figures halved"),
    (r"\bRTX 4090\b(?!.*\b(Laptop|D)\b)", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
     "NVIDIA Ada Lovelace architecture whitepaper (fp32 accumulate)"),
    (r"\bRTX 3090\b(?!.*\bTi\b)", {"fp32": 35.6, "tf32": 35.6, "bf16": 71, "fp16": 71},
     "NVIDIA Ampere GA102 whitepaper (fp32 accumulate)"),
    (r"\bGTX 960M\b", {"fp32": 1.5},
     "640 CUDA cores x 2 FLOPs x 1176 MHz boost (NVIDIA GTX 960M specifications)"),
)


def gpu_peak(name: str, precision: str = "fp32") -> Peak:
    """The datasheet peak of the GPU named ``name`` (as NVML names it) in ``precision``."""
    math = MATH.get(precision, precision)
    for pattern, tflops, source in GPU_DATASHEET:
        if re.search(pattern, name, re.IGNORECASE):
            if math in tflops:
                return Peak(float(tflops[math]), source)
            return Peak(None, f"unknown: {source} gives no {math} figure (no {math} hardware)")
    return Peak(None, f"unknown GPU '{name}': not in the datasheet table")


def peak(device: devices.Device, precision: str = "fp32") -> Peak:
    """The theoretical peak of ``device`` for a cell in ``precision``."""
    if device.type == "GPU":
        return gpu_peak(device.name, precision)
    return cpu_peak(precision)
