"""The typed messages between the runner and a worker process.

The runner writes one :class:`CellSpec` (or :class:`PeakSpec`) as JSON on the worker's
stdin. The worker answers with single lines on stdout that start with :data:`MARK`: events
while it works (:class:`Event`), then one ``result`` carrying a :class:`WorkerResult` (or
``error`` with a reason). Everything else the worker prints is kept in the cell's log. The
real worker and the test fake both build these objects (the training result is a real
:class:`cifar_model.TrainResult`), so neither can drift from the contract unnoticed.

A worker's lines are untrusted: a line longer than :data:`MAX_LINE_CHARS`, nested too deep
for the JSON parser, or a result of the wrong shape (a step time that is text, NaN, zero or
negative; no step; a record that is not an object) is one :class:`ProtocolError` with the
reason, which costs that cell its row and never the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from bench.energy import EnergyResult, EnergySpec
from cifar_model.results import TrainResult, check_types, strict_fields
from cifar_model.settings import TrainSettings

MARK = "@@bench "
#: The line ``python -m bench.worker --probe`` answers with (what the backend sees).
PROBE_MARK = "@@bench-probe "
#: The longest protocol line read: a result carries every step record (~80 characters each);
#: 64 Mi characters hold some 800,000, far beyond any cell.
MAX_LINE_CHARS = 64 * 2**20
#: Event kinds: ``started`` (framework imported), ``phase`` (what the worker does now:
#: loading data, building, training, evaluating, unsynced), ``step`` (training progress),
#: ``result`` and ``error`` (the last line).
EVENTS = ("started", "phase", "step", "result", "error")


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def _from_dict(cls, data: Any):
    try:
        return cls(**strict_fields(cls, data))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(str(exc)) from None


def loads(text: str, what: str = "line"):
    """JSON from an untrusted ``text``, bounded: too long or nested too deep is a ProtocolError
    (the parser's RecursionError is no ValueError, and would end the run)."""
    if len(text) > MAX_LINE_CHARS:
        raise ProtocolError(f"{what} longer than {MAX_LINE_CHARS // 2**20} Mi characters")
    try:
        return json.loads(text)
    except RecursionError:
        raise ProtocolError(f"{what} nested too deep") from None
    except ValueError:
        raise ProtocolError(f"{what} is not JSON") from None


@dataclass(frozen=True)
class DataSpec:
    """What a cell trains on: ``cifar10`` from ``path``, or ``synthetic`` (with why)."""

    kind: str = "synthetic"
    path: str | None = None
    note: str = ""
    split: str = "standard"
    synthetic_images: int | None = None


@dataclass(frozen=True)
class CellSpec:
    """One cell as the worker needs it."""

    cell_id: str
    device_type: str                 # "CPU" or "GPU" (the only one the worker can see)
    settings: TrainSettings
    data: DataSpec
    energy: EnergySpec | None = None     # --energy: what to meter (None: nothing)

    def to_json(self) -> str:
        return json.dumps({"cell_id": self.cell_id, "device_type": self.device_type,
                           "settings": self.settings.to_dict(), "data": asdict(self.data),
                           "energy": self.energy.to_dict() if self.energy is not None else None})

    @classmethod
    def from_json(cls, text: str) -> "CellSpec":
        raw = loads(text, "cell spec")
        try:
            return cls(cell_id=str(raw["cell_id"]), device_type=str(raw["device_type"]),
                       settings=TrainSettings.from_dict(raw["settings"]),
                       data=_from_dict(DataSpec, raw["data"]),
                       energy=EnergySpec.from_dict(raw["energy"]) if raw.get("energy") is not None else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"bad cell spec: {exc}") from None


@dataclass(frozen=True)
class PeakSpec:
    """Measure the matmul peak of the visible device in each precision."""

    precisions: tuple[str, ...]
    size: int
    cpu_threads: int = 0
    backend: str = "tensorflow"

    def to_json(self) -> str:
        return json.dumps({"peak": asdict(self)})

    @classmethod
    def from_dict(cls, raw: dict) -> "PeakSpec":
        spec = _from_dict(cls, raw)
        return cls(tuple(spec.precisions), int(spec.size), int(spec.cpu_threads), str(spec.backend))


@dataclass(frozen=True)
class WorkerResult:
    """Everything one cell measured, as the worker reports it: the training run's own
    :class:`cifar_model.TrainResult` (framework-free), and what only the worker process can
    see. Validated when made."""

    train: TrainResult
    data_source: str
    data_note: str
    startup_seconds: float
    peak_rss_bytes: int | None
    peak_gpu_bytes: int | None
    cpu_util_pct: float | None
    device_name: str | None
    versions: dict[str, str | int | None]
    started_at: str | None
    energy: EnergyResult | None = None   # with --energy: the steady window and the idle power before it

    def __post_init__(self):
        check_types(self)
        for name in ("startup_seconds", "peak_rss_bytes", "peak_gpu_bytes", "cpu_util_pct"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"WorkerResult.{name} must be a finite number >= 0 (got {value!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "WorkerResult":
        """From :meth:`to_dict`'s output, strictly; any problem is one :class:`ProtocolError`."""
        try:
            values = strict_fields(cls, data)
            energy = values.get("energy")
            return cls(**{**values, "train": TrainResult.from_dict(values["train"]),
                          "energy": EnergyResult.from_dict(energy) if energy is not None else None})
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"bad worker result: {exc}") from None


@dataclass(frozen=True)
class Event:
    """One protocol line from a worker."""

    kind: str
    fields: dict

    def line(self) -> str:
        return MARK + json.dumps({"event": self.kind, **self.fields})

    @classmethod
    def parse(cls, text: str) -> "Event":
        """From a line without its :data:`MARK`; ProtocolError when it is not one."""
        raw = loads(text)
        if not isinstance(raw, dict) or raw.get("event") not in EVENTS:
            kind = raw.get("event") if isinstance(raw, dict) else type(raw).__name__
            raise ProtocolError(f"unknown event {str(kind)[:60]!r}")
        kind = raw.pop("event")
        return cls(kind, raw)


def emit(kind: str, **fields_) -> None:
    """Worker side: send one event to the runner."""
    print(Event(kind, fields_).line(), flush=True)
