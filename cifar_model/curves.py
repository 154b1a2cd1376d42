"""Held-out accuracy during training, and the time it takes to reach a target.

MLPerf Training and DAWNBench ask how long a network takes to reach a held-out accuracy,
not how fast a fixed number of steps runs: a device that needs more epochs at its larger
batch, or a precision that converges worse, shows only that way. This module holds the
framework-free half: how often to evaluate during training, how held-out loss and accuracy
follow from logits, and where a curve first reached a target. The Keras callback that produces the points is
:class:`cifar_model.training.HeldOutCurve`.
"""

from __future__ import annotations

import math

import numpy as np

from cifar_model.results import CurvePoint


def eval_interval_steps(eval_every_epochs: float, steps_per_epoch: int) -> int:
    """Training steps between two evaluations for a cadence of ``eval_every_epochs`` (0.5:
    twice an epoch), at least one step."""
    if not eval_every_epochs > 0 or not math.isfinite(eval_every_epochs):
        raise ValueError(f"eval every {eval_every_epochs} epochs: must be a positive number of epochs")
    return max(1, round(eval_every_epochs * steps_per_epoch))


def heldout_scores(logits, labels) -> tuple[float, float]:
    """(accuracy, mean softmax cross-entropy) of ``logits`` (N × classes) against integer
    ``labels``, computed in float64 from the logits, as training's loss is."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    top = logits.max(axis=1)
    log_sum_exp = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    losses = log_sum_exp - logits[np.arange(len(labels)), labels]
    return float((logits.argmax(axis=1) == labels).mean()), float(losses.mean())


def first_reaching(points: list[CurvePoint], target: float) -> CurvePoint | None:
    """The first evaluation at or above ``target`` accuracy, or None: never reached."""
    return next((p for p in points if p.heldout_accuracy >= target), None)
