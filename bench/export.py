"""A run's results for machines: Bencher, github-action-benchmark, and JSON for scripts.

Dashboards key their history by name, so a cell's export name depends on that cell alone
(:func:`cell_name`): the machine label when the run has one, the device, the batch size, and
every setting of the cell that is not its default. A failed cell, or a matrix grown by a
value, never renames another cell's series. Throughput is the whole cell's (every replica,
every worker: what a dashboard means by images/s), not one replica's.

- Bencher Metric Format (https://bencher.dev/docs/reference/bencher-metric-format):
  ``{benchmark: {measure: {"value", "lower_value", "upper_value"}}}``. The measures are
  Bencher's built-in ``latency`` (nanoseconds: the median step, bounded by its bootstrap
  interval) and ``throughput`` (images/s, bounded by the same interval), ``accuracy``
  (percent of held-out images) where it was measured, and ``time-to-target`` (seconds to
  ``--target-accuracy``, MLPerf's clock, bounded by the fastest and slowest repeat) where
  every repeat reached it. BMF has no place for a warning:
  :func:`warnings` says them, for the command to print.
- github-action-benchmark's ``customSmallerIsBetter``: an array of ``{"name", "unit",
  "value", "range", "extra"}``. Everything in such a file is smaller-is-better, so it holds
  the median step time and, where every repeat reached the target, the time to target;
  images/s, accuracy and every warning (a target not reached) go in ``extra``.
- With ``--energy`` and ``--price``, each cell also exports its energy per 1,000 images (J)
  and its dollars per notebook run, both smaller-is-better: Bencher measures ``energy`` and
  ``cost``, and github-action-benchmark entries of their own beside the median step.
- ``json`` (:func:`plain_json`) and ``summary --json`` (:func:`summary_json`): numbers as
  numbers, units in the keys, and every flag (synthetic data, a busy machine, why a cell
  failed or was skipped, a harness bug) beside the figures it qualifies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from bench import matrix, tables, tta
from bench.regression import side_contention
from bench.store import Run

FORMATS = ("bencher", "github-action-benchmark", "json")
#: Bencher measure of the time to target (seconds, smaller is better); created on first upload.
TIME_TO_TARGET_MEASURE = "time-to-target"
EXPORT_SCHEMA = "cifar-bench-export/2"
SUMMARY_SCHEMA = "cifar-bench-summary/2"
#: Efficiency above 100 % of a peak is never a fast run: the yardstick is wrong (summary.md
#: says so too). (column, what it divides by)
_EFFICIENCIES = (("efficiency_pct", "measured peak"), ("efficiency_theoretical_pct", "theoretical peak"))


# --------------------------------------------------------------------------- names and flags

def cell_name(row: dict, machine_label: str | None = None) -> str:
    """A cell's export name, from its own row only: label, device, batch size, and each
    dimension whose value is not its default. A dimension that resolves ``auto`` per device
    (precision, data placement) counts as default when the cell asked for ``auto``."""
    named = []
    for d in matrix.DIMENSIONS:
        if d.name == "batch_size" or d.name not in row:
            continue
        if d.resolve is not None:
            asked = row.get(f"{d.name}_requested")
            default = asked in (None, "") or _is_nan(asked) or matrix.plain(asked) in d.default
        else:
            default = matrix.plain(row[d.name]) in d.default
        if not default:
            named.append(d.name)
    name = matrix.describe(row, named)
    return f"{machine_label}: {name}" if machine_label else name


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def machine_label(run: Run) -> str | None:
    labels = run.runs["machine_label"] if "machine_label" in run.runs else pd.Series(dtype=str)
    return run.env.get("machine_label") or next((v for v in labels if isinstance(v, str) and v), None)


@dataclass(frozen=True)
class Flags:
    """What a figure must not be read without."""

    synthetic: bool = False          # trained on random images: speed only, no accuracy
    busy: bool = False               # other processes disturbed it (regression's rule)
    busy_note: str = ""              # how busy ("other processes used 35 % of the 2 usable CPUs")
    harness_bugs: tuple[str, ...] = ()  # figures known to be wrong, and why

    def texts(self) -> list[str]:
        out = ["SYNTHETIC data: speed only, accuracy not measured"] if self.synthetic else []
        out += [f"machine busy: {self.busy_note}"] if self.busy else []
        return out + [f"HARNESS BUG: {bug}" for bug in self.harness_bugs]


def flags_of(rows: pd.DataFrame) -> Flags:
    """The flags of one cell's ok rows (its repeats): any repeat's flag is the cell's."""
    contention = side_contention(rows)
    bugs = []
    for column, yardstick in _EFFICIENCIES:
        if column in rows and (rows[column] > 100).any():
            bugs.append(f"{column} {rows[column].max():.0f} % of its {yardstick}: that peak is wrong, "
                        "not the run fast")
    return Flags(synthetic=bool((rows["data"] == "synthetic").any()),
                 busy=bool(contention and contention.disturbed),
                 busy_note=contention.describe() if contention and contention.disturbed else "",
                 harness_bugs=tuple(bugs))


# --------------------------------------------------------------------------- one measured cell

@dataclass(frozen=True)
class CellFigures:
    """What one measured cell exports (repeats merged). Seconds; accuracy as a fraction."""

    name: str
    step_median_s: float
    step_ci_low_s: float
    step_ci_high_s: float
    batch_size: int                   # per replica
    global_batch_size: int            # every replica of every worker: images per step
    images_per_s: float               # the whole cell's: global_batch_size / step_median_s
    heldout_accuracy_fraction: float | None
    heldout_images: int
    repeats: int
    steady_steps: int
    flags: Flags = field(default_factory=Flags)
    time_to_target: TargetFigures | None = None    # None: no --target-accuracy in this cell
    #: --energy (median of the repeats; None: not measured, ``energy_covers`` says why) and --price
    energy_j_per_1k_images: float | None = None
    energy_covers: str | None = None
    cost_seed_run_usd: float | None = None


@dataclass(frozen=True)
class TargetFigures:
    """Time to a target accuracy over a cell's repeats (runs.csv's ``time_to_target_s``, MLPerf's
    clock). ``seconds`` is None unless every repeat reached the target (MLPerf: a run that
    misses it fails the result); it is the olympic mean (fastest and slowest dropped) from
    three repeats, else the median, and ``scoring`` says which."""

    target_accuracy: float
    runs: int
    reached: int
    seconds: float | None
    low_s: float | None
    high_s: float | None
    scoring: str
    note: str                          # "not reached in 26 epochs by 2 of 5 runs", or ""


def target_figures(group: pd.DataFrame) -> TargetFigures | None:
    """The time-to-target figures of one cell's ok rows, or None when it had no target."""
    targets = group["target_accuracy"].dropna() if "target_accuracy" in group else pd.Series(dtype=float)
    if targets.empty:
        return None
    times = group["time_to_target_s"].dropna().astype(float).tolist()
    n, k = len(group), len(times)
    low, high = (min(times), max(times)) if times else (None, None)
    missed = [str(v) for v in group["target_note"] if isinstance(v, str) and v]
    note = "" if k == n else f"{missed[0] if missed else 'not reached'}, by {n - k} of {n} run(s)"
    if k < n:
        return TargetFigures(float(targets.iloc[0]), n, k, None, low, high, "no score: not every run reached it", note)
    olympic = tta.olympic_mean(times)
    scoring = (f"olympic mean of {n} (fastest and slowest dropped)" if olympic is not None
               else "a single run" if n == 1 else f"median of {n} runs (too few to drop the extremes)")
    value = olympic if olympic is not None else float(pd.Series(times).median())
    return TargetFigures(float(targets.iloc[0]), n, k, value, low, high, scoring, note)


def _ok_rows(run: Run) -> pd.DataFrame:
    runs = tables.numeric(run.runs)
    return runs[(runs["status"] == "ok") & runs["step_median_s"].notna()]


def cell_figures(run: Run) -> list[CellFigures]:
    """Every measured cell of ``run``, repeats merged.

    With one repeat the interval is the cell's bootstrap interval (runs.csv); with several,
    the value is the median of the repeats' medians and the interval spans from the lowest
    low to the highest high, so it also covers run-to-run variation.
    """
    ok = _ok_rows(run)
    label = machine_label(run)
    out = []
    for _, group in ok.groupby(list(matrix.MATCH_KEYS), sort=False, dropna=False):
        first = group.iloc[0].to_dict()
        median = float(group["step_median_s"].median())
        low = _finite(group["step_median_ci_low_s"].min(), median)
        high = _finite(group["step_median_ci_high_s"].max(), median)
        measured = group[group["heldout_images"].fillna(0) > 0]
        accuracy = measured["heldout_accuracy"].dropna()
        batch = int(first["batch_size"])
        global_batch = batch * int(first["replicas"]) * int(first["workers"])
        out.append(CellFigures(
            name=cell_name(first, label), step_median_s=median, step_ci_low_s=low,
            step_ci_high_s=high, batch_size=batch, global_batch_size=global_batch,
            images_per_s=global_batch / median,
            heldout_accuracy_fraction=float(accuracy.mean()) if len(accuracy) else None,
            heldout_images=int(measured["heldout_images"].iloc[0]) if len(measured) else 0,
            repeats=len(group), steady_steps=int(group["steady_steps"].fillna(0).sum()),
            flags=flags_of(group), time_to_target=target_figures(group),
            energy_j_per_1k_images=_median(group, "energy_j_per_1k_images"),
            energy_covers=_first_text(group, "energy_covers"),
            cost_seed_run_usd=_median(group, "cost_seed_run_usd")))
    return out


def _median(rows: pd.DataFrame, column: str) -> float | None:
    """The median of a column's finite values (None: the column is absent or empty)."""
    values = pd.to_numeric(rows[column], errors="coerce").dropna() if column in rows else pd.Series(dtype=float)
    return float(values.median()) if len(values) else None


def _first_text(rows: pd.DataFrame, column: str) -> str | None:
    return next((v for v in rows[column] if isinstance(v, str) and v), None) if column in rows else None


def _finite(value, fallback: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else fallback


@dataclass(frozen=True)
class NotMeasured:
    """A cell without figures, and why (a failed or skipped row)."""

    name: str
    cell_id: str
    status: str
    reason: str


def not_measured(run: Run) -> list[NotMeasured]:
    label = machine_label(run)
    rows = run.runs[run.runs["status"] != "ok"]
    # a device that is not there has no name: its id says which one was asked for
    return [NotMeasured(cell_name({**row, "device_name": row["device_name"] or row["device_id"]}, label),
                        str(row["cell_id"]), str(row["status"]), str(row["reason"] or "no reason recorded"))
            for row in rows.to_dict(orient="records")]


def warnings(run: Run) -> list[str]:
    """Every flag of the run, one line each, for the export command to print on stderr (BMF
    cannot carry them)."""
    out = [f"{cell.name}: {text}" for cell in cell_figures(run) for text in cell.flags.texts()]
    return out + [f"{cell.name}: {cell.status}: {cell.reason}" for cell in not_measured(run)]


# --------------------------------------------------------------------------- the formats

def bencher(run: Run) -> dict:
    """Bencher Metric Format: benchmark name -> measure -> value with its bounds."""
    out = {}
    for cell in cell_figures(run):
        measures: dict[str, dict[str, Any]] = {
            "latency": {"value": cell.step_median_s * 1e9, "lower_value": cell.step_ci_low_s * 1e9,
                        "upper_value": cell.step_ci_high_s * 1e9},
            "throughput": {"value": cell.images_per_s,
                           "lower_value": cell.global_batch_size / cell.step_ci_high_s,
                           "upper_value": cell.global_batch_size / cell.step_ci_low_s},
        }
        if cell.heldout_accuracy_fraction is not None:
            measures["accuracy"] = {"value": cell.heldout_accuracy_fraction * 100}
        target = cell.time_to_target
        if target is not None and target.seconds is not None:
            measures[TIME_TO_TARGET_MEASURE] = {"value": target.seconds, "lower_value": target.low_s,
                                                "upper_value": target.high_s}
        if cell.energy_j_per_1k_images is not None:
            measures["energy"] = {"value": cell.energy_j_per_1k_images}
        if cell.cost_seed_run_usd is not None:
            measures["cost"] = {"value": cell.cost_seed_run_usd}
        out[cell.name] = measures
    return out


def github_action_benchmark(run: Run) -> list[dict]:
    """github-action-benchmark's ``customSmallerIsBetter`` entries: median step time in ms."""
    out = []
    for cell in cell_figures(run):
        extra = [*cell.flags.texts(),
                 f"images/s (every replica): {cell.images_per_s:,.1f}",
                 f"steady steps: {cell.steady_steps}, repeats: {cell.repeats}",
                 f"run: {run.run_id}"]
        if cell.heldout_accuracy_fraction is not None:
            extra.insert(-2, f"held-out accuracy: {cell.heldout_accuracy_fraction * 100:.2f} % "
                             f"({cell.heldout_images:,} images)")
        target = cell.time_to_target
        if target is not None and target.note:
            extra.insert(0, f"time to {target.target_accuracy * 100:g}% held-out accuracy: {target.note}")
        out.append({"name": f"{cell.name} - median step", "unit": "ms",
                    "value": round(cell.step_median_s * 1000, 4),
                    "range": f"95% CI {cell.step_ci_low_s * 1000:.3f}-{cell.step_ci_high_s * 1000:.3f} ms",
                    "extra": "\n".join(extra)})
        if target is not None and target.seconds is not None:
            out.append({"name": f"{cell.name} - time to {target.target_accuracy * 100:g}% accuracy", "unit": "s",
                        "value": round(target.seconds, 3),
                        "range": f"runs {target.low_s:.3f}-{target.high_s:.3f} s",
                        "extra": "\n".join([*cell.flags.texts(), f"{target.scoring}; MLPerf's clock: data "
                                            "loading + training + held-out evaluations to the one that "
                                            "reached the target", f"run: {run.run_id}"])})
        out += _smaller_is_better_extras(cell, run)
    return out


def _smaller_is_better_extras(cell: CellFigures, run: Run) -> list[dict]:
    """Energy per 1,000 images and dollars per notebook run, where measured: both smaller-is-better."""
    note = f"{cell.energy_covers}; run: {run.run_id}"
    out = []
    if cell.energy_j_per_1k_images is not None:
        out.append({"name": f"{cell.name} - energy per 1k images", "unit": "J",
                    "value": round(cell.energy_j_per_1k_images, 4),
                    "extra": f"energy over the steady window ({note}), median of {cell.repeats} repeat(s)"})
    if cell.cost_seed_run_usd is not None:
        out.append({"name": f"{cell.name} - cost per notebook run", "unit": "USD",
                    "value": round(cell.cost_seed_run_usd, 6),
                    "extra": f"projected hours x --price (26 epochs x 40,000 images); run: {run.run_id}"})
    return out


def plain_json(run: Run) -> dict:
    """This project's form for scripts: every measured cell with its flags, and every cell
    that was not measured with its reason."""
    cells = cell_figures(run)
    return {"schema": EXPORT_SCHEMA, "run_id": run.run_id, "machine_label": machine_label(run),
            "system": run.env.get("system"), "git_commit": (run.env.get("git") or {}).get("commit"),
            "count": len(cells), "cells": [asdict(cell) for cell in cells],
            "not_measured": [asdict(cell) for cell in not_measured(run)]}


def export(run: Run, format_: str):
    """The run in ``format_`` (one of :data:`FORMATS`), as JSON-ready data."""
    return {"bencher": bencher, "github-action-benchmark": github_action_benchmark,
            "json": plain_json}[format_](run)


def count(format_: str, data) -> int:
    """How many benchmarks (measured cells) ``export(run, format_)`` returned."""
    return data["count"] if format_ == "json" else len(data)


# --------------------------------------------------------------------------- summary --json

#: runs.csv column -> its key in ``summary --json`` (the unit in the name).
SUMMARY_NUMBERS = {
    "step_median_s": "median_step_s", "step_median_ci_low_s": "median_step_ci_low_s",
    "step_median_ci_high_s": "median_step_ci_high_s", "step_p5_s": "step_p5_s",
    "step_p95_s": "step_p95_s", "first_step_s": "first_step_s", "train_s": "train_s",
    "data_load_s": "data_load_s", "images_per_s": "images_per_s_per_replica",
    "global_images_per_s": "images_per_s", "global_batch_size": "global_batch_size",
    "steady_steps": "steady_steps", "heldout_accuracy": "heldout_accuracy_fraction",
    "heldout_images": "heldout_images", "peak_rss_mb": "peak_rss_mib", "peak_gpu_mem_mb": "peak_gpu_mem_mib",
    "efficiency_pct": "efficiency_pct_of_measured_peak",
    "efficiency_theoretical_pct": "efficiency_pct_of_theoretical_peak",
    "speedup_vs_1_replica": "speedup_vs_1_replica", "other_cpu_pct": "other_processes_cpu_pct",
    "steal_pct": "steal_pct",
    "target_accuracy": "target_accuracy_fraction", "time_to_target_s": "time_to_target_s",
    "train_time_to_target_s": "train_time_to_target_s", "epochs_to_target": "epochs_to_target",
    "images_to_target": "images_to_target",
    "energy_j_per_1k_images": "energy_j_per_1k_images",
    "energy_avg_w": "energy_avg_w", "energy_seed_run_kwh": "energy_seed_run_kwh",
    "cost_seed_run_usd": "cost_seed_run_usd", "cost_usd_per_million_images": "cost_usd_per_million_images",
}


def summary_json(runs: pd.DataFrame, env: dict) -> dict:
    """``summary --json``: one entry per row of runs.csv (every repeat, every status), numbers as
    numbers (None: not measured) with their units in the keys, and the cell's flags; the
    table's notes as text."""
    frame = tables.numeric(runs)
    label = env.get("machine_label") or next(
        (v for v in frame.get("machine_label", []) if isinstance(v, str) and v), None)
    rows = []
    for index, row in frame.iterrows():
        values = row.to_dict()
        entry = {"name": cell_name(values, label), "cell_id": values["cell_id"],
                 "repeat": _number(values.get("repeat")), "status": values["status"],
                 "reason": values.get("reason") or None,
                 **{k: _plain(values.get(k)) for k in ("device_id", "device_name", "device_type")},
                 **{d.name: _plain(values.get(d.name)) for d in matrix.DIMENSIONS},
                 "data": values.get("data") or None,
                 **{key: _number(values.get(column)) for column, key in SUMMARY_NUMBERS.items()},
                 **{key: _first_text(frame.loc[[index]], key) for key in ("energy_covers", "cost_note")}}
        if values["status"] == "ok":
            flags = flags_of(frame.loc[[index]])
            entry.update(synthetic=flags.synthetic, busy=flags.busy, busy_note=flags.busy_note or None,
                         harness_bugs=list(flags.harness_bugs), warnings=flags.texts())
        else:
            entry.update(synthetic=None, busy=None, busy_note=None, harness_bugs=[],
                         warnings=[f"{values['status']}: {values.get('reason') or 'no reason recorded'}"])
        rows.append(entry)
    table = tables.build([tables.in_memory(runs, env)])
    return {"schema": SUMMARY_SCHEMA, "header": tables.header(table), "machine_label": label,
            "cells": rows, "notes": tables.notes(table)}


def summary_json_of_runs(runs: list[Run]) -> dict:
    """``summary --json`` of several runs (``--run A --run B``): each run's :func:`summary_json`,
    with its run directory, in the order given."""
    return {"schema": SUMMARY_SCHEMA,
            "runs": [{"run": str(run.directory), **summary_json(run.runs, run.env)} for run in runs]}


def _number(value) -> float | int | None:
    if value is None or isinstance(value, str) or _is_nan(value):
        return None
    value = matrix.plain(float(value))
    return value if isinstance(value, int) or math.isfinite(value) else None


def _plain(value):
    if value is None or _is_nan(value):
        return None
    return matrix.plain(value) if isinstance(value, float) else value
