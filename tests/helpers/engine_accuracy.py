"""A short real training through ``train()`` on a subset of CIFAR-10, several seeds, in a fresh
process; prints one JSON line of held-out accuracies.

    KERAS_BACKEND=tensorflow CIFAR10_DIR=... python tests/helpers/engine_accuracy.py keras
    KERAS_BACKEND=jax CIFAR10_DIR=... python tests/helpers/engine_accuracy.py native

``keras``: the reference, the Keras network on TensorFlow (the reference backend, and the
fastest Keras backend on a CPU), three seeds. ``native``: the native engine of KERAS_BACKEND
(torch or jax), one seed (a second cost 80 s of CI on JAX), with TensorFlow made unimportable
as on the GPU machines.
"""

import dataclasses
import json
import os
import sys

ENGINE = sys.argv[1]
SEEDS = {"keras": (1, 2, 3), "native": (1,)}[ENGINE]
if ENGINE == "native":
    sys.modules["tensorflow"] = None  # the native engines must not need TensorFlow

from cifar_model import TrainSettings, backends, load_dataset, train  # noqa: E402

# one pass over 9,600 images: long enough that every seed has learned (100 steps at batch 32 left
# one JAX seed at chance), short enough for CI's 2 cores
TRAIN_IMAGES, HELDOUT_IMAGES, BATCH, STEPS = 9600, 2000, 64, 150

full = load_dataset(os.environ["CIFAR10_DIR"], "seed", download=False)
data = dataclasses.replace(full, x_train=full.x_train[:TRAIN_IMAGES], y_train=full.y_train[:TRAIN_IMAGES],
                           x_test=full.x_test[:HELDOUT_IMAGES], y_test=full.y_test[:HELDOUT_IMAGES])
backend = backends.backend_name()
results = [train(data, TrainSettings(batch_size=BATCH, max_steps_per_epoch=STEPS, warmup_steps=2, seed=seed,
                                     backend=backend, engine=ENGINE), device="cpu:0")
           for seed in SEEDS]
print(json.dumps({"backend": backend, "engine": ENGINE,
                  "accuracy": [r.heldout_accuracy for r in results],
                  "heldout_loss": [r.heldout_loss for r in results],
                  "heldout_images": [r.heldout_images for r in results],
                  "steps": [r.total_steps for r in results],
                  "compile_note": results[0].compile_note, "params": results[0].params,
                  "train_loss": [r.train_loss for r in results]}))
