"""The subprocess side of one cell: import the framework, train, report one typed result.

``python -m bench.worker`` reads a :class:`bench.protocol.CellSpec` (JSON) on stdin. The
runner has already hidden every other device (``CUDA_VISIBLE_DEVICES``) and chosen the Keras
backend (``KERAS_BACKEND``) in this process's environment, so the framework never sees
anything else. Messages to the runner are protocol lines on stdout (:mod:`bench.protocol`):
phases and progress while working, then one ``result`` (or ``error``) line. Everything
else (the framework's own chatter) goes to the cell's log.

``python -m bench.worker --probe`` prints what the backend knows about itself and its GPUs;
``python -m bench.worker --peak`` (a PeakSpec on stdin) times a large matrix multiply per
precision.

If the harness dies without warning (SIGKILL), the worker notices that its parent is gone
and exits within a second instead of training on as an orphan.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from datetime import datetime, timezone

from bench.energy import EnergyResult, UnavailableMeter, energy_callback, measure_idle
from bench.protocol import PROBE_MARK, CellSpec, PeakSpec, WorkerResult, emit

PARENT_POLL_S = 0.5
_STARTED = time.perf_counter()


def watch_parent(poll_s: float = PARENT_POLL_S) -> None:
    """Exit at once when the process that started this one is gone (reparented)."""
    parent = os.getppid()

    def poll():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def peak_rss_bytes() -> int | None:
    """The worker's peak resident memory, from the OS (covers the framework's native allocations)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def load_data(spec: CellSpec):
    from cifar_model import load_cifar10, synthetic_dataset

    data = spec.data
    if data.kind == "synthetic":
        size = data.synthetic_images
        return synthetic_dataset(data.split, n_train=size,
                                 n_test=None if size is None else max(1, size // 5),
                                 seed=spec.settings.seed or 0, note=data.note)
    return load_cifar10(data.path, data.split, download=False)


def run_cell(spec: CellSpec) -> WorkerResult:
    """Train one cell as ``spec`` says and return everything measured."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from bench.devices import usable_cpus
    from bench.worker_callbacks import CpuMeter, Progress
    from cifar_model import backends, train

    startup_seconds = time.perf_counter() - _STARTED
    emit("started", startup_seconds=startup_seconds, pid=os.getpid(), backend=backends.backend_name())
    # a multi-worker cell must join its cluster before the framework starts (inside train):
    # asking JAX for its devices first would start it alone
    early = spec.settings.workers == 1
    gpu = backends.accelerator_name() if early else None
    if early and spec.device_type == "GPU" and gpu is None:
        raise RuntimeError(f"the {backends.backend_name()} backend sees no GPU inside the worker "
                           "(CUDA libraries missing?)")
    emit("phase", phase="loading data")
    dataset = load_data(spec)
    settings = spec.settings
    progress = Progress(evaluates=not dataset.synthetic and settings.eval_images != 0)
    cpu_meter = CpuMeter(usable_cpus().count)
    meter, energy = open_energy_meter(spec), None
    try:
        if meter is not None:
            emit("phase", phase="measuring idle power")
            idle = measure_idle(meter)
            assert spec.energy is not None       # open_energy_meter gives a meter only then
            window = energy_callback(meter, settings.warmup_steps, spec.energy.min_window_s)
        emit("phase", phase="building the model")
        result = train(dataset, settings, device="gpu:0" if spec.device_type == "GPU" else "cpu:0",
                       callbacks=[progress, cpu_meter, *([window] if meter is not None else [])])
        if meter is not None:
            energy = EnergyResult(window.reading, idle)
    finally:
        if meter is not None:
            meter.close()
    if not early:
        gpu = backends.accelerator_name()
    return WorkerResult(
        train=result, data_source=dataset.source, data_note=dataset.note,
        startup_seconds=startup_seconds, peak_rss_bytes=peak_rss_bytes(),
        peak_gpu_bytes=backends.peak_device_memory_bytes(), cpu_util_pct=cpu_meter.percent,
        device_name=gpu if spec.device_type == "GPU" else None,
        versions=backends.framework_versions(), started_at=started_at, energy=energy)


def open_energy_meter(spec: CellSpec):
    """The cell's energy meter (None without --energy). A multi-worker cell is not metered: each
    worker would read the same package or boards, and the extension would stall its peers."""
    if spec.energy is None:
        return None
    if spec.settings.workers > 1:
        covers = "GPU boards" if spec.energy.nvml_indices else "CPU package"
        return UnavailableMeter(covers, f"multi-worker cells ({spec.settings.workers} workers) are not metered: "
                                        "each worker would count the same devices")
    return spec.energy.open_meter()


def run_peak(spec: PeakSpec) -> dict:
    """The best matmul rate in each precision's compute dtype, or in float32 where that is faster.

    A backend may compute a mixed-precision layer in float32 internally (XLA on a CPU without
    fast bfloat16 dots does), so the yardstick is the better of the two: a peak the network
    itself beats is a wrong yardstick, never a fast run.
    """
    from bench.yardsticks import MeasuredPeak
    from cifar_model import backends

    backends.configure_threads(spec.cpu_threads)
    fp32 = backends.measure_matmul_peak("fp32", spec.size)
    out = {}
    for precision in spec.precisions:
        own = fp32 if precision == "fp32" else backends.measure_matmul_peak(precision, spec.size)
        best = own if own["tflops"] >= fp32["tflops"] else {
            **fp32, "precision": precision,
            "note": f"float32 matmul faster than {own['dtype']} ({own['tflops']:.3f} TFLOP/s) here"}
        out[precision] = MeasuredPeak(**best, compute_dtype_tflops=own["tflops"]).as_dict()
    return out


def probe() -> dict:
    """The backend's versions and the GPUs it can use (PCI bus order), in the keys
    :func:`bench.devices.detect` reads."""
    from cifar_model import backends

    versions = backends.framework_versions()
    return {"backend": backends.backend_name(), "versions": versions,
            "tensorflow": versions.get("tensorflow"), "keras": versions.get("keras"),
            "built_with_cuda": bool(versions.get("cuda_version")),
            "cuda_version": versions.get("cuda_version"), "cudnn_version": versions.get("cudnn_version"),
            "gpus": backends.visible_gpus()}


def describe_failure(exc: BaseException) -> str:
    """One line: what went wrong, with out-of-memory called by its name."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    kind = type(exc).__name__
    if kind in ("ResourceExhaustedError", "OutOfMemoryError") or isinstance(exc, MemoryError) \
            or "out of memory" in first_line.lower():
        return f"out of memory ({kind}): {first_line}"
    return f"{kind}: {first_line}" if first_line else kind


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv == ["--probe"]:
        print(PROBE_MARK + json.dumps(probe()), flush=True)
        return 0
    watch_parent()
    try:
        payload = sys.stdin.read()
        if argv == ["--peak"]:
            result = run_peak(PeakSpec.from_dict(json.loads(payload)["peak"]))
        else:
            result = run_cell(CellSpec.from_json(payload)).to_dict()
        emit("result", result=result)
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure becomes this cell's failed row
        traceback.print_exc()
        emit("error", reason=describe_failure(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
