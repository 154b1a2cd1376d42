"""Data-parallel training on each backend's own distributed runtime.

Three engines, each the framework's own (no home-made all-reduce, no cluster protocol);
:func:`cifar_model.settings.strategy_name` picks one per backend:

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

- ``keras_data_parallel`` (JAX): :class:`keras.distribution.DataParallel` over ``replicas``
  devices of one process (GPUs, or CPU devices JAX splits from the one CPU). Keras's own
  ``fit`` runs under it: each global batch is sharded along a one-axis device mesh in
  contiguous per-device slices, the weights are replicated, and the step is one ``jax.jit``
  program that XLA's SPMD partitioner splits over the mesh, inserting the all-reduce of the
  gradients. The loss ``fit`` reports is the mean over the global batch. With ``workers``
  > 1 the mesh spans every process's devices (JAX's distributed runtime, joined by
  ``keras.distribution.initialize``), and each process feeds its slice of the global batch.

Every worker builds the same global batch stream (same seed) and keeps its own slice, so a
run with any number of workers sees the data in the same order as a one-process run.

Listening ports. The runtimes' ports are unauthenticated (TensorFlow's gRPC server runs
whatever graph it is sent). A cluster whose every address is loopback (``--workers N`` on
one machine, or an explicit ``127.0.0.1``/``localhost``/``::1`` ``--cluster``) must not be
reachable from elsewhere: JAX's coordination service is bound to the cluster's first
address and gloo's collectives to the loopback address (:func:`bind_jax_to_loopback`).
TensorFlow's gRPC server cannot be bound: it listens on ``0.0.0.0:PORT`` (every interface,
hard-coded in its ``grpc_server_lib.cc``), so the harness skips TensorFlow loopback clusters
unless the user passes ``--allow-open-ports`` (``bench.runner.open_ports_refused``), and every
worker says where it listens in its log (:func:`listening_note`). Real clusters must be
firewalled to the cluster's hosts.
"""

from __future__ import annotations

import os
import signal
import sys

import keras

from cifar_model.settings import TrainSettings, is_loopback_cluster, listening_note
from cifar_model.settings import cluster_host as _host

#: What ends a worker whose peers never joined (see :class:`join_deadline`).
DEADLINE_SIGNAL = "SIGALRM"
ENGINE_NOTES = {
    "mirrored": "MirroredStrategy, Keras fit",
    "keras_data_parallel": "keras.distribution.DataParallel, Keras fit",
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
    if kind == "keras_data_parallel" and settings.spans_processes:
        return keras_multi_process(settings, device_type)
    if kind == "keras_data_parallel":
        return keras_data_parallel(settings.replicas, device_type)
    import tensorflow as tf

    if kind == "mirrored":
        if device_type == "CPU":
            split_cpu(settings.replicas)
        prefix = "/cpu" if device_type == "CPU" else "/gpu"
        return tf.distribute.MirroredStrategy([f"{prefix}:{i}" for i in range(settings.replicas)])
    print(listening_note(settings.cluster, settings.task_index, "tensorflow"), file=sys.stderr, flush=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": list(settings.cluster)}), task_type="worker",
        task_id=settings.task_index, rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=settings.connect_timeout_s)   # a lost peer fails a collective, never hangs it
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options)


def keras_data_parallel(replicas: int, device_type: str):
    """Keras's :class:`~keras.distribution.DataParallel` over the first ``replicas`` JAX
    devices of ``device_type`` (the runner makes only the cell's GPUs visible). Its
    ``scope()`` is where the model is built, trained and evaluated.

    On a CPU, JAX is asked for ``replicas`` CPU devices (``jax_num_cpu_devices``), which it
    takes only before it has run anything; they share the same cores, as TensorFlow's
    logical devices do.
    """
    import jax

    kind = "cpu" if device_type == "CPU" else "gpu"
    if kind == "cpu":
        try:
            jax.config.update("jax_num_cpu_devices", replicas)
        except RuntimeError:   # JAX already started: whatever it has must do
            pass
    try:
        devices = jax.devices(kind)
    except RuntimeError:
        devices = []
    if len(devices) < replicas:
        fix = (f"set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before JAX starts"
               if kind == "cpu" else f"make {replicas} GPUs visible (CUDA_VISIBLE_DEVICES)")
        raise ValueError(f"--replicas {replicas} needs {replicas} JAX {kind.upper()} devices; "
                         f"JAX sees {len(devices)}: {fix}")
    return keras.distribution.DataParallel(devices=devices[:replicas])


def keras_multi_process(settings: TrainSettings, device_type: str):
    """Keras's DataParallel over every device of ``settings.workers`` processes: JAX's
    distributed runtime, joined through :func:`keras.distribution.initialize` at the
    cluster's first address (task 0 runs the coordination service there). Between CPUs the
    collectives are gloo's. Each process feeds its own slice of every global batch
    (:func:`process_slices`), so the dataset is not sharded again (``auto_shard_dataset``
    off). Must run before JAX has run anything.
    """
    import jax

    if device_type == "CPU":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if is_loopback_cluster(settings.cluster):
        bind_jax_to_loopback(settings.cluster)
    print(listening_note(settings.cluster, settings.task_index, "jax"), file=sys.stderr, flush=True)
    keras.distribution.initialize(",".join(settings.cluster), settings.workers, settings.task_index)
    devices = jax.devices()
    if len(devices) != settings.total_replicas:
        raise ValueError(f"{settings.workers} workers x {settings.replicas} replicas need "
                         f"{settings.total_replicas} JAX devices in all; the cluster has {len(devices)}")
    return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)


def bind_jax_to_loopback(cluster) -> None:
    """Keep JAX's ports of a loopback cluster on loopback; before JAX's distributed runtime starts.

    The coordination service (task 0) would bind ``[::]:PORT``; ``JAX_COORDINATOR_BIND_ADDRESS``
    (read by ``jax.distributed.initialize``, which ``keras.distribution.initialize`` calls
    without a bind address) puts it on the cluster's first address. gloo's CPU collectives
    would listen on the address this machine's hostname resolves to; JAX builds them with no
    hostname, so the builder is given the loopback address.
    """
    import functools

    from jax._src.lib import _jax

    os.environ["JAX_COORDINATOR_BIND_ADDRESS"] = cluster[0]
    host = _host(cluster[0])
    ip = "127.0.0.1" if host.lower() == "localhost" else host
    make = getattr(_jax, "make_gloo_tcp_collectives", None)
    if make is not None and not isinstance(make, functools.partial):
        _jax.make_gloo_tcp_collectives = functools.partial(make, hostname=ip)


def process_slices(batches, task_index: int, local_images: int):
    """This process's slice of each global batch of ``batches`` (the same stream in every
    process): images ``[task_index * local_images, (task_index + 1) * local_images)``, as
    :func:`worker_batches` slices them for TensorFlow."""
    first = task_index * local_images
    for x, y in batches:
        yield x[first:first + local_images], y[first:first + local_images]


def process_local_logits(build):
    """``logits_of(model, images, batch_size)`` for a model trained across processes: the
    logits come from a fresh network (``build()``) on this process's own device, outside
    the distribution, given the trained weights. Predictions under a multi-process mesh
    are global arrays that no one process can fetch, and every process holds the same
    replicated weights after training."""
    def logits_of(model: keras.Model, images, batch_size: int):
        import jax

        weights = [jax.device_get(v.value.addressable_data(0)) for v in model.weights]
        current = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            with jax.default_device(jax.local_devices()[0]):
                local = build()
                local.set_weights(weights)
                return evaluate_logits(local, images, batch_size)
        finally:
            keras.distribution.set_distribution(current)

    return logits_of


def sharded_logits(replicas: int):
    """``logits_of(model, images, batch_size)`` for a model under ``keras_data_parallel``:
    every batch it predicts is sharded over ``replicas`` devices, so each must divide by
    ``replicas``. The images are padded with zeros to a multiple of it, predicted in batches
    of ``batch_size`` x ``replicas``, and the padding's logits dropped."""
    import numpy as np

    def logits_of(model: keras.Model, images, batch_size: int):
        n = len(images)
        pad = -n % replicas
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        return model.predict(images, batch_size=batch_size * replicas, verbose=0)[:n]

    return logits_of


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
