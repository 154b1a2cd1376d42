"""Run in a fresh process with KERAS_BACKEND set (torch or jax): the Keras network and the
native engine, from the same weights, on the same batches, with dropout off in both (the
two frameworks draw different dropout masks, so with dropout on no two steps could agree).
Prints one JSON line: the logits' and each step's losses' relative errors.

    KERAS_BACKEND=torch python tests/helpers/engine_agreement.py mixed_bfloat16 20
"""

import json
import sys

sys.modules["tensorflow"] = None  # GPU machines have no TensorFlow: the native engines must not need it

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifar_model import TrainSettings, backends, synthetic_dataset  # noqa: E402
from cifar_model.engines import make_engine, reference_weights  # noqa: E402
from cifar_model.model import compile_model  # noqa: E402
from cifar_model.pipelines import one_hot, shuffled_index_batches  # noqa: E402

precision, steps = sys.argv[1], int(sys.argv[2])
backend, batch, seed = backends.backend_name(), int(sys.argv[3]) if len(sys.argv) > 3 else 64, 3
data = synthetic_dataset("seed", n_train=batch * 8, n_test=64, seed=seed)
settings = TrainSettings(batch_size=batch, precision=precision, backend=backend, engine="native", seed=seed)
keras.utils.set_random_seed(seed)
model, weights = reference_weights(precision, seed)
for layer in model.layers:
    if isinstance(layer, keras.layers.Dropout):
        layer.rate = 0.0
engine = make_engine(settings, weights, "cpu:0", "CPU", "device", data, dropout_rate=0.0)


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


probe = data.x_test[:batch]
logits_error = relative_error(engine.logits(probe, batch), model.predict(probe, verbose=0))
compile_model(model, precision)
keras_losses, native_losses = [], []
batches = shuffled_index_batches(len(data.x_train), batch, seed)
for _ in range(steps):
    indices = next(batches)
    model.reset_metrics()  # train_on_batch returns the running mean otherwise
    keras_losses.append(float(model.train_on_batch(data.x_train[indices], one_hot(data.y_train[indices]),
                                                 return_dict=True)["loss"]))
    native_losses.append(engine.loss_value(engine.run(indices[None])))
print(json.dumps({
    "backend": backend, "precision": precision, "logits_relative_error": logits_error,
    "loss_relative_errors": [abs(n - k) / abs(k) for n, k in zip(native_losses, keras_losses)],
    "keras_losses": keras_losses, "native_losses": native_losses,
    "after_training_logits_relative_error": relative_error(engine.logits(probe, batch),
                                                           model.predict(probe, verbose=0)),
}))
