"""Prints the per-step losses of Keras ``fit`` and of the multi-worker custom loop (one
worker of MultiWorkerMirroredStrategy) on the same seed, data and global batch, as JSON.

Run in a fresh process (tests/test_scale.py): collectives must be configured before
TensorFlow runs anything, so the strategy is made first.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from step_losses import Losses  # noqa: E402

from cifar_model import distribution, synthetic_dataset  # noqa: E402
from cifar_model.model import build_network, compile_model  # noqa: E402
from cifar_model.pipelines import tf_host_pipeline  # noqa: E402

BATCH, STEPS, SEED = 32, 6, 0


def main() -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # one local worker: no TF_CONFIG
    data = synthetic_dataset("standard", n_train=BATCH * STEPS, n_test=8, seed=SEED)

    def model_in(scope):
        keras.utils.set_random_seed(SEED)
        with scope:
            return compile_model(build_network("fp32", seed=SEED), "fp32", "off")

    custom = Losses()
    model = model_in(strategy.scope())
    batches = distribution.worker_batches(tf_host_pipeline(data.x_train, data.y_train, BATCH, SEED),
                                          strategy, BATCH)
    distribution.fit_multi_worker(model, batches, strategy, 1, STEPS, [custom])

    fit = Losses()
    model = model_in(tf.distribute.get_strategy().scope())   # the default: no distribution
    model.fit(tf_host_pipeline(data.x_train, data.y_train, BATCH, SEED), epochs=1,
              steps_per_epoch=STEPS, shuffle=False, verbose=0, callbacks=[fit])
    print(json.dumps({"fit": fit.losses, "custom": custom.losses}))


if __name__ == "__main__":
    sys.exit(main())
