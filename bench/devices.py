"""What is there: the CPU and every GPU, named the way their owners know them.

The harness process never imports TensorFlow (it would take seconds and, on a GPU
machine, grab device memory the workers need). The CPU is described by py-cpuinfo (name,
instruction sets); GPUs come from two witnesses: NVIDIA's management library (NVML, no
framework needed) for names, memory, compute capability and the driver, and a short probe
subprocess that asks TensorFlow what it can use. A GPU that NVML sees but TensorFlow
cannot use is listed, marked unusable, with the reason, so a user learns why its cell
was skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cpuinfo
import psutil

from bench import nvml, process
from bench.protocol import PROBE_MARK
from cifar_model.settings import ENGINE_KINDS, backend_entry, native_engine_limitation

PROBE_TIMEOUT_S = 180
DEVICE_ID = re.compile(r"^(cpu|gpu|gpu:\d+|all)$")


@dataclass(frozen=True)
class Device:
    """One device a cell can run on. ``id`` is what ``--devices`` takes."""

    id: str
    type: str                          # "CPU" or "GPU"
    name: str
    cores: int | None = None           # physical cores (CPU)
    threads: int | None = None         # logical CPUs (CPU)
    memory_bytes: int | None = None    # RAM (CPU) or device memory (GPU)
    compute_capability: str | None = None
    usable: bool = True
    note: str = ""
    features: tuple[str, ...] = ()    # CPU instruction-set extensions that matter for training

    @property
    def index(self) -> int | None:
        """The GPU's index in PCI bus order (as CUDA_VISIBLE_DEVICES counts), None for the CPU."""
        return int(self.id.split(":")[1]) if self.type == "GPU" else None

    @property
    def gpu_index(self) -> int:
        """:attr:`index` of a device known to be a GPU; ValueError for the CPU."""
        if self.index is None:
            raise ValueError(f"{self.id} is not a GPU")
        return self.index


@dataclass
class Inventory:
    """Every device found, and what TensorFlow said about itself."""

    devices: list[Device]
    tensorflow_version: str | None = None
    keras_version: str | None = None
    built_with_cuda: bool | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None   # the newest CUDA the driver supports (NVML)
    notes: list[str] = field(default_factory=list)

    def get(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    @property
    def gpus(self) -> list[Device]:
        return [d for d in self.devices if d.type == "GPU"]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Requested:
    """A device the user asked for, and either the device or why it is not available."""

    id: str
    found: Device | None                  # None: not on this machine (``reason`` says why)
    reason: str = ""


# --------------------------------------------------------------------------- the CPU

@functools.cache
def cpu_info() -> dict:
    """py-cpuinfo's answer, asked once per process: it can take a second (it may spawn a
    subprocess to read CPUID), and the CPU does not change while we run."""
    try:
        return cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - a third-party probe must never stop a benchmark
        return {}


def cpu_name() -> str:
    """The CPU's marketing name ("AMD EPYC 9R14", "Apple M2"), not the architecture."""
    name = re.sub(r"\s+", " ", str(cpu_info().get("brand_raw") or "")).strip()
    return name or platform.processor() or platform.machine() or "unknown CPU"


CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16",
                "amx_tile", "neon", "asimd", "sve")
BF16_CPU_FEATURES = {"avx512_bf16", "amx_bf16"}


def cpu_flags() -> set[str]:
    """Every instruction-set flag py-cpuinfo reports, lower case, also without underscores
    (its CPUID names say "avx512vnni" where Linux says "avx512_vnni")."""
    flags = {str(flag).lower() for flag in cpu_info().get("flags", [])}
    return flags | {flag.replace("_", "") for flag in flags}


def cpu_features(flags: set[str] | None = None) -> tuple[str, ...]:
    """The instruction-set extensions that decide training speed, by their Linux names."""
    flags = cpu_flags() if flags is None else flags
    return tuple(f for f in CPU_FEATURES if f in flags or f.replace("_", "") in flags)


@dataclass(frozen=True)
class UsableCpus:
    """How many CPUs this process may really use, and why that many.

    ``count`` is an int for whole CPUs and a float for a fractional cgroup quota (1.5).
    """

    count: float
    reason: str


CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT,
                proc_cgroup: Path = Path("/proc/self/cgroup")) -> UsableCpus:
    """The CPUs this process may use: the affinity mask AND the cgroup CPU quota.

    ``os.cpu_count()`` counts the machine; a container limited to 1.5 CPUs or a process
    pinned with ``taskset`` gets less, and its numbers must say so.
    """
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    try:
        affinity = len(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error, OSError):  # macOS has no affinity
        affinity = logical
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None and quota < affinity:
        count = int(quota) if float(quota).is_integer() else round(quota, 2)
        return UsableCpus(count, f"{count} of {logical} logical CPUs (cgroup quota)")
    if affinity < logical:
        return UsableCpus(affinity, f"{affinity} of {logical} logical CPUs (affinity)")
    return UsableCpus(logical, f"{logical} of {logical} logical CPUs")


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT,
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in CPUs; None if none.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" (or "max PERIOD"); cgroup v1:
    ``cpu.cfs_quota_us`` (-1 for none) and ``cpu.cfs_period_us`` in the ``cpu`` controller.
    Inside a container the cgroup path in /proc is often not under the mount, so the
    mount's own root is read too.
    """
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":            # cgroup v2 unified hierarchy
            mounts = [cgroup_root]
        elif "cpu" in controllers.split(","):
            mounts = [cgroup_root / name for name in (controllers, "cpu", "cpu,cpuacct")]
        else:
            continue
        for mount in dict.fromkeys(mounts):
            for directory in _self_and_ancestors(mount, path.strip()):
                limit = _cpu_limit(directory)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _self_and_ancestors(mount: Path, path: str) -> list[Path]:
    parts = [p for p in path.split("/") if p]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _cpu_limit(directory: Path) -> float | None:
    try:
        text_quota, text_period = (directory / "cpu.max").read_text(encoding="utf-8").split()[:2]
        return None if text_quota == "max" else int(text_quota) / int(text_period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period = int((directory / "cpu.cfs_period_us").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_device() -> Device:
    return Device(id="cpu", type="CPU", name=cpu_name(), cores=psutil.cpu_count(logical=False),
                  threads=psutil.cpu_count(logical=True),
                  memory_bytes=psutil.virtual_memory().total, features=cpu_features())


def auto_precision(device: Device) -> str:
    """What ``--precision auto`` means on ``device``: bf16 where the hardware computes in it.

    Measured here (README, "Speed levers"): on a CPU with AVX512_BF16, mixed_bfloat16
    trained the network about 1.7x faster than fp32 with held-out accuracy within noise.
    GPUs of compute capability 8.0 or newer (Ampere on) have bfloat16 tensor cores; that
    choice follows NVIDIA's and Keras's guidance and was not measured here. Anything else
    stays in fp32, like the notebook.
    """
    if device.type == "CPU":
        return "mixed_bfloat16" if BF16_CPU_FEATURES & set(device.features) else "fp32"
    try:
        capability = float(device.compute_capability or 0)
    except ValueError:
        capability = 0.0
    return "mixed_bfloat16" if capability >= 8.0 else "fp32"


# --------------------------------------------------------------------------- GPUs

@dataclass(frozen=True)
class NvmlGpu:
    """One GPU as NVIDIA's management library sees it (index = PCI bus order, like nvidia-smi)."""

    index: int
    name: str
    memory_bytes: int | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class NvmlView:
    """What NVML says about the machine's GPUs; ``error`` says why it could not answer."""

    gpus: tuple[NvmlGpu, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None   # the newest CUDA the driver supports, "12.4"
    error: str | None = None


def nvml_view() -> NvmlView:
    """Every NVIDIA GPU, its memory, compute capability and the driver, from NVML.

    NVML (``nvidia-ml-py``) needs no framework: GPUs are listed whether TensorFlow, JAX
    or PyTorch is installed or not. Without the NVIDIA driver (a CPU-only machine, a
    container without GPU access) it answers with the reason and no GPUs; there is no
    ``nvidia-smi`` fallback, since ``nvidia-smi`` reads the same library.
    """
    try:
        with nvml.session() as lib:
            gpus = []
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                gpus.append(NvmlGpu(index=index, name=nvml.text(lib.nvmlDeviceGetName(handle)),
                                    memory_bytes=_optional(lambda handle=handle: int(
                                        lib.nvmlDeviceGetMemoryInfo(handle).total)),
                                    compute_capability=_optional(lambda handle=handle: "{}.{}".format(
                                        *lib.nvmlDeviceGetCudaComputeCapability(handle)))))
            cuda = _optional(lib.nvmlSystemGetCudaDriverVersion)
            return NvmlView(gpus=tuple(gpus),
                            driver_version=_optional(lambda: nvml.text(lib.nvmlSystemGetDriverVersion())),
                            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None)
    except nvml.NvmlUnavailable as error:
        return NvmlView(error=str(error))
    except nvml.pynvml.NVMLError as error:
        return NvmlView(error=f"NVML failed while listing GPUs: {error}")


def _optional(read):
    """One NVML query that an old driver or a GPU may not support: None then."""
    try:
        return read()
    except nvml.pynvml.NVMLError:
        return None


def tensorflow_probe(timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Ask TensorFlow, in a throw-away subprocess, about itself and the GPUs it can use."""
    return backend_probe("tensorflow", timeout_s)


def backend_probe(backend: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Ask a Keras backend, in a throw-away subprocess, about itself and the GPUs it can use."""
    name = backend_entry(backend).display_name
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=backend)
    env.pop("JAX_PLATFORMS", None)
    try:
        done = subprocess.run([*process.WORKER_COMMAND, "--probe"], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"{name} probe did not answer within {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"{name} probe failed (exit {done.returncode}): {tail}"}


#: What each native engine needs besides its backend (module -> how to install it).
NATIVE_ENGINE_NEEDS = {"jax": ("optax", "pip install 'cifar-bench[jax]'")}


def engines(backend: str) -> dict[str, str]:
    """Each engine (cifar_model's ENGINE_KINDS) on ``backend``: "" where it can run, else why not.

    For ``bench devices``; asks only whether modules are installed, starts no framework."""
    out = {}
    for engine in ENGINE_KINDS:
        why = native_engine_limitation(backend) if engine == "native" else None
        if not why and engine == "native" and backend in NATIVE_ENGINE_NEEDS:
            module, install = NATIVE_ENGINE_NEEDS[backend]
            if importlib.util.find_spec(module) is None:
                why = f"needs {module}: {install}"
        out[engine] = why or ""
    return out


def detect(probe: dict | None = None, nvml: NvmlView | None = None) -> Inventory:
    """Find every device. ``probe``/``nvml`` can be passed in (tests, cached answers).

    A GPU's name, memory and compute capability come from NVML; TensorFlow's probe says
    whether TensorFlow can use it. When the probe itself failed (TensorFlow missing, as on
    the JAX/PyTorch GPU machines) the GPUs NVML found stay usable, with a note: another
    backend may use them.
    """
    probe = tensorflow_probe() if probe is None else probe
    nvml = nvml_view() if nvml is None else nvml
    inventory = Inventory(devices=[cpu_device()], driver_version=nvml.driver_version,
                          cuda_driver_version=nvml.cuda_driver_version,
                          tensorflow_version=probe.get("tensorflow"),
                          keras_version=probe.get("keras"),
                          built_with_cuda=probe.get("built_with_cuda"),
                          cuda_version=probe.get("cuda_version"),
                          cudnn_version=probe.get("cudnn_version"))
    if "error" in probe:
        inventory.notes.append(probe["error"])
    if nvml.error:
        inventory.notes.append(nvml.error)
    tf_gpus = probe.get("gpus", [])
    for i in range(max(len(tf_gpus), len(nvml.gpus))):
        seen_by_tf = tf_gpus[i] if i < len(tf_gpus) else {}
        seen_by_nvml = nvml.gpus[i] if i < len(nvml.gpus) else NvmlGpu(index=i, name="")
        usable, note = True, ""
        if "error" in probe:
            note = "TensorFlow did not answer; usability not checked"
        elif not seen_by_tf:
            usable = False
            note = ("TensorFlow cannot use this GPU: "
                    + ("it was built without CUDA" if probe.get("built_with_cuda") is False
                       else "CUDA libraries missing or mismatched (pip install 'cifar-bench[gpu]')"))
        inventory.devices.append(Device(
            id=f"gpu:{i}", type="GPU",
            name=seen_by_nvml.name or seen_by_tf.get("name") or f"GPU {i}",
            memory_bytes=seen_by_nvml.memory_bytes,
            compute_capability=seen_by_nvml.compute_capability
            or seen_by_tf.get("compute_capability"),
            usable=usable, note=note))
    return inventory


# --------------------------------------------------------------------------- --devices

def parse_device_ids(text: str) -> list[str]:
    """Validate a ``--devices`` value ("cpu,gpu", "gpu:1", "all"); ValueError names the bad one."""
    ids = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not ids:
        raise ValueError("no device given; use cpu, gpu, gpu:N or all")
    for device_id in ids:
        if not DEVICE_ID.match(device_id):
            raise ValueError(f"unknown device '{device_id}'; use cpu, gpu, gpu:N or all "
                             "(python -m bench devices lists them)")
    return ids


def resolve(ids: list[str], inventory: Inventory) -> list[Requested]:
    """Each requested device, in order, without duplicates; a missing one says why."""
    wanted: list[str] = []
    for device_id in ids:
        expanded = [d.id for d in inventory.devices] if device_id == "all" else \
            ["gpu:0" if device_id == "gpu" else device_id]
        wanted += [w for w in expanded if w not in wanted]
    requested = []
    for device_id in wanted:
        device = inventory.get(device_id)
        if device is None:
            count = len(inventory.gpus)
            reason = ("no GPU detected on this machine" if count == 0
                      else f"no {device_id} here: this machine has {count} GPU(s)")
            requested.append(Requested(device_id, None, reason))
        elif not device.usable:
            requested.append(Requested(device_id, device, device.note))
        else:
            requested.append(Requested(device_id, device))
    return requested


def render_devices(inventory: Inventory, probes: dict | None = None) -> str:
    """The device table, then each backend: not installed, or what its probe sees (``probes``
    holds answers already had; the others are asked now)."""
    import pandas as pd

    from bench.runner import backend_missing  # below devices in the import graph: asked here
    from cifar_model.settings import BACKENDS

    rows = []
    for d in inventory.devices:
        rows.append({
            "ID": d.id, "Type": d.type, "Name": d.name,
            "Cores/threads": f"{d.cores}/{d.threads}" if d.type == "CPU" else "–",
            "Memory": f"{d.memory_bytes / 2**30:.1f} GiB" if d.memory_bytes else "?",
            "Compute capability": d.compute_capability or "–",
            "Usable": "yes" if d.usable else f"no: {d.note}",
        })
    lines = [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]
    cuda = inventory.built_with_cuda
    build = ("built with CUDA" + (f" {inventory.cuda_version}, cuDNN {inventory.cudnn_version}"
                                  if inventory.cuda_version else "")
             if cuda else "built without CUDA" if cuda is False else "build unknown")
    lines.append(f"TensorFlow {inventory.tensorflow_version or 'not installed'} ({build}), "
                 f"Keras {inventory.keras_version or '?'}"
                 + (f", NVIDIA driver {inventory.driver_version}" if inventory.driver_version else ""))
    for backend in BACKENDS:
        missing = backend_missing(backend)
        if missing:
            lines.append(f"backend {backend}: {missing}")
            continue
        probe = (probes or {}).get(backend) or backend_probe(backend)
        if "error" in probe:
            lines.append(f"backend {backend}: installed, but {probe['error']}")
            continue
        version = (probe.get("versions") or {}).get(backend, "?")
        gpus = [g.get("name") for g in probe.get("gpus") or []]
        lines.append(f"backend {backend} {version}: sees the CPU"
                     + (f" and {len(gpus)} GPU(s): {', '.join(map(str, gpus))}" if gpus else ", no GPU")
                     + "; engines: " + ", ".join(engine if not why else f"{engine} (not here: {why})"
                                                 for engine, why in engines(backend).items()))
    if not inventory.gpus:
        lines.append("No GPU found (NVML and TensorFlow see none).")
    lines += [f"note: {n}" for n in inventory.notes]
    return "\n".join(lines)
