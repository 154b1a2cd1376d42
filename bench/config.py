"""What one run was asked to do: the matrix plan and every run-wide setting, declared once.

:data:`SETTINGS` is to run-wide values what :data:`bench.matrix.DIMENSIONS` is to the matrix:
each :class:`Setting` is one ``bench run`` option, one :class:`RunConfig` field, one key of
env.json's ``config`` (parsed back through the option's own parser, so a tampered file is
refused as a typed flag would be), and one flag ``--resume`` refuses because the run keeps
its own. Adding a run-wide setting is one row here, plus the code that honours it.

No argparse here: parsers raise ValueError; :mod:`bench.options` adapts them for the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench import matrix
from bench.cost import Prices, parse_prices
from bench.devices import parse_device_ids
from bench.energy import DEFAULT_MIN_WINDOW_S
from bench.protocol import DataSpec
from cifar_model.settings import DEFAULT_CONNECT_TIMEOUT_S, MAX_SEED, SPLITS, split_sizes, steps_per_epoch

#: Local worker processes a ``--workers`` cell may start on 127.0.0.1 without ``--cluster``.
MAX_LOCAL_WORKERS = 8
#: The most cells one run may plan: beyond it a typo (``--repeats 1000000``) is far likelier
#: than an intent, and the plan alone would take minutes and gigabytes to expand.
MAX_CELLS = 10_000
#: The bounds of the counts (each option's documented maximum): a day of steps per cell on
#: the fastest GPU here is ~10^7 images; these leave room without letting a typo run for years.
MAX_EPOCHS = 1_000
MAX_STEPS = 1_000_000
MAX_REPEATS = 1_000
MAX_IMAGES = 1_000_000           # synthetic training images: 3 GiB as float32
MAX_TIMEOUT_S = 7 * 24 * 3600    # a cell's time limit
MAX_CONNECT_TIMEOUT_S = 24 * 3600
MAX_TASK_INDEX = 1_023

#: How the duration of a plan is estimated before it runs (a rough figure, said as such):
#: the seed network on this project's 2-core CPU trains ~400 images/s in fp32 at batch 64-256
#: (results/published/2026-11-24-matrix), and a cell's worker spends ~10 s starting, loading
#: and evaluating. A GPU is many times faster; the estimate is for deciding, not reporting.
ESTIMATE_IMAGES_PER_S = 400
ESTIMATE_CELL_OVERHEAD_S = 10
#: An estimate above this prints a warning before the run starts.
LARGE_RUN_S = 3600

PROFILES: dict[str, dict[str, Any]] = {
    # quick: every default cell finishes on a 2-core CPU in a few minutes
    # (precision auto: bf16 where the device computes in it; docs/method.md, "Defaults, and why")
    "quick": {"batch_size": (64, 128, 256), "epochs": 1, "max_steps_per_epoch": 50, "warmup_steps": 5,
              "split": "standard", "precision": ("auto",)},
    # seed: the notebook's run: seed split, batch 128, Adam 1e-4, 26 full epochs, fp32
    "seed": {"batch_size": (128,), "epochs": 26, "max_steps_per_epoch": None, "warmup_steps": 5,
             "split": "seed", "precision": ("fp32",)},
    # seed-tta: the seed recipe timed to a held-out accuracy (MLPerf's question), evaluated
    # every epoch; the target comes from measured curves (docs/method.md, "Time to accuracy":
    # results/published/2026-11-30-seed-curves)
    "seed-tta": {"batch_size": (128,), "epochs": 26, "max_steps_per_epoch": None, "warmup_steps": 5,
                 "split": "seed", "precision": ("fp32",), "eval_every": 1.0, "target_accuracy": 0.64},
}


# --------------------------------------------------------------------------- value parsers

def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    return matrix.integer(minimum, maximum)


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"unknown value '{text}'; choose from {', '.join(choices)}")
        return text
    parse.choices = choices  # type: ignore[attr-defined]  # a function attribute: the CLI lists them as choices
    return parse


def seconds(maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value <= maximum:
            raise ValueError(f"'{text}' is not a number of seconds above 0 and at most {maximum:,.0f}")
        return value
    return parse


def epochs_between(text: str) -> float:
    """A cadence in epochs: a positive number, fractions allowed (0.5: twice an epoch)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_EPOCHS:
        raise ValueError(f"'{text}' is not a number of epochs above 0 and at most {MAX_EPOCHS:,} (0.5: twice an epoch)")
    return value


def fraction(text: str) -> float:
    """An accuracy as a fraction above 0 and at most 1 (0.65 means 65 %)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"'{text}' is not a fraction above 0 and at most 1 (0.65 means 65 %)")
    return value


def label(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 60 or any(ord(c) < 32 for c in text) or "|" in text:
        raise ValueError(f"'{text[:60]}' must be 1-60 printable characters without '|'")
    return text


MAX_PATH_BYTES = 4096     # Linux's PATH_MAX; longer paths fail every system call with ENAMETOOLONG


def path_text(text: str) -> str:
    """A path a system call can take: valid UTF-8, names of at most 255 bytes, under PATH_MAX."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{text.encode('utf-8', 'backslashreplace').decode()!s} is not valid "
                         "UTF-8; choose another name") from None
    if any(len(part.encode()) > 255 for part in Path(text).parts):
        raise ValueError(f"'{text[:60]}...': a name in it is longer than 255 bytes")
    if len(text.encode()) >= MAX_PATH_BYTES:
        raise ValueError(f"'{text[:60]}...': longer than {MAX_PATH_BYTES - 1:,} bytes")
    return text


def cluster(text: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{address}' is not host:port")
    if len(addresses) < 2 or len(set(addresses)) != len(addresses):
        raise ValueError("give two or more distinct host:port addresses, the chief first")
    return addresses


def devices(text: str) -> tuple[str, ...]:
    return tuple(parse_device_ids(text))


#: The longest --energy-window: an hour of extra steady steps per cell is already a lot.
MAX_ENERGY_WINDOW_S = 3600


def price_text(text: str) -> str:
    """``--price`` checked by :func:`bench.cost.parse_prices` and kept as its canonical text
    (env.json holds text); :attr:`RunConfig.prices` gives the typed prices."""
    return ",".join(f"{key}={value:g}" for key, value in parse_prices(text).usd_per_hour.items())


# --------------------------------------------------------------------------- the declaration

@dataclass(frozen=True, kw_only=True)
class Setting:
    """One run-wide setting: its option, its parser (None: an on/off flag), its default.

    ``profile`` says the ``--profile`` supplies the default; ``zero_is_none`` stores 0 as
    None (``--steps 0``: full epochs). The value lands in :class:`RunConfig` under ``name``.
    ``example`` is a valid value other than the default (None for a flag), for messages and
    the test that walks every setting through a resume.
    """

    name: str
    flag: str
    help: str
    example: str | None
    parse: Callable[[str], Any] | None = None
    default: Any = None
    profile: bool = False
    metavar: str | None = None
    zero_is_none: bool = False

    def decode(self, raw: Any) -> Any:
        """A value read back from env.json, parsed as the option's text would be; ValueError."""
        if self.parse is None:
            if not isinstance(raw, bool):
                raise ValueError(f"{raw!r} is not true or false")
            return raw
        if raw == [] and self.default == ():
            return ()
        if raw is None:
            if self.default is None or self.profile or self.zero_is_none:
                return None
            raise ValueError("missing")
        if isinstance(raw, list) and all(isinstance(v, str) for v in raw) and raw:
            raw = ",".join(raw)
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError(f"{str(raw)[:60]!r} is not a value of {self.flag}")
        if isinstance(raw, float) and raw.is_integer() and self.parse is not _SECONDS:
            raw = int(raw)
        value = self.parse(str(raw))
        return None if self.zero_is_none and value == 0 else value

    def encode(self, value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value


_SECONDS = seconds(MAX_TIMEOUT_S)

SETTINGS: tuple[Setting, ...] = (
    Setting(name="profile", example="seed", flag="--profile", parse=choice(*PROFILES), default="quick",
            help="quick: a few minutes on a 2-core CPU (batch sizes 64,128,256, 1 epoch of 50 steps, "
                 "precision auto); seed: the notebook's full run (seed split, batch 128, 26 full "
                 "epochs, fp32); seed-tta: the seed run evaluated every epoch, stopped at 0.64 "
                 "held-out accuracy and timed to it (default: quick)"),
    Setting(name="devices", example="cpu", flag="--devices", parse=devices, metavar="DEVICES",
            help="cpu, gpu (the first GPU), gpu:N, all; comma-separated (default: every device found)"),
    Setting(name="epochs", example="2", flag="--epochs", parse=integer(1, MAX_EPOCHS), profile=True,
            help=f"epochs per cell, at most {MAX_EPOCHS:,} (default: quick 1; seed 26)"),
    Setting(name="max_steps_per_epoch", example="3", flag="--steps", parse=integer(0, MAX_STEPS), profile=True,
            zero_is_none=True,
            help=f"cap on steps per epoch, at most {MAX_STEPS:,}; 0 = full epochs (default: quick 50; seed 0)"),
    Setting(name="warmup_steps", example="1", flag="--warmup", parse=integer(0, MAX_STEPS), profile=True,
            help="first steps of each cell left out of the steady statistics (default: 5)"),
    Setting(name="repeats", example="2", flag="--repeats", parse=integer(1, MAX_REPEATS), default=1,
            help=f"run each cell N times, each in a fresh process, at most {MAX_REPEATS:,} (default: 1)"),
    Setting(name="data", example="synthetic", flag="--data", parse=choice("cifar10", "synthetic"), default="cifar10",
            help="cifar10 (falls back to labelled synthetic data when no copy can be found or "
                 "downloaded) or synthetic (speed only) (default: cifar10)"),
    Setting(name="data_dir", example="cifar-10-batches-py", flag="--data-dir", parse=path_text,
            help="CIFAR-10 directory or .tar.gz archive (default: $CIFAR10_DIR, the Keras cache, "
                 "./data/cifar-10-batches-py, then a download)"),
    Setting(name="no_download", example=None, flag="--no-download", default=False,
            help="never try to download CIFAR-10"),
    Setting(name="split", example="seed", flag="--split", parse=choice(*SPLITS), profile=True,
            help="standard: 50,000 train / 10,000 official test; seed: the notebook's 40,000 / "
                 "10,000 (default: quick standard; seed seed)"),
    Setting(name="synthetic_images", example="4096", flag="--synthetic-images", parse=integer(1, MAX_IMAGES),
            help=f"training images of synthetic data, at most {MAX_IMAGES:,} (default: as many as "
                 "the split has)"),
    Setting(name="eval_images", example="100", flag="--eval-images", parse=integer(0, MAX_IMAGES),
            help="evaluate accuracy on the first N held-out images only; 0 = not at all (default: "
                 "the whole held-out split, 10,000 images)"),
    Setting(name="seed", example="7", flag="--seed", parse=integer(0, 2**64), default=0,
            help="random seed; repeat r uses seed + r (default: 0)"),
    Setting(name="unsynced_steps", example="2", flag="--unsynced-steps", parse=integer(0, MAX_STEPS), default=0,
            help="after training, also time N more steps with a single sync at the end, to show "
                 "what per-step timing costs (default: 0, off)"),
    Setting(name="cell_timeout", example="30", flag="--cell-timeout", parse=_SECONDS,
            help=f"seconds, at most {MAX_TIMEOUT_S:,}; a cell running longer is killed and recorded "
                 "as failed (default: no limit)"),
    Setting(name="connect_timeout", example="30", flag="--connect-timeout", parse=integer(1, MAX_CONNECT_TIMEOUT_S),
            default=DEFAULT_CONNECT_TIMEOUT_S,
            help=f"seconds a multi-worker cell waits for every worker to join before it fails, at "
                 f"most {MAX_CONNECT_TIMEOUT_S:,} (default: {DEFAULT_CONNECT_TIMEOUT_S})"),
    Setting(name="machine_label", example="lab", flag="--machine-label", parse=label,
            help="a short name for this machine in tables (e.g. 'lab workstation')"),
    Setting(name="no_peak", example=None, flag="--no-peak", default=False,
            help="skip measuring the devices' peak (no efficiency columns)"),
    Setting(name="cluster", example="127.0.0.1:2001,127.0.0.1:2002", flag="--cluster", parse=cluster,
            metavar="HOST:PORT,...", default=(),
            help="every worker of a multi-host run, chief first, the same on every host (default: "
                 "$TF_CONFIG's cluster when set; else --workers start local workers on 127.0.0.1); "
                 "--workers then defaults to the host count. The workers' ports are unauthenticated "
                 "(TensorFlow's listen on every interface, even for local workers; JAX's on the "
                 "cluster address): firewall them to the cluster's hosts"),
    Setting(name="allow_open_ports", example=None, flag="--allow-open-ports", default=False,
            help="run TensorFlow multi-worker cells on this machine (--workers N or a loopback "
                 "--cluster) although TensorFlow's gRPC server listens on every interface "
                 "(0.0.0.0:PORT, unauthenticated, and it cannot be bound to loopback); without it "
                 "those cells are skipped rows. Use it only behind a firewall that closes the ports"),
    Setting(name="task_index", example="1", flag="--task-index", parse=integer(0, MAX_TASK_INDEX), default=0,
            help="this host's place in --cluster; 0, the chief, writes the rows that count "
                 "(default: $TF_CONFIG's task, else 0)"),
    Setting(name="eval_every", example="0.5", flag="--eval-every", parse=epochs_between, profile=True,
            metavar="EPOCHS",
            help="also evaluate on the whole held-out split every EPOCHS epochs during training "
                 "(0.5: twice an epoch); the curve goes to curves.csv, its time is kept out of "
                 "train_s (default: seed-tta 1; others only at the end)"),
    Setting(name="target_accuracy", example="0.6", flag="--target-accuracy", parse=fraction, profile=True,
            metavar="FRACTION",
            help="stop a cell at the first evaluation at or above this held-out accuracy and record "
                 "its time to target (needs --eval-every and CIFAR-10) (default: seed-tta 0.64; "
                 "others none)"),
    Setting(name="energy", example=None, flag="--energy", default=False,
            help="measure each cell's energy over its steady window: the GPU board (NVML) or the CPU "
                 "package and DRAM (RAPL); where it cannot be measured the row says why (docs/energy.md)"),
    Setting(name="energy_window", example="10", flag="--energy-window", parse=seconds(MAX_ENERGY_WINDOW_S),
            default=DEFAULT_MIN_WINDOW_S, metavar="SECONDS",
            help=f"with --energy: a steady window shorter than this is extended with more steady steps "
                 f"after evaluation (accuracy and train_s unchanged), at most {MAX_ENERGY_WINDOW_S:,.0f} "
                 f"(default: {DEFAULT_MIN_WINDOW_S:g})"),
    Setting(name="price", example="cpu=0.10,gpu:0=2.49", flag="--price", parse=price_text,
            metavar="DEVICE_OR_MACHINE=USD_PER_HOUR,...",
            help="hourly prices (cpu, gpu for any GPU, gpu:N, or a --machine-label): each row gains "
                 "its cost, US dollars per notebook run and per million images (hours x price)"),
)
SETTING: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


# --------------------------------------------------------------------------- the config

@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked to do, validated: the plan and each :data:`SETTINGS` value,
    plus ``source``, what its cells train on (decided once, when the run opens)."""

    plan: matrix.Plan
    epochs: int
    max_steps_per_epoch: int | None       # None: full epochs
    warmup_steps: int
    repeats: int = 1
    source: DataSpec = DataSpec()
    cell_timeout: float | None = None
    seed: int = 0
    unsynced_steps: int = 0               # > 0: also time that many steps with one sync at the end
    eval_images: int | None = None        # None: the whole held-out split; 0: no evaluation
    cluster: tuple[str, ...] = ()         # host:port of every worker (--cluster); () : local workers
    task_index: int = 0                   # this host's place in ``cluster`` (0: the chief)
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_S
    allow_open_ports: bool = False        # TensorFlow's loopback clusters listen on 0.0.0.0: only when asked
    profile: str = "quick"
    devices: tuple[str, ...] | None = None    # None: every device found
    data: str = "cifar10"                 # as asked; ``source`` says what it became
    data_dir: str | None = None
    no_download: bool = False
    split: str | None = None              # as asked; ``source.split`` is the one used
    synthetic_images: int | None = None
    machine_label: str | None = None
    no_peak: bool = False
    eval_every: float | None = None       # epochs between held-out evaluations during training
    target_accuracy: float | None = None  # stop a cell at the first evaluation reaching it
    energy: bool = False                  # --energy: meter each cell's steady window
    energy_window: float = DEFAULT_MIN_WINDOW_S
    price: str | None = None              # --price, canonical text; ``prices`` is the typed form

    @property
    def prices(self) -> Prices | None:
        return parse_prices(self.price) if self.price else None

    @property
    def train_images(self) -> int:
        if self.source.kind == "synthetic" and self.source.synthetic_images:
            return self.source.synthetic_images
        return split_sizes(self.source.split)[0]

    @property
    def device_ids(self) -> list[str]:
        return list(self.devices or ("all",))

    def cells_bound(self, device_count: int) -> int:
        """How many cells the plan can have at most, known before it is expanded."""
        count = device_count * self.repeats
        for d in matrix.DIMENSIONS:
            count *= len(self.plan.of(d.name)) * (1 if d.yardstick is None else 2)
        return count

    def problems(self, device_count: int | None = None) -> list[str]:
        """What can be known to fail before any cell runs (each a one-line message)."""
        devices_ = device_count or len(self.device_ids)
        if self.cells_bound(devices_) > MAX_CELLS:
            sizes = " x ".join(f"{len(self.plan.of(d.name))} {d.flag}" for d in matrix.DIMENSIONS
                               if len(self.plan.of(d.name)) > 1)
            return [f"the plan could have up to {self.cells_bound(devices_):,} cells ({devices_} device(s) x "
                    f"{self.repeats} --repeats{' x ' + sizes if sizes else ''}, with yardstick cells); "
                    f"at most {MAX_CELLS:,}: split it into several runs"]
        workers = self.plan.of("workers")
        if self.cluster and set(workers) - {1, len(self.cluster)}:
            return [f"--workers {max(workers)} does not match the {len(self.cluster)} hosts of "
                    f"--cluster; give --workers {len(self.cluster)} (or leave it out)"]
        if not self.cluster and max(workers) > MAX_LOCAL_WORKERS:
            return [f"--workers {max(workers)}: at most {MAX_LOCAL_WORKERS} local workers; "
                    "give --cluster for more hosts"]
        if self.task_index >= max(1, len(self.cluster)):
            return [f"--task-index {self.task_index} is outside the cluster of {len(self.cluster)} host(s)"]
        most = max(self.plan.of("replicas")) * max(workers)
        batch_sizes = [b * most for b in self.plan.of("batch_size")]   # global batches
        if max(batch_sizes) > self.train_images:
            return [f"global batch {max(batch_sizes)} (--batch-sizes is per replica) is larger "
                    f"than the {self.train_images:,} training images; lower it"
                    + (" or raise --synthetic-images" if self.source.kind == "synthetic" else "")]
        out = []
        fewest = min(self.epochs * self.steps_per_epoch(b) for b in batch_sizes)
        if self.warmup_steps >= fewest:
            out.append(f"--warmup {self.warmup_steps} leaves no steady steps: a cell runs as few as "
                       f"{fewest} step(s); lower --warmup or raise --steps/--epochs")
        shortest = min(self.steps_per_epoch(b) for b in batch_sizes)
        if max(self.plan.of("steps_per_execution")) > shortest:
            out.append(f"--steps-per-execution {max(self.plan.of('steps_per_execution'))} is more than "
                       f"the {shortest} step(s) of an epoch: one call would train that many steps, "
                       f"not {shortest}; lower it to at most {shortest} or raise --steps")
        if self.target_accuracy is not None and self.eval_every is None:
            out.append(f"--target-accuracy {self.target_accuracy} needs --eval-every: the target is "
                       "checked at each held-out evaluation; add --eval-every 1")
        if self.seed + self.repeats - 1 > MAX_SEED:
            out.append(f"--seed {self.seed} with {self.repeats} repeat(s) passes {MAX_SEED}; lower it")
        return out

    def source_problems(self) -> list[str]:
        """What the resolved data source (``source``) rules out: a target accuracy on synthetic
        data, whose labels carry no signal, would never be reached."""
        if self.target_accuracy is not None and self.source.kind == "synthetic":
            return [f"--target-accuracy {self.target_accuracy} needs CIFAR-10, but the cells would train on "
                    f"synthetic data ({self.source.note or 'as asked'}): accuracy there means nothing; "
                    "give --data-dir DIR, or use --profile seed / drop --target-accuracy"]
        return []

    def steps_per_epoch(self, global_batch: int) -> int:
        return steps_per_epoch(self.train_images, global_batch, self.max_steps_per_epoch)

    def total_steps(self, cell: matrix.Cell) -> int:
        """The training steps a cell really runs: whole calls of ``steps_per_execution`` steps
        (a last call runs in full), every epoch, plus the unsynced block."""
        per_epoch = self.steps_per_epoch(cell["batch_size"] * cell["replicas"] * cell["workers"])
        calls = math.ceil(per_epoch / cell["steps_per_execution"])
        return self.epochs * calls * cell["steps_per_execution"] + self.unsynced_steps

    def run_wide(self, repeat: int) -> dict:
        """The TrainSettings values every cell of this run shares (repeat r uses seed + r)."""
        return {"epochs": self.epochs, "max_steps_per_epoch": self.max_steps_per_epoch,
                "warmup_steps": self.warmup_steps, "seed": self.seed + repeat,
                "unsynced_steps": self.unsynced_steps, "eval_images": self.eval_images,
                "connect_timeout_s": self.connect_timeout,
                "eval_every": self.eval_every, "target_accuracy": self.target_accuracy}

    def to_dict(self) -> dict:
        """env.json's ``config``: the plan, what the cells trained on, and every setting."""
        return {"plan": {name: list(self.plan.of(name)) for name in matrix.BY_NAME},
                "source": asdict(self.source),
                **{s.name: s.encode(getattr(self, s.name)) for s in SETTINGS}}

    @classmethod
    def from_dict(cls, raw: object) -> RunConfig:
        """From env.json's ``config`` (a run to resume), every value parsed as its option's
        text would be. ValueError names the field: ``config.<field>: <problem>``."""
        if not isinstance(raw, dict) or "plan" not in raw:
            raise ValueError("the run's recorded settings are incomplete (no config.plan)")
        raw = _upgraded(raw)
        values: dict[str, Any] = {}
        for s in SETTINGS:
            try:
                values[s.name] = s.decode(raw.get(s.name, s.encode(s.default)))
            except ValueError as exc:
                raise ValueError(f"config.{s.name}: {exc}") from None
        for name in ("epochs", "warmup_steps"):
            if values[name] is None:
                raise ValueError(f"config.{name}: missing; the run's recorded settings are incomplete")
        return cls(plan=_decode_plan(raw.get("plan")), source=_decode_source(raw.get("source")), **values)


def _upgraded(raw: dict) -> dict:
    """A config written before run-wide settings were declared once (``data`` held the
    source; ``steps``, ``warmup``, ``connect_timeout_s`` were the names), in today's form."""
    if not isinstance(raw.get("data"), dict):
        return raw
    old = dict(raw)
    source = old.pop("data")
    renamed = {"steps": "max_steps_per_epoch", "warmup": "warmup_steps", "connect_timeout_s": "connect_timeout"}
    for before, after in renamed.items():
        if before in old:
            old[after] = old.pop(before)
    for key in ("epochs", "warmup_steps", "repeats", "seed", "unsynced_steps"):
        if key not in old:
            raise ValueError(f"the run's recorded settings are incomplete (no config.{key})")
    kind = source.get("kind") if isinstance(source, dict) else None
    return {**old, "source": source, "data": "synthetic" if kind == "synthetic" and "fallback" not in
            str(source.get("note")) else "cifar10",
            "data_dir": source.get("path") if isinstance(source, dict) else None}


def _decode_plan(raw: object) -> matrix.Plan:
    if not isinstance(raw, dict):
        raise ValueError("config.plan: not an object of dimension values")
    values = {}
    for d in matrix.DIMENSIONS:
        given = raw.get(d.name, list(d.default))
        if not isinstance(given, list) or not given or len(given) > 1_000 or any(
                isinstance(v, bool) or not isinstance(v, (str, int)) for v in given):
            raise ValueError(f"config.plan.{d.name}: not a list of values")
        try:
            values[d.name] = tuple(dict.fromkeys(d.parse(str(v)) for v in given))
        except ValueError as exc:
            raise ValueError(f"config.plan.{d.name}: {exc}") from None
    return matrix.Plan(values)


def _decode_source(raw: object) -> DataSpec:
    if not isinstance(raw, dict) or set(raw) - {f.name for f in fields(DataSpec)}:
        raise ValueError("config.source: not a data source")
    source = DataSpec(**raw)
    problems = [
        source.kind not in ("cifar10", "synthetic") and "kind",
        not (source.path is None or isinstance(source.path, str)) and "path",
        not isinstance(source.note, str) and "note",
        source.split not in SPLITS and "split",
        not (source.synthetic_images is None or (type(source.synthetic_images) is int
                                                 and 0 < source.synthetic_images <= MAX_IMAGES))
        and "synthetic_images"]
    bad = [p for p in problems if isinstance(p, str)]   # each is False or the field's name
    if bad:
        raise ValueError(f"config.source.{bad[0]}: {getattr(source, bad[0])!r} is not valid")
    if source.path is not None:
        path_text(source.path)
    return source


# --------------------------------------------------------------------------- the plan's size

@dataclass(frozen=True)
class Estimate:
    """A plan's size, and a rough duration said with how it was estimated."""

    cells: int
    steps: int
    images: int
    seconds: float
    basis: str = field(default=(f"at {ESTIMATE_IMAGES_PER_S} images/s per cell plus {ESTIMATE_CELL_OVERHEAD_S} s "
                                "start-up each: a 2-core CPU in fp32; a GPU is faster"))

    @property
    def large(self) -> bool:
        return self.seconds > LARGE_RUN_S

    def describe(self) -> str:
        return (f"{self.cells:,} cell(s), {self.steps:,} training step(s), {self.images:,} images; "
                f"roughly {_duration(self.seconds)} ({self.basis})")


def estimate(config: RunConfig, cells: list[matrix.Cell]) -> Estimate:
    """The steps and images of the cells to run, and a duration from :data:`ESTIMATE_IMAGES_PER_S`."""
    runnable = [c for c in cells if c.device.found is not None and c.device.found.usable]
    steps = images = 0
    for cell in runnable:
        cell_steps = config.total_steps(cell)
        steps += cell_steps
        images += cell_steps * cell["batch_size"] * cell["replicas"] * cell["workers"]
    return Estimate(len(cells), steps, images,
                    images / ESTIMATE_IMAGES_PER_S + ESTIMATE_CELL_OVERHEAD_S * len(runnable))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"
