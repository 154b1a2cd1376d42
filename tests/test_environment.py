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


PROC_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                "model name\t: AMD EPYC\nstepping\t: 1\nmicrocode\t: 0xa10113e\n\n"
                "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 99\n")


def test_cpu_identity_reads_family_model_stepping_and_microcode():
    from_proc = environment.cpu_identity(info={}, proc_cpuinfo=PROC_CPUINFO)
    assert from_proc == {"family": 25, "model_number": 17, "stepping": 1, "microcode": "0xa10113e"}
    # py-cpuinfo's CPUID answer wins where it has one; microcode only /proc/cpuinfo knows
    both = environment.cpu_identity(info={"family": 23, "model": 49, "stepping": 0}, proc_cpuinfo=PROC_CPUINFO)
    assert both == {"family": 23, "model_number": 49, "stepping": 0, "microcode": "0xa10113e"}
    assert environment.cpu_identity(info={}, proc_cpuinfo="") == dict.fromkeys(environment.CPU_IDENTITY)


def test_fingerprint_records_the_cpu_identity(monkeypatch):
    monkeypatch.setattr(environment, "cpu_identity", lambda: {"family": 6, "model_number": 143, "stepping": 8,
                                                              "microcode": "0x2b000590"})
    cpu = environment.fingerprint(devices.detect(probe=NO_TF, nvml=NO_NVML))["cpu"]
    assert (cpu["family"], cpu["model_number"], cpu["stepping"], cpu["microcode"]) == (6, 143, 8, "0x2b000590")


def test_two_cpus_of_one_name_are_two_machines_and_an_old_env_keeps_its_id():
    old = {"cpu": {"model": "AMD EPYC", "logical_cpus": 2}, "memory_bytes": 23 * 2**30, "gpus": [],
           "machine": "x86_64", "system": "Ubuntu 24.04"}
    rome = {**old, "cpu": {**old["cpu"], "family": 23, "model_number": 49, "stepping": 0}}
    milan = {**old, "cpu": {**old["cpu"], "family": 25, "model_number": 1, "stepping": 1}}
    assert environment.machine_id(rome) != environment.machine_id(milan)
    assert environment.machine_id(rome).startswith("amd-epyc-2cpu-23gib-nogpu-")
    unknown = {**old, "cpu": {**old["cpu"], **dict.fromkeys(environment.CPU_IDENTITY)}}
    assert environment.machine_id(unknown) == environment.machine_id(old)     # unknown is not a new machine
    updated = {**rome, "cpu": {**rome["cpu"], "microcode": "0x830107b"}}
    assert environment.machine_id(updated) == environment.machine_id(rome)   # a microcode update: same machine
