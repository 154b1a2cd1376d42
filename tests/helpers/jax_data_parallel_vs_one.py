"""Prints the per-step losses of one JAX device and of Keras's DataParallel over two JAX CPU
devices, on the same seed, data and global batch, and the held-out logits of one network
predicted both ways, as JSON.

Run in a fresh process (tests/test_scale.py): JAX fixes its CPU device count when it starts,
so the two devices are asked for before anything imports it.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from step_losses import Losses  # noqa: E402

from cifar_model import TrainSettings, distribution, synthetic_dataset, train  # noqa: E402
from cifar_model.model import build_network  # noqa: E402

GLOBAL_BATCH, STEPS, SEED = 32, 6, 0


def main() -> None:
    data = synthetic_dataset("standard", n_train=GLOBAL_BATCH * STEPS, n_test=8, seed=SEED)
    out = {}
    for replicas in (1, 2):
        losses = Losses()
        settings = TrainSettings(backend="jax", batch_size=GLOBAL_BATCH // replicas, replicas=replicas,
                                 max_steps_per_epoch=STEPS, warmup_steps=1, seed=SEED, eval_images=0)
        result = train(data, settings, device="cpu:0", callbacks=[losses])
        out[str(replicas)] = {"losses": losses.losses, "strategy": result.strategy,
                              "global_batch": result.global_batch_size, "note": result.compile_note}
    # held-out logits under DataParallel (7 images: padded to shard) vs one device, same weights
    keras.utils.set_random_seed(SEED)
    plain = build_network("fp32", seed=SEED).predict(data.x_test[:7], batch_size=4, verbose=0)
    with distribution.keras_data_parallel(2, "CPU").scope():
        keras.utils.set_random_seed(SEED)
        sharded = distribution.sharded_logits(2)(build_network("fp32", seed=SEED), data.x_test[:7], 2)
    out["logits"] = {"plain": np.asarray(plain).tolist(), "sharded": np.asarray(sharded).tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
