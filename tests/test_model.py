"""cifar_model.model: the seed network, layer for layer, and its analytic FLOP count."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifar_model import build_model, build_network, forward_flops_per_image, training_flops_per_image


@pytest.fixture(scope="module")
def model():
    return build_model(seed=0)


def test_parameter_count_is_the_notebooks(model):
    assert model.count_params() == 1_454_922


@pytest.mark.parametrize("name, output_shape, params", [
    ("conv1", (32, 32, 32), 3 * 3 * 3 * 32 + 32),
    ("conv2_pool", (16, 16, 64), 0),
    ("conv2", (32, 32, 64), 3 * 3 * 32 * 64 + 64),
    ("conv3", (16, 16, 128), 3 * 3 * 64 * 128 + 128),
    ("conv4_pool", (8, 8, 128), 0),
    ("conv5", (8, 8, 128), 3 * 3 * 128 * 128 + 128),
    ("flatten", (8192,), 0),
    ("fc1", (128,), 8192 * 128 + 128),
    ("fc2", (128,), 128 * 128 + 128),
    ("fc3", (10,), 128 * 10 + 10),
])
def test_layer_shapes_and_parameters(model, name, output_shape, params):
    layer = model.get_layer(name)
    assert tuple(layer.output.shape[1:]) == output_shape
    assert layer.count_params() == params


def test_layer_order_matches_the_notebook(model):
    names = [layer.name for layer in model.layers[1:]]
    assert names[:8] == ["conv1", "conv1_relu", "conv2", "conv2_pool", "conv2_dropout",
                         "conv2_relu", "conv3", "conv3_relu"]
    assert names[-4:] == ["fc1", "fc2", "fc3", "logits"]
    assert model.get_layer("conv2_dropout").rate == 0.25


def test_initialisation_truncated_normal_and_constant_bias(model):
    kernel = np.asarray(model.get_layer("conv4").kernel)
    assert np.abs(kernel).max() <= 0.2 + 1e-6            # truncated at two standard deviations
    assert 0.07 < kernel.std() < 0.1                     # truncation narrows stddev 0.1 to ~0.088
    for name in ("conv1", "conv5", "fc1", "fc3"):
        np.testing.assert_allclose(np.asarray(model.get_layer(name).bias), 0.1)


def test_compiled_like_the_notebook(model):
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert model.loss.get_config()["from_logits"] is True     # softmax cross-entropy from logits


def test_build_network_leaves_compiling_to_the_caller():
    network = build_network(seed=0)
    assert not network.compiled
    assert network.count_params() == 1_454_922


def test_softmax_outputs_and_dropout_active_only_in_training(model):
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    inference = np.asarray(keras.ops.softmax(model(x, training=False)))
    np.testing.assert_allclose(inference.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(inference, np.asarray(keras.ops.softmax(model(x, training=False))))
    assert not np.allclose(np.asarray(keras.ops.softmax(model(x, training=True))), inference)


@pytest.mark.parametrize("precision, compute_dtype, loss_scaled", [
    ("mixed_bfloat16", "bfloat16", False),
    ("mixed_float16", "float16", True),
])
def test_mixed_precision_policies(precision, compute_dtype, loss_scaled):
    model = build_model(precision)
    assert model.get_layer("conv3").compute_dtype == compute_dtype
    assert model.get_layer("conv3").kernel.dtype == "float32"       # variables stay float32
    assert model.get_layer("logits").compute_dtype == "float32"     # a stable loss
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) is loss_scaled


def test_bad_precision_and_jit_are_refused():
    with pytest.raises(ValueError, match="precision"):
        build_model("fp8")
    with pytest.raises(ValueError, match="jit_compile"):
        build_model(jit_compile="sometimes")


def test_flops_counted_from_the_layer_table(model):
    # multiply-accumulates per image, from the notebook's layer table
    conv = [(32, 32, 3, 32), (32, 32, 32, 64), (16, 16, 64, 128), (16, 16, 128, 128), (8, 8, 128, 128)]
    dense = [(8192, 128), (128, 128), (128, 10)]
    macs = [h * w * 9 * cin * cout for h, w, cin, cout in conv] + [i * o for i, o in dense]
    forward = 2 * sum(macs)
    assert forward_flops_per_image(model) == forward
    # backward = 2x forward, minus the input gradient of the first layer
    assert training_flops_per_image(model) == 3 * forward - 2 * macs[0]
    assert 5.1e8 < training_flops_per_image(model) < 5.3e8
