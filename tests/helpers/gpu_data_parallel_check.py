"""On a machine with a GPU: Keras's DataParallel over that one GPU against the plain
one-device path, on the same seed, data and batch; prints the per-step losses, the devices
the weights and each batch lived on, and the held-out logits both ways, as JSON.

One GPU is all a data-parallel engine can be checked on without a second one: it runs the
whole ``keras_data_parallel`` code path (the mesh, replicated weights, sharded batches and
``sharded_logits``) on the GPU, but a mesh of one device has nothing to all-reduce.
Usage: ``KERAS_BACKEND=jax python tests/helpers/gpu_data_parallel_check.py [gpu|cpu]``.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from step_losses import Losses  # noqa: E402

from cifar_model import distribution, synthetic_dataset  # noqa: E402
from cifar_model.model import build_network, compile_model  # noqa: E402
from cifar_model.pipelines import host_batches  # noqa: E402

BATCH, STEPS, SEED = 128, 8, 0


def run(scope, logits_of) -> dict:
    data = synthetic_dataset("standard", n_train=BATCH * STEPS, n_test=100, seed=SEED)
    with scope:
        keras.utils.set_random_seed(SEED)
        model = compile_model(build_network("fp32", seed=SEED), "fp32", "auto")
        losses = Losses()
        model.fit(host_batches(data.x_train, data.y_train, BATCH, SEED, "jax"), epochs=1,
                  steps_per_epoch=STEPS, shuffle=False, verbose=0, callbacks=[losses])
        logits = logits_of(model, data.x_test[:99], BATCH)
    weights = model.trainable_variables[0].value
    return {"losses": losses.losses, "logits": np.asarray(logits).tolist(),
            "weight_devices": sorted(str(d) for d in weights.devices()),
            "weight_sharding": str(weights.sharding)}


def main(platform: str = "gpu") -> None:
    devices = jax.devices(platform)
    plain = run(keras.device(f"{platform}:0"),
                lambda m, x, b: m.predict(x, batch_size=b, verbose=0))
    parallel = run(distribution.keras_data_parallel(1, platform.upper()).scope(),
                   distribution.sharded_logits(1))
    print(json.dumps({"devices": [str(d) for d in devices], "plain": plain, "data_parallel": parallel}))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
