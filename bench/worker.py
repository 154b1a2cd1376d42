"""The subprocess side of one cell: import TensorFlow, train, report one JSON result.

``python -m bench.worker`` reads the cell (JSON) on stdin. The runner has already hidden
every other device (``CUDA_VISIBLE_DEVICES``) in this process's environment, so
TensorFlow never sees them. Messages to the runner are single lines on stdout starting
with ``@@bench ``: progress while training, then one ``result`` (or ``error``) line.
Everything else (TensorFlow's own chatter) goes to stderr, which the runner keeps in the
cell's log file.

``python -m bench.worker --probe`` prints what TensorFlow knows about itself and its GPUs;
``python -m bench.worker --peak`` (spec on stdin) times a large matrix multiply per precision.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone

MARK = "@@bench "
PROBE_MARK = "@@bench-probe "
_STARTED = time.perf_counter()


def emit(event: str, **fields) -> None:
    print(MARK + json.dumps({"event": event, **fields}), flush=True)


def probe() -> dict:
    """TensorFlow's version, build and the GPUs it can use (PCI bus order)."""
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": ".".join(map(str, capability)) if capability else None})
    build = tf.sysconfig.get_build_info()
    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "built_with_cuda": bool(tf.test.is_built_with_cuda()),
            "cuda_version": build.get("cuda_version"), "cudnn_version": build.get("cudnn_version"),
            "gpus": gpus}


MATMUL_DTYPES = {"fp32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def measure_peak(precision: str, size: int, min_seconds: float = 1.0, max_repeats: int = 50) -> dict:
    """TensorFlow-only: the best rate of a ``size``x``size`` matrix multiply in the precision's
    compute dtype on the visible device (2 size^3 FLOPs per multiply, synced each time).

    The result is reduced to a scalar on the device and fetched, so each timing covers the
    work (the n^2 reduction is 1/(2n) of it) and not a large copy to the host.
    """
    import tensorflow as tf

    dtype = getattr(tf, MATMUL_DTYPES[precision])
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
        b = tf.cast(tf.random.normal((size, size), seed=2), dtype)
        matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)),
                             autograph=False)
        for _ in range(2):  # trace, allocate, warm the caches
            matmul(a, b).numpy()
        times: list[float] = []
        while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_repeats):
            started = time.perf_counter()
            matmul(a, b).numpy()
            times.append(time.perf_counter() - started)
    flops = 2 * size**3
    times.sort()
    return {"precision": precision, "dtype": MATMUL_DTYPES[precision], "size": size,
            "repeats": len(times), "tflops": flops / times[0] / 1e12,
            "median_tflops": flops / times[len(times) // 2] / 1e12}


def run_peak(spec: dict) -> dict:
    configure_threads(spec.get("cpu_threads", 0))
    return {precision: measure_peak(precision, spec["size"]) for precision in spec["precisions"]}


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peak_rss_bytes() -> int | None:
    """The worker's peak resident memory, from the OS (covers TensorFlow's native allocations)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def configure_threads(cpu_threads: int) -> None:
    """TensorFlow-only: intra/inter-op thread pools; must run before TensorFlow starts working."""
    import tensorflow as tf

    if cpu_threads:
        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(cpu_threads, 2))


def peak_gpu_bytes() -> int | None:
    """TensorFlow-only: the peak memory TensorFlow's allocator held on the (only visible) GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def gpu_name() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None


def _callbacks(spec: dict):
    """Progress lines for the runner, and the process's CPU use while training."""
    import keras
    import psutil

    total = spec["epochs"] * spec["steps_per_epoch"]
    every = max(1, math.ceil(total / 10))  # about ten progress lines a cell

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            done = self.epoch * spec["steps_per_epoch"] + batch + 1
            if done % every == 0 or done == total:
                emit("step", done=done, total=total)

    class CpuMeter(keras.callbacks.Callback):
        """Mean CPU use of the whole worker process (all threads) during ``fit``."""

        def on_train_begin(self, logs=None):
            self.times, self.wall = psutil.Process().cpu_times(), time.perf_counter()

        def on_train_end(self, logs=None):
            now = psutil.Process().cpu_times()
            busy = (now.user - self.times.user) + (now.system - self.times.system)
            self.percent = 100 * busy / ((time.perf_counter() - self.wall) * usable_cpus())

    return Progress(), CpuMeter()


def run_cell(spec: dict) -> dict:
    """Train one cell as ``spec`` says and return everything measured."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    import keras
    import numpy as np

    configure_threads(spec.get("cpu_threads", 0))
    from cifar_model import load_cifar10, synthetic_dataset, train
    from cifar_model.training import plan_steps

    startup_seconds = time.perf_counter() - _STARTED
    emit("started", startup_seconds=startup_seconds, pid=os.getpid())

    if spec["device_type"] == "GPU" and gpu_name() is None:
        raise RuntimeError("TensorFlow sees no GPU inside the worker (CUDA libraries missing?)")
    if spec["data"] == "synthetic":
        size = spec.get("synthetic_images")
        dataset = synthetic_dataset(spec["split"], n_train=size,
                                    n_test=None if size is None else max(1, size // 5),
                                    seed=spec.get("seed") or 0, note=spec.get("data_note", ""))
    else:
        dataset = load_cifar10(spec["data_path"], spec["split"], download=False)
    spec = dict(spec, steps_per_epoch=plan_steps(len(dataset.x_train), spec["batch_size"],
                                                 spec.get("steps")))
    progress, cpu_meter = _callbacks(spec)
    emit("training", steps_per_epoch=spec["steps_per_epoch"], epochs=spec["epochs"])
    result = train(
        dataset, batch_size=spec["batch_size"], epochs=spec["epochs"],
        max_steps_per_epoch=spec.get("steps"), warmup_steps=spec["warmup"],
        precision=spec["precision"], jit_compile=spec["jit_compile"],
        steps_per_execution=spec.get("steps_per_execution", 1),
        device="gpu:0" if spec["device_type"] == "GPU" else "cpu:0",
        seed=spec.get("seed"), callbacks=[progress, cpu_meter],
        unsynced_steps=spec.get("unsynced_steps", 0),
        data_placement=spec.get("data_placement", "host"),
    )
    return {
        **result.to_dict(),
        "data_source": dataset.source,
        "data_note": dataset.note,
        "startup_seconds": startup_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": peak_gpu_bytes(),
        "cpu_util_pct": getattr(cpu_meter, "percent", None),
        "device_name": gpu_name() if spec["device_type"] == "GPU" else None,
        "versions": {"tensorflow": _version("tensorflow"), "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "started_at": started_at,
    }


def _version(module: str) -> str | None:
    return getattr(sys.modules.get(module), "__version__", None)


def describe_failure(exc: BaseException) -> str:
    """One line: what went wrong, with out-of-memory called by its name."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    kind = type(exc).__name__
    if kind == "ResourceExhaustedError" or isinstance(exc, MemoryError):
        return f"out of memory ({kind}): {first_line}"
    return f"{kind}: {first_line}" if first_line else kind


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv == ["--probe"]:
        print(PROBE_MARK + json.dumps(probe()), flush=True)
        return 0
    try:
        spec = json.loads(sys.stdin.read())
        emit("result", result=run_peak(spec) if argv == ["--peak"] else run_cell(spec))
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure becomes this cell's failed row
        traceback.print_exc()
        emit("error", reason=describe_failure(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
