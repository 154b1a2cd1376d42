"""Keras callbacks the worker runs beside the step timer: progress lines for the runner, and
the worker's CPU use while training. Imported inside the worker process only (it imports Keras).

Like Keras's own callbacks, each reads the facts about the loop from ``self.params`` (which
``fit``, and the multi-worker loop's ``CallbackList``, set: ``epochs``, ``steps`` per epoch),
never a second copy computed beside it; all state is set in ``__init__``.
"""

from __future__ import annotations

import math
import time

import keras
import psutil

from bench.protocol import emit

PROGRESS_LINES = 10          # about this many progress lines a cell


class Progress(keras.callbacks.Callback):
    """Phase and ``step`` events: training started, steps done of the total, training over."""

    def __init__(self, evaluates: bool):
        super().__init__()
        self.evaluates = evaluates
        self.total = 0
        self.every = 1
        self.next_report = 1
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.total = self.params["epochs"] * self.params["steps"]
        self.every = max(1, math.ceil(self.total / PROGRESS_LINES))
        self.next_report = self.every
        emit("phase", phase="training")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the call's last step: steps_per_execution > 1 runs several in one call
        done = min(self.epoch * self.params["steps"] + batch + 1, self.total)
        if done >= self.next_report or done == self.total:
            emit("step", done=done, total=self.total)
            self.next_report = done + self.every

    def on_train_end(self, logs=None):
        emit("phase", phase="evaluating on the held-out images" if self.evaluates else "finishing")


class CpuMeter(keras.callbacks.Callback):
    """Mean CPU use of the whole worker process (all threads) during the first ``fit``, as a
    share of the ``usable_cpus`` it may use."""

    def __init__(self, usable_cpus: float):
        super().__init__()
        self.usable_cpus = usable_cpus
        self.percent: float | None = None
        self._times = None
        self._wall = 0.0

    def on_train_begin(self, logs=None):
        self._times, self._wall = psutil.Process().cpu_times(), time.perf_counter()

    def on_train_end(self, logs=None):
        if self.percent is not None:
            return  # the unsynced block is a second fit: keep the training figure
        now = psutil.Process().cpu_times()
        busy = (now.user - self._times.user) + (now.system - self._times.system)
        self.percent = 100 * busy / ((time.perf_counter() - self._wall) * self.usable_cpus)
