"""The seed network in plain JAX, trained by its own step: the ``native`` engine on JAX.

- **the same network and start**: the Keras network's weights, in Keras's own layouts (HWIO
  kernels, NHWC images), so nothing is transposed; ``lax.conv_general_dilated`` and ``@``;
- **the same optimizer and loss**: Adam(1e-4) exactly as Keras computes it, as an optax
  transformation (:mod:`.keras_adam`: ``optax.adam`` places epsilon differently); softmax
  cross-entropy from float32 logits;
- **mixed_bfloat16**: weights kept in float32, cast to bfloat16 for the convolutions and
  matmuls, logits cast back, as Keras's mixed policy does. ``mixed_float16`` has no native
  JAX engine (it would need loss scaling, which optax does not provide);
- **several steps a call**: ``jax.lax.scan`` over ``steps_per_execution`` rows of image indices,
  one compiled program, the state (weights, optimizer moments, dropout key, metric sums)
  **donated** so XLA updates it in place;
- **data on the device** (``data_placement`` device): the training set is one array on the
  device, passed to the step as an argument (not captured as a constant) and gathered inside
  it; with ``host``, each call gets its batches gathered by numpy and copied in.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_model.data import Dataset
from cifar_model.engines.keras_adam import optax_keras_adam
from cifar_model.model import DROPOUT_RATE, LEARNING_RATE
from cifar_model.settings import NUM_CLASSES, TrainSettings

COMPUTE_DTYPES = {"fp32": jnp.float32, "mixed_bfloat16": jnp.bfloat16}
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DENSES = ("fc1", "fc2", "fc3")


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    key: jax.Array
    loss_sum: jax.Array
    correct_sum: jax.Array


def forward(params: dict, images: jax.Array, *, dtype, dropout_rate: float = 0.0,
            key: jax.Array | None = None) -> jax.Array:
    """float32 logits of NHWC ``images``; dropout (the notebook's pool, dropout, ReLU) when
    ``key`` is given and ``dropout_rate`` > 0."""
    def conv(x, name):
        kernel, bias = params[name]
        y = jax.lax.conv_general_dilated(x, kernel.astype(dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(dtype)

    def dense(x, name):
        kernel, bias = params[name]
        return x @ kernel.astype(dtype) + bias.astype(dtype)

    def pool_drop(x, key):
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        if key is None or dropout_rate == 0:
            return x
        keep = jax.random.bernoulli(key, 1 - dropout_rate, x.shape)
        return jnp.where(keep, x / (1 - dropout_rate), 0).astype(x.dtype)

    keys = jax.random.split(key) if key is not None else (None, None)
    x = jax.nn.relu(conv(images.astype(dtype), "conv1"))
    x = jax.nn.relu(pool_drop(conv(x, "conv2"), keys[0]))
    x = jax.nn.relu(conv(x, "conv3"))
    x = jax.nn.relu(pool_drop(conv(x, "conv4"), keys[1]))
    x = jax.nn.relu(conv(x, "conv5"))
    x = x.reshape(x.shape[0], -1)                     # NHWC order: Keras's Flatten
    x = jax.nn.relu(dense(x, "fc1"))
    x = jax.nn.relu(dense(x, "fc2"))
    return dense(x, "fc3").astype(jnp.float32)


def optimizer() -> optax.GradientTransformation:
    return optax_keras_adam(LEARNING_RATE)


def make_train_steps(dtype, dropout_rate: float, resident: bool, use_scan: bool = True):
    """A jitted ``(state, data, labels, batches) -> (state, losses)``: one step per row of
    ``batches`` (image indices into resident ``data``, or image batches from the host), in one
    ``lax.scan`` (on a GPU; on a CPU the steps are unrolled instead, see below); the state is
    donated."""
    adam = optimizer()

    def loss_fn(params, images, labels, key):
        logits = forward(params, images, dtype=dtype, dropout_rate=dropout_rate, key=key)
        loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES)).mean()
        return loss, logits

    def one_step(state: TrainState, batch, data, all_labels):
        if resident:
            images, labels = jnp.take(data, batch, axis=0), jnp.take(all_labels, batch, axis=0)
        else:
            images, labels = batch
        key, step_key = jax.random.split(state.key)
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, images, labels,
                                                                            step_key)
        updates, opt_state = adam.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = (logits.argmax(axis=1) == labels).sum()
        return TrainState(params, opt_state, key, state.loss_sum + loss,
                          state.correct_sum + correct), loss

    @partial(jax.jit, donate_argnums=(0,))
    def scanned(state, data, all_labels, batches):
        return jax.lax.scan(lambda s, b: one_step(s, b, data, all_labels), state, batches)

    @partial(jax.jit, donate_argnums=(0,))
    def unrolled(state, data, all_labels, batches):
        # a Python loop, unrolled while tracing: under lax.scan (unroll=True too) XLA:CPU ran
        # the step ~60x slower here (20 s against 0.34 s for one batch-32 step, jax 0.10)
        losses = []
        for i in range(jax.tree_util.tree_leaves(batches)[0].shape[0]):
            state, loss = one_step(state, jax.tree_util.tree_map(lambda b, i=i: b[i], batches), data, all_labels)
            losses.append(loss)
        return state, jnp.stack(losses)

    train_steps = scanned if use_scan else unrolled
    return train_steps


class JaxEngine:
    """The network's state and its scanned, donated step on one device (see the module doc)."""

    xla = True

    def __init__(self, weights: dict, settings: TrainSettings, device: str, device_type: str,
                 data_placement: str, dataset: Dataset, dropout_rate: float = DROPOUT_RATE):
        if settings.precision not in COMPUTE_DTYPES:
            raise ValueError(f"the native JAX engine has no {settings.precision} (float16 needs loss "
                             "scaling); use --engine keras or --precision fp32,mixed_bfloat16")
        kind, _, index = device.lower().partition(":")
        self.device = jax.devices(kind)[int(index or 0)]
        self.dtype = COMPUTE_DTYPES[settings.precision]
        self.batch_size = settings.batch_size
        params = {name: tuple(jnp.asarray(w, jnp.float32) for w in weights[name]) for name in CONVS + DENSES}
        seed = settings.seed
        if seed is None:
            entropy = np.random.SeedSequence().entropy   # a fresh one draws an int from the OS
            assert isinstance(entropy, int)
            seed = entropy % 2**32
        key = jax.random.key(seed)
        state = TrainState(params, optimizer().init(params), key, jnp.zeros((), jnp.float32),
                           jnp.zeros((), jnp.int32))
        self.state = jax.device_put(state, self.device)
        self.resident = data_placement == "device"
        if self.resident:   # the one host -> device copy of the training set
            self.data = jax.device_put(dataset.x_train, self.device)
            self.labels = jax.device_put(dataset.y_train.astype(np.int32), self.device)
        else:
            self.host_images, self.host_labels = dataset.x_train, dataset.y_train.astype(np.int32)
            self.data = self.labels = jnp.zeros((), jnp.float32)   # unused by the host-fed step
        self.train_steps = make_train_steps(self.dtype, dropout_rate, self.resident,
                                            use_scan=self.device.platform != "cpu")
        self.predict = jax.jit(partial(forward, dtype=self.dtype))
        self.steps_since_metrics = 0
        self.data_device = "GPU:0" if self.device.platform == "gpu" else "CPU:0"
        self.compile_note = ", ".join([
            ("jax.jit (XLA), " + ("lax.scan over" if self.device.platform != "cpu" else "unrolled")
             + " steps_per_execution steps, donated state"),
            "bfloat16 compute" if self.dtype == jnp.bfloat16 else "float32",
            "data resident on the device" if self.resident else "batches gathered on the host",
            "Keras's Adam update (optax)",
        ])

    def run(self, indices: np.ndarray):
        if self.resident:
            batches = jax.device_put(indices.astype(np.int32), self.device)
        else:
            batches = jax.device_put((np.take(self.host_images, indices, axis=0),
                                      np.take(self.host_labels, indices)), self.device)
        self.state, losses = self.train_steps(self.state, self.data, self.labels, batches)
        self.steps_since_metrics += len(indices)
        return losses[-1]

    def loss_value(self, loss) -> float:
        return float(loss)

    def epoch_metrics(self) -> tuple[float, float]:
        steps = max(1, self.steps_since_metrics)
        loss_sum, correct_sum = float(self.state.loss_sum), int(self.state.correct_sum)
        self.state = self.state._replace(loss_sum=jnp.zeros_like(self.state.loss_sum),
                                         correct_sum=jnp.zeros_like(self.state.correct_sum))
        self.steps_since_metrics = 0
        return loss_sum / steps, correct_sum / (steps * self.batch_size)

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        out = [np.asarray(self.predict(self.state.params, jax.device_put(images[start:start + batch_size],
                                                                          self.device)))
               for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
