"""bench.devices and bench.yardsticks: what is there (--devices, TensorFlow's and NVML's view,
usable CPUs) and what it could compute at best (theoretical peaks)."""

from __future__ import annotations

import os
import platform
import types

import pytest

from bench import devices, nvml, yardsticks

CPU_ONLY = {"tensorflow": "2.21.0", "keras": "3.15.1", "built_with_cuda": True, "gpus": []}
TWO_GPUS = {**CPU_ONLY, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
                                 {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}]}
H100 = "NVIDIA H100 80GB HBM3"
NVML_TWO = devices.NvmlView(
    gpus=tuple(devices.NvmlGpu(i, H100, 81559 * 2**20, "9.0") for i in range(2)),
    driver_version="550.54", cuda_driver_version="12.4")
NO_NVML = devices.NvmlView(error="NVML unavailable (NVML Shared Library Not Found)")


@pytest.mark.parametrize("text, ids", [("cpu", ["cpu"]), ("cpu,gpu", ["cpu", "gpu"]),
                                       (" GPU:1 , all", ["gpu:1", "all"])])
def test_parse_device_ids(text, ids):
    assert devices.parse_device_ids(text) == ids


@pytest.mark.parametrize("text", ["tpu", "gpu:", "gpu:x", "cpu:0", ""])
def test_parse_device_ids_rejects_unknown(text):
    with pytest.raises(ValueError, match="cpu, gpu, gpu:N or all"):
        devices.parse_device_ids(text)


def test_cpu_only_machine_skips_the_gpu_with_a_reason():
    inventory = devices.detect(probe=CPU_ONLY, nvml=NO_NVML)
    resolved = devices.resolve(["cpu", "gpu"], inventory)
    assert [r.id for r in resolved] == ["cpu", "gpu:0"]
    assert resolved[0].found.type == "CPU" and resolved[0].found.usable
    assert resolved[1].found is None and "no GPU detected" in resolved[1].reason


def test_two_gpus_merge_tensorflow_and_nvml():
    inventory = devices.detect(probe=TWO_GPUS, nvml=NVML_TWO)
    gpu = inventory.get("gpu:1")
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.compute_capability == "9.0"
    assert gpu.memory_bytes == 81559 * 2**20 and gpu.usable and gpu.index == 1
    assert inventory.driver_version == "550.54" and inventory.cuda_driver_version == "12.4"
    assert [r.id for r in devices.resolve(["all"], inventory)] == ["cpu", "gpu:0", "gpu:1"]
    assert [r.id for r in devices.resolve(["gpu", "gpu:0", "cpu"], inventory)] == ["gpu:0", "cpu"]
    missing = devices.resolve(["gpu:5"], inventory)[0]
    assert missing.found is None and "2 GPU(s)" in missing.reason


def test_gpu_that_tensorflow_cannot_use_is_listed_but_unusable():
    inventory = devices.detect(probe=CPU_ONLY, nvml=devices.NvmlView(gpus=NVML_TWO.gpus[:1]))
    gpu = inventory.get("gpu:0")
    assert gpu is not None and not gpu.usable and "CUDA libraries" in gpu.note
    resolved = devices.resolve(["gpu"], inventory)[0]
    assert resolved.found is gpu and "TensorFlow cannot use" in resolved.reason


def test_probe_failure_is_a_note_not_a_crash():
    inventory = devices.detect(probe={"error": "TensorFlow probe failed (exit 1): ImportError"},
                               nvml=NO_NVML)
    assert inventory.get("cpu") is not None and "probe failed" in inventory.notes[0]
    assert "NVML unavailable" in inventory.notes[1]


def test_gpus_found_by_nvml_do_not_need_tensorflow():
    """JAX/PyTorch machines have no TensorFlow: NVML alone lists the GPU, usable, with a note."""
    inventory = devices.detect(probe={"error": "TensorFlow probe failed (exit 1): ImportError"},
                               nvml=NVML_TWO)
    gpu = inventory.get("gpu:0")
    assert gpu.name == H100 and gpu.memory_bytes == 81559 * 2**20 and gpu.compute_capability == "9.0"
    assert gpu.usable and "not checked" in gpu.note


class FakeNvmlError(Exception):
    pass


def fake_pynvml(fail_init=False):
    def init():
        if fail_init:
            raise FakeNvmlError("NVML Shared Library Not Found")

    return types.SimpleNamespace(
        NVMLError=FakeNvmlError, nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA L4",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=24 * 2**30),
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 9),
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12040)


def test_nvml_view_reads_names_memory_capability_and_driver(monkeypatch):
    monkeypatch.setattr(nvml, "pynvml", fake_pynvml())
    view = devices.nvml_view()
    assert view.error is None and view.gpus == (devices.NvmlGpu(0, "NVIDIA L4", 24 * 2**30, "8.9"),)
    assert view.driver_version == "550.54.15" and view.cuda_driver_version == "12.4"


def test_nvml_absent_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(nvml, "pynvml", fake_pynvml(fail_init=True))
    view = devices.nvml_view()
    assert view.gpus == () and "NVML unavailable" in view.error
    monkeypatch.setattr(nvml, "pynvml", None)
    assert "not installed" in devices.nvml_view().error


def test_cpu_name_is_py_cpuinfos_brand(monkeypatch):
    monkeypatch.setattr(devices, "cpu_info", lambda: {"brand_raw": "  AMD EPYC   9R14 "})
    assert devices.cpu_name() == "AMD EPYC 9R14"
    monkeypatch.setattr(devices, "cpu_info", lambda: {})
    assert devices.cpu_name()                      # falls back to the platform, never empty


def test_cpu_features_accept_linux_and_cpuid_spellings():
    assert devices.cpu_features({"avx2", "fma", "avx512vnni", "avx512_bf16", "sse2"}) == (
        "avx2", "fma", "avx512_bf16", "avx512_vnni")


def test_cpu_info_is_asked_once():
    devices.cpu_info()
    before = devices.cpu_info.cache_info().hits
    devices.cpu_name(), devices.cpu_features()
    assert devices.cpu_info.cache_info().hits >= before + 2


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
    if platform.system() == "Linux" and platform.machine() == "x86_64" \
            and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in features


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, proc, quota", [
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),                                    # v2
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),
    ({"job/cpu.max": "max 100000", "cpu.max": "100000 100000"}, "0::/job\n", 1.0),        # parent's
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
     "3:cpu,cpuacct:/\n", 0.5),                                                           # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
     "3:cpu,cpuacct:/\n", None),
    ({}, "0::/\n", None),
])
def test_cgroup_cpu_quota(tmp_path, files, proc, quota):
    for name, text in files.items():
        write(tmp_path / "fs" / name, text)
    write(tmp_path / "cgroup", proc)
    assert devices.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "cgroup") == quota


def test_usable_cpus_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(devices.psutil, "cpu_count", lambda logical=True: 4)
    write(tmp_path / "cgroup", "0::/\n")
    monkeypatch.setattr(devices.psutil.Process, "cpu_affinity", lambda self: [0, 1, 2, 3],
                        raising=False)
    assert devices.usable_cpus(tmp_path, tmp_path / "cgroup") == devices.UsableCpus(
        4, "4 of 4 logical CPUs")
    monkeypatch.setattr(devices.psutil.Process, "cpu_affinity", lambda self: [1], raising=False)
    assert devices.usable_cpus(tmp_path, tmp_path / "cgroup") == devices.UsableCpus(
        1, "1 of 4 logical CPUs (affinity)")
    monkeypatch.setattr(devices.psutil.Process, "cpu_affinity", lambda self: [0, 1, 2, 3],
                        raising=False)
    write(tmp_path / "cpu.max", "250000 100000")
    assert devices.usable_cpus(tmp_path, tmp_path / "cgroup") == devices.UsableCpus(
        2.5, "2.5 of 4 logical CPUs (cgroup quota)")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_usable_cpus_of_this_process_respect_its_affinity():
    assert devices.usable_cpus().count <= len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- bench.yardsticks:
# theoretical peaks from instruction sets, clocks and datasheets

HASWELL = {"sse2", "avx", "avx2", "fma"}
ZEN4 = HASWELL | {"avx512f", "avx512_bf16"}


def cpu(precision="fp32", flags=HASWELL, usable=8, clock_hz=3e9):
    return yardsticks.cpu_peak(precision, flags=flags, physical_cores=4, logical_cpus=8,
                             clock_hz=clock_hz, usable_cpus=usable)


def test_cpu_peak_is_cores_times_clock_times_flops_per_cycle():
    assert cpu().tflops == pytest.approx(4 * 3e9 * 32 / 1e12)
    assert "AVX2+FMA" in cpu().basis
    assert cpu("mixed_bfloat16").tflops == cpu().tflops          # no bf16 hardware: fp32 speed
    assert cpu(flags=ZEN4).tflops == pytest.approx(4 * 3e9 * 64 / 1e12)
    assert cpu("mixed_bfloat16", ZEN4).tflops == pytest.approx(2 * cpu(flags=ZEN4).tflops)
    assert cpu(flags={"sse2"}).tflops == pytest.approx(4 * 3e9 * 8 / 1e12)


def test_cpu_peak_scales_to_the_usable_cpus():
    assert cpu(usable=4).tflops == pytest.approx(cpu().tflops / 2)
    assert cpu(usable=1.5).tflops == pytest.approx(cpu().tflops * 1.5 / 8)
    assert "4 of 8 logical CPUs usable" in cpu(usable=4).basis


def test_unknown_cpu_peaks_say_why():
    assert cpu(flags=set()).tflops is None
    amx = cpu("mixed_bfloat16", ZEN4 | {"amx_bf16"})
    assert amx.tflops is None and "AMX" in amx.basis


def test_cpu_peak_without_a_clock_is_unknown(monkeypatch):
    monkeypatch.setattr(yardsticks, "cpu_clock_hz", lambda: None)
    peak = cpu(clock_hz=None)
    assert peak.tflops is None and "clock" in peak.basis


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "mixed_bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "fp32", 51),
    ("NVIDIA H200", "mixed_float16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156),
    ("NVIDIA A10", "fp32", 31.2),
    ("NVIDIA A10G", "fp32", None),
    ("Tesla T4", "mixed_bfloat16", None),
    ("NVIDIA GeForce RTX 4090", "mixed_float16", 165.2),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", "fp32", None),
    ("GeForce GTX 960M", "fp32", 1.5),
    ("Some Future GPU", "fp32", None),
])
def test_gpu_datasheet_peaks(name, precision, tflops):
    peak = yardsticks.gpu_peak(name, precision)
    assert peak.tflops == tflops and peak.basis


def test_peak_of_a_device():
    gpu = devices.Device("gpu:0", "GPU", "NVIDIA L4", compute_capability="8.9")
    assert yardsticks.theoretical_peak(gpu, "mixed_bfloat16").tflops == 121
    assert yardsticks.theoretical_peak(devices.Device("cpu", "CPU", "x"), "fp32").basis
