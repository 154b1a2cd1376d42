"""One timed training run of the seed network on one device.

Timing hooks Keras's own training loop with a callback (:class:`StepTimer`) instead of
rewriting it. Each step is timed with a monotonic clock from just before Keras runs the
step until its loss has been fetched to the host, so the time covers the work on the
device, not only its dispatch. The first steps (tracing, compilation, allocator warm-up)
are flagged as warm-up and reported apart from the steady state.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np

from cifar_model.data import NUM_CLASSES, Dataset, resolve_data_placement, training_set_bytes
from cifar_model.model import build_model, compile_model, training_flops_per_image

PREFETCH_BATCHES = 4
UNSYNCED_SKIP = 2  # untimed steps before an unsynced block (the train function is already traced)


@dataclass(frozen=True)
class StepRecord:
    """One timed call of Keras's train function: ``steps`` consecutive steps (1 unless
    ``steps_per_execution`` > 1), starting at ``step`` (0-based within ``epoch``)."""

    epoch: int
    step: int
    steps: int
    seconds: float
    warmup: bool


@dataclass
class TrainResult:
    """Everything one training run measured. Times are wall seconds (``perf_counter``)."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    precision: str
    jit_compile: str
    steps_per_execution: int
    device: str | None
    data: str
    split: str
    records: list[StepRecord]
    epoch_seconds: list[float]
    train_seconds: float            # the whole model.fit call
    steady_wall_seconds: float      # from the first steady step's start to the last one's end
    data_seconds: float             # reading + standardising the dataset + building the pipeline
    build_seconds: float            # building and compiling the model
    eval_seconds: float | None
    train_loss: float               # mean over the last epoch, dropout active
    train_accuracy: float
    heldout_loss: float | None      # on the *whole* held-out split; None for synthetic data
    heldout_accuracy: float | None
    heldout_images: int
    accuracy_note: str
    training_flops_per_image: int
    params: int
    xla: bool                       # what jit_compile resolved to ("auto": on with a GPU, off on CPU)
    unsynced_steps: int = 0         # steps of the unsynced throughput phase (0: not run)
    unsynced_seconds: float | None = None
    data_placement: str = "host"    # where the training images lived: host or device
    data_device: str = ""           # the TensorFlow device that held them ("CPU:0", "GPU:0")

    @property
    def first_step_seconds(self) -> float:
        return self.records[0].seconds / self.records[0].steps

    @property
    def steady_records(self) -> list[StepRecord]:
        return [r for r in self.records if not r.warmup]

    @property
    def steady_step_seconds(self) -> np.ndarray:
        """Seconds per step of every steady (non-warm-up) record."""
        return np.array([r.seconds / r.steps for r in self.steady_records])

    @property
    def unsynced_images_per_s(self) -> float | None:
        """Throughput with no per-step sync: unsynced_steps x batch / their wall time."""
        if not self.unsynced_steps or not self.unsynced_seconds:
            return None
        return self.unsynced_steps * self.batch_size / self.unsynced_seconds

    @property
    def steady_steps(self) -> int:
        return sum(r.steps for r in self.steady_records)

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.records)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["records"] = [asdict(r) for r in self.records]
        return out


class StepTimer(keras.callbacks.Callback):
    """Times every train-function call, synced: the clock stops after the loss is on the host.

    Keras calls ``on_train_batch_begin(first_step)`` and ``on_train_batch_end(last_step,
    logs)`` around each call of its train function (one step, or ``steps_per_execution``
    steps). Because this callback overrides ``on_train_batch_end``, Keras runs it
    synchronously and converts the logs to Python numbers before calling it; reading
    ``logs['loss']`` here makes that sync explicit and keeps it inside the timed interval.
    """

    def __init__(self, warmup_steps: int):
        super().__init__()
        self.warmup_steps = warmup_steps
        self.records: list[StepRecord] = []
        self.epoch_seconds: list[float] = []
        self.steady_started: float | None = None
        self.steady_ended: float | None = None
        self._epoch = 0
        self._epoch_started = 0.0
        self._step_started = 0.0
        self._first_step = 0
        self._steps_done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)

    def on_train_batch_begin(self, batch, logs=None):
        self._first_step = batch
        self._step_started = time.perf_counter()
        if self.steady_started is None and self._steps_done >= self.warmup_steps:
            self.steady_started = self._step_started

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])  # device -> host: the step's work is finished
        ended = time.perf_counter()
        steps = batch - self._first_step + 1
        warmup = self._steps_done < self.warmup_steps
        self.records.append(StepRecord(self._epoch, self._first_step, steps,
                                       ended - self._step_started, warmup))
        self._steps_done += steps
        if not warmup:
            self.steady_ended = ended


class UnsyncedTimer(keras.callbacks.Callback):
    """Times a block of steps with one sync at the end, for comparison with :class:`StepTimer`.

    It hooks only the start of step ``skip`` and the end of training, so Keras dispatches
    the steps in between without waiting on each one (its asynchronous callback mode);
    ``on_train_end`` runs after Keras has fetched the final logs, i.e. after the last step's
    work is done.
    """

    def __init__(self, skip: int):
        super().__init__()
        self.skip = skip
        self.first_timed_step: int | None = None
        self.started: float | None = None
        self.ended: float | None = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.started is None and batch >= self.skip:  # >=: steps_per_execution skips indices
            self.first_timed_step = batch
            self.started = time.perf_counter()

    def on_train_end(self, logs=None):
        self.ended = time.perf_counter()


def make_train_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None):
    """TensorFlow-only: an endless, reshuffled-every-epoch stream of full batches.

    The images stay in one in-memory tensor; only the indices are shuffled and each
    batch is gathered from memory, so there is no shuffle buffer to fill (which would
    stall the first step of every epoch) and no per-step Python work. Labels are one-hot
    encoded inside the pipeline and ``prefetch`` overlaps the next batch with the current
    step. The last partial batch of an epoch is dropped, as the notebook did (40,000
    images at batch 128: 312 steps), so every step has the same shape.

    Parallelism is fixed and tf.data's autotuner is off: a gather costs well under a
    millisecond, and with the autotuner on, tearing the iterator down at the end of
    ``fit`` blocked for seconds (growing with the steps run), inflating training time.
    """
    import tensorflow as tf

    images, labels = _host_tensors(x, y)
    return (_index_batches(len(x), batch_size, seed)
            .map(lambda i: (tf.gather(images, i), tf.gather(labels, i)),
                 num_parallel_calls=2, deterministic=True)
            .prefetch(PREFETCH_BATCHES)
            .with_options(_pipeline_options()))


def _host_tensors(x: np.ndarray, y: np.ndarray):
    """The images and their one-hot labels as tensors in host memory."""
    import tensorflow as tf

    with tf.device("/CPU:0"):
        images = tf.convert_to_tensor(x)  # tf.constant copies 15x slower here
        return images, tf.one_hot(tf.convert_to_tensor(y), NUM_CLASSES)


def _index_batches(n: int, batch_size: int, seed: int | None):
    """Endless full batches of indices into ``n`` images, reshuffled every epoch."""
    import tensorflow as tf

    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size, drop_remainder=True).repeat()


def _pipeline_options():
    """Autotuner off (see :func:`make_train_pipeline`) and tf.data's default graph
    rewrites off: they serialise the dataset graph, 614 MB of captured images included,
    each time ``fit`` opens an iterator (1.7 s and ~400 MB here), for no gain on a pipeline
    that is one gather and a prefetch."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


def make_resident_inputs(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None,
                         device: str | None):
    """TensorFlow-only: the training images copied into ``device``'s memory, and a stream
    of (image indices, one-hot labels) batches that selects from them.

    The stream shuffles exactly as :func:`make_train_pipeline` does (same seed, same
    batches); only the gather moves from tf.data on the host into the training step, on
    the device, so no image crosses the host-device link while training. Returns
    ``(images, pipeline)``; ``images.device`` names where the copy lives.
    """
    import tensorflow as tf

    host_images, labels = _host_tensors(x, y)
    with tf.device(device) if device else contextlib.nullcontext():
        images = tf.identity(host_images)   # the one host -> device copy
    del host_images
    return images, _index_batches(len(x), batch_size, seed).map(
        lambda i: (tf.cast(i, tf.int32), tf.gather(labels, i)), num_parallel_calls=2,
        deterministic=True).prefetch(PREFETCH_BATCHES).with_options(_pipeline_options())


class ResidentImages(keras.layers.Layer):
    """Looks a batch's images up, by index, in a training set held in device memory.

    The images are a captured tensor, not a weight: the wrapped network keeps its
    1,454,922 parameters and nothing here is trained or saved.
    """

    def __init__(self, images, **kwargs):
        super().__init__(dtype="float32", trainable=False, **kwargs)
        self.images = images

    def call(self, indices):
        import tensorflow as tf
        return tf.gather(self.images, indices)

    def compute_output_shape(self, input_shape):
        return (*input_shape, *self.images.shape[1:])


def resident_model(model: keras.Model, images, precision: str, jit_compile: str,
                   steps_per_execution: int) -> keras.Model:
    """``model`` fed by image indices into ``images`` instead of images, compiled alike."""
    indices = keras.Input(shape=(), dtype="int32", name="image_index")
    wrapped = keras.Model(indices, model(ResidentImages(images, name="resident_images")(indices)),
                          name=f"{model.name}_resident")
    return compile_model(wrapped, precision, jit_compile, steps_per_execution=steps_per_execution)


def plan_steps(n_train: int, batch_size: int, max_steps_per_epoch: int | None) -> int:
    """Steps per epoch: full batches in the training set, optionally capped."""
    full = n_train // batch_size
    if full == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n_train} training images")
    return min(full, max_steps_per_epoch) if max_steps_per_epoch else full


def train(
    dataset: Dataset,
    batch_size: int = 128,
    epochs: int = 1,
    max_steps_per_epoch: int | None = None,
    warmup_steps: int = 5,
    precision: str = "fp32",
    jit_compile: str = "auto",
    steps_per_execution: int = 1,
    device: str | None = None,
    seed: int | None = None,
    evaluate: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    unsynced_steps: int = 0,
    data_placement: str = "host",
    device_memory_bytes: int | None = None,
) -> TrainResult:
    """Train the seed network on ``dataset`` and measure it.

    ``device`` is a Keras device name (``"cpu:0"``, ``"gpu:0"``) or None for the
    backend's default. Held-out loss and accuracy are computed on the *whole* held-out
    split after training (skipped for synthetic data, whose accuracy means nothing).

    With ``unsynced_steps`` > 0, after evaluation the same model trains that many more
    steps (after :data:`UNSYNCED_SKIP` untimed ones) timed as one block with a single sync
    at the end: the cost of per-step syncing is the difference to the steady figures.

    ``data_placement`` (:data:`DATA_PLACEMENTS`) says where the training images live:
    ``host`` feeds each batch from host memory through tf.data; ``device`` copies the whole
    training set into ``device``'s memory once (counted in the data time) and gathers each
    batch there, inside the training step. ``auto`` resolves with
    :func:`resolve_data_placement`, given ``device_memory_bytes``.
    """
    if batch_size < 1 or epochs < 1 or warmup_steps < 0 or steps_per_execution < 1 \
            or unsynced_steps < 0:
        raise ValueError("batch_size, epochs and steps_per_execution must be >= 1, "
                         "warmup_steps and unsynced_steps >= 0")
    steps_per_epoch = plan_steps(len(dataset.x_train), batch_size, max_steps_per_epoch)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    device_type = "GPU" if device and device.lower().startswith("gpu") else "CPU"
    data_placement = resolve_data_placement(data_placement, device_type, device_memory_bytes,
                                            training_set_bytes(len(dataset.x_train)))

    started = time.perf_counter()
    images = None
    if data_placement == "device":
        images, pipeline = make_resident_inputs(dataset.x_train, dataset.y_train, batch_size,
                                                seed, device)
        data_device = images.device.rpartition("device:")[2]   # "GPU:0"
    else:
        pipeline = make_train_pipeline(dataset.x_train, dataset.y_train, batch_size, seed)
        data_device = "CPU:0"
    data_seconds = dataset.load_seconds + (time.perf_counter() - started)

    with _device_scope(device):
        started = time.perf_counter()
        model = build_model(precision, jit_compile, steps_per_execution=steps_per_execution,
                            seed=seed)
        trainer = model if images is None else resident_model(
            model, images, precision, jit_compile, steps_per_execution)
        build_seconds = time.perf_counter() - started

        timer = StepTimer(warmup_steps)
        started = time.perf_counter()
        history = trainer.fit(pipeline, epochs=epochs, steps_per_epoch=steps_per_epoch,
                              shuffle=False, verbose=0, callbacks=[timer, *callbacks])
        train_seconds = time.perf_counter() - started

        heldout_loss = heldout_accuracy = eval_seconds = None
        if dataset.synthetic:
            accuracy_note = "not measured: synthetic data"
        elif not evaluate:
            accuracy_note = "not measured: evaluation disabled"
        else:
            started = time.perf_counter()
            scores = model.evaluate(dataset.x_test, keras.utils.to_categorical(dataset.y_test, NUM_CLASSES),
                                    batch_size=batch_size, verbose=0, return_dict=True)
            eval_seconds = time.perf_counter() - started
            heldout_loss, heldout_accuracy = float(scores["loss"]), float(scores["accuracy"])
            accuracy_note = f"whole held-out split of the {dataset.split} split ({len(dataset.x_test)} images)"

        unsynced_seconds = None
        if unsynced_steps:
            unsynced = UnsyncedTimer(UNSYNCED_SKIP)
            total = UNSYNCED_SKIP + unsynced_steps
            trainer.fit(pipeline, epochs=1, steps_per_epoch=total, shuffle=False, verbose=0,
                        callbacks=[unsynced])
            unsynced_seconds = unsynced.ended - unsynced.started
            unsynced_steps = total - unsynced.first_timed_step

    steady_wall = (timer.steady_ended - timer.steady_started
                   if timer.steady_started is not None and timer.steady_ended is not None else math.nan)
    return TrainResult(
        batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps, precision=precision, jit_compile=jit_compile,
        steps_per_execution=steps_per_execution, device=device, data=dataset.label,
        split=dataset.split, records=timer.records, epoch_seconds=timer.epoch_seconds,
        train_seconds=train_seconds, steady_wall_seconds=steady_wall,
        data_seconds=data_seconds, build_seconds=build_seconds, eval_seconds=eval_seconds,
        train_loss=float(history.history["loss"][-1]),
        train_accuracy=float(history.history["accuracy"][-1]),
        heldout_loss=heldout_loss, heldout_accuracy=heldout_accuracy,
        heldout_images=0 if heldout_accuracy is None else len(dataset.x_test),
        accuracy_note=accuracy_note,
        training_flops_per_image=training_flops_per_image(model),
        params=model.count_params(),
        xla=bool(trainer.jit_compile),
        unsynced_steps=unsynced_steps, unsynced_seconds=unsynced_seconds,
        data_placement=data_placement, data_device=data_device,
    )


def _device_scope(device: str | None):
    return keras.device(device) if device else contextlib.nullcontext()
