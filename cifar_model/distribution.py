"""Data-parallel training on TensorFlow's own distributed runtime (TensorFlow-only).

Two engines, both ``tf.distribute`` (no home-made all-reduce, no cluster protocol):

- ``mirrored``: :class:`tf.distribute.MirroredStrategy` over ``replicas`` devices of one
  process (GPUs, or logical CPU devices split from the one CPU). Keras's own ``fit`` runs
  under it: each global batch is cut into contiguous per-replica slices, each replica's
  gradients are all-reduced (summed) by the optimizer, and the loss in ``fit``'s logs is
  the metric aggregated over every replica, so fetching it waits for all of them.
- ``multi_worker_mirrored``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across
  ``workers`` processes (hosts), wired by a cluster spec (``host:port`` per worker) and
  TensorFlow's coordination service and gRPC collectives. Keras 3's ``fit`` fails under it
  ("Attempt to convert a value (PerReplica...) to a Tensor", keras-team/keras#20585), so
  :func:`fit_multi_worker` runs Keras's *own* ``train_step`` under ``strategy.run`` inside
  one ``tf.function`` per step, and drives the same callbacks ``fit`` would: only the loop
  around the step differs. The logs it passes on are the running means over the epoch,
  reduced over every replica, as ``fit`` reports them.

Every worker builds the same global batch stream (same seed) and keeps its own slice, so a
run with any number of workers sees the data in the same order as a one-process run.
"""

from __future__ import annotations

import signal
import sys

import keras

from cifar_model.settings import TrainSettings

#: What ends a worker whose peers never joined (see :class:`join_deadline`).
DEADLINE_SIGNAL = "SIGALRM"
ENGINE_NOTES = {
    "mirrored": "MirroredStrategy, Keras fit",
    "multi_worker_mirrored": ("MultiWorkerMirroredStrategy, custom loop: Keras train_step under "
                              "strategy.run in a tf.function (Keras fit fails here, keras#20585)"),
}


def split_cpu(devices: int) -> None:
    """Split the CPU into ``devices`` logical devices (``/cpu:0`` ...); before TF starts.

    They share the same cores, so a run over them checks the data-parallel code path; it
    cannot show a speed-up.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])


def make_strategy(settings: TrainSettings, device_type: str):
    """The ``tf.distribute`` strategy for ``settings``, or None for one device.

    Must run before TensorFlow executes anything (logical CPU devices, collectives).
    """
    kind = settings.strategy
    if kind == "none":
        return None          # no TensorFlow needed: JAX and PyTorch machines may not have it
    import tensorflow as tf

    if kind == "mirrored":
        if device_type == "CPU":
            split_cpu(settings.replicas)
        prefix = "/cpu" if device_type == "CPU" else "/gpu"
        return tf.distribute.MirroredStrategy([f"{prefix}:{i}" for i in range(settings.replicas)])
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": list(settings.cluster)}), task_type="worker",
        task_id=settings.task_index, rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=settings.connect_timeout_s)   # a lost peer fails a collective, never hangs it
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options)


class join_deadline:
    """Ends the process unless :meth:`joined` is called within ``seconds``: TensorFlow's
    coordination service waits for missing peers for hours, inside C++ code that holds
    Python's lock, so no Python thread or signal handler could run to stop it.

    The deadline is ``alarm(2)`` with SIGALRM's default action, which the kernel carries
    out: the process ends, killed by SIGALRM (:data:`DEADLINE_SIGNAL`), after printing
    what it waits for. Start it before the strategy is made; call ``joined`` once a step
    has run on every worker. POSIX only (elsewhere there is no deadline but the runner's).
    """

    def __init__(self, seconds: int, cluster: tuple[str, ...], task_index: int):
        self.seconds = seconds
        self.message = (f"waiting up to {seconds} s for every worker of {', '.join(cluster)} to "
                        f"join (this is task {task_index}); a missing peer ends this process "
                        "with SIGALRM")

    def __enter__(self):
        if hasattr(signal, "SIGALRM"):
            print(self.message, file=sys.stderr, flush=True)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(self.seconds)
        return self

    def __exit__(self, *exc):
        self.joined()
        return False

    def joined(self) -> None:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)


def worker_batches(global_pipeline, strategy, batch_size: int):
    """A distributed dataset: per-replica batches of ``batch_size``, this worker's slice of
    each global batch of ``global_pipeline`` (the same stream on every worker).

    Worker ``w`` of ``W`` keeps images ``[w*b*L, (w+1)*b*L)`` of each global batch (L local
    replicas), handed to its replicas in order: the data order of one process over all.
    """
    import tensorflow as tf

    def per_worker(context: tf.distribute.InputContext):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local * batch_size

        def slices(x, y):
            x = tf.reshape(x[first:first + local * batch_size], (local, batch_size, *x.shape[1:]))
            y = tf.reshape(y[first:first + local * batch_size], (local, batch_size, *y.shape[1:]))
            return tf.data.Dataset.from_tensor_slices((x, y))

        return global_pipeline.flat_map(slices)

    return strategy.distribute_datasets_from_function(per_worker)


def fit_multi_worker(model: keras.Model, dataset, strategy, epochs: int, steps: int,
                     callbacks, on_first_step=lambda: None) -> dict:
    """``model.fit``'s loop for MultiWorkerMirroredStrategy: Keras's ``train_step`` per
    replica under ``strategy.run`` in one ``tf.function``; the same callback calls as
    ``fit`` (train, epoch and batch begin/end) with logs already on the host.

    ``model`` must have been built and compiled in ``strategy.scope()``. Returns the
    history as ``fit`` does: {"loss": [per epoch], "accuracy": [...]}.
    """
    import tensorflow as tf

    iterator = iter(dataset)
    first = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                  next(iter(dataset)))
    with strategy.scope():  # what fit does first: build the metrics' and optimizer's variables
        model._maybe_symbolic_build(iterator=None, data_batch=first)  # noqa: SLF001

    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in logs.items()}

    step = tf.function(step, jit_compile=bool(model.jit_compile), reduce_retracing=True)
    hooks = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs,
                                         steps=steps, verbose=0)
    history: dict[str, list[float]] = {}
    hooks.on_train_begin()
    logs: dict = {}
    for epoch in range(epochs):
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        for batch in range(steps):
            hooks.on_train_batch_begin(batch)
            logs = {name: float(value) for name, value in step(iterator).items()}  # synced
            if epoch == 0 and batch == 0:
                on_first_step()
            hooks.on_train_batch_end(batch, logs)
        hooks.on_epoch_end(epoch, logs)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
    hooks.on_train_end(logs)
    return history


def evaluate_logits(model: keras.Model, images, batch_size: int):
    """Logits of ``images`` from a plain forward pass, batch by batch, outside any
    strategy (Keras's ``predict`` shares ``fit``'s trouble under MultiWorkerMirroredStrategy).
    Every worker holds the same weights after training, so each can evaluate alone."""
    import numpy as np

    outputs = [keras.ops.convert_to_numpy(model(images[i:i + batch_size], training=False))
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)
