"""The Keras callback that evaluates the held-out split during training (see
:mod:`cifar_model.curves` for what it records and why)."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

from cifar_model.curves import CurvePoint, eval_interval_steps


class HeldOutCurve(keras.callbacks.Callback):
    """Evaluates the whole held-out split every ``eval_every_epochs`` epochs of training,
    and stops training at the first evaluation that reaches ``target`` accuracy.

    ``evaluate()`` returns (accuracy, loss) on the held-out split; its time is measured here
    and kept out of ``train_seconds``. It runs in ``on_train_batch_end``, after the step
    timer (put it later in the callback list) has stopped that step's clock, so step times
    never contain an evaluation. Steps per epoch come from Keras (``params["steps"]``), not
    from the caller. A run that ends between two evaluations is evaluated once more at its
    end, so every curve ends where training did.
    """

    def __init__(self, evaluate: Callable[[], tuple[float, float]], eval_every_epochs: float,
                 global_batch_size: int, target: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.evaluate = evaluate
        self.eval_every_epochs = eval_every_epochs
        self.global_batch_size = global_batch_size
        self.target = target
        self.clock = clock
        self.points: list[CurvePoint] = []
        self.reached: CurvePoint | None = None
        self._interval = 0
        self._next_eval = 0
        self._steps_done = 0
        self._first_step = 0
        self._epoch = 0
        self._started = 0.0
        self._eval_total = 0.0

    def on_train_begin(self, logs=None):
        self._interval = eval_interval_steps(self.eval_every_epochs, self.params["steps"])
        self._next_eval = self._interval
        self._started = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._first_step = batch

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += batch - self._first_step + 1
        if self._steps_done >= self._next_eval:
            self._next_eval = (self._steps_done // self._interval + 1) * self._interval
            self._evaluate_now()

    def on_train_end(self, logs=None):
        if self._steps_done and (not self.points or self.points[-1].step != self._steps_done):
            self._evaluate_now()

    def _evaluate_now(self) -> None:
        before = self.clock()
        accuracy, loss = self.evaluate()
        after = self.clock()
        eval_seconds = after - before
        point = CurvePoint(
            epoch=self._epoch + 1, step=self._steps_done,
            images_seen=self._steps_done * self.global_batch_size,
            train_seconds=before - self._started - self._eval_total,
            wall_seconds=after - self._started, eval_seconds=eval_seconds,
            heldout_accuracy=float(accuracy), heldout_loss=float(loss))
        self._eval_total += eval_seconds
        self.points.append(point)
        if self.target is not None and self.reached is None and point.heldout_accuracy >= self.target:
            self.reached = point
            self.model.stop_training = True
