"""Results on disk: run directories, atomic writes, baselines, schema versions, locks.

A run directory holds ``runs.csv`` (one row a cell), ``steps.csv`` (one row a timed step),
``env.json`` (the machine's fingerprint, with the schema version) and ``summary.md``. Both
CSV files are rewritten atomically after every cell, so a crash, a signal or a full disk
never leaves a half-written row, and a reader never sees a cell whose steps are missing.

Like airspeed velocity's results, files carry a schema version and old ones are upgraded in
one named place (:data:`UPGRADES`). Everything read back is untrusted: columns are checked
against the schema, values parsed as numbers or text (never evaluated) and checked for
sense (positive, finite step times), and every problem names the file.

All locations hang off one results root (``--results-dir``, ``$BENCH_RESULTS_DIR``, default
``./results``): ``runs/``, ``baselines/`` and ``peaks/``.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from bench import matrix
from bench.environment import machine_id
from bench.files import LOCK_TIMEOUT_S, write_atomically
from bench.record import CURVE_SCHEMA, RUN_COLUMNS, STATUSES, STEP_COLUMNS, as_dict, columns_of
from bench.text import csv_cell, plain_text
from cifar_model.results import seconds_per_step

RUNS_CSV, STEPS_CSV, ENV_JSON, SUMMARY_MD = "runs.csv", "steps.csv", "env.json", "summary.md"
CURVES_CSV = "curves.csv"       # held-out evaluations during training (--eval-every); absent in older runs
BASELINE_JSON = "baseline.json"
RUN_LOCK = ".lock"
BASELINE_SCHEMA = "cifar-bench-baseline/1"
#: Version of the run files written now; env.json says ``"schema_version": SCHEMA_VERSION``.
SCHEMA_VERSION = 3
RESULTS_ENV = "BENCH_RESULTS_DIR"
DEFAULT_RESULTS_ROOT = Path("results")
MAX_NAME_LENGTH = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_RESULTS_FILE_BYTES = 512 * 2**20      # a results CSV larger than this is refused unread
MAX_JSON_FILE_BYTES = 16 * 2**20           # env.json, baseline.json
#: plausible seconds for one training step: a step outside this is a damaged or forged file
#: (1e308 s steps once passed a 2x slower run as "faster")
STEP_SECONDS_RANGE = (1e-9, 86_400.0)
#: the most images per second any device could train this network at
MAX_IMAGES_PER_S = 1e9
#: the most seconds a cell could have trained (a year)
MAX_TRAIN_S = 365 * 86_400.0


class ResultsError(Exception):
    """A results file is missing, unreadable or does not follow the schema."""


class BaselineError(Exception):
    """A baseline is missing, malformed, foreign, or cannot be saved."""


# --------------------------------------------------------------------------- locations

def results_root(option: str | os.PathLike | None = None) -> Path:
    """The results root: the option, else $BENCH_RESULTS_DIR, else ./results."""
    chosen = option or os.environ.get(RESULTS_ENV)
    return Path(chosen) if chosen else DEFAULT_RESULTS_ROOT


def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def baselines_dir(root: Path) -> Path:
    return Path(root) / "baselines"


def peaks_dir(root: Path) -> Path:
    return Path(root) / "peaks"


def new_run_id(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")


def claim_run_dir(out: Path | None, root: Path, run_id: str | None = None) -> Path:
    """Create the run directory atomically and return it.

    With ``out`` given it must not exist or be empty (then it is taken over). Without it,
    ``<root>/runs/<run-id>`` is created exclusively; when another run took that name in the
    same second, ``-2``, ``-3`` ... are tried, so concurrent runs never share a directory.
    Raises OSError for the caller to report.
    """
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            out.mkdir()
            created = True
        except FileExistsError:
            if not out.is_dir() or any(out.iterdir()):
                raise
            created = False  # an existing empty directory is taken by creating our marker in it
        _mark_claimed(out, created)
        return out
    base = runs_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id()
    for suffix in range(1, 1000):
        candidate = base / (run_id if suffix == 1 else f"{run_id}-{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _mark_claimed(candidate, created=True)
        return candidate
    raise OSError(errno.EEXIST, f"no free run directory name under {base}")


class RunLock:
    """An OS lock on a run directory's ``.lock`` file, removed again on release.

    The OS drops the lock when the process ends, however it ends (SIGKILL included), so a
    killed run never leaves its directory locked (a killed run leaves the empty file, which
    the next lock reuses). A lock taken on a file that another holder has just removed is
    retaken on the new file, so removing it on release cannot let two holders in.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # its holder removed it as we took it: lock the file there now

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody else is inside
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def lock_run_dir(directory: Path) -> RunLock:
    """Hold ``directory`` for this process: another run or resume of it is refused at once."""
    lock = RunLock(directory)
    if not lock.acquire():
        raise ResultsError(f"{directory}: in use by another bench run or resume; wait for it to end "
                           "or stop it first")
    return lock


def in_use(directory: Path) -> bool:
    """Whether a run or resume holds ``directory`` now (it is still being written)."""
    if not (Path(directory) / RUN_LOCK).exists():
        return False
    lock = RunLock(directory)
    try:
        if lock.acquire():
            lock.release()
            return False
    except OSError:  # a lock we cannot even open (permissions) is not ours to judge: not in use
        return False
    return True


def _mark_claimed(directory: Path, created: bool) -> None:
    """An exclusive marker: of two runs racing for one empty directory, one gets EEXIST.

    A failure while marking (a full disk, a signal) undoes the claim, the directory too when
    this call created it, so the name can be claimed again.
    """
    marker = directory / ".claimed"
    made = False
    try:
        with open(marker, "x", encoding="utf-8") as f:
            made = True
            f.write(f"{os.getpid()}\n")
    except BaseException:
        if made:
            marker.unlink(missing_ok=True)
        if created:
            try:
                directory.rmdir()
            except OSError:
                pass
        raise


# --------------------------------------------------------------------------- writing

def _schema_frame(rows: list[dict], schema: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(schema))
    # whole numbers stay whole in the CSV even where a skipped row leaves a gap
    return frame.astype({c: "Int64" for c in columns_of("int", schema)})


def records(frame: pd.DataFrame) -> list[dict]:
    """A table read back (a run to resume), as the writer's rows: empty cells None again."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


class RunWriter:
    """Keeps a run's rows and rewrites its files after every cell.

    ``existing`` rows and steps (a resumed run) are kept in front of the new ones.
    """

    def __init__(self, directory: Path, run_id: str, existing_rows: Sequence[dict] = (),
                 existing_steps: Sequence[dict] = (), existing_curves: Sequence[dict] = ()):
        self.directory = Path(directory)
        self.run_id = run_id
        self.rows: list[dict] = list(existing_rows)
        self.steps: list[dict] = list(existing_steps)
        self.curves: list[dict] = list(existing_curves)

    def write_env(self, env: dict) -> None:
        env = {**env, "schema_version": SCHEMA_VERSION}
        write_atomically(self.directory / ENV_JSON, json.dumps(env, indent=2, sort_keys=True) + "\n")

    def add(self, row, steps: Sequence[dict] = (), curves: Sequence[dict] = ()) -> None:
        """Keep ``row`` (a RunRow), its ``steps`` and its held-out ``curves`` rows in memory,
        then on disk; OSError if the disk refuses.

        In memory first: a row the disk refused is still in the summary printed at the end.
        """
        self.rows.append(as_dict(row) if not isinstance(row, dict) else row)
        self.steps.extend(steps)
        self.curves.extend(curves)
        self.flush()

    def replace_cells(self, cell_ids: set[str]) -> None:
        """Forget rows (and steps) of ``cell_ids``: they are about to be measured again."""
        self.rows = [r for r in self.rows if r["cell_id"] not in cell_ids]
        self.steps = [s for s in self.steps if s["cell_id"] not in cell_ids]
        self.curves = [c for c in self.curves if c["cell_id"] not in cell_ids]

    def flush(self) -> None:
        # steps and curves first: runs.csv never names a cell whose steps are not on disk yet
        steps = _neutralised(_schema_frame(self.steps, STEP_COLUMNS), STEP_COLUMNS)
        write_atomically(self.directory / STEPS_CSV, steps.to_csv(index=False))
        if self.curves or (self.directory / CURVES_CSV).exists():
            write_atomically(self.directory / CURVES_CSV,
                             _neutralised(self.curve_frame(), CURVE_SCHEMA).to_csv(index=False))
        write_atomically(self.directory / RUNS_CSV, _neutralised(self.frame(), RUN_COLUMNS).to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return _schema_frame(self.rows, RUN_COLUMNS)

    def curve_frame(self) -> pd.DataFrame:
        return _schema_frame(self.curves, CURVE_SCHEMA)


def _neutralised(frame: pd.DataFrame, schema) -> pd.DataFrame:
    """A CSV file's text as a spreadsheet must show it: a label, run name or reason starting
    with = + - @ is not a formula (see :func:`bench.text.csv_cell`); the same in runs.csv,
    steps.csv and curves.csv, so a run's name reads back alike from each."""
    frame = frame.copy()
    for name in columns_of("text", schema):
        frame[name] = frame[name].map(csv_cell)
    return frame


# --------------------------------------------------------------------------- reading

@dataclass
class Run:
    """A run read back from disk (or a baseline, which is a kept copy of one)."""

    directory: Path
    runs: pd.DataFrame
    steps: pd.DataFrame
    env: dict
    curves: pd.DataFrame = field(default_factory=lambda: _schema_frame([], CURVE_SCHEMA))

    @property
    def run_id(self) -> str:
        return str(self.runs["run_id"].iloc[0]) if len(self.runs) else self.directory.name

    def steady_steps(self, cell_id: str) -> np.ndarray:
        """Seconds per step of the cell's steady records."""
        cell = self.steps[(self.steps["cell_id"] == cell_id) & ~self.steps["warmup"].astype(bool)]
        return seconds_per_step(cell["seconds"], cell["steps"]).to_numpy(dtype=float)


def read_regular_file(path: Path, limit: int, what: str = "a results file this tool wrote") -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened without blocking and checked on the open file, so a FIFO, a device or a socket
    in its place is refused instead of hanging or reading forever; the read itself is
    bounded too (a file growing while read). ResultsError names the file; a missing file
    raises FileNotFoundError, any other OSError passes through.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultsError(f"{path}: not a regular file (a FIFO, device, socket or directory); "
                               f"expected {what}")
        if info.st_size > limit:
            raise ResultsError(f"{path}: larger than {limit // 2**20} MiB; not {what}")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ResultsError(f"{path}: larger than {limit // 2**20} MiB; not {what}")
    return data


def read_json(path: Path, what: str) -> object:
    """A bounded JSON file parsed; ResultsError (naming the file) for anything unreadable,
    nesting too deep to parse included. FileNotFoundError passes through."""
    try:
        return json.loads(read_regular_file(path, MAX_JSON_FILE_BYTES, what).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else (
            getattr(exc, "strerror", None) or str(exc))
        raise ResultsError(f"{path}: not readable JSON ({' '.join(str(reason).split())[:200]})") from None


def read_table(path: Path, schema: dict, required: set[str] | None = None) -> pd.DataFrame:
    """Read a schema CSV as data: unknown columns dropped, required ones checked, types parsed."""
    try:
        data = read_regular_file(path, MAX_RESULTS_FILE_BYTES)
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path}: not a readable CSV file ({type(exc).__name__})") from None
    missing = sorted((required if required is not None else set(schema)) - set(frame.columns))
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}; "
                           "not a cifar-bench results file")
    for name in schema:
        if name not in frame.columns:
            frame[name] = ""
    frame = frame[list(schema)].copy()
    for name, column in schema.items():
        if column.dtype == "bool":
            bad = ~frame[name].isin(["True", "False", ""])
            if bad.any():
                raise ResultsError(f"{path}: column {name} must be True/False "
                                   f"(row {int(bad.idxmax()) + 2})")
            frame[name] = frame[name].map({"True": True, "False": False, "": None})
        elif column.dtype != "text":
            numbers = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
            bad = numbers.isna() & (frame[name] != "")
            if bad.any():
                raise ResultsError(f"{path}: column {name} holds a non-number "
                                   f"({frame[name][bad].iloc[0][:40]!r}, row {int(bad.idxmax()) + 2})")
            frame[name] = numbers
    return frame


def _check(path: Path, frame: pd.DataFrame, name: str, ok: pd.Series, rule: str) -> None:
    if not ok.all():
        row = int((~ok).idxmax())
        raise ResultsError(f"{path}: column {name} must be {rule} (row {row + 2}: "
                           f"{frame[name].iloc[row]!r})")


def _within(value: pd.Series, low: float, high: float, empty_ok: bool = True) -> pd.Series:
    inside = np.isfinite(value.fillna(low)) & (value.fillna(low) >= low) & (value.fillna(low) <= high)
    return inside & (value.notna() | empty_ok)


def _validate_steps(path: Path, steps: pd.DataFrame) -> None:
    seconds, counts = steps["seconds"], steps["steps"]
    _check(path, steps, "steps", counts.notna() & (counts >= 1) & (counts % 1 == 0),
           "a whole number >= 1")
    low, high = STEP_SECONDS_RANGE
    _check(path, steps, "seconds", seconds.notna() & (seconds > 0) & _within(seconds / counts, low, high),
           f"a positive, finite number of seconds, {low:g} to {high:g} s a step")
    _check(path, steps, "warmup", steps["warmup"].notna(), "True or False")
    key = steps[["cell_id", "epoch", "step"]].astype(str).agg("/".join, axis=1)
    _check(path, steps, "cell_id", ~key.duplicated(), "unique with epoch and step (a record appears twice)")


def _validate_runs(path: Path, runs: pd.DataFrame) -> None:
    _check(path, runs, "status", runs["status"].isin(STATUSES), f"one of {', '.join(STATUSES)}")
    _check(path, runs, "cell_id", ~runs["cell_id"].duplicated(), "unique (a cell appears twice)")
    batch = runs["batch_size"]
    _check(path, runs, "batch_size", batch.notna() & (batch >= 1) & (batch % 1 == 0),
           "a whole number >= 1")
    high = STEP_SECONDS_RANGE[1]
    for name, top in (("step_median_s", high), ("images_per_s", MAX_IMAGES_PER_S), ("train_s", MAX_TRAIN_S)):
        value = runs[name]
        _check(path, runs, name, value.isna() | ((value > 0) & _within(value, 0, top)),
               f"empty or a positive, finite number up to {top:g}")
    for name in (c for c in runs.columns if c.endswith("_pct") and c in _PERCENT_OF_A_WHOLE):
        _check(path, runs, name, _within(runs[name], 0, 100), "empty or a percentage from 0 to 100")


#: the percentage columns that are shares of a whole (sync_overhead_pct, efficiency can pass 100
#: or go below 0 honestly)
_PERCENT_OF_A_WHOLE = ("other_cpu_pct", "steal_pct", "worker_cpu_pct")


#: Named upgrade steps: version -> the function that brings a run of that version to the
#: next. Version 1: files written before env.json had a schema version.
def _upgrade_1_to_2(runs: pd.DataFrame, env: dict) -> None:
    """Version 1 runs, read as what they did: every dimension added since (backend, data
    placement, replicas, workers) gets its legacy value where the file lacks the column or left
    it empty (read back, a missing column is an empty one: text "", a number NaN), so their
    cells match today's; and the whole-cell columns of one replica are filled from the
    per-replica ones, which were the same thing then."""
    _legacy_dimensions(runs)
    ok = runs["status"] == "ok"
    total = (runs["replicas"] * runs["workers"]).where(ok)
    _fill(runs, "total_replicas", total)
    _fill(runs, "global_batch_size", runs["batch_size"] * total)
    _fill(runs, "global_images_per_s", runs["images_per_s"] * total)
    _fill(runs, "strategy", pd.Series("none", index=runs.index).where(ok, ""))
    if "framework_version" in runs and "tensorflow_version" in runs:
        tensorflow = (runs["backend"] == "tensorflow") & ok
        _fill(runs, "framework_version", runs["tensorflow_version"].where(tensorflow, ""))


def _upgrade_2_to_3(runs: pd.DataFrame, env: dict) -> None:
    """Version 2 runs were written before the ``engine`` dimension: each cell trained through
    Keras, its legacy value."""
    _legacy_dimensions(runs)


def _legacy_dimensions(runs: pd.DataFrame) -> None:
    """Each dimension the file lacks (read back: an all-empty column) gets its legacy value."""
    for column, value in matrix.legacy_values().items():
        if column in runs and _all_empty(runs[column]):
            runs[column] = value


def _all_empty(column: pd.Series) -> bool:
    return bool((column.isna() | (column.astype(str) == "")).all())


def _fill(runs: pd.DataFrame, column: str, values: pd.Series) -> None:
    """``column`` where it is empty, from ``values`` (a column the schema no longer has: left alone)."""
    if column not in runs:
        return
    empty = runs[column].isna() | (runs[column].astype(str) == "")
    runs.loc[empty, column] = values[empty]


UPGRADES: dict[int, Callable[[pd.DataFrame, dict], None]] = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}


def read_env(path: Path) -> dict:
    try:
        env = read_json(path, "an env.json this tool wrote")
    except FileNotFoundError:
        return {}
    if not isinstance(env, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    for key, kind in (("cpu", dict), ("tensorflow", dict), ("packages", dict), ("environment", dict),
                      ("git", dict), ("gpus", list), ("backends", dict), ("contention", dict),
                      ("config", dict)):
        if key in env and env[key] is not None and not isinstance(env[key], kind):
            raise ResultsError(f"{path}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    if "gpus" in env and any(not isinstance(g, dict) for g in env["gpus"] or []):
        raise ResultsError(f"{path}: every entry of 'gpus' must be a JSON object")
    cpu = env.get("cpu") or {}
    for name, value, expected in (
            ("system", env.get("system"), str), ("machine", env.get("machine"), str),
            ("memory_bytes", env.get("memory_bytes"), int), ("cpu.model", cpu.get("model"), str),
            *((f"cpu.{k}", cpu.get(k), int) for k in ("logical_cpus", "usable_cpus", "physical_cores")),
            *((f"gpus[{i}].name", g.get("name"), str) for i, g in enumerate(env.get("gpus") or []))):
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)
                                  or (expected is int and isinstance(value, int) and value < 0)):
            raise ResultsError(f"{path}: '{name}' must be {'text' if expected is str else 'a whole number >= 0'}"
                               f" (got {json.dumps(value)[:40]})")
    _check_scalars(path, env)
    version = env.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultsError(f"{path}: schema_version must be a positive integer")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{path}: written by a newer cifar-bench (schema {version}, this one "
                           f"reads up to {SCHEMA_VERSION}); upgrade cifar-bench")
    return env


#: where env.json holds values that are compared (``check``, ``--resume``) or shown: each must
#: be text, a number, true/false or null, never a nested object or array
_SCALAR_PLACES = (((), ("system", "machine", "python", "driver_version", "machine_label", "memory_bytes")),
                  (("tensorflow",), None), (("packages",), None), (("environment",), None))


def _check_scalars(path: Path, env: dict) -> None:
    def scalar(value) -> bool:
        return value is None or isinstance(value, (str, int, float, bool))

    places = [(".".join(where + (k,)), v) for where, keys in _SCALAR_PLACES
              for k, v in _at(env, where).items() if keys is None or k in keys]
    places += [(f"cpu.{k}", v) for k, v in _at(env, ("cpu",)).items() if k != "flags"]
    places += [(f"backends.{b}.version", (v or {}).get("version") if isinstance(v, dict) else v)
               for b, v in _at(env, ("backends",)).items()]
    places += [(f"gpus[{i}].{k}", v) for i, g in enumerate(env.get("gpus") or []) for k, v in g.items()
               if not isinstance(v, list)]
    for name, value in places:
        if not scalar(value):
            raise ResultsError(f"{path}: '{name}' must be text, a number, true/false or null "
                               f"(got a JSON {'object' if isinstance(value, dict) else 'array'})")


def _at(env: dict, where: tuple[str, ...]) -> dict:
    node: object = env
    for key in where:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def read_run(directory: str | os.PathLike, started: bool = False) -> Run:
    """Read, validate and upgrade a run directory (runs.csv, steps.csv, env.json).

    ``started``: a run stopped before its first cell was written (env.json only) reads as
    a run with no rows, so that it can be resumed.
    """
    directory = Path(directory)
    try:
        is_directory = directory.is_dir()
    except OSError as exc:
        raise ResultsError(f"{directory}: {exc.strerror}") from None
    if not is_directory:
        raise ResultsError(f"{directory}: no such run directory")
    env = read_env(directory / ENV_JSON)
    if started and env and not (directory / RUNS_CSV).exists():
        # steps.csv without runs.csv: a cell cut short between the two writes; it is run again
        return Run(directory, _schema_frame([], RUN_COLUMNS), _schema_frame([], STEP_COLUMNS), env)
    runs = read_table(directory / RUNS_CSV, RUN_COLUMNS, required={
        "run_id", "cell_id", "status", "device_id", "device_type", "batch_size", "step_median_s"})
    steps = read_table(directory / STEPS_CSV, STEP_COLUMNS)
    version = env.get("schema_version", 1)
    while version < SCHEMA_VERSION:
        UPGRADES[version](runs, env)
        version += 1
    _validate_runs(directory / RUNS_CSV, runs)
    _validate_steps(directory / STEPS_CSV, steps)
    return Run(directory, runs, steps, env, read_curves(directory))


def read_curves(directory: Path) -> pd.DataFrame:
    """curves.csv, checked; an empty frame for a run without one (older runs, no --eval-every)."""
    path = directory / CURVES_CSV
    if not path.exists():
        return _schema_frame([], CURVE_SCHEMA)
    curves = read_table(path, CURVE_SCHEMA)
    accuracy = curves["heldout_accuracy"]
    _check(path, curves, "heldout_accuracy", accuracy.notna() & (accuracy >= 0) & (accuracy <= 1),
           "a fraction from 0 to 1")
    for name in ("repeat", "step", "wall_seconds"):
        value = curves[name]
        _check(path, curves, name, value.notna() & np.isfinite(value.fillna(-1)) & (value >= 0),
               "a finite number >= 0")
    return curves


def latest_run(root: str | os.PathLike) -> Path:
    """The newest *finished* run directory under ``<root>/runs`` (run ids sort by time).

    A run still being written (it holds its lock) is passed over: a baseline or a README
    table taken from it would hold half its cells. Callers say which run they took.
    """
    base = runs_dir(Path(root))
    candidates = sorted(p for p in base.glob("*") if (p / RUNS_CSV).is_file()) if base.is_dir() else []
    finished = [p for p in candidates if not in_use(p)]
    if not finished:
        what = (f"no finished runs here yet ({len(candidates)} still being written)" if candidates
                else "no runs here yet")
        raise ResultsError(f"{base}: {what}; run 'python -m bench run' first, pass "
                           f"--run DIR, or point --results-dir / ${RESULTS_ENV} at your results")
    return finished[-1]


@dataclass
class RunListing:
    """One line of ``bench runs``: what a run (or baseline) is, or why it cannot be read."""

    kind: str                  # "run" or "baseline"
    id: str                    # the run directory's name, or the baseline's
    path: str
    date: str | None = None    # when its first cell started (UTC)
    machine: str | None = None  # the machine label, else its fingerprint id
    data: str | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    git_commit: str | None = None
    error: str | None = None


def list_runs(root: Path, baselines: bool = True) -> list[RunListing]:
    """The runs under ``<root>/runs`` (and the baselines), newest first; a damaged one is
    listed with its error instead of stopping the listing."""
    found = []
    places = [("run", runs_dir(root))] + ([("baseline", baselines_dir(root))] if baselines else [])
    for kind, base in places:
        found += _listings_under(kind, base)
    return _newest_first(found)


def list_directory(directory: str | os.PathLike) -> list[RunListing]:
    """``bench runs DIR``: the runs of any directory, newest first -- a results root (its
    ``runs/`` and ``baselines/``), a run itself, or a folder of runs such as
    ``results/published``. ResultsError when it is not a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such directory; give a results root, a folder of runs or a run")
    if _holds_a_run(directory):
        return [_listing("run", directory)]
    if runs_dir(directory).is_dir() or baselines_dir(directory).is_dir():
        return list_runs(directory)
    return _newest_first(_listings_under("run", directory))


def _holds_a_run(directory: Path) -> bool:
    return (directory / RUNS_CSV).is_file() or (directory / ENV_JSON).is_file()


def _listings_under(kind: str, base: Path, prefix: str = "", depth: int = 2) -> list[RunListing]:
    """Each run directory under ``base``. A folder that holds no run but holds runs (``bench
    noise``'s ``<id>-noise/run-1``, ...) lists those, named ``<folder>/run-1``, not itself as a
    damaged run; an empty or foreign folder is listed with its error."""
    found = []
    for directory in sorted(base.iterdir()) if base.is_dir() else []:
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        nested = ([] if _holds_a_run(directory) or depth <= 1
                  else _listings_under(kind, directory, f"{prefix}{directory.name}/", depth - 1))
        found += nested or [_listing(kind, directory, f"{prefix}{directory.name}")]
    return found


def _newest_first(listings: list[RunListing]) -> list[RunListing]:
    return sorted(listings, key=lambda r: (r.date or "", r.id), reverse=True)


def _listing(kind: str, directory: Path, name: str | None = None) -> RunListing:
    listing = RunListing(kind, name or directory.name, str(directory))
    try:
        run = read_run(directory)
    except (ResultsError, OSError, ValueError, RecursionError) as exc:  # one damaged run, not the listing
        listing.error = str(exc) if isinstance(exc, ResultsError) else f"{directory}: {type(exc).__name__}"
        return _inert(listing)
    runs = run.runs
    started = sorted(v for v in runs["started_at"] if isinstance(v, str) and v)
    counts = runs["status"].value_counts()
    labels = [v for v in runs["machine_label"] if isinstance(v, str) and v]
    commit = (run.env.get("git") or {}).get("commit") or next(
        (v for v in runs["git_commit"] if isinstance(v, str) and v), None)
    listing.date = started[0] if started else None
    listing.machine = run.env.get("machine_label") or (labels[0] if labels else None) or (
        machine_id(run.env) if run.env else None)
    listing.data = ",".join(dict.fromkeys(v for v in runs["data"] if isinstance(v, str) and v)) or None
    listing.ok, listing.failed, listing.skipped = (int(counts.get(s, 0)) for s in ("ok", "failed", "skipped"))
    listing.git_commit = commit[:12] if commit else None
    return _inert(listing)


def _inert(listing: RunListing) -> RunListing:
    """A listing's text (labels, paths and errors from files on disk) as one inert line each."""
    for name in ("id", "path", "machine", "data", "git_commit", "error"):
        value = getattr(listing, name)
        if value is not None:
            setattr(listing, name, plain_text(value))
    return listing


# --------------------------------------------------------------------------- baselines

def check_name(name: str, what: str = "--name") -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise BaselineError(f"{what} '{name[:MAX_NAME_LENGTH]}{'...' if len(name) > MAX_NAME_LENGTH else ''}': "
                            f"use a plain name of at most {MAX_NAME_LENGTH} letters, digits, "
                            "dots, dashes and underscores")
    return name


def baseline_path(name_or_path: str, root: Path) -> Path:
    """A directory path as given, else the named baseline under ``<root>/baselines``."""
    path = Path(name_or_path)
    if path.exists() or path.is_absolute() or len(path.parts) > 1:
        return path
    return baselines_dir(root) / name_or_path


def _lock(path: Path) -> FileLock:
    return FileLock(str(path), timeout=LOCK_TIMEOUT_S)


def save_baseline(run: Run, name: str, root: Path, replace: bool = False) -> Path:
    """Store ``run`` as the baseline ``name``; returns its path.

    Staged in a private temporary directory and renamed into place under a lock on the
    name, so concurrent saves of one name leave one complete baseline: the first wins, a
    second without ``replace`` gets a clear error.
    """
    check_name(name)
    ok = run.runs[run.runs["status"] == "ok"]
    if ok.empty:
        raise BaselineError(f"{run.directory}: no successful cell to keep as a baseline")
    base = baselines_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    target = base / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=base))
    try:
        for filename in (RUNS_CSV, STEPS_CSV, ENV_JSON):
            shutil.copyfile(run.directory / filename, staging / filename)
        if (run.directory / CURVES_CSV).is_file():     # the held-out curves, where the run has them
            shutil.copyfile(run.directory / CURVES_CSV, staging / CURVES_CSV)
        meta = {"schema": BASELINE_SCHEMA, "name": name, "run_id": run.run_id,
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_id(run.env), "cells": int(len(ok))}
        write_atomically(staging / BASELINE_JSON, json.dumps(meta, indent=2) + "\n")
        try:
            with _lock(base / f".{name}.lock"):
                if target.exists():
                    if not replace:
                        raise BaselineError(f"baseline '{name}' already exists at {target}; pass "
                                            "--replace to overwrite it or --name to choose another")
                    retired = base / f".{name}.{secrets.token_hex(4)}.old"
                    target.rename(retired)
                    staging.rename(target)
                    shutil.rmtree(retired, ignore_errors=True)
                else:
                    staging.rename(target)
        except Timeout:
            raise BaselineError(f"baseline '{name}': another save holds its lock; try again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_baseline(name_or_path: str, root: Path) -> Run:
    """A baseline (or any run directory) read and validated; BaselineError otherwise."""
    try:
        path = baseline_path(name_or_path, root)
        found = path.exists()
    except OSError as exc:  # a name longer than the file system allows, a path through a file
        raise BaselineError(f"baseline '{name_or_path[:MAX_NAME_LENGTH]}': {exc.strerror}") from None
    if not found:
        known = [m["name"] for m in list_baselines(root) if "error" not in m]
        hint = (f" (saved: {', '.join(known)})" if known
                else " (save one with 'python -m bench baseline save')")
        raise BaselineError(f"baseline '{name_or_path}' not found at {path}{hint}")
    if not path.is_dir():
        raise BaselineError(f"{path}: not a baseline or run directory (expected runs.csv, steps.csv, env.json)")
    meta_file = path / BASELINE_JSON
    if meta_file.exists():
        try:
            meta = read_json(meta_file, "a baseline.json this tool wrote")
        except (ResultsError, OSError) as exc:
            raise BaselineError(str(exc) if isinstance(exc, ResultsError) else f"{meta_file}: {exc.strerror}") from None
        if not isinstance(meta, dict) or meta.get("schema") != BASELINE_SCHEMA:
            raise BaselineError(f"{meta_file}: not a cifar-bench baseline (schema "
                                f"{meta.get('schema') if isinstance(meta, dict) else None!r}, "
                                f"expected {BASELINE_SCHEMA!r})")
    try:
        return read_run(path)
    except ResultsError as exc:
        raise BaselineError(f"malformed baseline: {exc}") from None


def list_baselines(root: Path) -> list[dict]:
    base = baselines_dir(root)
    found = []
    for meta_file in sorted(base.glob(f"*/{BASELINE_JSON}")) if base.is_dir() else []:
        if meta_file.parent.name.startswith("."):
            continue
        try:
            meta = read_json(meta_file, "a baseline.json this tool wrote")
            if not isinstance(meta, dict):
                raise ResultsError(f"{meta_file}: not a JSON object")
            shown = {k: plain_text(v) if isinstance(v, str) else v for k, v in meta.items()
                     if v is None or isinstance(v, (str, int, float, bool))}
            found.append({**shown, "name": plain_text(meta_file.parent.name)})
        except (ResultsError, OSError) as exc:
            found.append({"name": plain_text(meta_file.parent.name),
                          "error": plain_text(exc) if isinstance(exc, ResultsError) else f"unreadable baseline.json "
                          f"({exc.strerror or exc})"})
    return found
