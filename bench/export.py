"""A run's results in the formats CI dashboards read: Bencher, github-action-benchmark, plain JSON.

One entry per measured cell (repeats merged), named from the matrix's labels so a name
stays the same from one run to the next: the machine label when the run has one, then the
device, batch size and every dimension that varies within the run.

- Bencher Metric Format (https://bencher.dev/docs/reference/bencher-metric-format):
  ``{benchmark: {measure: {"value", "lower_value", "upper_value"}}}``. The measures are
  Bencher's built-in ``latency`` (nanoseconds: the median step, bounded by its bootstrap
  interval) and ``throughput`` (operations/s: images/s, bounded by the same interval), and
  ``accuracy`` (percent of held-out images) where it was measured.
- github-action-benchmark's ``customSmallerIsBetter``: an array of ``{"name", "unit",
  "value", "range", "extra"}``. Everything in such a file is smaller-is-better, so it holds
  the median step time only; images/s and accuracy go in ``extra`` (the chart's tooltip).
- ``json``: this project's own flat form, for scripts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bench import matrix, summary
from bench.store import Run

FORMATS = ("bencher", "github-action-benchmark", "json")
EXPORT_SCHEMA = "cifar-bench-export/1"


@dataclass(frozen=True)
class CellFigures:
    """What one measured cell exports. Seconds; accuracy as a fraction (None: not measured)."""

    name: str
    step_median_s: float
    step_ci_low_s: float
    step_ci_high_s: float
    batch_size: int
    images_per_s: float
    heldout_accuracy: float | None
    heldout_images: int
    repeats: int
    steady_steps: int


def cell_figures(run: Run) -> list[CellFigures]:
    """Every measured cell of ``run``, repeats merged.

    With one repeat the interval is the cell's bootstrap interval (runs.csv); with several,
    the value is the median of the repeats' medians and the interval spans from the lowest
    low to the highest high, so it also covers run-to-run variation.
    """
    runs = summary.numeric(run.runs)
    ok = runs[(runs["status"] == "ok") & runs["step_median_s"].notna()]
    if ok.empty:
        return []
    varying = matrix.varying_dimensions([ok])
    label = run.env.get("machine_label") or next(
        (v for v in ok["machine_label"] if isinstance(v, str) and v), None)
    out = []
    for key, group in ok.groupby(list(matrix.MATCH_KEYS), sort=False, dropna=False):
        name = matrix.describe(dict(zip(matrix.MATCH_KEYS, key)), varying)
        median = float(group["step_median_s"].median())
        low = _finite(group["step_median_ci_low_s"].min(), median)
        high = _finite(group["step_median_ci_high_s"].max(), median)
        measured = group[group["heldout_images"].fillna(0) > 0]
        accuracy = measured["heldout_accuracy"].dropna()
        batch = int(group["batch_size"].iloc[0])
        out.append(CellFigures(
            name=f"{label}: {name}" if label else name, step_median_s=median, step_ci_low_s=low,
            step_ci_high_s=high, batch_size=batch, images_per_s=batch / median,
            heldout_accuracy=float(accuracy.mean()) if len(accuracy) else None,
            heldout_images=int(measured["heldout_images"].iloc[0]) if len(measured) else 0,
            repeats=len(group), steady_steps=int(group["steady_steps"].fillna(0).sum())))
    return out


def _finite(value, fallback: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else fallback


def bencher(run: Run) -> dict:
    """Bencher Metric Format: benchmark name -> measure -> value with its bounds."""
    out = {}
    for cell in cell_figures(run):
        measures = {
            "latency": {"value": cell.step_median_s * 1e9, "lower_value": cell.step_ci_low_s * 1e9,
                        "upper_value": cell.step_ci_high_s * 1e9},
            "throughput": {"value": cell.images_per_s,
                           "lower_value": cell.batch_size / cell.step_ci_high_s,
                           "upper_value": cell.batch_size / cell.step_ci_low_s},
        }
        if cell.heldout_accuracy is not None:
            measures["accuracy"] = {"value": cell.heldout_accuracy * 100}
        out[cell.name] = measures
    return out


def github_action_benchmark(run: Run) -> list[dict]:
    """github-action-benchmark's ``customSmallerIsBetter`` entries: median step time in ms."""
    out = []
    for cell in cell_figures(run):
        extra = [f"images/s: {cell.images_per_s:,.1f}",
                 f"steady steps: {cell.steady_steps}, repeats: {cell.repeats}",
                 f"run: {run.run_id}"]
        if cell.heldout_accuracy is not None:
            extra.insert(1, f"held-out accuracy: {cell.heldout_accuracy * 100:.2f} % "
                            f"({cell.heldout_images:,} images)")
        out.append({"name": f"{cell.name} - median step", "unit": "ms",
                    "value": round(cell.step_median_s * 1000, 4),
                    "range": f"95% CI {cell.step_ci_low_s * 1000:.3f}-{cell.step_ci_high_s * 1000:.3f} ms",
                    "extra": "\n".join(extra)})
    return out


def plain_json(run: Run) -> dict:
    return {"schema": EXPORT_SCHEMA, "run_id": run.run_id,
            "machine_label": run.env.get("machine_label"), "system": run.env.get("system"),
            "git_commit": (run.env.get("git") or {}).get("commit"),
            "cells": [asdict(cell) for cell in cell_figures(run)]}


def export(run: Run, format_: str):
    """The run in ``format_`` (one of :data:`FORMATS`), as JSON-ready data."""
    return {"bencher": bencher, "github-action-benchmark": github_action_benchmark,
            "json": plain_json}[format_](run)
