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
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from bench import matrix
from bench.environment import machine_id
from bench.files import LOCK_TIMEOUT_S, write_atomically
from bench.record import RUN_COLUMNS, STATUSES, STEP_COLUMNS, as_dict, columns_of
from cifar_model.results import seconds_per_step

RUNS_CSV, STEPS_CSV, ENV_JSON, SUMMARY_MD = "runs.csv", "steps.csv", "env.json", "summary.md"
BASELINE_JSON = "baseline.json"
RUN_LOCK = ".lock"
BASELINE_SCHEMA = "cifar-bench-baseline/1"
#: Version of the run files written now; env.json says ``"schema_version": SCHEMA_VERSION``.
SCHEMA_VERSION = 2
RESULTS_ENV = "BENCH_RESULTS_DIR"
DEFAULT_RESULTS_ROOT = Path("results")
MAX_NAME_LENGTH = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_RESULTS_FILE_BYTES = 512 * 2**20      # a results CSV larger than this is refused unread


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
        except FileExistsError:
            if not out.is_dir() or any(out.iterdir()):
                raise
            # an existing empty directory is taken by creating our marker exclusively in it
        _mark_claimed(out)
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
        _mark_claimed(candidate)
        return candidate
    raise OSError(errno.EEXIST, f"no free run directory name under {base}")


def lock_run_dir(directory: Path) -> FileLock:
    """Hold ``directory`` for this process: another run or resume of it is refused at once.

    The OS drops the lock when the process ends, however it ends (SIGKILL included), so a
    killed run never leaves its directory locked; it can be resumed.
    """
    lock = FileLock(str(Path(directory) / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ResultsError(f"{directory}: in use by another bench run or resume; wait for it to end "
                           "or stop it first") from None
    return lock


def _mark_claimed(directory: Path) -> None:
    """An exclusive marker: of two runs racing for one empty directory, one gets EEXIST."""
    with open(directory / ".claimed", "x", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


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

    def __init__(self, directory: Path, run_id: str, existing_rows: list[dict] = (),
                 existing_steps: list[dict] = ()):
        self.directory = Path(directory)
        self.run_id = run_id
        self.rows: list[dict] = list(existing_rows)
        self.steps: list[dict] = list(existing_steps)

    def write_env(self, env: dict) -> None:
        env = {**env, "schema_version": SCHEMA_VERSION}
        write_atomically(self.directory / ENV_JSON, json.dumps(env, indent=2, sort_keys=True) + "\n")

    def add(self, row, steps: list[dict] = ()) -> None:
        """Keep ``row`` (a RunRow) in memory, then on disk; OSError if the disk refuses.

        In memory first: a row the disk refused is still in the summary printed at the end.
        """
        self.rows.append(as_dict(row) if not isinstance(row, dict) else row)
        self.steps.extend(steps)
        self.flush()

    def replace_cells(self, cell_ids: set[str]) -> None:
        """Forget rows (and steps) of ``cell_ids``: they are about to be measured again."""
        self.rows = [r for r in self.rows if r["cell_id"] not in cell_ids]
        self.steps = [s for s in self.steps if s["cell_id"] not in cell_ids]

    def flush(self) -> None:
        # steps first: runs.csv never names a cell whose steps are not on disk yet
        write_atomically(self.directory / STEPS_CSV, _schema_frame(self.steps, STEP_COLUMNS).to_csv(index=False))
        write_atomically(self.directory / RUNS_CSV, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return _schema_frame(self.rows, RUN_COLUMNS)


# --------------------------------------------------------------------------- reading

@dataclass
class Run:
    """A run read back from disk (or a baseline, which is a kept copy of one)."""

    directory: Path
    runs: pd.DataFrame
    steps: pd.DataFrame
    env: dict

    @property
    def run_id(self) -> str:
        return str(self.runs["run_id"].iloc[0]) if len(self.runs) else self.directory.name

    def steady_steps(self, cell_id: str) -> np.ndarray:
        """Seconds per step of the cell's steady records."""
        cell = self.steps[(self.steps["cell_id"] == cell_id) & ~self.steps["warmup"].astype(bool)]
        return seconds_per_step(cell["seconds"], cell["steps"]).to_numpy(dtype=float)


def read_table(path: Path, schema: dict, required: set[str] | None = None) -> pd.DataFrame:
    """Read a schema CSV as data: unknown columns dropped, required ones checked, types parsed."""
    try:
        if path.stat().st_size > MAX_RESULTS_FILE_BYTES:
            raise ResultsError(f"{path}: larger than {MAX_RESULTS_FILE_BYTES // 2**20} MiB; "
                               "not a results file this tool wrote")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
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


def _validate_steps(path: Path, steps: pd.DataFrame) -> None:
    seconds, counts = steps["seconds"], steps["steps"]
    _check(path, steps, "seconds", seconds.notna() & np.isfinite(seconds.fillna(0)) & (seconds > 0),
           "a positive, finite number of seconds")
    _check(path, steps, "steps", counts.notna() & (counts >= 1) & (counts % 1 == 0),
           "a whole number >= 1")
    _check(path, steps, "warmup", steps["warmup"].notna(), "True or False")


def _validate_runs(path: Path, runs: pd.DataFrame) -> None:
    _check(path, runs, "status", runs["status"].isin(STATUSES), f"one of {', '.join(STATUSES)}")
    batch = runs["batch_size"]
    _check(path, runs, "batch_size", batch.notna() & (batch >= 1) & (batch % 1 == 0),
           "a whole number >= 1")
    for name in ("step_median_s", "images_per_s", "train_s"):
        value = runs[name]
        _check(path, runs, name, value.isna() | (np.isfinite(value.fillna(0)) & (value > 0)),
               "empty or a positive, finite number")


#: Named upgrade steps: version -> the function that brings a run of that version to the
#: next. Version 1: files written before env.json had a schema version.
def _upgrade_1_to_2(runs: pd.DataFrame, env: dict) -> None:
    """Version 1 runs, read as what they did: every dimension added since (backend, data
    placement, replicas, workers) gets its legacy value where the file lacks the column or left
    it empty (read back, a missing column is an empty one: text "", a number NaN), so their
    cells match today's; and the whole-cell columns of one replica are filled from the
    per-replica ones, which were the same thing then."""
    for column, value in matrix.legacy_values().items():
        if column in runs and _all_empty(runs[column]):
            runs[column] = value
    ok = runs["status"] == "ok"
    total = (runs["replicas"] * runs["workers"]).where(ok)
    _fill(runs, "total_replicas", total)
    _fill(runs, "global_batch_size", runs["batch_size"] * total)
    _fill(runs, "global_images_per_s", runs["images_per_s"] * total)
    _fill(runs, "strategy", pd.Series("none", index=runs.index).where(ok, ""))
    if "framework_version" in runs and "tensorflow_version" in runs:
        tensorflow = (runs["backend"] == "tensorflow") & ok
        _fill(runs, "framework_version", runs["tensorflow_version"].where(tensorflow, ""))


def _all_empty(column: pd.Series) -> bool:
    return bool((column.isna() | (column.astype(str) == "")).all())


def _fill(runs: pd.DataFrame, column: str, values: pd.Series) -> None:
    """``column`` where it is empty, from ``values`` (a column the schema no longer has: left alone)."""
    if column not in runs:
        return
    empty = runs[column].isna() | (runs[column].astype(str) == "")
    runs.loc[empty, column] = values[empty]


UPGRADES: dict[int, Callable[[pd.DataFrame, dict], None]] = {1: _upgrade_1_to_2}


def read_env(path: Path) -> dict:
    try:
        if path.stat().st_size > 16 * 2**20:
            raise ResultsError(f"{path}: larger than 16 MiB; not an env.json this tool wrote")
        env = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not readable JSON ({exc})") from None
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
    for name, value, kind in (
            ("system", env.get("system"), str), ("machine", env.get("machine"), str),
            ("memory_bytes", env.get("memory_bytes"), int), ("cpu.model", cpu.get("model"), str),
            *((f"cpu.{k}", cpu.get(k), int) for k in ("logical_cpus", "usable_cpus", "physical_cores")),
            *((f"gpus[{i}].name", g.get("name"), str) for i, g in enumerate(env.get("gpus") or []))):
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value < 0)):
            raise ResultsError(f"{path}: '{name}' must be {'text' if kind is str else 'a whole number >= 0'}"
                               f" (got {json.dumps(value)[:40]})")
    version = env.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultsError(f"{path}: schema_version must be a positive integer")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{path}: written by a newer cifar-bench (schema {version}, this one "
                           f"reads up to {SCHEMA_VERSION}); upgrade cifar-bench")
    return env


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
    return Run(directory, runs, steps, env)


def latest_run(root: str | os.PathLike) -> Path:
    """The newest run directory under ``<root>/runs`` (run ids sort by time)."""
    base = runs_dir(Path(root))
    candidates = sorted(p for p in base.glob("*") if (p / RUNS_CSV).is_file()) if base.is_dir() else []
    if not candidates:
        raise ResultsError(f"{base}: no runs here yet; run 'python -m bench run' first, pass --run DIR, "
                           f"or point --results-dir / ${RESULTS_ENV} at your results")
    return candidates[-1]


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
    except ResultsError as exc:
        listing.error = str(exc)
        return listing
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
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BaselineError(f"{meta_file}: not readable JSON ({exc})") from None
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
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError
            found.append({**meta, "name": meta_file.parent.name})
        except (OSError, ValueError):
            found.append({"name": meta_file.parent.name, "error": "unreadable baseline.json"})
    return found
