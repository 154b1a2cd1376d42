"""A few steps of ``train()`` with the native engine on a slice of the real CIFAR-10, through the
very ``TrainResult`` the worker sends; prints one JSON line.

``engine_train.py``: 6 steps, evaluated at the end. ``engine_train.py curve [ENGINE]``: two
runs (native engine unless ENGINE is given) of 2 epochs x 6 steps evaluated every half epoch,
one with an unreachable target (1.0) and one with a target the first evaluation reaches (0.01);
prints the pair as a list."""
import dataclasses
import json
import os
import sys

from cifar_model import TrainSettings, load_dataset, train

full = load_dataset(os.environ["CIFAR10_DIR"], "seed", download=False)
data = dataclasses.replace(full, x_train=full.x_train[:512], y_train=full.y_train[:512],
                           x_test=full.x_test[:200], y_test=full.y_test[:200])
native = {"batch_size": 32, "max_steps_per_epoch": 6, "warmup_steps": 2, "seed": 1,
          "backend": os.environ["KERAS_BACKEND"], "engine": "native"}
if sys.argv[1:2] == ["curve"]:
    engine = sys.argv[2] if len(sys.argv) > 2 else "native"
    results = [train(data, TrainSettings(**{**native, "engine": engine}, epochs=2, eval_every=0.5,
                                         target_accuracy=target), device="cpu:0").to_dict()
               for target in (1.0, 0.01)]
    print(json.dumps(results))
else:
    print(json.dumps(train(data, TrainSettings(**native), device="cpu:0").to_dict()))
