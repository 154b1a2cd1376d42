"""The results table: one run, or several side by side, and the notes under it.

One builder. A single run is the N = 1 case of several (airspeed velocity merges per-machine
results the same way): rows are cells (repeats aggregated by their median), told apart by a
short *machine* name (the user's ``--machine-label``, else "CPU model (short OS)"); settings
that differ between the runs (data, steps, a dimension) become columns, never averages, and
the notes say which figures cannot be read across them. One run's table also shows its
efficiency columns; several runs' keep to the per-step figures that compare across machines.

Every figure says what it is and how it was measured, and "Speed-up" names what it divides
by (:class:`Reference`): each machine's own CPU by default, or a device the user names.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench import matrix, text, tta
from bench.contention import BUSY_PCT
from bench.energy import describe_energy
from bench.environment import machine_id
from bench.record import RUN_COLUMNS
from bench.store import Run
from cifar_model import SEED_RUN, SPLIT_SIZES, STRATEGY_DOCS, backend_entry


class TableError(Exception):
    """The runs cannot be put in one table as asked (an unknown reference)."""


# --------------------------------------------------------------------------- text

def format_duration(seconds: float | None) -> str:
    """Like the notebook's table: "21 m 12 s"; short times as "8.6 s"."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} m {secs} s" if hours else f"{minutes} m {secs} s"


def number(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:{fmt}}{suffix}"


def dimension_text(name: str, value, xla=None, math=None) -> str:
    """A dimension's value as a person reads it, with what the row found it to mean: what
    ``jit_compile auto`` resolved to (``xla``), and "fp32" that ran in TF32 (``math``).

    TF32 is a result attribute, not a matrix value: the cell asked for fp32, and its
    backend's own setting decided (see :func:`cifar_model.backends.fp32_math`).
    """
    if name == "jit_compile" and value == "auto" and xla in (True, False):
        return f"auto ({'on' if xla else 'off'})"
    if name == "precision" and value == "fp32" and math == "tf32":
        return "fp32 (TF32 convs)"
    return matrix.BY_NAME[name].show(matrix.plain(value))


def _texts(column: pd.Series) -> pd.Series:
    """The non-empty strings of a text column (CSV gives NaN or "" for none)."""
    return column[column.map(lambda v: isinstance(v, str) and v != "")]


def _agreed(ok: pd.DataFrame, column: str):
    """The value of ``column`` every row that recorded one shares, else None: what ``jit_compile
    auto`` resolved to (backends differ: JAX always compiles), the math fp32 ran in."""
    values = {v for v in ok[column].dropna() if v != ""} if column in ok else set()
    return values.pop() if len(values) == 1 else None


def _median(rows: pd.DataFrame, column: str) -> float | None:
    return rows[column].median() if column in rows else None


# --------------------------------------------------------------------------- machines

def short_system(system: str | None) -> str:
    """"Debian GNU/Linux 12 (bookworm)" -> "Debian 12": enough to tell machines apart."""
    text = re.sub(r"\s*\(.*?\)", "", str(system or "?")).replace(" GNU/Linux", "")
    return re.sub(r"\s+", " ", text).strip() or "?"


def short_cpu(model: str | None) -> str:
    """"AMD EPYC 9R14 96-Core Processor" -> "AMD EPYC 9R14"; "Intel(R) Core(TM) i7 CPU @ 2.6GHz" -> "Intel Core i7"."""
    text = re.sub(r"\((R|TM)\)", "", str(model or "unknown CPU"), flags=re.I)
    text = re.sub(r"\s+(\d+-Core\s+)?Processor\b.*|\s+CPU\s*@.*|\s+@.*", "", text)
    return re.sub(r"\s+", " ", text).strip() or "unknown CPU"


def run_label(run: Run) -> str | None:
    """The machine label the run was made with (env.json, else its rows)."""
    label = run.env.get("machine_label")
    if not label and "machine_label" in run.runs:
        label = next((v for v in run.runs["machine_label"] if isinstance(v, str) and v), None)
    return label or None


def machine_names(runs: Sequence[Run]) -> list[str]:
    """One short name per run: its label, else "CPU (OS)"; two machines never share a name."""
    names: list[str] = []
    seen: dict[str, str] = {}
    for run in runs:
        ident = machine_id(run.env) if run.env else str(run.directory)
        name = run_label(run) or f"{short_cpu((run.env.get('cpu') or {}).get('model'))} " \
                                 f"({short_system(run.env.get('system') or _first(run.runs, 'system'))})"
        if seen.setdefault(name, ident) != ident and not run_label(run):
            name = f"{name} #{ident[-6:]}"
        names.append(name)
    return names


def _first(frame: pd.DataFrame, column: str):
    values = [v for v in frame.get(column, []) if isinstance(v, str) and v]
    return values[0] if values else None


# --------------------------------------------------------------------------- the reference

REFERENCE = re.compile(r"^(?P<machine>.+?):(?P<device>cpu|gpu(?::\d+)?)(?::(?P<backend>[a-z]+))?$")


@dataclass(frozen=True)
class Reference:
    """What "Speed-up" divides by: each machine's own CPU, or one named machine's device
    (optionally one backend of it)."""

    machine: str | None = None     # None: the CPU of the row's own machine
    device_id: str = "cpu"
    backend: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Reference":
        if text is None or text.strip().lower() == "cpu":
            return cls()
        found = REFERENCE.match(text.strip())
        if not found:
            raise TableError(f"--reference '{text}': write 'cpu' (each machine's own CPU) or "
                             "MACHINE:DEVICE[:BACKEND], e.g. 'laptop:gpu:0' or 'laptop:cpu:torch'")
        device = found["device"] if found["device"] != "gpu" else "gpu:0"
        return cls(found["machine"], device, found["backend"])

    @property
    def named(self) -> str:
        """The reference as the user names it: "laptop cpu torch"."""
        return " ".join(p for p in (self.machine, self.device_id, self.backend) if p)

    @property
    def option(self) -> str | None:
        """The ``--reference`` value that names this reference again (None: the default)."""
        if self.machine is None:
            return None
        return ":".join(p for p in (self.machine, self.device_id, self.backend) if p)

    @property
    def column(self) -> str:
        return "Speed-up vs CPU" if self.machine is None else f"Speed-up vs {self.named}"

    def note(self, fallback_named: bool) -> str:
        """What the column divides by; ``fallback_named``: some rows' reference is named in a note below."""
        below = " (named below)" if fallback_named else ""
        if self.machine is None:
            return (f"**{self.column}**: the median step of a CPU row of the same machine ÷ this row's "
                    "(>1: this row is faster): the CPU row of the same settings as asked (the same "
                    "run's where it has one), else the fastest CPU row of that machine at the same "
                    f"batch size, whatever its backend or precision{below}.")
        return (f"**{self.column}**: the median step of {self.device_id}"
                + (f" with {self.backend}" if self.backend else "")
                + f" on {self.machine} ÷ this row's (>1: this row is faster): its row of the same "
                  f"settings as asked, else its fastest row at the same batch size{below}.")

    def check(self, frame: pd.DataFrame) -> None:
        """A named reference must be a measured device of a machine in the table."""
        if self.machine is None:
            return
        ok = frame[frame["status"] == "ok"]
        if not self.candidates(ok).any():
            available = list(dict.fromkeys(f"{m}:{d}:{b}" for m, d, b in
                                           zip(ok["machine"], ok["device_id"], ok["backend"])))
            raise TableError(f"--reference {self.machine}:{self.device_id}"
                             + (f":{self.backend}" if self.backend else "")
                             + f": no measured cell of that machine and device; choose from "
                             f"{', '.join(available) or 'none'} or 'cpu'")

    def candidates(self, rows: pd.DataFrame, machine: str | None = None) -> pd.Series:
        """Which of ``rows`` may serve as the reference of a row of ``machine``."""
        if self.machine is None:
            return (rows["machine"] == machine) & (rows["device_type"] == "CPU")
        pool = (rows["machine"] == self.machine) & (rows["device_id"] == self.device_id)
        return pool & (rows["backend"] == self.backend) if self.backend else pool

    def missing_reason(self, machine: str) -> str:
        return (f"no CPU row on {machine}" if self.machine is None
                else f"no {self.device_id}{' ' + self.backend if self.backend else ''} row on {self.machine}")


# --------------------------------------------------------------------------- rows

#: Run-wide settings that become a column when they differ between rows: column -> header.
SETTINGS = {"data": "Data", "split": "Split", "steps_text": "Steps", "warmup_steps": "Warm-up"}
#: Columns only one run's table shows: each run's efficiency is against its own machine's peak.
ONE_RUN_COLUMNS = ("TFLOP/s", "Efficiency", "Efficiency (theoretical)", "Unsynced images/s", "Sync overhead")


def numeric(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with its number columns as floats (None -> NaN), whether read or in memory."""
    runs = runs.copy()
    for name, value in matrix.legacy_values().items():   # rows made before a dimension existed
        if name in runs:
            runs[name] = runs[name].where(runs[name].notna(), value)
    for name, column in RUN_COLUMNS.items():
        if name in runs.columns and column.dtype in ("int", "float"):
            runs[name] = pd.to_numeric(runs[name], errors="coerce")
    return runs


def combined(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run's rows in one frame, with the run's ``machine`` name and position."""
    frames = []
    for index, (run, machine) in enumerate(zip(runs, machine_names(runs))):
        frame = numeric(run.runs)
        frame["machine"], frame["run_index"], frame["source"] = machine, index, str(run.directory)
        frame["steps_text"] = [f"{int(e)} × {int(s)}" if pd.notna(e) and pd.notna(s) else "–"
                               for e, s in zip(frame["epochs"], frame["steps_per_epoch"])]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def varying_settings(frame: pd.DataFrame) -> list[str]:
    """Run-wide settings that differ between measured rows of the same batch size (steps per
    epoch follow the batch size in every run: that alone is not a difference)."""
    measured = frame[frame["status"] == "ok"]
    return [name for name in SETTINGS
            if (measured[name].map(lambda v: str(matrix.plain(v))).groupby(measured["batch_size"]).nunique() > 1).any()]


def shown_dimensions(runs: pd.DataFrame) -> list[str]:
    """Dimensions other than batch size that vary among the measured rows: they get columns."""
    measured = runs[runs["status"] != "skipped"]
    return [d for d in matrix.varying_dimensions([measured]) if d != "batch_size"]


def is_scaling_run(runs: pd.DataFrame) -> bool:
    """Does any measured row train on more than one replica (or worker)?"""
    return "total_replicas" in runs and bool((pd.to_numeric(runs.loc[runs["status"] == "ok", "total_replicas"],
                                                           errors="coerce") > 1).any())


def _requested_key(frame: pd.DataFrame) -> pd.DataFrame:
    """Every dimension as asked (resolvable ones by their ``_requested`` column), as text."""
    out = pd.DataFrame(index=frame.index)
    for d in matrix.DIMENSIONS:
        if d.name not in frame:
            continue
        column = f"{d.name}_requested" if d.resolve is not None and f"{d.name}_requested" in frame else d.name
        values = frame[column].where(frame[column].notna() & (frame[column] != ""), frame[d.name])
        out[d.name] = values.map(lambda v: str(matrix.plain(v)))
    return out


def cells(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The measured cells (a cell's repeats together), each the rows of one machine, run,
    device, every dimension and every run-wide setting. Cells skipped on every repeat are
    left out: the notes say why once."""
    keys = ["machine", "run_index", "device_id", *(d.name for d in matrix.DIMENSIONS if d.name in frame),
            *SETTINGS]
    return [group for _, group in frame.groupby(keys, sort=False, dropna=False)
            if not (group["status"] == "skipped").all()]


@dataclass(frozen=True)
class Speedup:
    """One cell's speed-up: the ratio, and the reference row it divides by (or why none)."""

    ratio: float
    basis: str = ""        # a fallback reference, named: "median step of M CPU tensorflow fp32 batch 128"
    missing: str = ""      # why there is no ratio: "no CPU row on M" (at missing_batch)
    missing_batch: int | None = None


def speedups(frame: pd.DataFrame, groups: list[pd.DataFrame], reference: Reference) -> list[Speedup]:
    """Per cell: the reference's median step ÷ the cell's (see :meth:`Reference.note`)."""
    keys = _requested_key(frame)
    compared = [d for d in keys.columns if not (reference.backend and d == "backend")]
    ok = [g[g["status"] == "ok"] for g in groups]
    by_cell = pd.DataFrame([{
        "machine": g["machine"].iloc[0], "run_index": g["run_index"].iloc[0],
        "device_type": g["device_type"].iloc[0], "device_id": g["device_id"].iloc[0],
        "backend": g["backend"].iloc[0] if "backend" in g else "tensorflow",
        "precision": g["precision"].iloc[0], "batch_size": int(g["batch_size"].iloc[0]),
        "parallel": f"{matrix.plain(g['replicas'].iloc[0]) if 'replicas' in g else 1}"
                    f"x{matrix.plain(g['workers'].iloc[0]) if 'workers' in g else 1}",
        "key": "|".join(keys.loc[g.index[0], compared]), "step": o["step_median_s"].median() if len(o) else math.nan,
    } for g, o in zip(groups, ok)])
    if by_cell.empty:
        return []
    measured = by_cell[by_cell["step"].notna()]
    out = []
    for _, cell in by_cell.iterrows():
        if not math.isfinite(cell["step"]):
            out.append(Speedup(math.nan, missing="no steady steps in this row"))
            continue
        pool = measured[reference.candidates(measured, cell["machine"])]
        same = pool[pool["key"] == cell["key"]]
        own_run = same[same["run_index"] == cell["run_index"]]
        same = own_run if len(own_run) else same
        if len(same):
            out.append(Speedup(same["step"].median() / cell["step"]))
            continue
        near = pool[(pool["batch_size"] == cell["batch_size"]) & (pool["parallel"] == cell["parallel"])]
        if near.empty:
            out.append(Speedup(math.nan, missing=reference.missing_reason(cell["machine"]),
                               missing_batch=cell["batch_size"]))
            continue
        fastest = near.loc[near["step"].idxmin()]
        device = "CPU" if fastest["device_type"] == "CPU" else fastest["device_id"]
        out.append(Speedup(fastest["step"] / cell["step"],
                           basis=f"median step of {fastest['machine']} {device} {fastest['backend']} "
                                 f"{fastest['precision']} batch {fastest['batch_size']}"))
    return out


def _system(row: pd.Series) -> str:
    label = row.get("machine_label")
    return f"{label} ({row['system']})" if isinstance(label, str) and label else str(row["system"])


def _row(group: pd.DataFrame, speedup: Speedup, reference: Reference, dims: list[str], settings: list[str],
         several: bool, show_run: bool, scaling: bool) -> dict:
    first = group.iloc[0]
    ok = group[group["status"] == "ok"]
    row: dict[str, Any] = {"Machine": first["machine"]} if several else {"System": _system(first)}
    if show_run:
        row["Run"] = first["run_id"]
    row.update({"Device": first["device_name"] or first["device_id"], "Device Type": first["device_type"],
                "Batch size": int(first["batch_size"])})
    row.update({matrix.BY_NAME[d].label: dimension_text(d, first[d], first.get("xla"), _agreed(ok, "math"))
                for d in dims})
    row.update({SETTINGS[s]: str(matrix.plain(first[s])) for s in settings})
    if ok.empty:
        row["Time"] = f"{group.iloc[-1]['status']}: {group.iloc[-1]['reason']}"
        row["_failure"] = (str(group.iloc[-1]["status"]), str(group.iloc[-1]["reason"]))
        return row
    row.update({
        "Time": format_duration(ok["train_s"].median()),
        "Accuracy": accuracy_text(ok),
        "Images/s": number(ok["images_per_s"].median(), ",.0f"),
        "Median step": number(ok["step_median_s"].median() * 1000, ".1f", " ms"),
        reference.column: number(speedup.ratio, ".2f", "×"),
        "TFLOP/s": number(ok["achieved_tflops"].median(), ".3f"),
        "Efficiency": number(ok["efficiency_pct"].median(), ".0f", " %"),
        "Efficiency (theoretical)": number(_median(ok, "efficiency_theoretical_pct"), ".1f", " %"),
        "Est. notebook run": format_duration(ok["projected_seed_run_s"].median()),
    })
    if "energy_covers" in ok and _texts(ok["energy_covers"]).size:
        energy = ok["energy_j_per_1k_images"].dropna()
        row["Energy"] = describe_energy({"energy_j_per_1k_images": energy.median() if len(energy) else None,
                                         "energy_covers": _texts(ok["energy_covers"]).iloc[0]})
        row["kWh / notebook run"] = number(_median(ok, "energy_seed_run_kwh"), ".3f")
    if "cost_note" in ok and _texts(ok["cost_note"]).size:
        row["$ / notebook run"] = number(_median(ok, "cost_seed_run_usd"), ",.4f")
    if "target_accuracy" in ok and ok["target_accuracy"].notna().any():
        target = float(ok["target_accuracy"].dropna().iloc[0])
        row[f"Time to {target:.0%}"] = tta.describe_times(list(ok["time_to_target_s"]), int(first["epochs"]))
    if ok["unsynced_images_per_s"].notna().any():
        row["Unsynced images/s"] = number(ok["unsynced_images_per_s"].median(), ",.0f")
        row["Sync overhead"] = number(ok["sync_overhead_pct"].median(), "+.1f", " %")
    if scaling:
        row.update({
            "Global batch": number(ok["global_batch_size"].median(), ".0f"),
            "Global images/s": number(ok["global_images_per_s"].median(), ",.0f"),
            "Speed-up vs 1 replica": _scaling_speedup(ok),
            "Scaling efficiency": number(ok["scaling_efficiency_pct"].median(), ".0f", " %"),
        })
    if several:
        for column in ONE_RUN_COLUMNS:
            row.pop(column, None)
    return row


def _scaling_speedup(ok: pd.DataFrame) -> str:
    if (ok["total_replicas"].fillna(1) <= 1).all():
        return "yardstick"
    checks = _texts(ok["scaling_note"])
    return number(ok["speedup_vs_1_replica"].median(), ".2f", "×") + (" (functional check)" if len(checks) else "")


@dataclass
class Table:
    """The rows of one or several runs, their speed-ups and the frame they came from."""

    runs: Sequence[Run]
    reference: Reference
    frame: pd.DataFrame
    groups: list[pd.DataFrame]
    speedups: list[Speedup]

    @property
    def several(self) -> bool:
        """Several runs, or a reference other than each machine's own CPU: the machines' layout."""
        return len(self.runs) > 1 or self.reference.machine is not None


def build(runs: Sequence[Run], reference: Reference = Reference()) -> Table:
    frame = combined(runs)
    reference.check(frame)
    groups = cells(frame)
    return Table(runs, reference, frame, groups, speedups(frame, groups, reference))


def frame_of(table: Table) -> pd.DataFrame:
    """One row per cell, ordered by machine, device type, device and batch size."""
    frame = _full_frame(table)
    return frame.drop(columns=[c for c in frame if c.startswith("_")])


def _full_frame(table: Table) -> pd.DataFrame:
    """:func:`frame_of` with its bookkeeping columns (``_failure``: a failed cell's status and reason)."""
    frame = table.frame
    dims, settings = shown_dimensions(frame), varying_settings(frame)
    scaling = not table.several and is_scaling_run(frame)
    several_per_machine = bool(len(frame)) and frame.groupby("machine")["run_index"].nunique().max() > 1
    order = {m: i for i, m in reversed(list(enumerate(frame["machine"])))}
    rows = []
    for group, speedup in zip(table.groups, table.speedups):
        row = _row(group, speedup, table.reference, dims, settings, table.several,
                   table.several and several_per_machine, scaling)
        if len(group) > 1:
            row["Repeats"] = f"{(group['status'] == 'ok').sum()}/{len(group)}"
        first = group.iloc[0]
        row["_order"] = (order[first["machine"]], first["device_type"] != "CPU", str(first["device_id"]),
                         int(first["batch_size"])) if table.several else 0
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    result = pd.DataFrame(rows).drop(columns="_order") if rows else pd.DataFrame()
    failures = result.pop("_failure") if "_failure" in result else None
    result = result.fillna("–")
    if failures is not None:
        result["_failure"] = failures
    # a column no row could fill (no theoretical peak known here) is left out; the notes say why
    result = result.drop(columns=[c for c in ("Efficiency (theoretical)",)
                                  if c in result and (result[c] == "–").all()])
    if scaling:
        result = result.rename(columns={"Batch size": "Batch size (per replica)",
                                        "Images/s": "Images/s per replica"})
    return result


# --------------------------------------------------------------------------- accuracy

def accuracy_text(ok: pd.DataFrame) -> str:
    """Mean held-out accuracy; with repeats, ± the standard deviation across them (seeds).

    A figure from part of the held-out split says how many images it covers.
    """
    measured = ok[ok["heldout_images"].fillna(0) > 0]
    accuracies = measured["heldout_accuracy"].dropna()
    if accuracies.empty:
        return "not measured"
    text = (f"{accuracies.iloc[0] * 100:.2f} %" if len(accuracies) == 1 else
            f"{accuracies.mean() * 100:.2f} % ± {accuracies.std(ddof=1) * 100:.2f}")
    images = int(measured["heldout_images"].iloc[0])
    full = _full_split_images(measured["split"].iloc[0])
    return text if full is None or images >= full else f"{text} (first {images:,} images)"


def _energy_and_cost_notes(ok: pd.DataFrame) -> list[str]:
    """What the Energy and cost columns are, and the prices behind the cost (``--price``)."""
    out = []
    if "energy_covers" in ok and _texts(ok["energy_covers"]).size:
        out.append("**Energy**: joules per 1,000 training images over the cell's steady window (synced at its "
                   "edges, extended to --energy-window with more steady steps), what the counters cover, or "
                   "why they could not be read; **kWh / notebook run**: that energy projected to the "
                   f"notebook's {SEED_RUN.epochs} epochs of {SEED_RUN.train_images:,} images.")
    if "cost_note" in ok and _texts(ok["cost_note"]).size:
        prices = "; ".join(dict.fromkeys(_texts(ok["cost_note"])))
        out.append(f"**$ / notebook run**: the projected notebook run's hours × the price (DAWNBench's rule): "
                   f"{prices}.")
    return out


def _target_note(ok: pd.DataFrame) -> str:
    every = ok["eval_every"].dropna() if "eval_every" in ok else pd.Series(dtype=float)
    cadence = f"every {matrix.plain(every.iloc[0])} epoch(s)" if len(every) else "at each evaluation"
    return (f"**Time to target**: MLPerf's clock: data loading, training and the held-out evaluations "
            f"({cadence}, the whole held-out split) up to the first evaluation at or above the target; with "
            f"{tta.OLYMPIC_MIN_RUNS} or more repeats the olympic mean (fastest and slowest dropped), fewer are "
            "shown as single runs; a cell that did not reach it says so and has no time. Training alone is "
            "runs.csv's train_time_to_target_s; every evaluation is a row of curves.csv (accuracy.png).")


def _full_split_images(split) -> int | None:
    return SPLIT_SIZES.get(split, (None, None))[1]


def _accuracy_note(ok: pd.DataFrame) -> str:
    measured = ok[ok["heldout_images"].fillna(0) > 0]
    if measured.empty:
        return ("not measured: " + str(ok["accuracy_note"].iloc[0]).removeprefix("not measured: ")
                + ("" if "synthetic" not in str(ok["accuracy_note"].iloc[0])
                   else ". Synthetic data measures speed only."))
    split = measured["split"].iloc[0]
    images = int(measured["heldout_images"].iloc[0])
    full = _full_split_images(split)
    where = "the official test set" if split == "standard" else "the last 10,000 training images"
    scope = (f"the whole held-out split ({images:,} images, {where})" if full is None or images >= full
             else f"the first {images:,} of the {full:,} held-out images ({where}; --eval-images), "
                  "not the whole split")
    spread = (" With repeats: mean ± standard deviation across them (each repeat uses "
              "another seed)." if ok["repeat"].max() > 0 else "")
    return f"on {scope} after that training, not the best mini-batch." + spread


# --------------------------------------------------------------------------- notes

def notes(table: Table) -> list[str]:
    """The notes under the table: what every figure is and how it was measured, what the rows
    have in common, what was not measured and why, and what else used the machine."""
    frame, runs = table.frame, table.runs
    ok = frame[frame["status"] == "ok"]
    out = _machine_notes(table) + _difference_notes(table)
    if not ok.empty:
        out += _column_notes(table, ok)
    out += _speedup_notes(table)
    measured = frame[frame["status"] != "skipped"]
    fixed = [f"{matrix.BY_NAME[d].label} "
             f"{dimension_text(d, measured[d].iloc[0], _agreed(ok, 'xla'), _agreed(ok, 'math'))}"
             for d in (d.name for d in matrix.DIMENSIONS) if d in frame and d != "batch_size"
             and d not in shown_dimensions(frame) and len(measured)]
    if fixed:
        out.append("All rows: " + ", ".join(fixed) + ".")
    out += math_notes(ok) + _impossible_efficiency_notes(ok)
    for run, name in zip(runs, machine_names(runs)):
        out += _cpu_notes(run.env, name if table.several else None)
        out += _precision_notes(ok[ok["machine"] == name], run.env)
    out += _contention_notes(ok) + _skipped_notes(table)
    return out


def _versions(run: Run) -> str:
    return ", ".join(f"{name} {version}" for name, version in framework_versions(run.runs, run.env))


def _machine_notes(table: Table) -> list[str]:
    """Several runs: each machine described once (one run's header does that)."""
    if not table.several:
        return []
    out = []
    for run, name in zip(table.runs, machine_names(table.runs)):
        env = run.env
        gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "no GPU"
        out.append(f"**{name}**: {env.get('system') or _first(run.runs, 'system') or '?'}, "
                   f"{(env.get('cpu') or {}).get('model') or '?'}, {gpus}; {_versions(run)}; "
                   f"run `{run.run_id}` ({_date(run)}), data: {data_label(run.runs)}.")
    return out


def _difference_notes(table: Table) -> list[str]:
    """What cannot be read across rows of runs made with different settings or software."""
    frame, out = table.frame, []
    settings = varying_settings(frame)
    if "data" in settings:
        out.append("**Data differs between rows** (see Data): accuracy is measured only on "
                   "CIFAR-10 rows; synthetic rows measure speed only.")
    if "steps_text" in settings or "warmup_steps" in settings:
        out.append("**Time covers different numbers of training steps** (see Steps: epochs × "
                   "steps per epoch): do not compare Time across them; Images/s, Median step "
                   "and Est. notebook run are per-step figures and do compare.")
    ok = frame[frame["status"] == "ok"]
    with_accuracy = ok[ok["heldout_images"].fillna(0) > 0]
    if {"split", "steps_text"} & set(varying_settings(with_accuracy)):
        out.append("**Accuracy** of rows trained on another split or for another number of "
                   "steps is not comparable; it is shown as measured.")
    versions = {name: _versions(run) for run, name in zip(table.runs, machine_names(table.runs))}
    if len(set(versions.values())) > 1:
        out.append("**Software differs between runs**: "
                   + "; ".join(f"{name}: {v}" for name, v in versions.items()) + ".")
    return out


def _column_notes(table: Table, ok: pd.DataFrame) -> list[str]:
    """What each column is; where the runs agree, with their figures (steps, warm-up, FLOPs)."""
    first = ok.iloc[0]
    warmup = int(first["warmup_steps"]) if ok["warmup_steps"].nunique() == 1 else None
    if ok["steps_text"].nunique() == 1:
        steps = f"{int(first['epochs'])} epoch(s) × {int(first['steps_per_epoch'])} steps at the row's batch size"
    elif "steps_text" in varying_settings(table.frame) or ok["epochs"].nunique() > 1:
        steps = "the Steps column's epochs × steps at the row's batch size"
    else:   # one epoch count; steps per epoch follow the batch size
        per_batch = ok.groupby("batch_size", sort=True)["steps_per_epoch"].first()
        steps = (f"{int(first['epochs'])} epoch(s) × "
                 + ", ".join(f"{int(n)} steps at batch {int(b)}" for b, n in per_batch.items()))
    notes = [
        f"**Time**: wall time of the whole training run of the cell: {steps}, "
        f"warm-up included; framework start-up (median {ok['startup_s'].median():.1f} s), data loading "
        f"(median {ok['data_load_s'].median():.1f} s) and evaluation are not in it.",
        *([_target_note(ok)] if "target_accuracy" in ok and ok["target_accuracy"].notna().any() else []),
        *_energy_and_cost_notes(ok),
        "**Accuracy**: " + (_accuracy_note(ok) if ok["split"].nunique() == 1 else
                            "on the held-out images of the row's split after that training, not the best mini-batch."),
        "**Images/s**: batch size ÷ median steady step time; the first "
        + (f"{warmup} step(s)" if warmup is not None else "steps (see Warm-up)")
        + " of each cell (tracing, compilation) are excluded; every step is timed until its loss "
        "is on the host (device synced). **Median step**: median steady step time.",
        table.reference.note(fallback_named=any(s.basis for s in table.speedups)),
    ]
    if not table.several:
        notes.append(
            "**TFLOP/s**: analytic training FLOPs per image (forward + backward of the conv and "
            f"dense layers, {number(first['flops_per_image'] / 1e6, '.1f', ' M')}) × images/s. "
            "**Efficiency**: TFLOP/s ÷ the device's measured peak in that precision, thread count "
            "and backend (a large dense matrix multiply, `python -m bench peak`)."
            + (" **Efficiency (theoretical)**: TFLOP/s ÷ the device's theoretical peak in that "
               "precision: " + _theoretical_basis(ok) + "." if _has_theoretical(ok) else ""))
    notes.append(
        f"**Est. notebook run**: projected time of the notebook's training ({SEED_RUN.epochs} "
        f"epochs of {SEED_RUN.train_images:,} images) at the mean steady step time: an estimate, "
        "not a measurement.")
    if not table.several and ok["unsynced_images_per_s"].notna().any():
        notes.append("**Unsynced images/s**: the same model trained a further "
                     f"{int(ok['unsynced_steps'].max())} steps timed as one block with a single sync "
                     "at the end. **Sync overhead**: throughput the per-step sync costs, "
                     "1 − images/s ÷ unsynced images/s (negative: within noise of zero).")
    if not table.several and is_scaling_run(ok):
        notes += _scaling_notes(ok)
    no_steady = ok[ok["step_median_s"].isna()]
    if not no_steady.empty:
        notes.append(f"{len(no_steady)} cell(s) had **no steady steps** (every step was warm-up): "
                     "lower --warmup or raise --steps.")
    return notes


def _speedup_notes(table: Table) -> list[str]:
    """Which row each fallback speed-up divides by, and why a row has none: never a bare "–"."""
    column, out = table.reference.column, []
    by_basis: dict[str, list[str]] = {}
    by_missing: dict[str, list[tuple[str, int | None]]] = {}
    for group, speedup in zip(table.groups, table.speedups):
        if not (group["status"] == "ok").any():
            continue        # a failed row says why in its Time
        first = group.iloc[0]
        what = (f"{first['machine'] + ' ' if table.several else ''}{first['device_id']} "
                f"{first.get('backend', '')} {first['precision']} batch {int(first['batch_size'])}")
        if speedup.basis:
            by_basis.setdefault(speedup.basis, []).append(what)
        elif speedup.missing:
            by_missing.setdefault(speedup.missing, []).append((what, speedup.missing_batch))
    for basis, rows in by_basis.items():
        out.append(f"**{column}** of {_listing(rows)} (no reference row of the same settings): "
                   f"{basis} ÷ this row's.")
    for reason, missing_rows in by_missing.items():
        batches = [str(b) for b in dict.fromkeys(b for _, b in missing_rows) if b is not None]
        at = f" at batch {_either(batches)}" if batches else ""
        out.append(f"**{column}** is – for {_listing([what for what, _ in missing_rows])}: {reason}{at}.")
    return out


def _listing(rows: list[str]) -> str:
    """One row by name; a few by name; many by count."""
    if len(rows) == 1:
        return rows[0]
    return f"{len(rows)} rows ({'; '.join(rows)})" if len(rows) <= 3 else f"{len(rows)} rows"


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _has_theoretical(ok: pd.DataFrame) -> bool:
    """Was a theoretical peak looked up (found or not) for any row? Runs from before it was are silent."""
    return "theoretical_basis" in ok and not _texts(ok["theoretical_basis"]).empty


def _theoretical_basis(ok: pd.DataFrame) -> str:
    """Each distinct basis of the theoretical peaks, once per device and precision (twice for
    fp32 on a GPU where one backend ran TF32 and another IEEE fp32)."""
    if "theoretical_basis" not in ok or _texts(ok["theoretical_basis"]).empty:
        return "not recorded for this run"
    shown = []
    for (device, precision), group in ok.groupby(["device_id", "precision"], sort=False):
        for basis, same in group.loc[_texts(group["theoretical_basis"]).index].groupby("theoretical_basis", sort=False):
            tflops = same["theoretical_tflops"].dropna()
            figure = f"{tflops.iloc[0]:.3f} TFLOP/s, " if len(tflops) else ""
            shown.append(f"{device} {precision}: {figure}{basis}")
    return "; ".join(shown)


def math_notes(ok: pd.DataFrame) -> list[str]:
    """Whether each GPU's fp32 rows ran in TF32, per backend, and by which setting: "fp32"
    alone would hide that their convolutions ran several times faster than IEEE fp32 can."""
    fp32 = ok[(ok["device_type"] == "GPU") & (ok["precision"] == "fp32")]
    if fp32.empty:
        return []
    parts, tf32 = [], False
    for (device, name, backend), group in fp32.groupby(["device_id", "device_name", "backend"],
                                                       sort=False, dropna=False):
        device = f"{device} ({name})" if isinstance(name, str) and name else device
        maths = _texts(group["math"]) if "math" in group else pd.Series(dtype=str)
        if maths.empty:
            parts.append(f"{device} {backend}: not recorded (a run from before cifar-bench recorded "
                         "it; TF32 is every backend's default for convolutions on compute capability ≥ 8.0)")
            continue
        setting = next(iter(_texts(group["math_note"])), "") if "math_note" in group else ""
        tf32 |= maths.iloc[0] == "tf32"
        math = "TF32" if maths.iloc[0] == "tf32" else "IEEE fp32"
        parts.append(f"{device} {backend}: {math}" + (f" ({setting})" if setting else ""))
    why = (" TF32 keeps fp32's range with a 10-bit mantissa, on tensor cores; a row that ran it "
           "shows as fp32 (TF32 convs) and is measured against a TF32 matmul and the "
           "datasheet's TF32 figure." if tf32 else "")
    return ["**fp32 on GPU**: " + "; ".join(parts) + "." + why]


def _impossible_efficiency_notes(ok: pd.DataFrame) -> list[str]:
    """Efficiency above 100 % is never a fast run: the yardstick is wrong. Say so loudly, per cell."""
    notes = []
    for column, yardstick in (("efficiency_pct", "measured peak"),
                              ("efficiency_theoretical_pct", "theoretical peak")):
        if column not in ok:
            continue
        for _, row in ok[ok[column] > 100].iterrows():
            notes.append(f"**WARNING — harness bug**: {row['cell_id']} reached {row[column]:.0f} % of its "
                         f"{yardstick}; no run can exceed its peak, so that peak is wrong (measured "
                         "with other CPUs or settings than the cell's?). Do not trust this row's efficiency.")
    return notes


def _scaling_notes(ok: pd.DataFrame) -> list[str]:
    """What the data-parallel columns are, which strategy ran, and which rows cannot show scaling."""
    used = [f"{name} = {text}" for name, (_, text) in STRATEGY_DOCS.items()
            if name != "none" and name in set(ok["strategy"].dropna())]
    notes = ["**Batch size (per replica)**: images each replica trains on per step; **Global batch** "
             "= that × replicas × workers, what one optimizer update averages over. **Images/s per "
             "replica** = batch ÷ median step; **Global images/s** = global batch ÷ median step. "
             "**Speed-up vs 1 replica**: global images/s ÷ that of the 1-replica, 1-worker cell "
             "of the same settings in this run; **Scaling efficiency** = speed-up ÷ replicas "
             "(× workers) × 100 (100 % is ideal). Every step is timed until the loss, reduced over "
             "every replica, is on the host. Efficiency (vs peak) is left out for rows of several "
             "replicas: the peak is one device's."]
    if used:
        notes.append("**Strategy** (data-parallel): " + "; ".join(used) + ".")
    for note, group in ok.loc[_texts(ok["scaling_note"]).index].groupby("scaling_note", sort=False):
        notes.append(f"**Not a scaling result** ({len(group)} row(s)): {note}.")
    return notes


def _precision_notes(ok: pd.DataFrame, env: dict | None) -> list[str]:
    """Say once why a float16 CPU row is slow, when the CPU has no float16 arithmetic."""
    cpu = (env or {}).get("cpu") or {}
    fp16 = ok[(ok["device_type"] == "CPU") & (ok["precision"] == "mixed_float16")]
    if fp16.empty or matrix.FLOAT16_CPU_FEATURES & set(cpu.get("flags") or []):
        return []
    return ["**mixed_float16 on this CPU is emulated**: it has no float16 arithmetic (no AVX512_FP16 "
            "or AMX-FP16), so those rows train several times slower than fp32; --precision auto "
            "avoids it."]


def _cpu_notes(env: dict | None, machine: str | None = None) -> list[str]:
    """A run with fewer usable CPUs than the machine has says so: its CPU figures are not the machine's."""
    cpu = (env or {}).get("cpu") or {}
    usable, logical = cpu.get("usable_cpus"), cpu.get("logical_cpus")
    if isinstance(usable, (int, float)) and isinstance(logical, (int, float)) and usable < logical:
        why = cpu.get("usable_cpus_reason") or "affinity or cgroup quota"
        where = f" on {machine}" if machine else ""
        return [f"**Restricted CPUs**{where}: this run could use {usable:g} of the machine's {logical} "
                f"logical CPUs ({why}); its CPU figures describe that share, not the whole CPU."]
    return []


def _contention_notes(ok: pd.DataFrame) -> list[str]:
    if "other_cpu_pct" not in ok or ok["other_cpu_pct"].isna().all():
        return []
    busy = ok[(ok["other_cpu_pct"] >= BUSY_PCT) | (ok["steal_pct"].fillna(0) >= BUSY_PCT)]
    if busy.empty:
        return [f"**Contention**: other processes used at most {ok['other_cpu_pct'].max():.0f} % of "
                "the usable CPUs while cells ran (negligible)."]
    worst = busy.loc[busy["other_cpu_pct"].idxmax()]
    return [f"**Machine busy**: in {len(busy)} of {len(ok)} cell(s) other processes used "
            f"≥ {BUSY_PCT:g} % of the usable CPUs (worst: {worst['other_cpu_pct']:.0f} % "
            f"in {worst['cell_id']}"
            + (f"; {worst['contention_note']}" if isinstance(worst.get("contention_note"), str)
               and worst["contention_note"] else "")
            + "); those cells' speed figures are likely low."]


def _skipped_notes(table: Table) -> list[str]:
    """Skipped cells once, by machine and reason, instead of rows full of dashes; a table with
    no GPU row says why."""
    frame, notes = table.frame, []
    skipped = frame[frame["status"] == "skipped"]
    for (machine, reason), group in skipped.groupby(["machine", "reason"], sort=False):
        devices = ", ".join(dict.fromkeys(group["device_id"]))
        where = f"{machine}: {devices}" if table.several else devices
        notes.append(f"**Not measured** ({len(group)} cell(s) on {where}): {reason}.")
    ok = frame[frame["status"] == "ok"]
    if "GPU" in set(ok["device_type"]):
        return notes
    if skipped[skipped["device_type"] == "GPU"].empty:
        envs = [run.env for run in table.runs]
        reason = ("this machine has no GPU" if all("gpus" in env and not env["gpus"] for env in envs)
                  else "no GPU was requested")
        notes.append(f"**No GPU was measured** in this {'table' if table.several else 'run'} ({reason}).")
    else:
        notes.append(f"**No GPU was measured** in this {'table' if table.several else 'run'} (see above).")
    return notes


def _date(run: Run) -> str:
    started = [v for v in run.runs.get("started_at", []) if isinstance(v, str) and v]
    return min(started)[:10] if started else "?"


# --------------------------------------------------------------------------- header and outputs

def framework_versions(runs: pd.DataFrame, env: dict) -> list[tuple[str, str]]:
    ok = runs[runs["status"] == "ok"]
    out = []
    for backend in dict.fromkeys(ok["backend"]) if "backend" in ok else ["tensorflow"]:
        rows = ok[ok["backend"] == backend] if "backend" in ok else ok
        recorded = rows.get("framework_version", pd.Series(dtype=str))
        version = next((v for v in recorded if isinstance(v, str) and v), None)
        if version is None and backend == "tensorflow":
            version = (env.get("tensorflow") or {}).get("version")
        entry = backend_entry(backend, strict=False)
        out.append((entry.display_name if entry else backend, version or "?"))
    return out


def data_label(runs: pd.DataFrame) -> str:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return "–"
    data = set(ok["data"])
    if data == {"synthetic"}:
        return "**synthetic** (random images: speed only)"
    if "synthetic" in data:
        return "**mixed**: CIFAR-10 and synthetic (see the Data column)"
    return f"CIFAR-10, {ok['split'].iloc[0]} split"


def header(table: Table) -> str:
    runs = table.runs
    if not table.several:
        run = runs[0]
        rows, env = run.runs, run.env
        versions = ", ".join(f"{name} {version}" for name, version in framework_versions(rows, env))
        cpu = (env.get("cpu") or {}).get("model") or "?"
        started = rows["started_at"].dropna() if "started_at" in rows else pd.Series(dtype=str)
        when = str(started.iloc[0])[:10] if len(started) else "?"
        label = env.get("machine_label")
        machine = f"{label}: " if label else ""
        run_id = rows["run_id"].iloc[0] if len(rows) else "?"
        return (f"Run `{run_id}` ({when}) on {machine}{env.get('system', '?')}, {cpu}, "
                f"{versions or 'TensorFlow ?'}, data: {data_label(rows)}.")
    names = machine_names(runs)
    machines = len(dict.fromkeys(names))
    return (f"{len(runs)} run{'s' if len(runs) != 1 else ''} on {machines} machine{'s' if machines != 1 else ''}: "
            + ", ".join(f"`{run.run_id}` ({name})" for run, name in zip(runs, names)) + ".")


#: a note longer than this is wrapped onto indented continuation lines (the same list item)
NOTE_WIDTH = 100


def markdown_frame(table: Table) -> tuple[pd.DataFrame, list[str]]:
    """The table as a Markdown reader gets it: fewer columns than :func:`frame_of` (the device
    type joins the device's name; a one-machine table's System is in the header line), a
    failed cell's Time a short word with a numbered footnote giving the reason, and every
    cell escaped (:func:`bench.text.markdown_cell`: a label cannot split the table or plant a
    marker). Returns the frame and the footnotes, in row order."""
    frame = _full_frame(table)
    if frame.empty:
        return frame, []
    if "Device Type" in frame:
        frame["Device"] = [f"{name} ({kind})" if kind and kind not in str(name) else str(name)
                           for name, kind in zip(frame["Device"], frame.pop("Device Type"))]
    if "System" in frame and frame["System"].nunique() == 1:
        frame = frame.drop(columns="System")
    if speedup_says_nothing(table, frame):          # every row is its own reference: 1.00× throughout
        frame = frame.drop(columns=table.reference.column)
    footnotes: list[str] = []
    if "_failure" in frame:
        for i, failure in frame.pop("_failure").items():
            if isinstance(failure, tuple):
                status, reason = failure
                note = f"{status}: {reason}"
                if note not in footnotes:                # one footnote per reason, however many rows
                    footnotes.append(note)
                frame.at[i, "Time"] = f"{status} [{footnotes.index(note) + 1}]"
        footnotes = [f"[{n}] {note}" for n, note in enumerate(footnotes, 1)]
    return frame.map(text.markdown_cell), [text.markdown_cell(f) for f in footnotes]


def speedup_says_nothing(table: Table, frame: pd.DataFrame) -> bool:
    """A table of CPU rows divided by their own machine's CPU: its Speed-up column is 1.00× in
    every row and answers nothing, so the Markdown table leaves it (and its note) out."""
    column = table.reference.column
    return (table.reference.machine is None and column in frame and bool(len(frame))
            and set(table.frame.loc[table.frame["status"] != "skipped", "device_type"]) <= {"CPU"}
            and set(frame[column]) <= {"1.00×", "–"})


#: a word Markdown could read as the start of a block (a list item, a quote, a heading, a
#: table row) if it began a continuation line; the wrap keeps it on the line before
_BLOCK_START = re.compile(r"^([-+*>#|=]+|\d+[.)])$")


def wrap_note(note: str, width: int = NOTE_WIDTH, item: bool = True) -> str:
    """One list item (or, ``item=False``, a paragraph) on lines of about ``width`` characters,
    continuation lines indented, so it renders exactly as the one long line did: words are
    never split, spaces are kept, no line starts with a word Markdown could read as a new
    block, and no line breaks inside a ``**bold**`` or ```code``` span."""
    words: list[str] = []
    for word in note.split(" "):                 # a **bold** or `code` span stays on one line
        if words and (words[-1].count("`") % 2 or words[-1].count("**") % 2):
            words[-1] += " " + word
        else:
            words.append(word)
    indent = "  " if item else ""
    lines, line = [], ("- " if item else "") + words[0]
    for word in words[1:]:
        if len(line) + 1 + len(word) > width and word and not _BLOCK_START.match(word) and line.strip(" -"):
            lines.append(line)
            line = indent + word
        else:
            line += " " + word
    return "\n".join(lines + [line])


def markdown(runs: Sequence[Run], reference: Reference = Reference(),
             commands: Sequence[str | None] = (), rescored_at: float | None = None) -> str:
    """The table, its notes and one "Produced by" line per run: deterministic, so a README
    regenerated from the same runs does not change. ``rescored_at``: the runs' time to target
    was recomputed from their curves at that accuracy (``--target-accuracy``), said under them."""
    table = build(runs, reference)
    frame, footnotes = markdown_frame(table)
    shown = [note for note in notes(table)
             if reference.column in frame or not note.startswith(f"**{reference.column}**")]
    lines = [wrap_note(header(table), item=False), ""]
    lines += [frame.to_markdown(index=False, disable_numparse=True) if len(frame)
              else "_No cell was measured._", ""]
    lines += [wrap_note(note) for note in footnotes + shown]
    names = machine_names(runs)
    produced = [(command, name) for command, name in zip(commands, names) if command]
    if produced:
        lines.append("")
        lines += [f"Produced by `{command}`" + (f" ({name})." if table.several else ".")
                  for command, name in produced]
    if rescored_at is not None:                    # so the block can be made again as it is
        lines += ([] if produced else [""]) + [
            f"Time to target scored from the curves at `--target-accuracy {rescored_at:g}`."]
    if produced and reference.option is not None:
        lines.append(f"Speed-up divides by `--reference {shlex.quote(reference.option)}`.")
    return "\n".join(lines) + "\n"


def as_json(runs: Sequence[Run], reference: Reference = Reference()) -> dict:
    """The same table for scripts: the header, what Speed-up divides by, the rows as shown, the notes."""
    table = build(runs, reference)
    return {"header": header(table), "reference": reference.column,
            "rows": frame_of(table).to_dict(orient="records"), "notes": notes(table)}


def in_memory(rows: pd.DataFrame, env: dict, directory: str | Path = ".") -> Run:
    """A run that is still being written (its rows in memory), as the builder takes it."""
    return Run(Path(directory), rows, pd.DataFrame(), env)
