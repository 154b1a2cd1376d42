"""bench.environment: what env.json records about the machine and its settings."""

from __future__ import annotations

from bench import devices, environment

NO_TF = {"error": "TensorFlow probe failed (exit 1): ImportError"}
NO_NVML = devices.NvmlView(error="NVML unavailable")


def test_only_framework_variables_are_recorded_by_exact_name(monkeypatch):
    monkeypatch.setenv("TF_VAR_region", "eu-west-1")        # Terraform, not TensorFlow
    monkeypatch.setenv("CUDA_PATH_SECRET", "x")
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    recorded = environment.relevant_environment()
    assert recorded["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2" and recorded["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "TF_VAR_region" not in recorded and "CUDA_PATH_SECRET" not in recorded
    assert set(recorded) <= set(environment.FRAMEWORK_VARIABLES)


def test_fingerprint_records_usable_cpus_and_why(monkeypatch):
    monkeypatch.setattr(environment, "usable_cpus",
                        lambda: devices.UsableCpus(1, "1 of 2 logical CPUs (affinity)"))
    env = environment.fingerprint(devices.detect(probe=NO_TF, nvml=NO_NVML))
    assert env["cpu"]["usable_cpus"] == 1
    assert env["cpu"]["usable_cpus_reason"] == "1 of 2 logical CPUs (affinity)"
    assert "cuda_driver_version" in env and env["gpus"] == []


def test_machine_id_is_stable_and_readable():
    env = {"cpu": {"model": "AMD EPYC 9R14", "logical_cpus": 2}, "memory_bytes": 23 * 2**30,
           "gpus": [], "machine": "x86_64", "system": "Ubuntu 24.04"}
    assert environment.machine_id(env) == environment.machine_id(dict(env))
    assert environment.machine_id(env).startswith("amd-epyc-9r14-2cpu-23gib-nogpu-")
