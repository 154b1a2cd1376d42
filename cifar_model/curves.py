"""Held-out accuracy during training, and the time it takes to reach a target.

MLPerf Training and DAWNBench ask how long a network takes to reach a held-out accuracy,
not how fast a fixed number of steps runs: a device that needs more epochs at its larger
batch, or a precision that converges worse, shows only that way. This module holds the
framework-free half: what one evaluation during training measured (:class:`CurvePoint`),
how often to evaluate, how held-out loss and accuracy follow from logits, and where a
curve first reached a target. The Keras callback that produces the points is
:class:`cifar_model.curve_callback.HeldOutCurve`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of the whole held-out split during training (a row of curves.csv).

    ``train_seconds`` counts training only (evaluations so far excluded); ``wall_seconds``
    counts everything since training started, this evaluation included: the MLPerf clock,
    less the data loading that comes before training (added by whoever reports it).
    """

    epoch: int                 # 1-based epoch the evaluation fell in (fractional cadences repeat it)
    step: int                  # training steps done when it ran
    images_seen: int           # step × global batch size
    train_seconds: float       # training wall time so far, evaluations excluded
    wall_seconds: float        # wall time since training started, evaluations included
    eval_seconds: float        # this evaluation's own time
    heldout_accuracy: float    # fraction of the held-out images classified right
    heldout_loss: float        # mean softmax cross-entropy over them

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CurvePoint:
        """Strict: every field, nothing else, numbers finite and in range (worker output is
        checked, not trusted)."""
        names = set(cls.column_names())
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"a curve point needs exactly the fields {', '.join(sorted(names))}")
        values = {}
        for f in fields(cls):
            value = data[f.name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"curve point {f.name}: {value!r} is not a finite number")
            if value < 0:
                raise ValueError(f"curve point {f.name}: {value!r} is negative")
            values[f.name] = int(value) if f.type == "int" else float(value)
        if values["heldout_accuracy"] > 1:
            raise ValueError(f"curve point heldout_accuracy: {values['heldout_accuracy']} is above 1")
        return cls(**values)


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
