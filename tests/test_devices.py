"""bench.devices: parsing --devices, merging TensorFlow's and nvidia-smi's view, resolving requests."""

from __future__ import annotations

import platform

import pytest

from bench import devices

CPU_ONLY = {"tensorflow": "2.21.0", "keras": "3.15.1", "built_with_cuda": True, "gpus": []}
TWO_GPUS = {**CPU_ONLY, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
                                 {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}]}
SMI_TWO = ([{"index": "0", "name": "NVIDIA H100 80GB HBM3", "memory.total": "81559",
             "compute_cap": "9.0", "driver_version": "550.54"},
            {"index": "1", "name": "NVIDIA H100 80GB HBM3", "memory.total": "81559",
             "compute_cap": "9.0", "driver_version": "550.54"}], "550.54")


@pytest.mark.parametrize("text, ids", [("cpu", ["cpu"]), ("cpu,gpu", ["cpu", "gpu"]),
                                       (" GPU:1 , all", ["gpu:1", "all"])])
def test_parse_device_ids(text, ids):
    assert devices.parse_device_ids(text) == ids


@pytest.mark.parametrize("text", ["tpu", "gpu:", "gpu:x", "cpu:0", ""])
def test_parse_device_ids_rejects_unknown(text):
    with pytest.raises(ValueError, match="cpu, gpu, gpu:N or all"):
        devices.parse_device_ids(text)


def test_cpu_only_machine_skips_the_gpu_with_a_reason():
    inventory = devices.detect(probe=CPU_ONLY, smi=([], None))
    resolved = devices.resolve(["cpu", "gpu"], inventory)
    assert [r.id for r in resolved] == ["cpu", "gpu:0"]
    assert resolved[0].device.type == "CPU" and resolved[0].device.usable
    assert resolved[1].device is None and "no GPU detected" in resolved[1].reason


def test_two_gpus_merge_tensorflow_and_nvidia_smi():
    inventory = devices.detect(probe=TWO_GPUS, smi=SMI_TWO)
    gpu = inventory.get("gpu:1")
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.compute_capability == "9.0"
    assert gpu.memory_bytes == 81559 * 2**20 and gpu.usable and gpu.index == 1
    assert inventory.driver_version == "550.54"
    assert [r.id for r in devices.resolve(["all"], inventory)] == ["cpu", "gpu:0", "gpu:1"]
    assert [r.id for r in devices.resolve(["gpu", "gpu:0", "cpu"], inventory)] == ["gpu:0", "cpu"]
    missing = devices.resolve(["gpu:5"], inventory)[0]
    assert missing.device is None and "2 GPU(s)" in missing.reason


def test_gpu_that_tensorflow_cannot_use_is_listed_but_unusable():
    inventory = devices.detect(probe=CPU_ONLY, smi=(SMI_TWO[0][:1], "550.54"))
    gpu = inventory.get("gpu:0")
    assert gpu is not None and not gpu.usable and "CUDA libraries" in gpu.note
    resolved = devices.resolve(["gpu"], inventory)[0]
    assert resolved.device is gpu and "TensorFlow cannot use" in resolved.reason


def test_probe_failure_is_a_note_not_a_crash():
    inventory = devices.detect(probe={"error": "TensorFlow probe failed (exit 1): ImportError"},
                               smi=([], None))
    assert inventory.get("cpu") is not None and "probe failed" in inventory.notes[0]


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/cpuinfo")
def test_cpu_name_is_the_marketing_name():
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    if model is None:
        pytest.skip("no 'model name' in /proc/cpuinfo")
    assert devices.cpu_name() == " ".join(model.split())
    assert devices.cpu_name() not in ("x86_64", "aarch64")


@pytest.mark.parametrize("device, precision", [
    (devices.Device("cpu", "CPU", "Zen 4", features=("avx512f", "avx512_bf16")), "mixed_bfloat16"),
    (devices.Device("cpu", "CPU", "Sapphire Rapids", features=("amx_bf16",)), "mixed_bfloat16"),
    (devices.Device("cpu", "CPU", "Haswell", features=("avx2", "fma")), "fp32"),
    (devices.Device("gpu:0", "GPU", "A100", compute_capability="8.0"), "mixed_bfloat16"),
    (devices.Device("gpu:0", "GPU", "T4", compute_capability="7.5"), "fp32"),
    (devices.Device("gpu:0", "GPU", "unknown", compute_capability=None), "fp32"),
])
def test_auto_precision(device, precision):
    assert devices.auto_precision(device) == precision


def test_cpu_features_are_read_from_the_machine():
    features = devices.cpu_device().features
    assert set(features) <= set(devices.CPU_FEATURES)
    if platform.machine() == "x86_64" and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in features
