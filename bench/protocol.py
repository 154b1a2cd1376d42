"""The typed messages between the runner and a worker process.

The runner writes one :class:`CellSpec` (or :class:`PeakSpec`) as JSON on the worker's
stdin. The worker answers with single lines on stdout that start with :data:`MARK`: events
while it works (:class:`Event`), then one ``result`` carrying a :class:`WorkerResult` (or
``error`` with a reason). Everything else the worker prints is kept in the cell's log. The
real worker and the test fake both build these objects, so neither can drift from the
contract unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cifar_model.settings import TrainSettings

MARK = "@@bench "
#: Event kinds: ``started`` (framework imported), ``phase`` (what the worker does now:
#: loading data, building, training, evaluating, unsynced), ``step`` (training progress),
#: ``result`` and ``error`` (the last line).
EVENTS = ("started", "phase", "step", "result", "error")


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def _from_dict(cls, data: Any):
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


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

    def to_json(self) -> str:
        return json.dumps({"cell_id": self.cell_id, "device_type": self.device_type,
                           "settings": self.settings.to_dict(), "data": asdict(self.data)})

    @classmethod
    def from_json(cls, text: str) -> "CellSpec":
        try:
            raw = json.loads(text)
            return cls(cell_id=str(raw["cell_id"]), device_type=str(raw["device_type"]),
                       settings=TrainSettings.from_dict(raw["settings"]),
                       data=_from_dict(DataSpec, raw["data"]))
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
    """Everything one cell measured, as the worker reports it.

    ``train`` is :meth:`cifar_model.TrainResult.to_dict` (plain data: the harness never
    imports a framework); the rest is what only the worker process can see.
    """

    train: dict
    data_source: str
    data_note: str
    startup_seconds: float
    peak_rss_bytes: int | None
    peak_gpu_bytes: int | None
    cpu_util_pct: float | None
    device_name: str | None
    versions: dict = field(default_factory=dict)
    started_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorkerResult":
        result = _from_dict(cls, data)
        if not isinstance(result.train, dict) or not isinstance(result.train.get("records"), list):
            raise ProtocolError("WorkerResult.train: expected a training result with records")
        return result


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
        try:
            raw = json.loads(text)
        except ValueError:
            raise ProtocolError("not JSON") from None
        if not isinstance(raw, dict) or raw.get("event") not in EVENTS:
            raise ProtocolError(f"unknown event {raw.get('event') if isinstance(raw, dict) else raw!r}")
        kind = raw.pop("event")
        return cls(kind, raw)


def emit(kind: str, **fields_) -> None:
    """Worker side: send one event to the runner."""
    print(Event(kind, fields_).line(), flush=True)
