"""How a worker process starts: the environment that hides every other device and picks the
Keras backend, and whether that backend is here at all. Low in the harness (no runner, no
framework), so both the cell loop and the peak measurement start workers the same way."""

from __future__ import annotations

import importlib.util
import os

from bench.devices import Requested
from cifar_model.settings import BACKEND_INSTALL


def backend_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (not installed), or None. Never imports it."""
    if importlib.util.find_spec(backend) is None or importlib.util.find_spec("keras") is None:
        return f"the {backend} backend is not installed ({BACKEND_INSTALL[backend]})"
    return None


def worker_environment(device: Requested, backend: str = "tensorflow", base: dict | None = None,
                       replicas: int = 1) -> dict:
    """A worker's environment: only ``device`` (and the ``replicas`` - 1 GPUs after it)
    visible and the Keras backend chosen, before any framework starts; for a JAX cell of
    ``replicas`` > 1 on the CPU, JAX splits the CPU into that many devices."""
    env = dict(os.environ if base is None else base)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"          # the same numbering as nvidia-smi
    if device.id == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    elif device.found is None:
        raise ValueError(f"{device.id}: not on this machine ({device.reason})")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(device.found.gpu_index + i) for i in range(replicas))
    env.pop("TF_CONFIG", None)                       # the cluster comes in the cell spec
    env["KERAS_BACKEND"] = backend
    if device.id == "cpu":
        env["JAX_PLATFORMS"] = "cpu"                 # JAX would otherwise look for a GPU
        if backend == "jax" and replicas > 1:        # JAX's CPU devices are fixed when it starts
            flag = f"--xla_force_host_platform_device_count={replicas}"
            env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flag) if f)
    else:
        env.pop("JAX_PLATFORMS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env
