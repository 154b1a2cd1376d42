"""What differs between Keras's TensorFlow, JAX and PyTorch backends, behind names that say so.

Every function works on the backend Keras was imported with (``KERAS_BACKEND`` is read
once, when Keras is first imported): the harness starts one process per cell with the
variable set, then asks these functions about the framework and its accelerator. Each
backend is one class (:class:`TensorFlow`, :class:`Jax`, :class:`Torch`) with the same
methods, picked by name in :func:`current`; an unknown name is an error there, never
another backend's path (as Keras's own ``keras/src/backend/__init__.py`` does). Each
method imports its framework lazily, so this module costs nothing to import beyond Keras
itself, and a machine with JAX or PyTorch but no TensorFlow never needs TensorFlow.

Device names given to these functions are Keras's (``"cpu:0"``, ``"gpu:0"``); places
reported back are normalised to ``"CPU:0"`` / ``"GPU:0"`` on every backend.
"""

from __future__ import annotations

import contextlib
import platform
import time

import keras
import numpy as np

from cifar_model.settings import JIT_COMPILE, PRECISIONS

#: Why ``jit_compile="off"`` is refused on JAX (a harness can turn it into a skipped row).
JAX_ALWAYS_XLA = "jax always compiles with XLA; use auto/on"


def backend_name() -> str:
    """The Keras backend this process runs: ``tensorflow``, ``jax`` or ``torch``."""
    return keras.backend.backend()


class Backend:
    """What one Keras backend does its own way. Subclasses implement every method."""

    name = ""

    def configure_threads(self, cpu_threads: int) -> None:
        raise NotImplementedError(
            f"{self.name}: the CPU thread count cannot be set once the backend has started "
            "(XLA sizes its pool at start-up); leave cpu_threads at 0")

    def versions(self) -> dict:
        """Its version and the CUDA/cuDNN it knows of (None: built without CUDA, or cannot say)."""
        raise NotImplementedError

    def visible_gpus(self) -> list[dict]:
        raise NotImplementedError

    def peak_device_memory_bytes(self) -> int | None:
        raise NotImplementedError

    def copy_to_device(self, array: np.ndarray, device: str | None):
        raise NotImplementedError

    def tensor_place(self, tensor) -> str:
        raise NotImplementedError

    def keras_device_name(self, device: str) -> str:
        return device

    def refuses_jit_off(self) -> bool:
        return False

    def describe_compilation(self, requested: str, compiled: bool) -> tuple[bool, str]:
        raise NotImplementedError

    def allows_tf32(self) -> tuple[bool, str]:
        """Whether its fp32 convolutions may use TF32 on a GPU that has it, and the setting that says so."""
        raise NotImplementedError

    def matmul(self, dtype: str, size: int, tf32: bool):
        """A zero-argument callable: one ``size`` x ``size`` multiply, reduced and fetched."""
        raise NotImplementedError


class TensorFlow(Backend):
    name = "tensorflow"

    def configure_threads(self, cpu_threads: int) -> None:
        """Intra/inter-op pools; must run before TensorFlow starts working."""
        import tensorflow as tf

        inter = min(cpu_threads, 2)
        if (tf.config.threading.get_intra_op_parallelism_threads() == cpu_threads
                and tf.config.threading.get_inter_op_parallelism_threads() == inter):
            return
        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    def versions(self) -> dict:
        import tensorflow as tf

        build = tf.sysconfig.get_build_info()
        return {"tensorflow": tf.__version__, "cuda_version": build.get("cuda_version"),
                "cudnn_version": build.get("cudnn_version")}

    def visible_gpus(self) -> list[dict]:
        import tensorflow as tf

        gpus = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            capability = details.get("compute_capability")
            gpus.append({"name": details.get("device_name", gpu.name),
                         "compute_capability": ".".join(map(str, capability)) if capability else None})
        return gpus

    def peak_device_memory_bytes(self) -> int | None:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])

    def copy_to_device(self, array: np.ndarray, device: str | None):
        """``tf.identity`` under ``tf.device`` is the one host -> device copy (a tensor made
        from numpy starts on the host whatever the device scope)."""
        import tensorflow as tf

        with tf.device("/CPU:0"):
            host = tf.convert_to_tensor(array)  # tf.constant copies 15x slower here
        with tf.device(device) if device else contextlib.nullcontext():
            return tf.identity(host)

    def tensor_place(self, tensor) -> str:
        return tensor.device.rpartition("device:")[2]

    def describe_compilation(self, requested: str, compiled: bool) -> tuple[bool, str]:
        state = "on" if compiled else "off"
        return compiled, f"XLA {state} (auto)" if requested == "auto" else f"XLA {state}"

    def allows_tf32(self) -> tuple[bool, str]:
        """One switch for matmuls and convolutions."""
        import tensorflow as tf

        enabled = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        return enabled, (f"tf.config.experimental.tensor_float_32_execution_enabled() is {enabled} "
                         "(matmuls and convolutions)")

    def matmul(self, dtype: str, size: int, tf32: bool):
        """A traced matmul + reduce on GPU:0 (or the CPU), fetched by ``.numpy()``."""
        import tensorflow as tf

        device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
        with tf.device(device):
            a, b = (tf.cast(tf.convert_to_tensor(m), dtype) for m in _operands(size))
        matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)),
                             autograph=False)

        def run():
            with tf.device(device):
                return float(matmul(a, b).numpy())
        return run


class Jax(Backend):
    name = "jax"

    def versions(self) -> dict:
        import jax
        import jaxlib

        cuda = cudnn = None
        try:  # present only with a CUDA plugin installed
            from jax._src.lib import cuda_versions
        except ImportError:
            cuda_versions = None
        if cuda_versions is not None:
            cuda, cudnn = cuda_versions.cuda_runtime_get_version(), cuda_versions.cudnn_get_version()
        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "cuda_version": None if cuda is None else str(cuda),
                "cudnn_version": None if cudnn is None else str(cudnn)}

    @staticmethod
    def gpus() -> list:
        import jax

        try:
            return jax.devices("gpu")
        except RuntimeError:  # no GPU backend in this jaxlib
            return []

    def visible_gpus(self) -> list[dict]:
        return [{"name": d.device_kind, "compute_capability": getattr(d, "compute_capability", None)}
                for d in self.gpus()]

    def peak_device_memory_bytes(self) -> int | None:
        gpus = self.gpus()
        stats = gpus[0].memory_stats() if gpus else None
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

    @staticmethod
    def device(device: str | None):
        if device is None:
            return None
        import jax

        kind, _, index = device.lower().partition(":")
        return jax.devices(kind)[int(index or 0)]

    def copy_to_device(self, array: np.ndarray, device: str | None):
        import jax

        target = self.device(device)
        return jax.device_put(array, target) if target is not None else jax.device_put(array)

    def tensor_place(self, tensor) -> str:
        (device,) = tensor.devices()
        return f"{'CPU' if device.platform == 'cpu' else 'GPU'}:{device.id}"

    def refuses_jit_off(self) -> bool:
        return True

    def describe_compilation(self, requested: str, compiled: bool) -> tuple[bool, str]:
        return True, "jax.jit (XLA), always"

    def allows_tf32(self) -> tuple[bool, str]:
        """The default precision of float32 dots and convolutions alike."""
        import jax

        value = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]  # a run-time option: not in jax's stubs
        return value not in JAX_IEEE_PRECISIONS, (f"jax_default_matmul_precision={value!r} "
                                                  "(matmuls and convolutions)")

    def matmul(self, dtype: str, size: int, tf32: bool):
        import jax
        import jax.numpy as jnp

        a, b = (jax.device_put(jnp.asarray(m, dtype=dtype)) for m in _operands(size))
        matmul = jax.jit(lambda a, b: jnp.sum(jnp.matmul(a, b).astype(jnp.float32)))
        return lambda: float(matmul(a, b))


class Torch(Backend):
    name = "torch"

    def configure_threads(self, cpu_threads: int) -> None:
        import torch

        torch.set_num_threads(cpu_threads)
        try:
            torch.set_num_interop_threads(min(cpu_threads, 2))
        except RuntimeError:  # the inter-op pool already started: intra-op is what matters
            pass

    def versions(self) -> dict:
        import torch

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"torch": torch.__version__, "cuda_version": torch.version.cuda,
                "cudnn_version": None if cudnn is None else str(cudnn)}

    def visible_gpus(self) -> list[dict]:
        import torch

        if not torch.cuda.is_available():
            return []
        return [{"name": torch.cuda.get_device_name(i),
                 "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                for i in range(torch.cuda.device_count())]

    def peak_device_memory_bytes(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated(0)) if torch.cuda.is_available() else None

    @staticmethod
    def device(device: str | None):
        import torch

        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        kind, _, index = device.lower().partition(":")
        return torch.device("cpu") if kind == "cpu" else torch.device("cuda", int(index or 0))

    def copy_to_device(self, array: np.ndarray, device: str | None):
        import torch

        return torch.as_tensor(array).to(self.device(device))

    def tensor_place(self, tensor) -> str:
        kind, _, index = str(tensor.device).partition(":")
        return f"{'CPU' if kind == 'cpu' else 'GPU'}:{index or 0}"

    def keras_device_name(self, device: str) -> str:
        """``"cpu:0"`` becomes ``"cpu"``: Keras's torch backend moves each new variable
        ``.to("cpu:0")``, which copies a tensor already on ``"cpu"`` into a plain tensor and
        then fails on integer variables (the dropout layers' seed state)."""
        return "cpu" if device.lower().startswith("cpu") else device

    def describe_compilation(self, requested: str, compiled: bool) -> tuple[bool, str]:
        return False, "torch.compile" if compiled else f"eager (jit_compile {requested})"

    def allows_tf32(self) -> tuple[bool, str]:
        """Convolutions (cuDNN) decide; the matmul flag is said when it differs."""
        import torch

        conv = _torch_flag(lambda: torch.backends.cudnn.allow_tf32,
                           lambda: torch.backends.cudnn.conv.fp32_precision)  # type: ignore[attr-defined]  # torch >= 2.9
        matmul = _torch_flag(lambda: torch.backends.cuda.matmul.allow_tf32,
                             lambda: torch.backends.cuda.matmul.fp32_precision)
        note = f"torch.backends.cudnn.allow_tf32={conv} (convolutions)"
        if matmul != conv:
            note += (f"; torch.backends.cuda.matmul.allow_tf32={matmul}: its matmuls run in "
                     f"{'TF32' if matmul else 'IEEE fp32'}")
        return conv, note

    def matmul(self, dtype: str, size: int, tf32: bool):
        """On a GPU, a float32 multiply runs with ``allow_tf32`` set to ``tf32`` (the cell's
        convolutions' math) for the call only, so nothing else in the process changes."""
        import torch

        device = self.device(None)
        a, b = (torch.as_tensor(m).to(device=device, dtype=getattr(torch, dtype)) for m in _operands(size))
        switch = device.type == "cuda" and dtype == "float32"

        def run():
            with _torch_matmul_tf32(tf32) if switch else contextlib.nullcontext(), torch.no_grad():
                return torch.matmul(a, b).float().sum().item()
        return run


#: Every backend this module knows, by its Keras name.
BACKENDS = {backend.name: backend for backend in (TensorFlow(), Jax(), Torch())}


def current() -> Backend:
    """The backend this process runs; an unknown one is an error, never another's path."""
    name = backend_name()
    if name not in BACKENDS:
        raise ValueError(f"unsupported Keras backend {name!r}; cifar_model runs on {', '.join(BACKENDS)}")
    return BACKENDS[name]


# --------------------------------------------------------------------------- threads

def configure_threads(cpu_threads: int) -> None:
    """Limit the backend's CPU thread pools to ``cpu_threads`` (0: leave its defaults).

    TensorFlow: intra-op ``cpu_threads``, inter-op ``min(cpu_threads, 2)``; only possible
    before TensorFlow has started working (a repeat call with the same number is fine).
    PyTorch: ``torch.set_num_threads`` (intra-op), and the inter-op pool likewise when it
    is still unused. JAX: not supported: XLA's CPU thread pool is sized when the backend
    starts and only ``XLA_FLAGS`` read at import can change it, so this raises
    ``NotImplementedError`` rather than silently running with every core.
    """
    if cpu_threads:
        current().configure_threads(cpu_threads)


# --------------------------------------------------------------------------- what is there

def framework_versions() -> dict:
    """The backend's version, Keras, numpy, Python, and the CUDA/cuDNN the backend knows of.

    Keys: ``backend``, the backend's own name (``tensorflow`` / ``jax`` / ``torch``, plus
    ``jaxlib`` for JAX), ``keras``, ``numpy``, ``python``, ``cuda_version``,
    ``cudnn_version`` (None where the backend was built without CUDA or cannot say).
    """
    backend = current()
    return {"backend": backend.name, "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version(), **backend.versions()}


def visible_gpus() -> list[dict]:
    """The GPUs the backend can use, in its order: ``{"name", "compute_capability"}``."""
    return current().visible_gpus()


def accelerator_name() -> str | None:
    """The first visible GPU's name, or None on a CPU-only process."""
    gpus = visible_gpus()
    return gpus[0]["name"] if gpus else None


def peak_device_memory_bytes() -> int | None:
    """Peak memory the backend's allocator held on the first visible GPU (None: no GPU, or
    the backend cannot say)."""
    return current().peak_device_memory_bytes()


# --------------------------------------------------------------------------- device memory

def copy_to_device(array: np.ndarray, device: str | None):
    """One copy of ``array`` in ``device``'s memory (None: the backend's default device),
    as the backend's own tensor type; :func:`tensor_place` says where it ended up."""
    return current().copy_to_device(array, device)


def tensor_place(tensor) -> str:
    """Where a backend tensor (or a Keras variable's value) lives: ``"CPU:0"``, ``"GPU:0"``."""
    return current().tensor_place(tensor)


def keras_device_name(device: str) -> str:
    """``device`` as ``keras.device`` should get it on this backend (see :meth:`Torch.keras_device_name`)."""
    return current().keras_device_name(device)


# --------------------------------------------------------------------------- XLA / compilation

def jit_compile_value(requested: str):
    """The ``Model.compile(jit_compile=...)`` value for ``requested`` (``auto``/``on``/``off``).

    JAX runs every step ``jax.jit``-compiled by XLA; ``off`` (Keras's eager mode there)
    would time something no JAX user runs, so it is refused with ``ValueError``.
    """
    if requested not in JIT_COMPILE:
        raise ValueError(f"unknown jit_compile {requested!r}; choose one of {', '.join(JIT_COMPILE)}")
    if requested == "off" and current().refuses_jit_off():
        raise ValueError(JAX_ALWAYS_XLA)
    return JIT_COMPILE[requested]


def describe_compilation(requested: str, compiled: bool) -> tuple[bool, str]:
    """(is the training step XLA-compiled, a short note) once Keras has resolved
    ``jit_compile`` (``compiled`` is the model's resolved ``jit_compile``).

    TensorFlow: ``on``/``off`` force XLA; ``auto`` is Keras's choice (XLA when a GPU is
    visible, not on a CPU-only machine). JAX: always XLA. PyTorch: ``on`` is
    ``torch.compile`` (not XLA); ``auto`` resolves to eager, as Keras does.
    """
    return current().describe_compilation(requested, compiled)


# --------------------------------------------------------------------------- fp32 math

#: NVIDIA GPUs have TF32 tensor cores from compute capability 8.0 (Ampere) on.
TF32_MIN_COMPUTE_CAPABILITY = 8.0
#: ``jax_default_matmul_precision`` values that keep float32 dots and convolutions in IEEE
#: fp32; every other value (None, the default, included) lets XLA use TF32 on such a GPU.
JAX_IEEE_PRECISIONS = frozenset({"highest", "float32", "F32_F32_F32", "F64_F64_F64"})


def fp32_math(device_type: str, compute_capability: str | float | None = None) -> tuple[str, str]:
    """What an fp32 cell's convolutions and matmuls compute in here: ``"tf32"`` (TF32 tensor
    cores: fp32's range, a 10-bit mantissa) or ``"ieee"`` (IEEE fp32), and a note naming the
    backend setting that decided it.

    "fp32" is not one arithmetic on a GPU: every backend's default lets cuDNN convolutions
    use TF32 there, several times the fp32 rate, so an fp32 cell's yardsticks must be TF32
    ones when it does. A CPU has no TF32: always ``"ieee"``. On a GPU, TF32 only where the
    GPU has it (``compute_capability`` >= 8.0; None: the first visible GPU's) and the
    backend's own setting allows it: TensorFlow's ``tensor_float_32_execution_enabled()``
    (default on, matmuls and convolutions alike); PyTorch's ``torch.backends.cudnn.allow_tf32``
    (default on), for the convolutions that are nearly all of this network's FLOPs, with its
    matmul flag (default off) named in the note when the two differ; JAX's
    ``jax_default_matmul_precision`` (default None: TF32; ``highest``/``float32``: IEEE).
    """
    if device_type.upper() != "GPU":
        return "ieee", "a CPU computes fp32 in IEEE fp32"
    capability = _capability(compute_capability)
    if capability is None or capability < TF32_MIN_COMPUTE_CAPABILITY:
        shown = "unknown" if capability is None else f"{capability:.1f}"
        return "ieee", f"compute capability {shown}: no TF32 tensor cores known"
    allowed, setting = current().allows_tf32()
    return ("tf32" if allowed else "ieee"), setting


def cell_math(precision: str, device_type: str, compute_capability: str | float | None = None
              ) -> tuple[str, str]:
    """What a cell in ``precision`` computes its convolutions and matmuls in, with why: a
    mixed policy's compute dtype (``"bf16"``, ``"fp16"``), else :func:`fp32_math`."""
    compute = PRECISIONS[precision]
    if compute.compute_dtype != "float32":
        return compute.math, f"{precision}: {compute.compute_dtype} compute"
    return fp32_math(device_type, compute_capability)


def _capability(given: str | float | None) -> float | None:
    """``given``, else the first visible GPU's compute capability, as a number (None: unknown)."""
    if given is None:
        gpus = visible_gpus()
        given = gpus[0]["compute_capability"] if gpus else None
    try:
        return None if given is None else float(given)
    except ValueError:
        return None


def _torch_flag(legacy, new) -> bool:
    """A PyTorch TF32 flag through ``allow_tf32``, or through ``fp32_precision`` (torch >= 2.9)
    once that API was used: torch refuses to read a flag through one API after the other set it."""
    try:
        return bool(legacy())
    except RuntimeError:
        return new() == "tf32"


# --------------------------------------------------------------------------- matmul peak

def measure_matmul_peak(precision: str, size: int, min_seconds: float = 1.0,
                        max_repeats: int = 50) -> dict:
    """The best rate of a ``size`` x ``size`` matrix multiply in ``precision``'s compute dtype
    on the backend's default device (a GPU when one is visible), through the backend's own
    compiled ops (``tf.function`` / ``jax.jit`` / torch).

    Each multiply is reduced to a float32 scalar on the device and fetched to the host, so
    each timing covers the work (the n^2 reduction is 1/(2n) of it), not a large copy.
    Two untimed calls first (tracing, allocation, caches); then at least three timed ones,
    more until ``min_seconds`` have been spent. ``tflops`` is the best, ``median_tflops``
    the median, both at 2 size^3 FLOPs per multiply.

    The multiply runs in the math a cell in ``precision`` computes its convolutions in
    (:func:`cell_math`), and ``math`` (with ``math_note``) says which: a yardstick in
    another math than the cell's is no yardstick. TensorFlow's and JAX's matmuls follow the
    same setting as their convolutions; PyTorch's do not (cuDNN allows TF32 by default,
    cuBLAS not), so there the matmul is timed with the convolutions' TF32 setting.
    """
    dtype = PRECISIONS[precision].compute_dtype
    math, math_note = cell_math(precision, "GPU" if visible_gpus() else "CPU")
    run = current().matmul(dtype, size, tf32=math == "tf32")
    for _ in range(2):
        run()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    flops = 2 * size**3
    times.sort()
    return {"precision": precision, "dtype": dtype, "size": size, "repeats": len(times),
            "tflops": flops / times[0] / 1e12, "median_tflops": flops / times[len(times) // 2] / 1e12,
            "math": math, "math_note": math_note}


def _operands(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((size, size), dtype=np.float32),
            rng.standard_normal((size, size), dtype=np.float32))


@contextlib.contextmanager
def _torch_matmul_tf32(allowed: bool):
    """``torch.backends.cuda.matmul.allow_tf32`` is ``allowed`` inside, and back to what it was
    after (an error included)."""
    import torch

    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        matmul.allow_tf32 = saved
