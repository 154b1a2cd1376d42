"""The native PyTorch engine against a plain PyTorch loop of the same network, on the CPU, in
one process, rounds interleaved: prints one JSON line of images/s per round for each.

    KERAS_BACKEND=torch python tests/benchmarks/plain_torch_loop.py [ROUNDS] [BATCH] [PRECISION]

The plain loop is what a PyTorch user writes first: ``nn.Sequential`` of the seed network's
layers, channels-last, ``torch.autocast`` for bf16, ``torch.optim.Adam`` and
``F.cross_entropy``, one batch sliced from a resident tensor per step, the loss read back each
step (a sync, as the engine's timed calls end with one). The engine runs as a cell does, through
``cifar_model.train`` with the same batch size, steps and warm-up; its images/s are its steady
steps' images over their wall time. Both train on the same synthetic images (speed does not
depend on the pixels).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from cifar_model import TrainSettings, synthetic_dataset, train
from cifar_model.model import DROPOUT_RATE, LEARNING_RATE

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 128
PRECISION = sys.argv[3] if len(sys.argv) > 3 else "mixed_bfloat16"
STEPS, WARMUP = 50, 10
AUTOCAST = {"mixed_bfloat16": torch.bfloat16}.get(PRECISION)


def plain_network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.Dropout(DROPOUT_RATE), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.MaxPool2d(2), nn.Dropout(DROPOUT_RATE), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def plain_images_per_s(images: torch.Tensor, labels: torch.Tensor) -> float:
    net = plain_network().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    started = 0.0
    for step in range(WARMUP + STEPS):
        first = (step * BATCH) % (len(images) - BATCH)
        x, y = images[first:first + BATCH], labels[first:first + BATCH]
        if step == WARMUP:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=AUTOCAST, enabled=AUTOCAST is not None):
            loss = F.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    seconds = time.perf_counter() - started
    return STEPS * BATCH / seconds


def engine_images_per_s(data) -> float:
    result = train(data, TrainSettings(batch_size=BATCH, max_steps_per_epoch=WARMUP + STEPS, warmup_steps=WARMUP,
                                       precision=PRECISION, backend="torch", engine="native", seed=0,
                                       eval_images=0), device="cpu:0")
    return result.steady_steps * BATCH / result.steady_wall_seconds


def main() -> None:
    data = synthetic_dataset(n_train=(WARMUP + STEPS) * BATCH, n_test=BATCH, seed=0)
    images = torch.from_numpy(data.x_train).float().permute(0, 3, 1, 2)   # NHWC memory: channels-last
    labels = torch.from_numpy(data.y_train.astype("int64"))
    plain, native = [], []
    for _ in range(ROUNDS):
        plain.append(plain_images_per_s(images, labels))
        native.append(engine_images_per_s(data))
    print(json.dumps({"batch": BATCH, "precision": PRECISION, "steps": STEPS, "warmup": WARMUP,
                      "threads": torch.get_num_threads(), "plain": plain, "native": native,
                      "ratio_of_medians": statistics.median(native) / statistics.median(plain)}))


if __name__ == "__main__":
    main()
