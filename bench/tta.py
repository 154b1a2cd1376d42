"""Time to a target accuracy across repeats, scored as MLPerf Training scores it.

MLPerf runs a benchmark several times with different seeds, drops the fastest and the
slowest result and averages the rest ("olympic" scoring), because a single run's time to
target varies by whole evaluation intervals from seed to seed. With fewer than three runs
there is nothing to drop: the figures then say they are single runs. A run that never
reached the target has no time: it is counted as not reached, never given a number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from cifar_model.curves import first_reaching
from cifar_model.results import CurvePoint

#: curves.csv: one row per held-out evaluation during training.
CURVE_COLUMNS = ("cell_id", "repeat", *CurvePoint.column_names())

#: Runs needed before the fastest and slowest are dropped.
OLYMPIC_MIN_RUNS = 3


def olympic_mean(values: list[float]) -> float | None:
    """The mean after dropping one fastest and one slowest value (MLPerf's scoring), or
    None with fewer than :data:`OLYMPIC_MIN_RUNS` values."""
    if len(values) < OLYMPIC_MIN_RUNS:
        return None
    kept = sorted(values)[1:-1]
    return sum(kept) / len(kept)


@dataclass(frozen=True)
class RunToTarget:
    """One repeat of one cell: when (if ever) it reached the target."""

    repeat: int
    reached: CurvePoint | None       # the first evaluation at or above the target
    last: CurvePoint                 # the curve's last evaluation (its final accuracy)
    data_seconds: float              # loading before training: part of the MLPerf clock

    @property
    def mlperf_seconds(self) -> float | None:
        """Wall clock from the first touch of the data to the end of the evaluation that
        reached the target, evaluations included."""
        return None if self.reached is None else self.data_seconds + self.reached.wall_seconds

    @property
    def train_seconds(self) -> float | None:
        """Training time to the target, evaluations and data loading excluded."""
        return None if self.reached is None else self.reached.train_seconds


def run_to_target(repeat: int, points: list[CurvePoint], target: float, data_seconds: float) -> RunToTarget:
    if not points:
        raise ValueError("a run with no held-out evaluation has no time to target")
    return RunToTarget(repeat, first_reaching(points, target), points[-1], data_seconds)


@dataclass(frozen=True)
class TimeToTarget:
    """Time to target of one cell over its repeats."""

    target: float
    runs: tuple[RunToTarget, ...]
    epochs_budget: int

    @property
    def reached(self) -> list[RunToTarget]:
        return [r for r in self.runs if r.reached is not None]

    @property
    def score_seconds(self) -> float | None:
        """Olympic mean of the MLPerf times, over the runs that reached the target; None
        when fewer than three did (then :attr:`single_runs` applies)."""
        if len(self.reached) < len(self.runs):
            return None          # MLPerf: a run that misses the target fails the whole result
        return olympic_mean([t for r in self.reached if (t := r.mlperf_seconds) is not None])

    @property
    def spread(self) -> tuple[float, float] | None:
        times = [t for r in self.reached if (t := r.mlperf_seconds) is not None]   # all: each reached
        return (min(times), max(times)) if times else None

    @property
    def final_accuracy(self) -> tuple[float, float | None, int]:
        """(mean, standard deviation or None for one run, n) of the last evaluation's accuracy."""
        values = [r.last.heldout_accuracy for r in self.runs]
        return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
                len(values))

    def describe(self) -> str:
        """The time-to-target cell of a table, saying how it was scored."""
        return describe_times([r.mlperf_seconds for r in self.runs], self.epochs_budget)

    def describe_accuracy(self) -> str:
        mean, std, n = self.final_accuracy
        if std is None:
            return f"{mean:.2%} (a single run)"
        return f"{mean:.2%} ± {std * 100:.2f} (n = {n})"


def describe_times(times: list[float | None], epochs_budget: int) -> str:
    """A cell's time to target over its repeats (None or NaN: that repeat never reached it),
    scored as MLPerf scores it, saying how; never a number for a target not reached."""
    n = len(times)
    reached = [t for t in times if t is not None and math.isfinite(t)]
    k = len(reached)
    if k == 0:
        return f"not reached in {epochs_budget} epochs ({n} run{'s' if n != 1 else ''})"
    low, high = min(reached), max(reached)
    score = olympic_mean(reached) if k == n else None
    if score is not None:
        # how olympic scoring works is the table's note; every run reached it, or there is no score
        return f"{format_seconds(score)} (olympic mean of {n}; range {format_seconds(low)}–{format_seconds(high)})"
    if k < n:
        return (f"{k}/{n} runs reached it ({format_seconds(low)}–{format_seconds(high)}); "
                f"not reached in {epochs_budget} epochs by {n - k}: no score")
    if n == 1:
        return f"{format_seconds(low)} (a single run)"
    return f"{format_seconds(low)}–{format_seconds(high)} ({n} single runs: too few to score)"


def target_columns(points: Sequence[CurvePoint], target: float, epochs: int, steps_per_epoch: float,
                   data_seconds: float) -> dict:
    """runs.csv's time-to-target columns of one run from its curve: the one rule, for a run
    stopped at its target and for a curve re-scored afterwards (:func:`rescored`)."""
    reached = first_reaching(list(points), target)
    if reached is None:
        return {"target_accuracy": target, "target_note": f"not reached in {epochs} epochs"}
    return {"target_accuracy": target, "time_to_target_s": data_seconds + reached.wall_seconds,
            "train_time_to_target_s": reached.train_seconds, "epochs_to_target": reached.step / steps_per_epoch,
            "images_to_target": reached.images_seen}


class RescoreError(ValueError):
    """A run cannot be scored at the asked target (no curves, or curves cut short)."""


#: runs.csv's time-to-target columns, recomputed by :func:`rescored`
TARGET_COLUMNS = ("target_accuracy", "target_note", "time_to_target_s", "train_time_to_target_s",
                  "epochs_to_target", "images_to_target")


def rescored(rows, curves, target: float, where: str = "the run"):
    """``rows`` (runs.csv) with time to ``target`` recomputed from ``curves`` (curves.csv), as
    the run would have recorded it with ``--target-accuracy target``: MLPerf's clock (data
    loading + wall seconds to the first evaluation at or above the target), training time,
    epochs and images to it, or "not reached in N epochs". Lets a target be chosen after the
    curves were measured (MLPerf sets its targets from measured curves) without training again.

    Refused (:class:`RescoreError`) for a measured cell without curves, and for one that
    stopped at a lower target of its own before reaching this one: its curve ends there, so
    whether it would have reached ``target`` is unknown.
    """
    import pandas as pd

    rows = rows.copy()
    for column in TARGET_COLUMNS:
        if column not in rows:
            rows[column] = None
    rows["target_accuracy"] = rows["target_accuracy"].astype(object)
    rows["target_note"] = rows["target_note"].astype(object)
    for i, row in rows.iterrows():
        if row["status"] != "ok":
            continue
        mine = curves[(curves["cell_id"] == row["cell_id"]) & (curves["repeat"] == row["repeat"])]
        if mine.empty:
            raise RescoreError(f"{where}: cell {row['cell_id']} has no held-out curve (curves.csv); "
                               "time to a target needs a run evaluated during training (--eval-every)")
        points = [_point(r) for r in mine.sort_values("step").to_dict("records")]
        columns = target_columns(points, target, int(row["epochs"]), float(row["steps_per_epoch"]),
                                 float(row["data_load_s"]))
        own = row["target_accuracy"]
        if "target_note" in columns and own is not None and not pd.isna(own) and float(own) < target \
                and not pd.isna(row["time_to_target_s"]):
            raise RescoreError(f"{where}: cell {row['cell_id']} stopped at its own target {float(own):g}; "
                               f"its curve ends there, so it cannot be scored at {target:g}")
        for column in TARGET_COLUMNS:
            rows.at[i, column] = columns.get(column)
    for column in ("time_to_target_s", "train_time_to_target_s", "epochs_to_target", "images_to_target"):
        rows[column] = pd.to_numeric(rows[column])
    return rows


def _point(record: dict) -> CurvePoint:
    """A curves.csv row (already checked on reading) as the point the worker measured."""
    return CurvePoint(
        epoch=int(record["epoch"]), step=int(record["step"]), images_seen=int(record["images_seen"]),
        train_seconds=float(record["train_seconds"]), wall_seconds=float(record["wall_seconds"]),
        eval_seconds=float(record["eval_seconds"]), heldout_accuracy=float(record["heldout_accuracy"]),
        heldout_loss=float(record["heldout_loss"]))


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} m"


ACCURACY_PNG = "accuracy.png"


def accuracy_plot(curves, labels: dict[str, str], target: float | None, path, title: str):
    """Held-out accuracy against wall-clock seconds (evaluations included), one colour per
    cell: each repeat faint, the median over repeats bold, the target as a dashed line.

    ``curves`` is a curves.csv frame (``cell_id`` without the repeat, ``repeat`` and the
    :class:`CurvePoint` columns); ``labels`` names each cell as a legend should. The time
    axis is logarithmic when the cells' runs differ by more than 10× in length, so a GPU's
    seconds and a CPU's minutes both show their shape. Returns the path, or None when no
    cell was evaluated more than once.
    """
    from bench.plots import pyplot

    plt = pyplot()
    shown = curves.groupby(["cell_id", "repeat"]).filter(lambda g: len(g) > 1)
    if shown.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lengths = shown.groupby("cell_id")["wall_seconds"].max()
    for i, (cell, group) in enumerate(shown.groupby("cell_id", sort=False)):
        colour = colours[i % len(colours)]
        for _, run in group.groupby("repeat"):
            ax.plot(run["wall_seconds"], run["heldout_accuracy"] * 100, color=colour, alpha=0.25,
                    linewidth=1)
        by_step = group.groupby("step")
        median = by_step[["wall_seconds", "heldout_accuracy"]].median().sort_values("wall_seconds")
        runs = group["repeat"].nunique()
        ax.plot(median["wall_seconds"], median["heldout_accuracy"] * 100, color=colour, linewidth=2.4,
                marker="o", markersize=3,
                label=f"{labels.get(cell, cell)} (median of {runs} run{'s' if runs != 1 else ''})")
    if target is not None:
        ax.axhline(target * 100, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"target {target:.0%}", xy=(0.01, target * 100), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8)
    if lengths.max() > 10 * lengths.min():
        ax.set_xscale("log")
    ax.set_xlabel("wall-clock seconds since training started (held-out evaluations included)")
    ax.set_ylabel("held-out accuracy (%)\n(whole held-out split)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
