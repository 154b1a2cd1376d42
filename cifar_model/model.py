"""The seed network: the original notebook's CNN, rebuilt layer for layer in Keras 3.

The notebook (TensorFlow 1.8) built five 3x3 convolutions and three dense layers with
truncated-normal(0.1) weights, 0.1 biases, softmax cross-entropy and Adam(1e-4). The
network outputs float32 *logits* and the loss is computed from them
(``from_logits=True``), as the notebook's ``softmax_cross_entropy_with_logits`` was: from
softmax probabilities, Keras's JAX and PyTorch backends clip them at 1e-7, and this
network's large initial logits saturate that clip, so its samples get no gradient and the
loss barely moves (TensorFlow's backend quietly recovers the logits; the others do not).
One deliberate difference: its ``tf.layers.dropout`` calls never passed ``training=True`` and
so never dropped anything; here dropout is active while training, as the notebook meant.

Only Keras 3's backend-neutral API is used, so the same network runs on the TensorFlow,
JAX and PyTorch backends.
"""

from __future__ import annotations

import itertools

import keras

from cifar_model.settings import IMAGE_SHAPE, JIT_COMPILE, NUM_CLASSES, PRECISIONS, SEED_RUN  # noqa: F401

LEARNING_RATE = SEED_RUN.learning_rate
DROPOUT_RATE = 0.25


class StrictlyTruncatedNormal(keras.initializers.TruncatedNormal):
    """Truncated normal whose values are *all* within two standard deviations, on every backend.

    Keras's PyTorch backend draws four candidates per value and keeps the first inside the
    bounds, or the first one when none is (4 values in a million): conv4's 147,456 weights
    then hold one or two beyond 2 sigma. Clipping those few makes the initialisation the
    same distribution as TensorFlow's and JAX's (where the clip changes nothing).
    """

    def __call__(self, shape, dtype=None):
        limit = 2 * self.stddev
        return keras.ops.clip(super().__call__(shape, dtype), self.mean - limit, self.mean + limit)


def build_model(
    precision: str = "fp32",
    jit_compile: str = "auto",
    learning_rate: float = LEARNING_RATE,
    steps_per_execution: int = 1,
    seed: int | None = None,
) -> keras.Model:
    """Return the seed network, compiled with Adam and categorical cross-entropy
    (:func:`build_network` then :func:`compile_model`)."""
    _check_choice("jit_compile", jit_compile, JIT_COMPILE)
    return compile_model(build_network(precision, seed), precision, jit_compile, learning_rate,
                         steps_per_execution)


def build_network(precision: str = "fp32", seed: int | None = None) -> keras.Model:
    """Return the seed network, not compiled (so a wrapper can be compiled instead of it).

    ``precision`` is one of :data:`PRECISIONS`: every layer computes in its compute dtype,
    keeps float32 variables, and the logits are cast to float32 so the loss is stable.
The output is logits: apply ``keras.ops.softmax`` for probabilities.
    ``seed`` fixes every initialiser and dropout layer.
    """
    _check_choice("precision", precision, PRECISIONS)
    policy = PRECISIONS[precision].policy
    seeds = itertools.count(seed) if seed is not None else None

    def next_seed() -> int | None:
        return next(seeds) if seeds is not None else None

    def weights():
        return StrictlyTruncatedNormal(stddev=0.1, seed=next_seed())

    def conv(filters: int, name: str) -> keras.layers.Layer:
        return keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=True, name=name, dtype=policy,
            kernel_initializer=weights(), bias_initializer=keras.initializers.Constant(0.1),
        )

    def dense(units: int, name: str, activation: str | None) -> keras.layers.Layer:
        return keras.layers.Dense(
            units, activation=activation, name=name, dtype=policy,
            kernel_initializer=weights(), bias_initializer=keras.initializers.Constant(0.1),
        )

    def pool_drop_relu(x, name: str):
        # The notebook's order: max-pool, dropout, then ReLU.
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"{name}_pool", dtype=policy)(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name=f"{name}_dropout", dtype=policy,
                                 seed=next_seed())(x)
        return keras.layers.ReLU(name=f"{name}_relu", dtype=policy)(x)

    def relu(x, name: str):
        return keras.layers.ReLU(name=f"{name}_relu", dtype=policy)(x)

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = relu(conv(32, "conv1")(inputs), "conv1")
    x = pool_drop_relu(conv(64, "conv2")(x), "conv2")
    x = relu(conv(128, "conv3")(x), "conv3")
    x = pool_drop_relu(conv(128, "conv4")(x), "conv4")
    x = relu(conv(128, "conv5")(x), "conv5")
    x = keras.layers.Flatten(name="flatten", dtype=policy)(x)
    x = dense(128, "fc1", "relu")(x)
    x = dense(128, "fc2", "relu")(x)
    logits = dense(NUM_CLASSES, "fc3", None)(x)
    outputs = keras.layers.Activation("linear", name="logits", dtype="float32")(logits)

    return keras.Model(inputs, outputs, name="cifar10_seed_cnn")


def compile_model(
    model: keras.Model,
    precision: str = "fp32",
    jit_compile: str = "auto",
    learning_rate: float = LEARNING_RATE,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile ``model`` the way the notebook trained: Adam, categorical cross-entropy.

    Under ``mixed_float16`` the optimizer is wrapped in a ``LossScaleOptimizer`` (dynamic
    loss scaling), which float16 needs and bfloat16 does not. Also used for a model that
    wraps the seed network (see :func:`cifar_model.training.train`'s ``data_placement``),
    so both train identically.
    """
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("jit_compile", jit_compile, JIT_COMPILE)
    optimizer = keras.optimizers.Adam(learning_rate)
    if PRECISIONS[precision].policy == "mixed_float16":
        # float16 gradients underflow without it; Keras only adds it by itself when the
        # *model's* policy is mixed_float16, and a Functional model's stays float32.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=JIT_COMPILE[jit_compile],
        steps_per_execution=steps_per_execution,
    )
    return model


def _check_choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def forward_flops_per_image(model: keras.Model) -> int:
    """Multiply-add FLOPs of one forward pass (2 FLOPs per multiply-accumulate).

    Counted analytically from the model's Conv2D and Dense layers; bias adds, ReLU,
    pooling, dropout and softmax are left out (under 0.5 % of the total here).
    """
    return sum(2 * macs for macs, _ in _weight_layer_macs(model))


def training_flops_per_image(model: keras.Model) -> int:
    """FLOPs of one training step per image: forward + backward.

    The backward pass of each Conv2D/Dense layer costs two forward passes (the gradient
    with respect to its weights and with respect to its input), except the first layer,
    whose input gradient nobody needs. This is the usual "3x forward" count, made exact.
    The optimizer's element-wise update (about 1.5 M parameters, once per batch) is not
    counted.
    """
    total = 0
    for macs, is_first in _weight_layer_macs(model):
        forward = 2 * macs
        total += forward + (forward if is_first else 2 * forward)
    return total


def _weight_layer_macs(model: keras.Model) -> list[tuple[int, bool]]:
    """(multiply-accumulates per image, is it the first weight layer) for each Conv2D/Dense."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, out_h, out_w, out_c = layer.output.shape
            k_h, k_w, in_c, _ = layer.kernel.shape
            found.append(out_h * out_w * k_h * k_w * in_c * out_c)
        elif isinstance(layer, keras.layers.Dense):
            in_features, out_features = layer.kernel.shape
            found.append(in_features * out_features)
    return [(macs, i == 0) for i, macs in enumerate(found)]
