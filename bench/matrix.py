"""THE table of the benchmark matrix's dimensions, and the cells planned from it.

A cell is one device and one value of every other dimension, in one repeat. Everything
that describes a cell derives from :data:`DIMENSIONS`: the ``bench run`` options
(:func:`bench.options.add_matrix_options`), planning,
cell ids, the runs.csv columns (with their docs and dtypes), the settings a worker trains
with, baseline matching, and the labels in summaries, ``check`` reports and plot legends.
Adding a lever is one :class:`Dimension` here, plus the training code that honours it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bench.devices import Device, Requested, auto_precision
from cifar_model.settings import (
    BACKENDS,
    DATA_PLACEMENTS,
    DEFAULT_BACKEND,
    DEFAULT_ENGINE,
    ENGINE_KINDS,
    JIT_COMPILE,
    NATIVE_ENGINE_BACKENDS,
    PRECISIONS,
    TrainSettings,
    resolve_data_placement,
    training_set_bytes,
)

# --------------------------------------------------------------------------- value parsers

def _choice(choices: Iterable[str]) -> Callable[[str], str]:
    choices = tuple(choices)

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"unknown value '{text}'; choose from {', '.join(choices)}")
        return text
    return parse


def integer(minimum: int, maximum: int = 10**9) -> Callable[[str], int]:
    """An integer from ``minimum`` to ``maximum``: each count has a documented bound, so a typo
    (``--repeats 1000000000``) is refused before it is multiplied into a plan."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"'{text}' is not {'a positive' if minimum else 'a non-negative'} integer")
        if value > maximum:
            raise ValueError(f"'{text}' is more than {maximum:,}, the most it may be")
        return value
    return parse


def comma_list(parse: Callable[[str], Any], example: str) -> Callable[[str], tuple]:
    """Comma-separated values, each parsed, duplicates dropped; ValueError names the bad one."""
    def parse_list(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"give at least one value, e.g. {example}")
        if len(parts) > MAX_VALUES:
            raise ValueError(f"{len(parts):,} values; at most {MAX_VALUES} per dimension")
        return tuple(dict.fromkeys(parse(p) for p in parts))
    return parse_list


#: The most values one dimension may take in a run.
MAX_VALUES = 64


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class PlanContext:
    """What resolving an ``auto`` value may depend on besides the device."""

    train_images: int
    total_replicas: int = 1     # the cell's replicas x workers


@dataclass(frozen=True)
class Dimension:
    """One axis of the matrix.

    ``resolve`` turns a requested value into the concrete one for a device (``auto``
    precision, ``auto`` placement); a dimension that has one also gets a
    ``<name>_requested`` column. ``legacy`` is the value of result files written before
    the dimension existed (what those runs really did). ``yardstick`` is the value other
    values are measured against: a cell planned off it brings the same cell at it (every
    yardstick dimension at its yardstick) into the plan, e.g. the 1-replica cell that a
    speed-up over 1 replica needs.
    """

    name: str                         # the runs.csv column and the key of a cell's value
    label: str                        # how tables, reports and legends name it
    flag: str                         # the ``bench run`` option
    parse: Callable[[str], Any]       # one command-line value -> value (ValueError: message)
    default: tuple                    # values when the option is not given
    example: str                      # for messages: a valid option value
    help: str                         # --help text (the default is appended)
    doc: str                          # what the runs.csv column holds
    dtype: str                        # "int" or "text" in the CSV
    setting: str | None               # the TrainSettings field it sets (None: not a setting)
    id_part: Callable[[Any], str]     # its fragment of the cell id
    show: Callable[[Any], str] = str  # a value as a person reads it
    resolve: Callable[[Any, Device, PlanContext], Any] | None = None
    legacy: Any = None
    yardstick: Any = None


def _one_is_silent(prefix: str) -> Callable[[int], str]:
    """An id part that is empty at 1, so cells of runs before the dimension keep their ids."""
    return lambda v: "" if v == 1 else f"{prefix}{v}"


def _show_threads(value) -> str:
    return "default" if not value else str(value)


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("batch_size", "Batch size", "--batch-sizes", integer(1, 1_000_000), (64, 128, 256), "64,128,256",
              "images per training step, comma-separated", "images per training step", "int",
              "batch_size", lambda v: f"bs{v}"),
    Dimension("backend", "Backend", "--backend", _choice(BACKENDS), (DEFAULT_BACKEND,),
              "tensorflow,jax",
              f"Keras 3 backend, comma-separated: {', '.join(BACKENDS)}",
              "the Keras 3 backend that trained the cell (tensorflow, jax or torch)", "text",
              "backend", lambda v: {"tensorflow": "tf", "jax": "jax", "torch": "torch"}[v],
              legacy="tensorflow"),
    Dimension("engine", "Engine", "--engine", _choice(ENGINE_KINDS), (DEFAULT_ENGINE,), "keras,native",
              "how the network is trained, comma-separated: keras (the Keras network and model.fit: "
              f"the reference), native (the same network from the same weights in the backend's own "
              f"fastest step; {', '.join(NATIVE_ENGINE_BACKENDS)} only)",
              "keras (Keras model.fit, the reference) or native (the same network written in the "
              "backend's framework: cifar_model.engines)", "text", "engine",
              lambda v: "" if v == DEFAULT_ENGINE else v, legacy=DEFAULT_ENGINE),
    Dimension("precision", "Precision", "--precision", _choice(("auto", *PRECISIONS)), ("auto",),
              "fp32,mixed_bfloat16",
              "comma-separated: auto (bf16 where the device computes in it, else fp32), "
              + ", ".join(PRECISIONS),
              "fp32, mixed_bfloat16 or mixed_float16 (Keras dtype policy)", "text", "precision",
              str, resolve=lambda value, device, _: auto_precision(device) if value == "auto" else value),
    Dimension("jit_compile", "XLA", "--jit-compile", _choice(JIT_COMPILE), ("auto",), "auto,off",
              "XLA, comma-separated: auto, on, off", "XLA as asked: auto, on or off", "text",
              "jit_compile", lambda v: f"xla-{v}"),
    Dimension("cpu_threads", "CPU threads", "--cpu-threads", integer(0, 1024), (0,), "0,1,2",
              "intra-op threads, comma-separated; 0 = the framework's default",
              "intra-op threads (0: the framework's default)", "int", "cpu_threads",
              lambda v: f"thr{v}", show=_show_threads),
    Dimension("steps_per_execution", "Steps/execution", "--steps-per-execution", integer(1, 1_000_000), (1,),
              "1,8", "training steps per call of the compiled train function, comma-separated",
              "training steps per call into the compiled train function", "int",
              "steps_per_execution", lambda v: f"spe{v}"),
    Dimension("data_placement", "Data placement", "--data-placement", _choice(DATA_PLACEMENTS),
              ("auto",), "host,device",
              "where the training images live, comma-separated: auto (in GPU memory when the set "
              "takes at most a quarter of it, else host), host (the input pipeline feeds each "
              "batch from host memory), device (the whole set in the training device's memory)",
              "where the training images lived: host (gathered per batch in host memory, "
              "prefetched) or device (the whole set in device memory, gathered inside the step)",
              "text", "data_placement", lambda v: f"data-{v}",
              resolve=lambda value, device, ctx: resolve_data_placement(
                  value, device.type, device.memory_bytes, training_set_bytes(ctx.train_images),
                  ctx.total_replicas),
              legacy="host"),
    Dimension("replicas", "Replicas", "--replicas", integer(1, 64), (1,), "1,2,4",
              "data-parallel devices of the cell's type per worker, comma-separated (TensorFlow: "
              "MirroredStrategy; on a CPU, logical devices sharing its cores); --batch-sizes stays "
              "per replica; a 1-replica cell is planned beside N > 1 for the speed-up",
              "devices training in sync in each worker process (batch_size is per replica)", "int",
              "replicas", _one_is_silent("rep"), legacy=1, yardstick=1),
    Dimension("workers", "Workers", "--workers", integer(1, 1024), (1,), "1,2",
              "worker processes training in sync, comma-separated (TensorFlow "
              "MultiWorkerMirroredStrategy): the hosts of --cluster, else local processes on "
              "127.0.0.1; a 1-worker cell is planned beside N > 1 for the speed-up",
              "worker processes (hosts) training in sync", "int", "workers", _one_is_silent("wk"),
              legacy=1, yardstick=1),
)
BY_NAME: Mapping[str, Dimension] = {d.name: d for d in DIMENSIONS}

#: The device columns every cell has (the device is the matrix's first axis).
DEVICE_COLUMNS = {"device_id": ("cpu, gpu:0, ...", "text"),
                  "device_name": ("CPU model or GPU name", "text"),
                  "device_type": ("CPU or GPU", "text")}
#: What identifies a cell across runs and machines: the device by type and name (not its
#: index), and every dimension's concrete value.
MATCH_KEYS = ("device_type", "device_name", *(d.name for d in DIMENSIONS))


def columns() -> dict[str, tuple[str, str]]:
    """The cell's own runs.csv columns: name -> (doc, dtype), in order."""
    out = dict(DEVICE_COLUMNS)
    for d in DIMENSIONS:
        out[d.name] = (d.doc, d.dtype)
        if d.resolve is not None:
            out[f"{d.name}_requested"] = (f"{d.label.lower()} as asked for (auto resolves per device)",
                                          d.dtype)
    return out


def legacy_values() -> dict[str, Any]:
    """Column -> value for result files written before that dimension existed."""
    out = {}
    for d in DIMENSIONS:
        if d.legacy is not None:
            out[d.name] = d.legacy
            if d.resolve is not None:
                out[f"{d.name}_requested"] = d.legacy
    return out


# --------------------------------------------------------------------------- cells

@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a device, one value of every dimension, one repeat."""

    device: Requested
    repeat: int
    values: tuple[tuple[str, Any], ...]       # concrete, in DIMENSIONS order
    requested: tuple[tuple[str, Any], ...]    # as asked ("auto" stays "auto")

    def __getitem__(self, name: str) -> Any:
        return dict(self.values)[name]

    def requested_value(self, name: str) -> Any:
        return dict(self.requested)[name]

    @property
    def device_type(self) -> str:
        return "CPU" if self.device.id == "cpu" else "GPU"

    @property
    def key(self) -> str:
        """The cell without its repeat: what repeats of one cell share."""
        parts = (d.id_part(value) for d, (_, value) in zip(DIMENSIONS, self.values))
        return "_".join([self.device.id.replace(":", ""), *(p for p in parts if p)])

    @property
    def cell_id(self) -> str:
        return f"{self.key}_r{self.repeat}"

    def columns(self) -> dict:
        device = self.device.found
        out = {"device_id": self.device.id, "device_name": device.name if device else "",
               "device_type": self.device_type}
        requested = dict(self.requested)
        for d, (name, value) in zip(DIMENSIONS, self.values):
            out[name] = value
            if d.resolve is not None:
                out[f"{name}_requested"] = requested[name]
        return out

    def settings(self, **run_wide) -> TrainSettings:
        """The TrainSettings of this cell: its dimensions plus the run-wide values given."""
        return TrainSettings(**{d.setting: self[d.name] for d in DIMENSIONS if d.setting},
                             **run_wide)

    def label(self, varying: Iterable[str] = ()) -> str:
        """The device, then every dimension in ``varying`` by label and value."""
        device = self.device.found
        return describe({"device_type": self.device_type,
                         "device_name": device.name if device else self.device.id,
                         **dict(self.values)}, varying)


def describe(key: Mapping[str, Any], varying: Iterable[str] = ()) -> str:
    """A cell's label from its match key: device, batch size, and each varying dimension."""
    varying = set(varying) - {"batch_size"}
    parts = [f"{key.get('device_type', '?')} {key.get('device_name', '')}".strip(),
             f"bs{plain(key.get('batch_size'))}"]
    parts += [f"{d.label.lower()} {d.show(plain(key[d.name]))}"
              for d in DIMENSIONS if d.name in varying and d.name in key]
    return ", ".join(parts)


def varying_dimensions(frames: Iterable) -> list[str]:
    """Dimension names that take more than one value across the given cell tables."""
    seen: dict[str, set] = {d.name: set() for d in DIMENSIONS}
    for frame in frames:
        for name in seen:
            if name in frame:
                seen[name] |= {str(plain(v)) for v in frame[name].tolist()}
    return [name for name, values in seen.items() if len(values) > 1]


def plain(value):
    """A value read back from CSV as the planner wrote it (64.0 -> 64)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Plan:
    """The values asked for on each dimension."""

    values: Mapping[str, tuple] = field(default_factory=dict)

    def of(self, name: str) -> tuple:
        return tuple(self.values.get(name) or BY_NAME[name].default)


def plan(axes: Plan, devices: list[Requested], repeats: int, train_images: int) -> list[Cell]:
    """Devices x every dimension's values, repeats outermost.

    Repeating the whole sweep (rather than each cell back to back) spreads slow drifts of a
    shared machine over every cell instead of loading them onto one. ``auto`` values resolve
    per device; a cell that then equals another is planned once. A cell off a dimension's
    yardstick comes after its yardstick cell (see :class:`Dimension`), planned if not asked for.
    """
    context = PlanContext(train_images)
    cells: dict[str, Cell] = {}
    for repeat, device in itertools.product(range(repeats), devices):
        for asked in itertools.product(*(axes.of(d.name) for d in DIMENSIONS)):
            for combo in dict.fromkeys((_at_yardstick(asked), asked)):
                _add_cell(cells, combo, device, repeat, context)
    return list(cells.values())


def _at_yardstick(combo: tuple) -> tuple:
    return tuple(v if d.yardstick is None else d.yardstick for d, v in zip(DIMENSIONS, combo))


def _add_cell(cells: dict, combo: tuple, device: Requested, repeat: int, context: PlanContext) -> None:
    asked = dict(zip((d.name for d in DIMENSIONS), combo))
    context = replace(context, total_replicas=asked["replicas"] * asked["workers"])
    resolved = tuple(
        (d.name, d.resolve(value, device.found, context)
         if d.resolve is not None and device.found is not None else value)
        for d, value in zip(DIMENSIONS, combo))
    cell = Cell(device, repeat, resolved, tuple((d.name, v) for d, v in zip(DIMENSIONS, combo)))
    cells.setdefault(cell.cell_id, cell)


FLOAT16_CPU_FEATURES = {"avx512_fp16", "amx_fp16"}


def precision_warning(precision: str, device: Device | None) -> str | None:
    """Why ``precision`` will be slow on ``device``, when it is known to be (else None)."""
    if (device is not None and device.type == "CPU" and precision == "mixed_float16"
            and not FLOAT16_CPU_FEATURES & set(device.features)):
        return (f"mixed_float16 on {device.name}: this CPU has no float16 arithmetic (no "
                "AVX512_FP16 or AMX-FP16), so float16 is emulated and trains several times "
                "slower than fp32 (6-10x measured on this project's CPU); --precision auto avoids it")
    return None
