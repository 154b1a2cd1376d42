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

from cifar_model import backends
from cifar_model.data import Dataset
from cifar_model.model import DROPOUT_RATE, build_network, training_flops_per_image
from cifar_model.pipelines import shuffled_index_batches
from cifar_model.settings import (
    TrainSettings,
    resolve_data_placement,
    steps_per_epoch,
    training_set_bytes,
)
from cifar_model.training import UNSYNCED_SKIP, StepTimer, TrainResult, _evaluate


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

    timer = StepTimer(settings.warmup_steps)
    hooks = [timer, *callbacks]
    per_call = settings.steps_per_execution
    for hook in hooks:
        hook.on_train_begin()
    started = time.perf_counter()
    train_loss = train_accuracy = math.nan
    for epoch in range(settings.epochs):
        for hook in hooks:
            hook.on_epoch_begin(epoch)
        step = 0
        while step < steps:
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
    train_seconds = time.perf_counter() - started
    for hook in hooks:
        hook.on_train_end()

    evaluation = _evaluate(model, dataset, settings, lambda _, images, size: engine.logits(images, size))

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

    cell_math, math_note = backends.cell_math(settings.precision, device_type)
    steady_wall = (timer.steady_ended - timer.steady_started
                   if timer.steady_started is not None and timer.steady_ended is not None else None)
    return TrainResult(
        batch_size=settings.batch_size, epochs=settings.epochs, steps_per_epoch=steps,
        warmup_steps=settings.warmup_steps, precision=settings.precision,
        jit_compile=settings.jit_compile, steps_per_execution=settings.steps_per_execution,
        device=device, data=dataset.label, split=dataset.split, records=tuple(timer.records),
        epoch_seconds=tuple(timer.epoch_seconds), train_seconds=train_seconds,
        steady_wall_seconds=steady_wall, data_seconds=data_seconds, build_seconds=build_seconds,
        train_loss=train_loss, train_accuracy=train_accuracy, **evaluation,
        training_flops_per_image=training_flops_per_image(model), params=model.count_params(),
        xla=engine.xla, backend=settings.backend, compile_note=f"native engine: {engine.compile_note}",
        unsynced_steps=unsynced_steps, unsynced_seconds=unsynced_seconds,
        data_placement=placement, data_device=engine.data_device,
        replicas=settings.replicas, workers=settings.workers, task_index=settings.task_index,
        strategy=settings.strategy, math=cell_math, math_note=math_note,
    )
