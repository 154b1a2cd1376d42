"""The fingerprint of a machine and its software: a number without its machine is not a result.

Like airspeed velocity's machine file, the fingerprint is plain data written next to
every run (``env.json``). :func:`machine_id` condenses its hardware part into a readable,
stable name used for default baseline names and the per-machine peak cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import psutil

from bench.devices import Inventory, cpu_info, usable_cpus
from cifar_model.settings import BACKEND_INFO, BACKEND_PACKAGES

PACKAGES = (*BACKEND_PACKAGES, "numpy", "pandas", "psutil", "cifar-bench")

# The environment variables that change what a framework computes or how fast, by exact
# name: a prefix such as "TF_" also caught Terraform's TF_VAR_* (and, with them, secrets).
FRAMEWORK_VARIABLES = (
    # TensorFlow: oneDNN, XLA, GPU memory, threads, determinism, logging, Keras 2 vs 3
    "TF_ENABLE_ONEDNN_OPTS", "TF_XLA_FLAGS", "TF_GPU_ALLOCATOR", "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_CPP_MIN_LOG_LEVEL", "TF_INTRA_OP_PARALLELISM_THREADS", "TF_INTER_OP_PARALLELISM_THREADS",
    "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC", "TF_CUDNN_USE_AUTOTUNE", "TF_GPU_THREAD_MODE", "TF_GPU_THREAD_COUNT",
    "TF_USE_LEGACY_KERAS",
    # CUDA: which devices, in which order, and whether launches are synchronous
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING", "CUDA_MODULE_LOADING",
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE",
    # XLA and JAX
    "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR", "JAX_PLATFORMS", "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION",
    # PyTorch
    "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "TORCH_CUDNN_V8_API_DISABLED",
    # Keras
    "KERAS_BACKEND", "KERAS_HOME",
    # CPU threading and math libraries
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
    "ONEDNN_VERBOSE", "DNNL_VERBOSE", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
    "ONEDNN_CPU_ISA_HINTS", "DNNL_CPU_ISA_HINTS", "ONEDNN_DEFAULT_FPMATH_MODE",
    "DNNL_DEFAULT_FPMATH_MODE",
    # this project's data
    "CIFAR10_DIR",
)


def system_name() -> str:
    """The OS the way the notebook's table named it: "Ubuntu 18.04", "macOS 14.5"."""
    system = platform.system()
    if system == "Linux":
        try:
            release = platform.freedesktop_os_release()
            return release.get("PRETTY_NAME") or release.get("NAME") or "Linux"
        except OSError:
            return f"Linux {platform.release()}"
    if system == "Darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    if system == "Windows":
        return f"Windows {platform.release()}"
    return system or "unknown OS"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def relevant_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The set variables among :data:`FRAMEWORK_VARIABLES`, by name and nothing else."""
    source: Mapping[str, str] = os.environ if environ is None else environ
    return {name: source[name] for name in sorted(FRAMEWORK_VARIABLES) if name in source}


def git_state(directory: Path | None = None) -> dict:
    """The project's git commit and whether the work tree had uncommitted changes."""
    cwd = directory or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def backend_versions() -> dict:
    """Each Keras backend's installed version (None: not installed), read without importing it."""
    out: dict[str, dict[str, str | None]] = {}
    for backend, package in ((name, info.package) for name, info in BACKEND_INFO.items()):
        try:
            out[backend] = {"version": metadata.version(package)}
        except metadata.PackageNotFoundError:
            out[backend] = {"version": None}
    return out


#: What tells two CPUs that report one name apart (VMs often say just "AMD EPYC"): CPUID's
#: family, model number and stepping, and the microcode revision (which can change speed:
#: mitigations). env.json's ``cpu`` keys; files written before them read as unknown.
CPU_IDENTITY = ("family", "model_number", "stepping", "microcode")
PROC_CPUINFO = Path("/proc/cpuinfo")
_PROC_CPUINFO_LIMIT = 1 << 20     # read at most this much: only the first CPU's lines are needed


def cpu_identity(info: dict | None = None, proc_cpuinfo: str | None = None) -> dict:
    """The CPU's family, model number, stepping (py-cpuinfo, else /proc/cpuinfo) and microcode
    (/proc/cpuinfo; Linux only); None where unknown."""
    info = cpu_info() if info is None else info
    if proc_cpuinfo is None:
        try:
            with PROC_CPUINFO.open(encoding="utf-8", errors="replace") as handle:
                proc_cpuinfo = handle.read(_PROC_CPUINFO_LIMIT)
        except OSError:
            proc_cpuinfo = ""
    first: dict[str, str] = {}
    for line in proc_cpuinfo.split("\n\n", 1)[0].splitlines():   # the first CPU's block
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())

    def whole(value) -> int | None:
        try:
            return None if isinstance(value, bool) else int(value) if isinstance(value, int) else int(str(value))
        except (TypeError, ValueError):
            return None

    microcode = first.get("microcode") or None
    return {"family": whole(info.get("family", first.get("cpu family"))),
            "model_number": whole(info.get("model", first.get("model"))),
            "stepping": whole(info.get("stepping", first.get("stepping"))),
            "microcode": microcode[:32] if microcode else None}


def fingerprint(inventory: Inventory) -> dict:
    """Everything about this machine and stack that can change a measurement."""
    cpu = inventory.get("cpu")
    usable = usable_cpus()
    return {
        "system": system_name(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "tensorflow": {
            "version": inventory.tensorflow_version,
            "keras": inventory.keras_version,
            "built_with_cuda": inventory.built_with_cuda,
            "cuda_version": inventory.cuda_version,
            "cudnn_version": inventory.cudnn_version,
            "onednn_enabled": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0",
        },
        "backends": backend_versions(),
        "cpu": {
            "model": cpu.name if cpu else None,
            **cpu_identity(),
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cpus": psutil.cpu_count(logical=True),
            "usable_cpus": usable.count,              # affinity and cgroup quota applied
            "usable_cpus_reason": usable.reason,      # "1 of 2 logical CPUs (affinity)"
            "flags": list(cpu.features) if cpu else [],
        },
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": [{"id": d.id, "name": d.name, "memory_bytes": d.memory_bytes,
                  "compute_capability": d.compute_capability, "usable": d.usable}
                 for d in inventory.gpus],
        "driver_version": inventory.driver_version,
        "cuda_driver_version": inventory.cuda_driver_version,
        "environment": relevant_environment(),
        "git": git_state(),
        "notes": inventory.notes,
    }


def machine_id(env: dict) -> str:
    """A readable, stable name for the hardware: ``amd-epyc-2cpu-23gib-2f9c1a``.

    Only hardware and OS go in (not library versions), so a TensorFlow upgrade on the
    same machine keeps its name and can be compared against its old baseline. The CPU's
    family, model number and stepping go into the digest where env.json has them, so two
    CPUs that report one name are two machines; an env.json written before they were
    recorded keeps the id it had. (Microcode is left out: an update is the same machine,
    which a comparison names as a difference.)
    """
    cpu = env.get("cpu") or {}
    gpus = "+".join(str(g.get("name")) for g in env.get("gpus") or []) or "nogpu"
    memory = round((env.get("memory_bytes") or 0) / 2**30)
    identity = [f"{key}={cpu[key]}" for key in CPU_IDENTITY[:3] if cpu.get(key) is not None]
    stable = "|".join(str(part) for part in (
        cpu.get("model"), cpu.get("logical_cpus"), memory,
        gpus, env.get("machine"), env.get("system"), *identity))
    digest = hashlib.sha256(stable.encode()).hexdigest()[:6]
    model = re.sub(r"[^a-z0-9]+", "-", str(cpu.get("model", "cpu")).lower()).strip("-")[:32]
    gpu_part = re.sub(r"[^a-z0-9]+", "-", gpus.lower()).strip("-")[:32]
    return f"{model}-{cpu.get('logical_cpus')}cpu-{memory}gib-{gpu_part}-{digest}"
