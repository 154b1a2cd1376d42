"""What one training run measured: :class:`TrainResult` and its :class:`StepRecord` s.

Framework-free (no Keras, no numpy), so the harness can hold the very object the worker
built: it crosses the process boundary as JSON (:meth:`TrainResult.to_dict`) and is made
again on the other side by :meth:`TrainResult.from_dict`, the one strict parser. Like
``torch.utils.benchmark``'s ``Measurement``, it keeps the raw records and derives every
statistic from them as a property, so no reader re-derives one.

A result validates itself when made: a step time that is not a finite, positive number, a
record that covers no step, a run with no record at all are refused where they appear,
never written into a table.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, fields


def seconds_per_step(seconds, steps):
    """Seconds per step of a record of ``steps`` steps (``steps_per_execution`` > 1 times
    several in one call) that took ``seconds``: the one place this is computed. Element-wise
    on numpy arrays and pandas columns (steps.csv's ``seconds`` and ``steps``) alike."""
    return seconds / steps


@dataclass(frozen=True)
class StepRecord:
    """One timed call of Keras's train function: ``steps`` consecutive steps (1 unless
    ``steps_per_execution`` > 1), starting at ``step`` (0-based within ``epoch``)."""

    epoch: int
    step: int
    steps: int
    seconds: float
    warmup: bool

    def __post_init__(self):
        check_types(self)
        if self.epoch < 0 or self.step < 0 or self.steps < 1:
            raise ValueError(f"StepRecord: epoch and step must be >= 0 and steps >= 1 (got epoch "
                             f"{self.epoch}, step {self.step}, steps {self.steps})")
        if not _positive(self.seconds):
            raise ValueError(f"StepRecord: seconds must be a finite number above 0 (got {self.seconds!r})")

    @property
    def seconds_per_step(self) -> float:
        return seconds_per_step(self.seconds, self.steps)


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of the whole held-out split during training (a row of curves.csv).

    ``train_seconds`` counts training only (evaluations so far excluded); ``wall_seconds``
    counts everything since training started, this evaluation included: the MLPerf clock,
    less the data loading that comes before training (added by whoever reports it).
    """

    epoch: int                 # 1-based epoch the evaluation fell in (fractional cadences repeat it)
    step: int                  # training steps done when it ran
    images_seen: int           # step x global batch size
    train_seconds: float       # training wall time so far, evaluations excluded
    wall_seconds: float        # wall time since training started, evaluations included
    eval_seconds: float        # this evaluation's own time
    heldout_accuracy: float    # fraction of the held-out images classified right
    heldout_loss: float        # mean softmax cross-entropy over them

    def __post_init__(self):
        check_types(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CurvePoint.{f.name}: {value!r} is not a finite number >= 0")
        if self.heldout_accuracy > 1:
            raise ValueError(f"CurvePoint.heldout_accuracy: {self.heldout_accuracy} is above 1")

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> CurvePoint:
        """Strict: exactly the fields, each of its type and in range."""
        return cls(**strict_fields(cls, data))


@dataclass(frozen=True)
class TrainResult:
    """Everything one training run measured. Times are wall seconds (``perf_counter``)."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    precision: str
    jit_compile: str
    steps_per_execution: int
    device: str | None
    data: str
    split: str
    records: tuple[StepRecord, ...]
    epoch_seconds: tuple[float, ...]
    train_seconds: float            # the whole model.fit call
    steady_wall_seconds: float | None  # from the first steady step's start to the last one's end
                                    # (None: every step was warm-up)
    data_seconds: float             # reading + standardising the dataset + building the pipeline
                                    # (+ the one copy of the training set to the device)
    build_seconds: float            # building and compiling the model
    eval_seconds: float | None      # evaluating on the held-out images; None: not evaluated
    train_loss: float               # mean over the last epoch, dropout active (NaN: it diverged)
    train_accuracy: float
    heldout_loss: float | None      # on ``heldout_images`` held-out images; None: not measured
    heldout_accuracy: float | None
    heldout_images: int             # how many held-out images the two figures cover (0: none)
    accuracy_note: str              # what they cover, in words ("whole held-out split ...")
    training_flops_per_image: int
    params: int
    xla: bool                       # is the training step XLA-compiled (TF: jit_compile resolved)
    backend: str                    # the Keras backend: tensorflow, jax or torch
    compile_note: str               # how the step was compiled ("XLA off (auto)", "torch.compile")
    unsynced_steps: int             # steps of the unsynced throughput phase (0: not run)
    unsynced_seconds: float | None
    data_placement: str             # where the training images lived: host or device
    data_device: str                # the device that held them ("CPU:0", "GPU:0")
    replicas: int                   # devices training in sync in this worker process
    workers: int                    # worker processes (hosts) training in sync
    task_index: int                 # this process's place among them (0: the chief)
    strategy: str                   # the data-parallel engine (settings.STRATEGIES)
    math: str                       # what convolutions and matmuls ran in: ieee, tf32 (an fp32
                                    # cell on TF32 tensor cores), bf16, fp16 (backends.cell_math)
    math_note: str                  # the backend setting that decided ``math``
    curve: tuple[CurvePoint, ...] = ()  # held-out evaluations during training (eval_every)
    curve_eval_seconds: float = 0.0  # their time, kept out of train_seconds
    target_accuracy: float | None = None  # training stopped at the first evaluation reaching it

    def __post_init__(self):
        object.__setattr__(self, "records", tuple(self.records))          # JSON gives lists
        object.__setattr__(self, "epoch_seconds", tuple(self.epoch_seconds))
        object.__setattr__(self, "curve", tuple(self.curve))
        check_types(self)
        problems = [f"{name} must be >= 1 (got {getattr(self, name)})"
                    for name in ("batch_size", "epochs", "steps_per_epoch", "steps_per_execution",
                                 "replicas", "workers") if getattr(self, name) < 1]
        problems += [f"{name} must be >= 0 (got {getattr(self, name)})"
                     for name in ("warmup_steps", "heldout_images", "unsynced_steps", "task_index",
                                  "params", "training_flops_per_image") if getattr(self, name) < 0]
        if not self.records:
            problems.append("no step was timed (records is empty)")
        times = {"train_seconds": self.train_seconds, "data_seconds": self.data_seconds,
                 "build_seconds": self.build_seconds, "eval_seconds": self.eval_seconds,
                 "steady_wall_seconds": self.steady_wall_seconds, "unsynced_seconds": self.unsynced_seconds,
                 "curve_eval_seconds": self.curve_eval_seconds,
                 **{f"epoch_seconds[{i}]": s for i, s in enumerate(self.epoch_seconds)}}
        problems += [f"{name} must be a finite number >= 0 (got {value!r})" for name, value in times.items()
                     if value is not None and not (math.isfinite(value) and value >= 0)]
        if problems:
            raise ValueError("TrainResult: " + "; ".join(problems))

    @property
    def global_batch_size(self) -> int:
        """Images per step over every replica of every worker (``batch_size`` is per replica)."""
        return self.batch_size * self.total_replicas

    @property
    def total_replicas(self) -> int:
        return self.replicas * self.workers

    @property
    def first_step_seconds(self) -> float:
        return self.records[0].seconds_per_step

    @property
    def steady_records(self) -> list[StepRecord]:
        return [r for r in self.records if not r.warmup]

    @property
    def steady_step_seconds(self) -> list[float]:
        """Seconds per step of every steady (non-warm-up) record."""
        return [r.seconds_per_step for r in self.steady_records]

    @property
    def steady_steps(self) -> int:
        return sum(r.steps for r in self.steady_records)

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.records)

    @property
    def unsynced_images_per_s(self) -> float | None:
        """Throughput with no per-step sync: unsynced_steps x batch / their wall time."""
        if not self.unsynced_steps or not self.unsynced_seconds:
            return None
        return self.unsynced_steps * self.batch_size / self.unsynced_seconds

    @property
    def reached(self) -> CurvePoint | None:
        """The first evaluation at or above :attr:`target_accuracy` (None: not reached, or no target)."""
        if self.target_accuracy is None:
            return None
        return next((p for p in self.curve if p.heldout_accuracy >= self.target_accuracy), None)

    @property
    def time_to_target_seconds(self) -> float | None:
        """MLPerf's clock: from the first touch of the data (its loading) to the end of the
        evaluation that reached the target, evaluations included."""
        return None if self.reached is None else self.data_seconds + self.reached.wall_seconds

    def to_dict(self) -> dict:
        """Plain JSON-ready data (records as dicts); :meth:`from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> TrainResult:
        """From :meth:`to_dict`'s output (e.g. after JSON), strictly: a missing or unknown
        field, a value of the wrong type, or a record that is not one is a ``ValueError``."""
        fields_ = strict_fields(cls, data)
        records = fields_["records"]
        if not isinstance(records, list):
            raise ValueError(f"TrainResult: records must be a list (got {type(records).__name__})")
        curve = fields_.get("curve", [])
        if not isinstance(curve, list):
            raise ValueError(f"TrainResult: curve must be a list (got {type(curve).__name__})")
        return cls(**{**fields_, "records": [StepRecord(**strict_fields(StepRecord, r)) for r in records],
                      "curve": [CurvePoint.from_dict(p) for p in curve]})


def strict_fields(cls, data) -> dict:
    """``data`` checked to hold exactly ``cls``'s dataclass fields (those with a default may be
    left out): the keyword arguments to make one. Types are checked when the object is made."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    declared = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(declared), key=str)
    missing = [name for name, f in declared.items() if name not in data and _required(f)]
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: " + "; ".join(
            filter(None, (f"unknown field(s) {', '.join(map(str, unknown))}" if unknown else "",
                          f"missing field(s) {', '.join(missing)}" if missing else ""))))
    return dict(data)


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def check_types(obj) -> None:
    """Each field of the dataclass ``obj`` against its annotation (int, float, str, bool, None,
    unions, tuples and lists, dicts of str): a ``ValueError`` naming the first that is wrong."""
    cls: type = type(obj)       # as ``type``: mypy takes a type[Any] for unhashable
    hints = _hints(cls)
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _is_a(value, hints[f.name]):
            raise ValueError(f"{type(obj).__name__}.{f.name}: expected {_name(hints[f.name])}, "
                             f"got {type(value).__name__} {_short(value)}")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_a(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, arg) for arg in args)
    if origin in (tuple, list):
        return isinstance(value, origin) and all(_is_a(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(k, args[0]) and _is_a(v, args[1])
                                               for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive(value) -> bool:
    return math.isfinite(value) and value > 0
