"""A few steps of ``train()`` with the native engine on a slice of the real CIFAR-10, through the
very ``TrainResult`` the worker sends; prints one JSON line."""
import dataclasses
import json
import os

from cifar_model import TrainSettings, load_dataset, train

full = load_dataset(os.environ["CIFAR10_DIR"], "seed", download=False)
data = dataclasses.replace(full, x_train=full.x_train[:512], y_train=full.y_train[:512],
                           x_test=full.x_test[:200], y_test=full.y_test[:200])
result = train(data, TrainSettings(batch_size=32, max_steps_per_epoch=6, warmup_steps=2, seed=1,
                                   backend=os.environ["KERAS_BACKEND"], engine="native"), device="cpu:0")
print(json.dumps(result.to_dict()))
