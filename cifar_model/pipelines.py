"""Input pipelines: the endless stream of full training batches ``model.fit`` consumes.

Two kinds, one shuffling scheme: the images stay in one in-memory array, only the
*indices* are shuffled each epoch, and each batch is gathered from memory, so there is no
shuffle buffer to fill (which would stall the first step of every epoch). The last partial
batch of an epoch is dropped, as the notebook did (40,000 images at batch 128: 312 steps),
so every step has the same shape. The stream is endless; ``fit``'s ``steps_per_epoch``
says where a Keras epoch ends.

- TensorFlow: ``tf.data`` (:func:`tf_host_pipeline`), gathering on its own threads with a
  prefetch, so the next batch overlaps the current step.
- JAX and PyTorch: a numpy generator (:func:`numpy_host_batches`) that needs no
  TensorFlow (GPU machines here have none). Gathering a batch costs well under a
  millisecond (0.04 ms at batch 128 from 50,000 images on this CPU), so no worker
  thread is needed; Keras's JAX loop copies the next batch to a GPU one step ahead.

Each kind also has an *index* form for a training set held in device memory
(``data_placement="device"``): the stream carries (image indices, one-hot labels) and the
network gathers the images itself (see :class:`cifar_model.training.ResidentImages`).
Both forms of one kind shuffle identically for one seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cifar_model.settings import NUM_CLASSES

PREFETCH_BATCHES = 4


def one_hot(labels: np.ndarray) -> np.ndarray:
    """float32 one-hot rows for integer labels."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


# --------------------------------------------------------------------------- numpy (no TF)

def shuffled_index_batches(n: int, batch_size: int, seed: int | None) -> Iterator[np.ndarray]:
    """Endless full batches of int32 indices into ``n`` images: each epoch a fresh
    permutation drawn from one seeded numpy Generator, cut into full batches."""
    rng = np.random.default_rng(seed)
    full = n // batch_size * batch_size
    while True:
        order = rng.permutation(n).astype(np.int32)[:full]
        yield from order.reshape(-1, batch_size)


def numpy_host_batches(x: np.ndarray, y: np.ndarray, batch_size: int,
                       seed: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images, one-hot labels) batches gathered on the host; no TensorFlow."""
    labels = one_hot(y)
    for indices in shuffled_index_batches(len(x), batch_size, seed):
        yield np.take(x, indices, axis=0), np.take(labels, indices, axis=0)


def numpy_index_batches(y: np.ndarray, batch_size: int,
                        seed: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (image indices, one-hot labels) batches, shuffled as :func:`numpy_host_batches`."""
    labels = one_hot(y)
    for indices in shuffled_index_batches(len(y), batch_size, seed):
        yield indices, np.take(labels, indices, axis=0)


# --------------------------------------------------------------------------- tf.data

def tf_host_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None):
    """TensorFlow-only: (images, one-hot labels) batches gathered by tf.data on the host.

    Parallelism is fixed and tf.data's autotuner is off: a gather costs well under a
    millisecond, and with the autotuner on, tearing the iterator down at the end of
    ``fit`` blocked for seconds (growing with the steps run), inflating training time.
    """
    import tensorflow as tf

    with tf.device("/CPU:0"):
        images = tf.convert_to_tensor(x)  # tf.constant copies 15x slower here
        labels = tf.convert_to_tensor(one_hot(y))
    return (_tf_index_batches(len(x), batch_size, seed)
            .map(lambda i: (tf.gather(images, i), tf.gather(labels, i)),
                 num_parallel_calls=2, deterministic=True)
            .prefetch(PREFETCH_BATCHES)
            .with_options(_tf_pipeline_options()))


def tf_index_pipeline(y: np.ndarray, batch_size: int, seed: int | None):
    """TensorFlow-only: (int32 image indices, one-hot labels) batches, shuffled exactly as
    :func:`tf_host_pipeline` shuffles for the same seed."""
    import tensorflow as tf

    with tf.device("/CPU:0"):
        labels = tf.convert_to_tensor(one_hot(y))
    return (_tf_index_batches(len(y), batch_size, seed)
            .map(lambda i: (tf.cast(i, tf.int32), tf.gather(labels, i)),
                 num_parallel_calls=2, deterministic=True)
            .prefetch(PREFETCH_BATCHES)
            .with_options(_tf_pipeline_options()))


def _tf_index_batches(n: int, batch_size: int, seed: int | None):
    """TensorFlow-only: endless full batches of indices into ``n`` images, reshuffled every epoch."""
    import tensorflow as tf

    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size, drop_remainder=True).repeat()


def _tf_pipeline_options():
    """TensorFlow-only: autotuner off (see :func:`tf_host_pipeline`) and tf.data's default
    graph rewrites off: they serialise the dataset graph, 614 MB of captured images
    included, each time ``fit`` opens an iterator (1.7 s and ~400 MB here), for no gain on
    a pipeline that is one gather and a prefetch."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


# --------------------------------------------------------------------------- per backend

def host_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None, backend: str):
    """The host-fed training stream for ``backend``: tf.data on TensorFlow, numpy elsewhere."""
    if backend == "tensorflow":
        return tf_host_pipeline(x, y, batch_size, seed)
    return numpy_host_batches(x, y, batch_size, seed)


def index_batches(y: np.ndarray, batch_size: int, seed: int | None, backend: str):
    """The index stream for a device-resident training set, shuffled as :func:`host_batches`."""
    if backend == "tensorflow":
        return tf_index_pipeline(y, batch_size, seed)
    return numpy_index_batches(y, batch_size, seed)
