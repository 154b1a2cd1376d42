"""One network, three frameworks: train() and cifar_model.backends on TensorFlow, JAX and PyTorch.

Keras reads ``KERAS_BACKEND`` once, at import, so each backend runs in its own Python
process (as the harness runs each cell). JAX and PyTorch run with TensorFlow made
unimportable: GPU machines here have no TensorFlow, and training must not need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "helpers"))
from cpu_share import on_worker_share  # noqa: E402

MARK = "@@result "

BLOCK_TENSORFLOW = "import sys; sys.modules['tensorflow'] = None  # import tensorflow -> ImportError\n"

LEARNABLE_RUN = textwrap.dedent("""
    import json, keras, numpy as np
    from cifar_model import TrainSettings, backends, build_network, synthetic_dataset, train

    class FirstLoss(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not hasattr(self, "loss"):
                self.loss = float(logs["loss"])

    # learnable: each class shifts every pixel by its own colour
    data = synthetic_dataset(n_train=320, n_test=16, seed=1)
    colours = np.random.default_rng(2).normal(0, 1.5, (10, 1, 1, 3)).astype("float32")
    data.x_train[:] += colours[data.y_train]
    backend = backends.backend_name()
    out = {"backend": backend}
    for placement in ("host", "device"):
        first = FirstLoss()
        result = train(data, TrainSettings(batch_size=16, epochs=2, max_steps_per_epoch=10,
                                           warmup_steps=2, seed=7, data_placement=placement,
                                           backend=backend), device="cpu:0", callbacks=[first])
        out[placement] = {"first_loss": first.loss, "params": result.params, "ok": True,
                          "backend": result.backend, "xla": result.xla, "note": result.compile_note,
                          "last_epoch_loss": result.train_loss, "data_device": result.data_device,
                          "placement": result.data_placement, "steps": result.total_steps,
                          "math": result.math}
    kernel = np.asarray(build_network(seed=0).get_layer("conv4").kernel)
    out["init"] = {"max": float(np.abs(kernel).max()), "std": float(kernel.std())}
    try:
        train(data, TrainSettings(batch_size=16, max_steps_per_epoch=2, warmup_steps=1,
                                  jit_compile="off", backend=backend))
        out["jit_off"] = "trained"
    except ValueError as exc:
        out["jit_off"] = str(exc)
    out["versions"] = backends.framework_versions()
    out["gpus"] = backends.visible_gpus()
    out["accelerator"] = backends.accelerator_name()
    out["peak_memory"] = backends.peak_device_memory_bytes()
    out["peak"] = backends.measure_matmul_peak("fp32", 64, min_seconds=0.01)
    # each backend's own TF32 setting, read as on an H100 (compute capability 9.0)
    out["fp32_math_gpu"] = backends.fp32_math("GPU", "9.0")
    out["fp32_math_cpu"] = backends.fp32_math("CPU")
    out["tensorflow_loaded"] = sys.modules.get("tensorflow") is not None
    print(MARK + json.dumps(out))
""")


def run_on(backend: str, script: str, timeout: int = 300) -> dict:
    """Run ``script`` in a fresh process with ``KERAS_BACKEND=backend``; TensorFlow is
    blocked unless it is the backend. Returns the JSON the script printed after MARK."""
    prelude = "import sys\n" + ("" if backend == "tensorflow" else BLOCK_TENSORFLOW)
    prelude += f"MARK = {MARK!r}\n"
    done = subprocess.run(on_worker_share([sys.executable, "-c", prelude + script]), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "-1",
                               "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0 and MARK in done.stdout, done.stderr[-3000:]
    return json.loads(done.stdout.split(MARK, 1)[1])


@pytest.fixture(scope="module", params=["tensorflow", "jax", "torch"])
def backend_run(request):
    return run_on(request.param, LEARNABLE_RUN)


def test_the_same_network_trains_and_learns_on_each_backend(backend_run):
    backend = backend_run["backend"]
    for placement in ("host", "device"):
        run = backend_run[placement]
        assert run["ok"] and run["backend"] == backend and run["placement"] == placement
        assert run["params"] == 1_454_922 and run["steps"] == 20
        assert run["last_epoch_loss"] < 0.5 * run["first_loss"], run     # it learns
        assert run["data_device"] == "CPU:0"
    # the same truncated-normal(0.1) initialisation everywhere
    assert backend_run["init"]["max"] <= 0.2 + 1e-6 and 0.07 < backend_run["init"]["std"] < 0.1


def test_a_device_resident_training_set_trains_exactly_like_a_host_fed_one(backend_run):
    host, device = backend_run["host"], backend_run["device"]
    assert device["first_loss"] == pytest.approx(host["first_loss"], rel=1e-6)
    assert device["last_epoch_loss"] == pytest.approx(host["last_epoch_loss"], rel=1e-3)


def test_compilation_is_resolved_and_recorded_per_backend(backend_run):
    backend, host = backend_run["backend"], backend_run["host"]
    if backend == "jax":
        assert host["xla"] is True and host["note"] == "jax.jit (XLA), always"
        assert backend_run["jit_off"] == "jax always compiles with XLA; use auto/on"
    elif backend == "torch":
        assert host["xla"] is False and host["note"] == "eager (jit_compile auto)"
        assert backend_run["jit_off"] == "trained"
    else:
        assert host["xla"] is False and host["note"] == "XLA off (auto)"     # CPU only
        assert backend_run["jit_off"] == "trained"


def test_training_needs_tensorflow_only_on_tensorflow(backend_run):
    assert backend_run["tensorflow_loaded"] is (backend_run["backend"] == "tensorflow")


def test_backend_facts_come_from_the_backend_itself(backend_run):
    backend, versions = backend_run["backend"], backend_run["versions"]
    assert versions["backend"] == backend and versions[backend]
    assert {"keras", "numpy", "python", "cuda_version", "cudnn_version"} <= set(versions)
    assert backend_run["gpus"] == [] and backend_run["accelerator"] is None   # GPUs hidden
    assert backend_run["peak_memory"] is None
    peak = backend_run["peak"]
    assert (peak["precision"], peak["dtype"], peak["size"], peak["math"]) == ("fp32", "float32", 64, "ieee")
    assert peak["repeats"] >= 3 and 0 < peak["median_tflops"] <= peak["tflops"]


def test_fp32_is_ieee_on_a_cpu_and_each_backends_default_is_tf32_on_an_ampere_gpu(backend_run):
    """The real frameworks' default settings, read through their real APIs."""
    backend = backend_run["backend"]
    assert backend_run["host"]["math"] == "ieee" and backend_run["fp32_math_cpu"][0] == "ieee"
    math, note = backend_run["fp32_math_gpu"]
    assert math == "tf32"
    assert {"tensorflow": "tensor_float_32_execution_enabled() is True",
            "jax": "jax_default_matmul_precision=None",
            "torch": "torch.backends.cudnn.allow_tf32=True (convolutions); "
                     "torch.backends.cuda.matmul.allow_tf32=False"}[backend] in note


# Real CIFAR-10 on JAX and PyTorch is covered without a Keras run of its own here: each native
# engine computes the Keras network's function on its backend (tests/test_engines.py, 20 steps
# from the same weights) and learns real CIFAR-10 within the Keras seeds' spread there.


# --------------------------------------------------------------------------- fp32 math, with fakes
# Each backend's TF32 settings faked in-process: no GPU (or second framework) is needed to
# check what an fp32 cell reports and how the torch peak is timed.

class FakeTensor:
    def to(self, device=None, dtype=None):
        return self

    def float(self):
        return self

    def sum(self):
        return self

    def item(self):
        return 1.0


def fake_torch(conv_tf32=True, matmul_tf32=False, capability=(9, 0), fail=False):
    """A stand-in for torch with one CUDA GPU; ``seen`` gets allow_tf32 at each matmul."""
    seen = []
    matmul_flags = SimpleNamespace(allow_tf32=matmul_tf32)

    def matmul(a, b):
        seen.append(matmul_flags.allow_tf32)
        if fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return FakeTensor()

    torch = SimpleNamespace(
        float32="float32", bfloat16="bfloat16", float16="float16",
        as_tensor=lambda array: FakeTensor(), matmul=matmul, no_grad=contextlib.nullcontext,
        device=lambda kind, index=0: SimpleNamespace(type=kind, index=index),
        cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                             get_device_name=lambda i: "NVIDIA H100 80GB HBM3",
                             get_device_capability=lambda i: capability),
        backends=SimpleNamespace(cudnn=SimpleNamespace(allow_tf32=conv_tf32),
                                 cuda=SimpleNamespace(matmul=matmul_flags)))
    return torch, seen


@pytest.fixture
def on_backend(monkeypatch):
    """``on_backend(name, module)``: cifar_model.backends believes it runs on ``name``, whose
    framework is the fake ``module``."""
    from cifar_model import backends

    def use(name, module):
        monkeypatch.setattr(backends, "backend_name", lambda: name)
        monkeypatch.setitem(sys.modules, name, module)
        return backends
    return use


def fake_tensorflow(enabled):
    experimental = SimpleNamespace(tensor_float_32_execution_enabled=lambda: enabled)
    return SimpleNamespace(config=SimpleNamespace(experimental=experimental))


def fake_jax(precision):
    return SimpleNamespace(config=SimpleNamespace(jax_default_matmul_precision=precision))


@pytest.mark.parametrize("backend, module, expected", [
    ("tensorflow", fake_tensorflow(True), "tf32"),
    ("tensorflow", fake_tensorflow(False), "ieee"),
    ("jax", fake_jax(None), "tf32"),
    ("jax", fake_jax("default"), "tf32"),
    ("jax", fake_jax("tensorfloat32"), "tf32"),
    ("jax", fake_jax("bfloat16"), "tf32"),
    ("jax", fake_jax("highest"), "ieee"),
    ("jax", fake_jax("float32"), "ieee"),
    ("torch", fake_torch()[0], "tf32"),                               # torch's defaults
    ("torch", fake_torch(conv_tf32=False)[0], "ieee"),
    ("torch", fake_torch(conv_tf32=False, matmul_tf32=True)[0], "ieee"),  # convolutions decide
])
def test_fp32_math_on_an_ampere_gpu_follows_the_backends_own_setting(on_backend, backend, module, expected):
    backends = on_backend(backend, module)
    assert backends.fp32_math("GPU", "8.0")[0] == expected
    assert backends.fp32_math("CPU") == ("ieee", "a CPU computes fp32 in IEEE fp32")
    assert backends.fp32_math("GPU", "7.5")[0] == "ieee"             # Volta, Turing: no TF32
    assert backends.cell_math("mixed_bfloat16", "GPU", "9.0")[0] == "bf16"
    assert backends.cell_math("mixed_float16", "GPU", "9.0")[0] == "fp16"
    assert backends.cell_math("fp32", "GPU", "9.0")[0] == expected


def test_torch_says_when_its_matmuls_and_convolutions_differ(on_backend):
    backends = on_backend("torch", fake_torch(conv_tf32=True, matmul_tf32=False)[0])
    assert backends.fp32_math("GPU", "9.0") == (
        "tf32", "torch.backends.cudnn.allow_tf32=True (convolutions); "
                "torch.backends.cuda.matmul.allow_tf32=False: its matmuls run in IEEE fp32")
    backends = on_backend("torch", fake_torch(conv_tf32=True, matmul_tf32=True)[0])
    assert backends.fp32_math("GPU", "9.0") == ("tf32", "torch.backends.cudnn.allow_tf32=True (convolutions)")


def test_without_a_capability_given_the_visible_gpus_is_used(on_backend):
    backends = on_backend("torch", fake_torch(capability=(8, 6))[0])
    assert backends.fp32_math("GPU")[0] == "tf32"
    backends = on_backend("torch", fake_torch(capability=(7, 0))[0])
    assert backends.fp32_math("GPU") == ("ieee", "compute capability 7.0: no TF32 tensor cores known")


@pytest.mark.parametrize("conv_tf32, matmul_tf32, math", [
    (True, False, "tf32"),     # torch's defaults: the matmul is timed in TF32, like the convolutions
    (False, True, "ieee"),     # convolutions in IEEE: so is the matmul, whatever its own flag
    (True, True, "tf32"),
])
def test_the_torch_fp32_peak_is_timed_in_the_convolutions_math_and_the_flag_restored(
        on_backend, conv_tf32, matmul_tf32, math):
    torch, seen = fake_torch(conv_tf32, matmul_tf32)
    backends = on_backend("torch", torch)
    peak = backends.measure_matmul_peak("fp32", 8, min_seconds=0)
    assert peak["math"] == math and "cudnn.allow_tf32" in peak["math_note"]
    assert len(seen) >= 5 and set(seen) == {math == "tf32"}
    assert torch.backends.cuda.matmul.allow_tf32 is matmul_tf32          # restored


def test_the_torch_matmul_flag_is_restored_when_the_multiply_fails(on_backend):
    torch, seen = fake_torch(conv_tf32=True, matmul_tf32=False, fail=True)
    backends = on_backend("torch", torch)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        backends.measure_matmul_peak("fp32", 8, min_seconds=0)
    assert seen == [True] and torch.backends.cuda.matmul.allow_tf32 is False


def test_a_mixed_precision_torch_peak_leaves_the_fp32_flag_alone(on_backend):
    torch, seen = fake_torch(conv_tf32=True, matmul_tf32=False)
    backends = on_backend("torch", torch)
    peak = backends.measure_matmul_peak("mixed_bfloat16", 8, min_seconds=0)
    assert peak["math"] == "bf16" and set(seen) == {False}


def test_every_backend_of_the_settings_has_one_class_and_an_unknown_one_is_refused(on_backend):
    from cifar_model import BACKEND_INFO, backend_entry

    backends = on_backend("mxnet", SimpleNamespace())
    assert list(backends.BACKENDS) == list(BACKEND_INFO)               # one class per registered backend
    for call in (backends.visible_gpus, backends.framework_versions, lambda: backends.tensor_place(None)):
        with pytest.raises(ValueError, match="unsupported Keras backend 'mxnet'; cifar_model runs on tensorflow"):
            call()                                                      # never the torch path
    with pytest.raises(ValueError, match="unknown backend 'mxnet'; choose one of tensorflow, jax, torch"):
        backend_entry("mxnet")
    assert backend_entry("torch").display_name == "PyTorch" and backend_entry("mxnet", strict=False) is None
