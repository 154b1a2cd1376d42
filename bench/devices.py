"""What is there: the CPU and every GPU, named the way their owners know them.

The harness process never imports TensorFlow (it would take seconds and, on a GPU
machine, grab device memory the workers need). GPUs come from two witnesses: a short
probe subprocess that asks TensorFlow what it can use, and ``nvidia-smi`` for the memory
and driver TensorFlow does not report. A GPU that ``nvidia-smi`` sees but TensorFlow
cannot use is listed, marked unusable, with the reason, so a user learns why its cell
was skipped.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field

import psutil

from bench import process

PROBE_TIMEOUT_S = 180
DEVICE_ID = re.compile(r"^(cpu|gpu|gpu:\d+|all)$")
PROBE_MARK = "@@bench-probe "


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
    device: Device | None
    reason: str = ""


# --------------------------------------------------------------------------- the CPU

def cpu_name() -> str:
    """The CPU's marketing name ("AMD EPYC 9R14", "Apple M2"), not the architecture."""
    system = platform.system()
    try:
        if system == "Linux":
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    value = value.strip()
                    # x86: "model name"; some Arm kernels: "Hardware" or a named "Processor"
                    if key.strip().lower() in ("model name", "hardware", "processor") \
                            and value and not value.isdigit():
                        return re.sub(r"\s+", " ", value)
        elif system == "Darwin":
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip()
        elif system == "Windows":
            import winreg  # noqa: PLC0415 - Windows only

            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE,
                                 r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
            return winreg.QueryValueEx(key, "ProcessorNameString")[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16",
                "amx_tile", "neon", "asimd", "sve")
BF16_CPU_FEATURES = {"avx512_bf16", "amx_bf16"}


def cpu_features() -> tuple[str, ...]:
    """The instruction-set extensions that decide training speed (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in CPU_FEATURES if flag in present)
    except OSError:
        pass
    return ()


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

def nvidia_smi() -> tuple[list[dict], str | None]:
    """GPUs as ``nvidia-smi`` lists them (PCI bus order), and the driver version."""
    fields = ["index", "name", "memory.total", "compute_cap", "driver_version"]
    for query in (fields, fields[:3] + fields[4:]):  # old drivers lack compute_cap
        try:
            done = subprocess.run(
                ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return [], None
        if done.returncode == 0:
            rows = [dict(zip(query, (v.strip() for v in row)))
                    for row in csv.reader(done.stdout.splitlines()) if row]
            driver = rows[0].get("driver_version") if rows else None
            return rows, driver
    return [], None


def tensorflow_probe(timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Ask TensorFlow, in a throw-away subprocess, about itself and the GPUs it can use."""
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run([*process.WORKER_COMMAND, "--probe"], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"TensorFlow probe did not answer within {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"TensorFlow probe failed (exit {done.returncode}): {tail}"}


def detect(probe: dict | None = None, smi: tuple[list[dict], str | None] | None = None) -> Inventory:
    """Find every device. ``probe``/``smi`` can be passed in (tests, cached answers)."""
    probe = tensorflow_probe() if probe is None else probe
    smi_rows, driver = nvidia_smi() if smi is None else smi
    inventory = Inventory(devices=[cpu_device()], driver_version=driver,
                          tensorflow_version=probe.get("tensorflow"),
                          keras_version=probe.get("keras"),
                          built_with_cuda=probe.get("built_with_cuda"),
                          cuda_version=probe.get("cuda_version"),
                          cudnn_version=probe.get("cudnn_version"))
    if "error" in probe:
        inventory.notes.append(probe["error"])
    tf_gpus = probe.get("gpus", [])
    for i in range(max(len(tf_gpus), len(smi_rows))):
        seen_by_tf = tf_gpus[i] if i < len(tf_gpus) else {}
        smi_row = smi_rows[i] if i < len(smi_rows) else {}
        memory = smi_row.get("memory.total")
        note = ""
        if not seen_by_tf:
            note = ("TensorFlow cannot use this GPU: "
                    + ("it was built without CUDA" if probe.get("built_with_cuda") is False
                       else "CUDA libraries missing or mismatched (pip install 'cifar-bench[gpu]')"))
        inventory.devices.append(Device(
            id=f"gpu:{i}", type="GPU",
            name=seen_by_tf.get("name") or smi_row.get("name") or f"GPU {i}",
            memory_bytes=int(float(memory)) * 2**20 if memory and memory[0].isdigit() else None,
            compute_capability=seen_by_tf.get("compute_capability") or smi_row.get("compute_cap"),
            usable=bool(seen_by_tf), note=note))
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
