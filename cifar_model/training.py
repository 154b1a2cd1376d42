"""One timed training run of the seed network on one device, on any Keras 3 backend.

Usable on its own::

    from cifar_model import TrainSettings, load_dataset, train
    result = train(load_dataset(), TrainSettings(batch_size=128, max_steps_per_epoch=50))

The backend is the one Keras was imported with (``KERAS_BACKEND``); ``settings.backend``
must name it, so a result can never claim a framework it did not run on.

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
from collections.abc import Callable, Sequence

import keras

from cifar_model import backends, distribution
from cifar_model.curves import eval_interval_steps, heldout_scores
from cifar_model.data import Dataset
from cifar_model.model import build_network, compile_model, training_flops_per_image
from cifar_model.pipelines import host_batches, index_batches
from cifar_model.results import CurvePoint, StepRecord, TrainResult
from cifar_model.settings import (
    TrainSettings,
    backend_limitation,
    parallel_limitation,
    resolve_data_placement,
    steps_per_epoch,
    training_set_bytes,
)

UNSYNCED_SKIP = 2  # untimed steps before an unsynced block (the train function is already traced)
NO_EVAL_NOTE = "not measured: evaluation skipped (--no-eval)"
SYNTHETIC_NOTE = "not measured: synthetic data"


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


class HeldOutCurve(keras.callbacks.Callback):
    """Evaluates the whole held-out split every ``eval_every_epochs`` epochs of training,
    and stops training at the first evaluation that reaches ``target`` accuracy.

    ``evaluate()`` returns (accuracy, loss) on the held-out split; its time is measured here
    and kept out of ``train_seconds``. It runs in ``on_train_batch_end``, after the step
    timer (put it later in the callback list) has stopped that step's clock, so step times
    never contain an evaluation. Steps per epoch come from Keras (``params["steps"]``), not
    from the caller. A run that ends between two evaluations is evaluated once more at its
    end, so every curve ends where training did.
    """

    def __init__(self, evaluate: Callable[[], tuple[float, float]], eval_every_epochs: float,
                 global_batch_size: int, target: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.evaluate = evaluate
        self.eval_every_epochs = eval_every_epochs
        self.global_batch_size = global_batch_size
        self.target = target
        self.clock = clock
        self.points: list[CurvePoint] = []
        self.reached: CurvePoint | None = None
        self._interval = 0
        self._next_eval = 0
        self._steps_done = 0
        self._first_step = 0
        self._epoch = 0
        self._started = 0.0
        self._eval_total = 0.0

    def on_train_begin(self, logs=None):
        self._interval = eval_interval_steps(self.eval_every_epochs, self.params["steps"])
        self._next_eval = self._interval
        self._started = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._first_step = batch

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += batch - self._first_step + 1
        if self._steps_done >= self._next_eval:
            self._next_eval = (self._steps_done // self._interval + 1) * self._interval
            self._evaluate_now()

    def on_train_end(self, logs=None):
        if self._steps_done and (not self.points or self.points[-1].step != self._steps_done):
            self._evaluate_now()

    def _evaluate_now(self) -> None:
        # Keras on JAX keeps the weights out of the model during fit (purged into the trainer's
        # state): reading ``self.model`` syncs them back, or a predict mid-fit finds None
        _ = self.model
        before = self.clock()
        accuracy, loss = self.evaluate()
        after = self.clock()
        eval_seconds = after - before
        point = CurvePoint(
            epoch=self._epoch + 1, step=self._steps_done,
            images_seen=self._steps_done * self.global_batch_size,
            train_seconds=before - self._started - self._eval_total,
            wall_seconds=after - self._started, eval_seconds=eval_seconds,
            heldout_accuracy=float(accuracy), heldout_loss=float(loss))
        self._eval_total += eval_seconds
        self.points.append(point)
        if self.target is not None and self.reached is None and point.heldout_accuracy >= self.target:
            self.reached = point
            self.model.stop_training = True


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


class ResidentImages(keras.layers.Layer):
    """Looks a batch's images up, by index, in a training set held in device memory.

    The images are a non-trainable variable so that every backend passes them to its
    compiled step as an argument: captured as a constant instead, JAX would embed all
    614 MB in the compiled program (10 s to compile, 4 GB of memory). They belong to the
    wrapper only: the seed network keeps its 1,454,922 parameters, and nothing here is
    trained.
    """

    def __init__(self, images, **kwargs):
        super().__init__(dtype="float32", trainable=False, **kwargs)
        self.images = keras.Variable(images, trainable=False, dtype="float32", name="images")

    def call(self, indices):
        return keras.ops.take(self.images, indices, axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, *self.images.shape[1:])


def resident_model(model: keras.Model, images) -> keras.Model:
    """``model`` fed by image indices into ``images`` (a device tensor) instead of images."""
    indices = keras.Input(shape=(), dtype="int32", name="image_index")
    resident = ResidentImages(images, name="resident_images")
    return keras.Model(indices, model(resident(indices)), name=f"{model.name}_resident")


def train(
    dataset: Dataset,
    settings: TrainSettings,
    *,
    device: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    device_memory_bytes: int | None = None,
) -> TrainResult:
    """Train the seed network on ``dataset`` as ``settings`` say, and measure it.

    ``device`` is a Keras device name (``"cpu:0"``, ``"gpu:0"``) or None for the
    backend's default. ``callbacks`` run beside the step timer (progress, CPU meters).

    ``settings.data_placement`` says where the training images live: ``host`` feeds each
    batch from host memory (:mod:`cifar_model.pipelines`); ``device`` copies the whole
    training set into ``device``'s memory once (counted in the data time) and gathers each
    batch there with ``keras.ops.take``, inside the training step; ``auto`` resolves with
    :func:`resolve_data_placement`, given ``device_memory_bytes``.

    ``settings.eval_images`` None evaluates on the whole held-out split, N on its first N
    images (and ``accuracy_note`` says so), 0 not at all. Synthetic data is never
    evaluated: its accuracy means nothing.

    With ``settings.unsynced_steps`` > 0, after evaluation the same model trains that many
    more steps (after :data:`UNSYNCED_SKIP` untimed ones) timed as one block with a single
    sync at the end: the cost of per-step syncing is the difference to the steady figures.

    Data parallelism (``settings.replicas`` / ``workers`` > 1: TensorFlow's strategies, or
    Keras's DataParallel on JAX; see :mod:`cifar_model.distribution`): ``batch_size`` is per
    replica, each step trains on ``global_batch_size`` images, and ``device`` names the device *type* (its first index).
    Each step is timed by the same rule: until the loss, reduced over every replica, is on
    the host.

    Raises ``ValueError`` for settings this backend cannot run (another backend, JAX
    with ``jit_compile="off"``) before any work is done.
    """
    backend = backends.backend_name()
    if settings.backend != backend:
        raise ValueError(f"settings ask for the {settings.backend} backend but Keras runs on "
                         f"{backend}; set KERAS_BACKEND={settings.backend} before importing keras")
    backends.jit_compile_value(settings.jit_compile)   # refuses what this backend cannot do
    if settings.engine == "native":   # the same network in the framework's own step (cifar_model.engines)
        why = backend_limitation(backend, settings.jit_compile, settings.cpu_threads, settings.replicas,
                                 settings.workers, settings.steps_per_execution, engine=settings.engine)
        if why:
            raise ValueError(why)
        from cifar_model.engines import train_native
        return train_native(dataset, settings, device=device, device_type=_device_type(device),
                            callbacks=callbacks, device_memory_bytes=device_memory_bytes)
    n_train = len(dataset.x_train)
    data_placement = resolve_data_placement(settings.data_placement, _device_type(device),
                                            device_memory_bytes, training_set_bytes(n_train),
                                            settings.total_replicas)
    parallel = settings.strategy != "none"
    why = backend_limitation(backend, settings.jit_compile, settings.cpu_threads, settings.replicas,
                             settings.workers, settings.steps_per_execution)
    if parallel and not why:
        why = parallel_limitation(_device_type(device), settings.replicas, settings.workers,
                                  data_placement, settings.steps_per_execution, settings.unsynced_steps)
    if why:
        raise ValueError(why)
    multi_worker = settings.strategy == "multi_worker_mirrored"    # TensorFlow's custom loop
    jax_processes = settings.strategy == "keras_data_parallel" and settings.spans_processes
    if settings.spans_processes and not settings.cluster:
        raise ValueError(f"workers {settings.workers} needs the cluster's host:port addresses")
    deadline = (distribution.join_deadline(settings.connect_timeout_s, settings.cluster,
                                           settings.task_index).__enter__()
                if settings.spans_processes else None)
    strategy = distribution.make_strategy(settings, _device_type(device))  # before TF runs anything
    backends.configure_threads(settings.cpu_threads)
    steps = steps_per_epoch(n_train, settings.global_batch_size, settings.max_steps_per_epoch)
    if settings.seed is not None:
        keras.utils.set_random_seed(settings.seed)

    started = time.perf_counter()
    images = None
    if data_placement == "device":
        images = backends.copy_to_device(dataset.x_train, device)   # the one host -> device copy
        pipeline = index_batches(dataset.y_train, settings.batch_size, settings.seed, backend)
        data_device = backends.tensor_place(images)
    else:
        pipeline = host_batches(dataset.x_train, dataset.y_train, settings.global_batch_size,
                                settings.seed, backend)
        if jax_processes:                                 # each process feeds its slice
            pipeline = distribution.process_slices(pipeline, settings.task_index,
                                                   settings.replicas * settings.batch_size)
        data_device = "CPU:0"
    data_seconds = dataset.load_seconds + (time.perf_counter() - started)

    with strategy.scope() if strategy is not None else _device_scope(device):
        started = time.perf_counter()
        model = build_network(settings.precision, seed=settings.seed)
        trainer = model if images is None else resident_model(model, images)
        del images  # the wrapper's variable holds the device copy now
        compile_model(trainer, settings.precision, settings.jit_compile,
                      steps_per_execution=settings.steps_per_execution)
        build_seconds = time.perf_counter() - started

        logits_of = {"multi_worker_mirrored": distribution.evaluate_logits,
                     "keras_data_parallel": (distribution.process_local_logits(
                                                 lambda: build_network(settings.precision,
                                                                       seed=settings.seed))
                                             if jax_processes
                                             else distribution.sharded_logits(settings.replicas)),
                     }.get(settings.strategy)
        timer = StepTimer(settings.warmup_steps)
        # after the step timer: an evaluation runs once that step's clock has stopped
        curve = held_out_curve(settings, dataset, model, logits_of)
        timed = [timer, *([curve] if curve is not None else [])]
        started = time.perf_counter()
        if multi_worker:
            assert deadline is not None           # multi-worker: workers > 1, which joins first
            history = distribution.fit_multi_worker(
                trainer, distribution.worker_batches(pipeline, strategy, settings.batch_size),
                strategy, settings.epochs, steps, [*timed, *callbacks], on_first_step=deadline.joined)
        else:
            joined = ([keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: deadline.joined())]
                      if deadline is not None else [])
            with _explained_compile_failure(trainer):
                history = trainer.fit(pipeline, epochs=settings.epochs, steps_per_epoch=steps,
                                      shuffle=False, verbose=0,
                                      callbacks=[*timed, *joined, *callbacks]).history
        curve_eval_seconds = sum(p.eval_seconds for p in curve.points) if curve is not None else 0.0
        train_seconds = time.perf_counter() - started - curve_eval_seconds

        evaluation = _evaluate(model, dataset, settings, logits_of)
        if not multi_worker:
            _extend_measured_windows(trainer, pipeline, steps, callbacks)

        unsynced_steps, unsynced_seconds = 0, None
        if settings.unsynced_steps:
            unsynced = UnsyncedTimer(UNSYNCED_SKIP)
            total = UNSYNCED_SKIP + settings.unsynced_steps
            trainer.fit(pipeline, epochs=1, steps_per_epoch=total, shuffle=False, verbose=0,
                        callbacks=[unsynced])
            if unsynced.started is None or unsynced.ended is None or unsynced.first_timed_step is None:
                raise RuntimeError(f"no unsynced step was timed in {total} steps")
            unsynced_seconds = unsynced.ended - unsynced.started
            unsynced_steps = total - unsynced.first_timed_step

    xla, compile_note = backends.describe_compilation(settings.jit_compile, bool(trainer.jit_compile))
    if parallel:
        compile_note = f"{compile_note}; {distribution.ENGINE_NOTES[settings.strategy]}"
        if jax_processes:
            compile_note += f", across {settings.workers} processes (jax.distributed)"
    return measured_result(
        settings, dataset, device, steps, timer, curve, model,
        train_seconds=train_seconds, data_seconds=data_seconds, build_seconds=build_seconds,
        train_loss=float(history["loss"][-1]), train_accuracy=float(history["accuracy"][-1]),
        evaluation=evaluation, xla=xla, compile_note=compile_note,
        unsynced_steps=unsynced_steps, unsynced_seconds=unsynced_seconds,
        data_placement=data_placement, data_device=data_device)


def held_out_curve(settings: TrainSettings, dataset: Dataset, model, logits_of=None) -> HeldOutCurve | None:
    """The evaluations during training ``settings.eval_every`` asks for (None: none asked, or
    synthetic data, which has no accuracy to reach)."""
    if settings.eval_every is None or dataset.synthetic:
        return None
    return HeldOutCurve(lambda: _scores(model, dataset, settings, logits_of), settings.eval_every,
                        settings.global_batch_size, settings.target_accuracy)


def measured_result(settings: TrainSettings, dataset: Dataset, device: str | None, steps: int,
                    timer: StepTimer, curve: HeldOutCurve | None, model: keras.Model, *,
                    train_seconds: float, data_seconds: float, build_seconds: float,
                    train_loss: float, train_accuracy: float, evaluation: dict, xla: bool,
                    compile_note: str, unsynced_steps: int, unsynced_seconds: float | None,
                    data_placement: str, data_device: str) -> TrainResult:
    """The one place a training run becomes a :class:`TrainResult`, for the Keras path and
    the native engines alike: what the settings asked, what the step timer and the curve
    measured, what the model is, and what the caller measured around them."""
    steady_wall = (timer.steady_ended - timer.steady_started
                   if timer.steady_started is not None and timer.steady_ended is not None else None)
    cell_math, math_note = backends.cell_math(settings.precision, _device_type(device))
    return TrainResult(
        batch_size=settings.batch_size, epochs=settings.epochs, steps_per_epoch=steps,
        warmup_steps=settings.warmup_steps, precision=settings.precision,
        jit_compile=settings.jit_compile, steps_per_execution=settings.steps_per_execution,
        device=device, data=dataset.label, split=dataset.split, records=tuple(timer.records),
        epoch_seconds=tuple(timer.epoch_seconds), train_seconds=train_seconds,
        steady_wall_seconds=steady_wall, data_seconds=data_seconds, build_seconds=build_seconds,
        train_loss=train_loss, train_accuracy=train_accuracy, **evaluation,
        training_flops_per_image=training_flops_per_image(model), params=model.count_params(),
        xla=xla, backend=settings.backend, compile_note=compile_note,
        unsynced_steps=unsynced_steps, unsynced_seconds=unsynced_seconds,
        data_placement=data_placement, data_device=data_device,
        replicas=settings.replicas, workers=settings.workers, task_index=settings.task_index,
        strategy=settings.strategy, math=cell_math, math_note=math_note,
        curve=tuple(curve.points) if curve is not None else (),
        curve_eval_seconds=sum(p.eval_seconds for p in curve.points) if curve is not None else 0.0,
        target_accuracy=settings.target_accuracy,
    )


MAX_WINDOW_EXTENSIONS = 4     # rounds of extra steady steps for a measured window (each re-asks)


def _extend_measured_windows(trainer: keras.Model, pipeline, steps: int,
                             callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """Train more steady steps for callbacks that measure a window needing a minimum length.

    A callback asks through an ``extra_steps_wanted()`` method (looked up by name: the energy
    meter lives in the harness, which this package never imports). The steps run after
    evaluation with only those callbacks, so accuracy, ``train_seconds`` and the step records
    are those of the planned run; the model trains on, unused afterwards.

    The steps wanted are an estimate from the seconds per step so far; on a busy machine the
    extension's steps can run faster than that, leaving the window short. So the callbacks
    are asked again after each extension, at most ``MAX_WINDOW_EXTENSIONS`` times.
    """
    asking = [c for c in callbacks if callable(getattr(c, "extra_steps_wanted", None))]
    for _ in range(MAX_WINDOW_EXTENSIONS):
        wanted = max((c.extra_steps_wanted() for c in asking), default=0)
        if wanted <= 0:
            return
        trainer.fit(pipeline, epochs=math.ceil(wanted / steps), steps_per_epoch=min(wanted, steps),
                    shuffle=False, verbose=0, callbacks=asking)


def _evaluate(model: keras.Model, dataset: Dataset, settings: TrainSettings,
              logits_of=None) -> dict:
    """Held-out loss and accuracy on the images ``settings.eval_images`` asks for, with a
    note that says which; the TrainResult fields, as a dict.

    Predictions come from the trained network itself (not the wrapper a device-resident
    run trains, which takes training-set indices), so no second compile is needed; the
    loss is the training loss, softmax cross-entropy from the logits, in float64.
    ``logits_of(model, images, batch_size)`` replaces ``model.predict`` where that cannot run.
    """
    total = len(dataset.x_test)
    if settings.eval_images == 0:
        note = NO_EVAL_NOTE
    elif dataset.synthetic:
        note = SYNTHETIC_NOTE
    else:
        note = None
    if note is not None:
        return dict(heldout_loss=None, heldout_accuracy=None, heldout_images=0,
                    accuracy_note=note, eval_seconds=None)
    n = _eval_count(dataset, settings)
    started = time.perf_counter()
    accuracy, loss = _scores(model, dataset, settings, logits_of)
    eval_seconds = time.perf_counter() - started
    if n == total:
        note = f"whole held-out split of the {dataset.split} split ({total} images)"
    else:
        note = (f"first {n} of the {total} held-out images of the {dataset.split} split "
                f"(not the whole split)")
    return dict(heldout_loss=loss, heldout_accuracy=accuracy,
                heldout_images=n, accuracy_note=note, eval_seconds=eval_seconds)


def _eval_count(dataset: Dataset, settings: TrainSettings) -> int:
    total = len(dataset.x_test)
    return total if settings.eval_images is None else min(settings.eval_images, total)


def _scores(model: keras.Model, dataset: Dataset, settings: TrainSettings, logits_of=None) -> tuple[float, float]:
    """(accuracy, loss) of ``model`` on the held-out images ``settings.eval_images`` asks for."""
    n = _eval_count(dataset, settings)
    if logits_of is None:
        logits = model.predict(dataset.x_test[:n], batch_size=settings.batch_size, verbose=0)
    else:
        logits = logits_of(model, dataset.x_test[:n], settings.batch_size)
    return heldout_scores(logits, dataset.y_test[:n])


@contextlib.contextmanager
def _explained_compile_failure(trainer: keras.Model):
    """On PyTorch with ``jit_compile`` on, a failure inside ``fit`` is most likely
    torch.compile's (no C++ compiler, an unsupported op): say so instead of a deep trace."""
    try:
        yield
    except Exception as exc:
        if backends.backend_name() == "torch" and trainer.jit_compile:
            raise RuntimeError(f"torch.compile failed on this install ({type(exc).__name__}: "
                               f"{str(exc).strip()[:300]}); use jit_compile auto or off") from exc
        raise


def _device_type(device: str | None) -> str:
    """``GPU`` or ``CPU``: the kind of device training runs on (None: a GPU if one is visible)."""
    if device is None:
        return "GPU" if backends.visible_gpus() else "CPU"
    return "GPU" if device.lower().startswith(("gpu", "cuda")) else "CPU"


def _device_scope(device: str | None):
    return keras.device(backends.keras_device_name(device)) if device else contextlib.nullcontext()
