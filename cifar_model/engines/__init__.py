"""The seed network written natively per framework, beside the Keras reference.

``settings.engine == "native"`` trains the same network (:func:`cifar_model.model.build_network`,
built with the same seed, its initial weights copied over) with the backend's own fastest
training step instead of ``model.fit``: PyTorch (:mod:`.torch_native`: channels-last, autocast,
a compiled step and CUDA graphs on a GPU) and JAX (:mod:`.jax_native`: a jitted, donated
``lax.scan`` of several steps a call over data resident on the device). TensorFlow has none:
Keras's TensorFlow step is already one compiled ``tf.function`` (docs/method.md, "Engines").

Both are driven by :func:`train_native`, which times them exactly as the Keras path is timed:
the same :class:`~cifar_model.training.StepTimer`, called around each call of the engine's
step (one step, or ``steps_per_execution`` steps), the clock stopped after the call's loss is
on the host; warm-up (tracing, compilation, CUDA-graph capture) flagged apart; evaluation on
the whole held-out split; the same :class:`~cifar_model.training.TrainResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Protocol

import keras
import numpy as np

from cifar_model.data import Dataset
from cifar_model.model import DROPOUT_RATE, build_network
from cifar_model.pipelines import shuffled_index_batches
from cifar_model.settings import (
    TrainSettings,
    resolve_data_placement,
    steps_per_epoch,
    training_set_bytes,
)
from cifar_model.training import UNSYNCED_SKIP, StepTimer, TrainResult, _evaluate, held_out_curve, measured_result


class NativeEngine(Protocol):
    """What :func:`train_native` needs of an engine (one per framework)."""

    compile_note: str   # how its step runs, in words (compiler, CUDA graphs, memory format, data)
    xla: bool           # is the step XLA-compiled
    data_device: str    # where the training images live ("CPU:0", "GPU:0")

    def run(self, indices: np.ndarray):
        """Train ``len(indices)`` steps, one per row of image indices; return the last step's
        loss as a device value, without waiting for it."""

    def loss_value(self, loss) -> float:
        """``loss`` on the host: waits for the steps that made it."""

    def epoch_metrics(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the steps since the last call, on the host; resets them."""

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 logits of ``images`` in inference mode (no dropout)."""


def reference_weights(precision: str, seed: int | None) -> tuple[keras.Model, dict[str, list[np.ndarray]]]:
    """The Keras seed network built with ``seed``, and its initial weights by layer name
    (``conv1``..``conv5``, ``fc1``..``fc3``: [kernel, bias] in Keras's layouts, HWIO and
    (in, out)), which a native engine starts from."""
    with keras.device("cpu"):
        model = build_network(precision, seed=seed)
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()]
               for layer in model.layers if layer.name.startswith(("conv", "fc")) and layer.weights}
    return model, weights


def make_engine(settings: TrainSettings, weights: dict, device: str, device_type: str,
                data_placement: str, dataset: Dataset, dropout_rate: float = DROPOUT_RATE) -> NativeEngine:
    """The native engine of the backend Keras runs on (settings.backend, already checked).
    ``dropout_rate`` 0 only for comparing steps with the Keras network's (tests)."""
    if settings.backend == "torch":
        from cifar_model.engines.torch_native import TorchEngine
        return TorchEngine(weights, settings, device, device_type, data_placement, dataset, dropout_rate)
    if settings.backend == "jax":
        from cifar_model.engines.jax_native import JaxEngine
        return JaxEngine(weights, settings, device, device_type, data_placement, dataset, dropout_rate)
    raise ValueError(f"no native engine for {settings.backend}")  # backend_limitation says why first


def train_native(dataset: Dataset, settings: TrainSettings, *, device: str | None,
                 device_type: str, callbacks: Sequence[keras.callbacks.Callback] = (),
                 device_memory_bytes: int | None = None) -> TrainResult:
    """Train the native engine of ``settings.backend`` and measure it like the Keras path.

    Called by :func:`cifar_model.training.train` once it has checked the settings. The
    batches are :func:`~cifar_model.pipelines.shuffled_index_batches` with the settings' seed,
    the order the Keras path draws on JAX and PyTorch.
    """
    device = device or ("gpu:0" if device_type == "GPU" else "cpu:0")
    n_train = len(dataset.x_train)
    placement = resolve_data_placement(settings.data_placement, device_type, device_memory_bytes,
                                       training_set_bytes(n_train))
    steps = steps_per_epoch(n_train, settings.batch_size, settings.max_steps_per_epoch)
    if settings.seed is not None:
        keras.utils.set_random_seed(settings.seed)

    started = time.perf_counter()
    model, weights = reference_weights(settings.precision, settings.seed)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    engine = make_engine(settings, weights, device, device_type, placement, dataset)
    data_seconds = dataset.load_seconds + (time.perf_counter() - started)  # incl. the copy to the device
    batches = shuffled_index_batches(n_train, settings.batch_size, settings.seed)

    def logits_of(_model, images, size):        # the Keras path's evaluation signature
        return engine.logits(images, size)

    timer = StepTimer(settings.warmup_steps)
    # after the step timer, as on the Keras path: an evaluation runs once that step's clock stopped
    curve = held_out_curve(settings, dataset, model, logits_of)
    hooks = [timer, *([curve] if curve is not None else []), *callbacks]
    run = _NativeRun()
    for hook in hooks:
        hook.set_model(run)           # HeldOutCurve stops training through run.stop_training
        hook.set_params({"epochs": settings.epochs, "steps": steps, "verbose": 0})
    per_call = settings.steps_per_execution
    for hook in hooks:
        hook.on_train_begin()
    started = time.perf_counter()
    train_loss = train_accuracy = math.nan
    for epoch in range(settings.epochs):
        for hook in hooks:
            hook.on_epoch_begin(epoch)
        step = 0
        while step < steps and not run.stop_training:
            k = min(per_call, steps - step)
            indices = np.stack([next(batches) for _ in range(k)])
            for hook in hooks:
                hook.on_train_batch_begin(step)
            loss = engine.loss_value(engine.run(indices))      # the sync: the loss on the host
            for hook in hooks:
                hook.on_train_batch_end(step + k - 1, {"loss": loss})
            step += k
        train_loss, train_accuracy = engine.epoch_metrics()
        for hook in hooks:
            hook.on_epoch_end(epoch, {"loss": train_loss, "accuracy": train_accuracy})
        if run.stop_training:
            break
    train_seconds = time.perf_counter() - started
    for hook in hooks:
        hook.on_train_end()
    if curve is not None:             # evaluations during training are not training time
        train_seconds -= sum(p.eval_seconds for p in curve.points)

    evaluation = _evaluate(model, dataset, settings, logits_of)

    unsynced_steps, unsynced_seconds = 0, None
    if settings.unsynced_steps:
        for _ in range(UNSYNCED_SKIP):
            engine.loss_value(engine.run(np.stack([next(batches)])))
        started = time.perf_counter()
        last = None                   # the last step's loss, still on the device
        for _ in range(settings.unsynced_steps):
            last = engine.run(np.stack([next(batches)]))
        engine.loss_value(last)
        unsynced_seconds = time.perf_counter() - started
        unsynced_steps = settings.unsynced_steps
        engine.epoch_metrics()  # leave the training figures as they were

    return measured_result(
        settings, dataset, device, steps, timer, curve, model,
        train_seconds=train_seconds, data_seconds=data_seconds, build_seconds=build_seconds,
        train_loss=train_loss, train_accuracy=train_accuracy, evaluation=evaluation,
        xla=engine.xla, compile_note=f"native engine: {engine.compile_note}",
        unsynced_steps=unsynced_steps, unsynced_seconds=unsynced_seconds,
        data_placement=placement, data_device=engine.data_device)


class _NativeRun:
    """What a Keras callback sees as its model on the native path: the flag a callback sets to
    stop training (``HeldOutCurve`` at its target)."""

    stop_training = False
