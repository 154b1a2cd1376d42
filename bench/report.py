"""One self-contained HTML page of runs, machines and their history: ``bench report``.

Users would rather look than read. The page holds the headline (the notebook's training,
CPU against GPU), a sortable and filterable table, throughput against batch size, step-time
distributions, accuracy curves and energy where runs have them, and the history of every cell.
Charts are Vega-Lite specifications drawn by the vendored Vega, Vega-Lite and vega-embed
builds (``bench/vendor/``, versions in its README), inlined with the data: the file opens from
disk with no network.

Everything from files is untrusted. Text reaches the page only through :func:`html.escape`,
the table script's ``textContent`` or chart labels (SVG text); data travels as JSON inside
``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped (:func:`_json_for_script`),
so no value (a machine label holding ``</script>``) can end the script or start a tag.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import matrix, store, tables
from bench.contention import BUSY_PCT
from bench.history import History, history_frame
from cifar_model.settings import SEED_RUN

VENDOR = Path(__file__).parent / "vendor"
#: Loaded in this order: vega-lite and vega-embed expect the globals of the ones before.
SCRIPTS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
#: The notebook's batch size: the headline compares rows at it when there are any.
NOTEBOOK_BATCH = SEED_RUN.batch_size
CURVES_CSV = "curves.csv"
MAX_CURVES_BYTES = 16 * 2**20
#: Columns that hold energy or cost, when runs.csv gains them: shown where measured.
ENERGY_COLUMN = re.compile(r"(energy|joule|watt|_wh$|_kwh$|cost)", re.IGNORECASE)


class ReportError(Exception):
    """The report cannot be made as asked (no run, no vendored script)."""


# --------------------------------------------------------------------------- the rows

@dataclass(frozen=True)
class ReportCell:
    """One cell of one run as the page shows it (repeats by their median)."""

    run_id: str
    machine: str
    device: str
    device_type: str
    batch_size: int
    backend: str
    precision: str
    status: str
    reason: str = ""
    engine: str | None = None           # shown when runs.csv has the column
    images_per_s: float | None = None
    notebook_s: float | None = None      # the notebook's training projected at the mean step
    accuracy_pct: float | None = None
    accuracy_note: str = ""
    speedup_vs_cpu: float | None = None  # this machine's CPU row ÷ this row, same settings
    median_step_ms: float | None = None
    step_p5_ms: float | None = None
    step_p95_ms: float | None = None
    train_s: float | None = None
    steps: str = ""
    data: str = ""
    split: str = ""
    settings: str = ""                   # the other dimensions that vary between rows, by value
    tflops: float | None = None
    efficiency_pct: float | None = None
    other_cpu_pct: float | None = None
    repeats: int = 1
    extra: dict = field(default_factory=dict)   # energy, cost, time to target: when measured
    badges: list = field(default_factory=list)  # [short text, full text]: notes on this row

    @property
    def label(self) -> str:
        """Machine, device, backend, engine (when known) and precision: what a bar is."""
        parts = [self.machine, self.device, self.backend, *([self.engine] if self.engine else []),
                 self.precision]
        return " · ".join(parts)


def _value(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _median(rows: pd.DataFrame, column: str, scale: float = 1.0) -> float | None:
    if column not in rows:
        return None
    value = _value(pd.to_numeric(rows[column], errors="coerce").median())
    return None if value is None else value * scale


def _badges(ok: pd.DataFrame) -> list[list[str]]:
    """The notes the Markdown summary puts under its table, on the row they qualify."""
    badges = []
    if "synthetic" in set(ok["data"]):
        badges.append(["synthetic", "Synthetic data (random images): measures speed only; no accuracy."])
    maths = {_text(m) for m in ok.get("math", [])} - {""}
    if "tf32" in maths:
        note = next((_text(n) for n in ok.get("math_note", []) if _text(n)), "")
        badges.append(["TF32", "fp32 whose convolutions ran in TF32 on tensor cores (fp32's range, a "
                               "10-bit mantissa)" + (f": {note}" if note else "") + "."])
    other = _median(ok, "other_cpu_pct")
    steal = _median(ok, "steal_pct") or 0.0
    if other is not None and (other >= BUSY_PCT or steal >= BUSY_PCT):
        note = next((_text(n) for n in ok.get("contention_note", []) if _text(n)), "")
        badges.append([f"busy {other:.0f} %", f"Machine busy: other processes used {other:.0f} % of the "
                       "usable CPUs while this cell ran" + (f" ({note})" if note else "")
                       + "; its speed figures are likely low."])
    for column, yardstick in (("efficiency_pct", "measured"), ("efficiency_theoretical_pct", "theoretical")):
        value = _median(ok, column)
        if value is not None and value > 100:
            badges.append(["⚠ efficiency", (f"Harness bug: {value:.0f} % of the {yardstick} peak; no run "
                                            "can exceed its peak, so that peak is wrong. Do not trust this "
                                            "row's efficiency.")])
    if ok["step_median_s"].isna().all():
        badges.append(["no steady steps", "Every step was warm-up: lower --warmup or raise --steps."])
    scaling = {_text(n) for n in ok.get("scaling_note", [])} - {""}
    if scaling:
        badges.append(["not a scaling result", "; ".join(sorted(scaling))])
    return badges


def report_cells(runs: Sequence[store.Run]) -> list[ReportCell]:
    """Every cell of every run, measured or not (a failure or skip keeps its reason)."""
    table = tables.build(runs)
    frame = table.frame
    if frame.empty:
        return []
    frame["speedup"] = math.nan
    for group, speedup in zip(table.groups, table.speedups):
        frame.loc[group.index, "speedup"] = speedup.ratio
    energy_columns = [c for c in frame.columns if ENERGY_COLUMN.search(c) or c.startswith("time_to_")]
    cells = []
    frame["cell_key"] = frame["cell_id"].astype(str).str.replace(r"_r\d+$", "", regex=True)
    measured = frame[frame["status"] == "ok"]
    varying = matrix.varying_dimensions([measured]) if len(measured) else []
    other_dims = [d for d in varying if d not in ("batch_size", "backend", "precision")]
    for _, group in frame.groupby(["run_index", "cell_key"], sort=False):
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        shown = ok if len(ok) else group
        settings = ", ".join(f"{matrix.BY_NAME[d].label} {tables.dimension_text(d, first[d], first.get('xla'))}"
                             for d in other_dims if pd.notna(first.get(d)) and first.get(d) != "")
        evaluated = ok[ok["heldout_images"].fillna(0) > 0]
        accuracy = _median(evaluated, "heldout_accuracy", 100) if len(evaluated) else None
        math_value = next((m for m in ok.get("math", []) if _text(m)), None)
        engine = _text(first.get("engine")) or None
        last = group.iloc[-1]
        cells.append(ReportCell(
            run_id=str(first["run_id"]), machine=str(first["machine"]),
            device=str(first["device_name"] or first["device_id"]), device_type=str(first["device_type"]),
            batch_size=int(first["batch_size"]), backend=str(first["backend"]),
            precision=tables.dimension_text("precision", first["precision"], None, math_value),
            status="ok" if len(ok) else str(last["status"]),
            reason="" if len(ok) else _text(last["reason"]), engine=engine,
            images_per_s=_median(ok, "images_per_s"), notebook_s=_median(ok, "projected_seed_run_s"),
            accuracy_pct=accuracy,
            accuracy_note=next((_text(n) for n in shown["accuracy_note"] if _text(n)), ""),
            speedup_vs_cpu=_median(ok, "speedup"),
            median_step_ms=_median(ok, "step_median_s", 1000), step_p5_ms=_median(ok, "step_p5_s", 1000),
            step_p95_ms=_median(ok, "step_p95_s", 1000), train_s=_median(ok, "train_s"),
            steps=str(first["steps_text"]), data=_text(first.get("data")), split=_text(first.get("split")),
            settings=settings, tflops=_median(ok, "achieved_tflops"),
            efficiency_pct=_median(ok, "efficiency_pct"), other_cpu_pct=_median(ok, "other_cpu_pct"),
            repeats=len(group),
            extra={c: _median(ok, c) for c in energy_columns if _median(ok, c) is not None},
            badges=_badges(ok) if len(ok) else []))
    return cells


# --------------------------------------------------------------------------- the charts

@dataclass(frozen=True)
class Headline:
    """The headline's bars (slowest first), the row they are divided by, and what they are."""

    bars: list[dict]
    reference: ReportCell
    caption: str


def headline_bars(cells: Sequence[ReportCell]) -> Headline | None:
    """The notebook's training time per row: rows at the notebook's batch size (128) when there
    are any. Each bar's ratio divides the reference row's time by its own: the slowest CPU row
    of the chart (the slowest row when no CPU row has a figure), named in the caption."""
    seconds = {id(c): c.notebook_s for c in cells if c.notebook_s is not None}
    measured = [c for c in cells if id(c) in seconds]
    at_notebook_batch = [c for c in measured if c.batch_size == NOTEBOOK_BATCH]
    shown = sorted(at_notebook_batch or measured, key=lambda c: -seconds[id(c)])
    if not shown:
        return None
    cpus = [c for c in shown if c.device_type == "CPU"]
    reference = (cpus or shown)[0]
    slowest = seconds[id(reference)]
    several_runs = len({c.run_id for c in shown}) > len({c.machine for c in shown})
    bars = [{"label": c.label + (f" · bs{c.batch_size}" if not at_notebook_batch else "")
             + (f" ({c.run_id})" if several_runs else ""),
             "device_type": c.device_type, "minutes": seconds[id(c)] / 60,
             "time": tables.format_duration(seconds[id(c)]),
             "ratio": slowest / seconds[id(c)],
             "text": f"{tables.format_duration(seconds[id(c)])} · "
                     + ("reference" if c is reference else f"{slowest / seconds[id(c)]:,.1f}×"),
             "run": c.run_id, "batch": c.batch_size, "images_per_s": c.images_per_s}
            for c in shown]
    batch_text = (f"at batch size {NOTEBOOK_BATCH}, the notebook's" if at_notebook_batch
                  else "at each row's batch size (no row at the notebook's 128)")
    caption = (f"Time the notebook's training ({SEED_RUN.epochs} epochs of {SEED_RUN.train_images:,} images, "
               f"{batch_text}) would take, projected from each row's mean steady step time: an estimate, "
               "not a measurement. The ratio after each time divides the reference row's time by the "
               f"bar's: the reference is {reference.label}, run {reference.run_id} "
               f"({tables.format_duration(slowest)}), the slowest "
               f"{'CPU ' if cpus else ''}row of the chart. Rows of different machines, backends and "
               "precisions are different settings, not one change.")
    return Headline(bars, reference, caption)


def headline(cells: Sequence[ReportCell]) -> tuple[dict | None, str]:
    """The headline as a Vega-Lite bar chart, and the sentence that says what it shows."""
    found = headline_bars(cells)
    if found is None:
        return None, "No measured cell has a steady step time: nothing to project."
    bars = found.bars
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": bars}, "width": 520, "height": {"step": 26},
        "encoding": {
            "y": {"field": "label", "type": "nominal", "sort": None, "title": None,
                  "axis": {"labelLimit": 420}},
            "x": {"field": "minutes", "type": "quantitative",
                  "scale": {"domainMax": max(b["minutes"] for b in bars) * 1.3},
                  "title": f"Est. notebook run (minutes): {SEED_RUN.epochs} epochs × "
                           f"{SEED_RUN.train_images:,} images"},
            "tooltip": [{"field": "label", "title": "row"}, {"field": "time", "title": "est. notebook run"},
                        {"field": "ratio", "format": ",.1f", "title": "× faster than reference"},
                        {"field": "images_per_s", "format": ",.0f", "title": "images/s"},
                        {"field": "run", "title": "run"}]},
        "layer": [
            {"mark": {"type": "bar"}, "encoding": {"color": {
                "field": "device_type", "type": "nominal", "title": "Device",
                "legend": {"orient": "top"}, "scale": {"domain": list(DEVICE_COLOURS),
                                                       "range": list(DEVICE_COLOURS.values())}}}},
            {"mark": {"type": "text", "align": "left", "dx": 4}, "encoding": {"text": {"field": "text"}}},
        ],
    }
    return spec, found.caption


DEVICE_COLOURS = {"CPU": "#8c8c8c", "GPU": "#2f7ed8"}


def write_headline_png(cells: Sequence[ReportCell], path: Path) -> Path | None:
    """The headline as a PNG (matplotlib), for the README: the same bars, ratios and caption."""
    found = headline_bars(cells)
    if found is None:
        return None
    import textwrap

    from bench.plots import pyplot

    plt = pyplot()

    bars = found.bars
    figure, axes = plt.subplots(figsize=(11, 1.4 + 0.42 * len(bars)), dpi=110)
    positions = range(len(bars))
    axes.barh(positions, [b["minutes"] for b in bars], color=[DEVICE_COLOURS.get(b["device_type"], "#555")
                                                              for b in bars])
    for y, bar in zip(positions, bars):
        axes.text(bar["minutes"], y, f"  {bar['text']}", va="center", fontsize=9)
    axes.set_yticks(list(positions), [b["label"] for b in bars], fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(0, max(b["minutes"] for b in bars) * 1.35)
    axes.set_xlabel(f"Est. notebook run, minutes ({SEED_RUN.epochs} epochs × {SEED_RUN.train_images:,} images)")
    figure.suptitle("CPU vs GPU: the notebook's training, estimated per row (ratio = the reference row's time "
                    "÷ the row's)", x=0.01, ha="left", fontsize=11)
    figure.text(0.01, 0.005, "\n".join(textwrap.wrap(found.caption, 190)), fontsize=7, va="bottom")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout(rect=(0, 0.09 if len(bars) < 8 else 0.05, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def throughput_spec(cells: Sequence[ReportCell]) -> dict | None:
    """Images/s against batch size, one line per machine, device, backend, engine and precision."""
    points = [{"series": f"{c.label}" + (f" · {c.settings}" if c.settings else ""), "batch": c.batch_size,
               "images_per_s": c.images_per_s, "run": c.run_id}
              for c in cells if c.images_per_s is not None]
    if not points:
        return None
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": points}, "width": 520, "height": 300,
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "batch", "type": "quantitative", "scale": {"type": "log", "base": 2},
                  "title": "Batch size (log 2)", "axis": {"values": sorted({p["batch"] for p in points})}},
            "y": {"field": "images_per_s", "type": "quantitative", "scale": {"type": "log"},
                  "title": "Images/s (batch ÷ median steady step, log scale)"},
            "color": {"field": "series", "type": "nominal", "title": None,
                      "legend": {"orient": "bottom", "columns": 1, "labelLimit": 700}},
            "detail": {"field": "run"},
            "tooltip": [{"field": "series"}, {"field": "batch"},
                        {"field": "images_per_s", "format": ",.0f", "title": "images/s"}, {"field": "run"}]},
    }


def step_spec(runs: Sequence[store.Run]) -> dict | None:
    """Per cell: the steady step times' 5th-95th percentile (line), quartiles (bar) and median
    (tick), and every warm-up step as a red point."""
    names = tables.machine_names(runs)
    stats_rows, warmups = [], []
    for run, machine in zip(runs, names):
        ok = run.runs[run.runs["status"] == "ok"]
        varying = set(matrix.varying_dimensions([ok])) | {"backend", "precision"} if len(ok) else set()
        for _, row in ok.iterrows():
            cell = run.steps[run.steps["cell_id"] == row["cell_id"]]
            if cell.empty:
                continue
            label = " · ".join([machine, str(row["device_type"]), f"bs{int(row['batch_size'])}",
                                *(str(matrix.plain(row[d])) for d in sorted(varying - {"batch_size"})),
                                f"r{int(row['repeat'])}", *([run.run_id] if len(runs) > 1 else [])])
            per_step = (cell["seconds"] / cell["steps"]).to_numpy(dtype=float) * 1000
            warm = cell["warmup"].astype(bool).to_numpy()
            steady = per_step[~warm]
            if len(steady):
                p5, q1, median, q3, p95 = np.percentile(steady, [5, 25, 50, 75, 95])
                stats_rows.append({"cell": label, "p5": p5, "q1": q1, "median": median, "q3": q3, "p95": p95,
                                   "n": len(steady)})
            warmups += [{"cell": label, "ms": float(v), "step": i} for i, v in enumerate(per_step[warm])]
    if not stats_rows and not warmups:
        return None
    y = {"field": "cell", "type": "nominal", "title": None, "sort": None, "axis": {"labelLimit": 520}}
    x_title = "Milliseconds per step (log scale, device synced)"
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "width": 420, "height": {"step": 22},
        "layer": [  # the warm-up points first, so the steady box is drawn over them
            {"data": {"values": warmups}, "mark": {"type": "point", "color": "#d62728", "size": 36, "opacity": 0.8},
             "encoding": {"y": y, "x": {"field": "ms", "type": "quantitative"},
                          "tooltip": [{"field": "cell"}, {"field": "step", "title": "warm-up step"},
                                      {"field": "ms", "format": ".1f", "title": "ms"}]}},
            {"data": {"values": stats_rows}, "mark": {"type": "rule"},
             "encoding": {"y": y, "x": {"field": "p5", "type": "quantitative", "scale": {"type": "log"},
                                        "title": x_title, "axis": {"format": "~s", "labelOverlap": "greedy"}},
                          "x2": {"field": "p95"}}},
            {"data": {"values": stats_rows}, "mark": {"type": "bar", "size": 12, "color": "#9ecae1"},
             "encoding": {"y": y, "x": {"field": "q1", "type": "quantitative"}, "x2": {"field": "q3"},
                          "tooltip": [{"field": "cell"}, {"field": "median", "format": ".2f", "title": "median ms"},
                                      {"field": "q1", "format": ".2f"}, {"field": "q3", "format": ".2f"},
                                      {"field": "p5", "format": ".2f"}, {"field": "p95", "format": ".2f"},
                                      {"field": "n", "title": "steady steps"}]}},
            {"data": {"values": stats_rows}, "mark": {"type": "tick", "color": "black", "thickness": 2},
             "encoding": {"y": y, "x": {"field": "median", "type": "quantitative"}}},
        ],
    }


def read_curves(run: store.Run) -> pd.DataFrame | None:
    """A run's ``curves.csv`` (cell_id, epoch and accuracy/loss columns), bounded and parsed as
    numbers; None when the run has none or it is not such a file."""
    path = Path(run.directory) / CURVES_CSV
    try:
        if not path.is_file() or path.stat().st_size > MAX_CURVES_BYTES:
            return None
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if not {"cell_id", "epoch"} <= set(frame.columns):
        return None
    metrics = [c for c in frame.columns if re.search(r"accuracy|loss", c)]
    if not metrics:
        return None
    out = frame[["cell_id"]].copy()
    for column in ["epoch", *metrics]:
        out[column] = pd.to_numeric(frame[column], errors="coerce")
    return out.dropna(subset=["epoch"])


def curves_spec(runs: Sequence[store.Run]) -> dict | None:
    """Accuracy (and loss) per epoch for every run that wrote ``curves.csv``."""
    points = []
    for run, machine in zip(runs, tables.machine_names(runs)):
        curves = read_curves(run)
        if curves is None:
            continue
        for column in (c for c in curves.columns if c not in ("cell_id", "epoch")):
            for cell_id, epoch, value in zip(curves["cell_id"], curves["epoch"], curves[column]):
                if _value(value) is not None:
                    points.append({"series": f"{machine} · {cell_id}", "metric": column, "epoch": float(epoch),
                                   "value": float(value)})
    if not points:
        return None
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": points},
        "facet": {"row": {"field": "metric", "type": "nominal", "title": None}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {"width": 520, "height": 180, "mark": {"type": "line", "point": True},
                 "encoding": {"x": {"field": "epoch", "type": "quantitative", "title": "Epoch",
                                    "axis": {"tickMinStep": 1, "format": "d"}},
                              "y": {"field": "value", "type": "quantitative", "title": None},
                              "color": {"field": "series", "type": "nominal", "title": None,
                                        "legend": {"orient": "bottom", "columns": 1, "labelLimit": 700}},
                              "tooltip": [{"field": "series"}, {"field": "metric"}, {"field": "epoch"},
                                          {"field": "value", "format": ".4f"}]}},
    }


def energy_spec(cells: Sequence[ReportCell]) -> dict | None:
    """Every energy or cost figure a run measured, per row (columns that runs.csv may gain)."""
    points = [{"label": c.label + f" · bs{c.batch_size}", "measure": name, "value": value}
              for c in cells for name, value in c.extra.items() if ENERGY_COLUMN.search(name)]
    if not points:
        return None
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": points},
        "facet": {"row": {"field": "measure", "type": "nominal", "title": None}},
        "resolve": {"scale": {"x": "independent"}},
        "spec": {"width": 420, "height": {"step": 22}, "mark": "bar",
                 "encoding": {"y": {"field": "label", "type": "nominal", "title": None,
                                    "axis": {"labelLimit": 420}},
                              "x": {"field": "value", "type": "quantitative", "title": None},
                              "tooltip": [{"field": "label"}, {"field": "measure"}, {"field": "value"}]}},
    }


def _href(path: str, out_dir: Path) -> str:
    """A link to a run directory relative to the page, percent-encoded and starting with ./ or
    ../, so no directory name can become another scheme (javascript:)."""
    from urllib.parse import quote

    try:
        relative = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    except ValueError:                 # another drive (Windows): link the absolute path
        return Path(path).resolve().as_uri()
    relative = quote(Path(relative).as_posix())
    return relative if relative.startswith("../") else f"./{relative}"


def history_spec(found: History, out_dir: Path) -> dict | None:
    """Images/s of each cell over time: one point per run (a link to it), shaped by check's
    verdict against the run before; the noise band of identical runs where there is one."""
    if not found.points:
        return None
    points = [{**asdict(p), "href": _href(p.path, out_dir), "date": p.date or "1970-01-01T00:00:00",
               "verdict": p.verdict or ("first" if p.change_pct is None else "not judged"),
               "change": "first" if p.change_pct is None else f"{p.change_pct:+.1f} %"}
              for p in found.points]
    bands = []
    for band in found.bands:
        dates = [p["date"] for p in points if p["series"] == band.series]
        if dates:
            bands += [{"series": band.series, "date": d, "low": band.low, "high": band.high}
                      for d in (min(dates), max(dates))]
    verdicts = ["first", "within noise", "faster", "regression", "inconclusive", "not judged"]
    x = {"field": "date", "type": "temporal", "title": "Run started (UTC)", "scale": {"padding": 12}}
    layers = []
    if bands:
        layers.append({"data": {"values": bands}, "mark": {"type": "area", "opacity": 0.18},
                       "encoding": {"x": x, "y": {"field": "low", "type": "quantitative"},
                                    "y2": {"field": "high"},
                                    "color": {"field": "series", "type": "nominal"}}})
    layers += [
        {"data": {"values": points}, "mark": {"type": "line", "opacity": 0.5},
         "encoding": {"x": x, "y": {"field": "images_per_s", "type": "quantitative"},
                      "color": {"field": "series", "type": "nominal"}, "detail": {"field": "series"}}},
        {"data": {"values": points}, "mark": {"type": "point", "filled": True, "size": 80, "cursor": "pointer"},
         "encoding": {"x": x, "y": {"field": "images_per_s", "type": "quantitative",
                                    "scale": {"type": "log"}, "title": "Images/s (log scale)"},
                      "color": {"field": "series", "type": "nominal", "title": None,
                                "legend": {"orient": "bottom", "columns": 1, "labelLimit": 700}},
                      "shape": {"field": "verdict", "type": "nominal", "title": "check vs previous run",
                                "scale": {"domain": verdicts,
                                          "range": ["circle", "square", "triangle-up", "triangle-down",
                                                    "diamond", "cross"]}},
                      "href": {"field": "href"},
                      "tooltip": [{"field": "series", "title": "cell"}, {"field": "run_id", "title": "run"},
                                  {"field": "date"}, {"field": "commit"},
                                  {"field": "images_per_s", "format": ",.1f", "title": "images/s"},
                                  {"field": "change", "title": "vs previous"}, {"field": "verdict"},
                                  {"field": "why"}]}},
    ]
    return {"$schema": "https://vega.github.io/schema/vega-lite/v6.json", "width": 620, "height": 320,
            "layer": layers}


# --------------------------------------------------------------------------- the page

def _json_for_script(value) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & escaped."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _inline_script(name: str) -> str:
    """A vendored build, without its source-map comment (nothing to fetch) and unable to end
    its own <script> element."""
    try:
        text = (VENDOR / name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{VENDOR / name}: the vendored chart script is missing ({exc.strerror}); "
                          "reinstall cifar-bench") from None
    text = re.sub(r"//# sourceMappingURL=\S*\s*$", "", text)
    return text.replace("</script", "<\\/script")


def _markdown_inline(text: str) -> str:
    """A note's **bold** and `code`, after escaping everything else."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _clean(value):
    """JSON-ready: NaN and infinities as null, numpy numbers as Python ones."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _run_section(run: store.Run, machine: str) -> str:
    """One run: where and when it ran, and every note its summary carries, beside it."""
    table = tables.build([run])
    notes = tables.notes(table)
    items = "".join(f"<li>{_markdown_inline(n)}</li>" for n in notes)
    command = _text(run.env.get("command"))
    return (f'<details class="run"><summary><strong>{html.escape(run.run_id)}</strong> on '
            f"{html.escape(machine)}: {_markdown_inline(tables.header(table))}</summary>"
            f"<ul>{items}</ul>"
            + (f"<p>Produced by <code>{html.escape(command)}</code></p>" if command else "")
            + "</details>")


def _table_warnings(cells: Sequence[ReportCell]) -> str:
    """What the table's rows cannot be compared on, said under the table (the multi-run notes)."""
    ok = [c for c in cells if c.status == "ok"]
    warnings = []
    if len({c.steps for c in ok}) > 1:
        warnings.append("**Rows trained for different numbers of steps** (Steps, under all columns): their "
                        "Time and Accuracy do not compare; Images/s and Est. notebook run are per-step "
                        "figures and do. Hover an accuracy for its split and steps.")
    if len({c.data for c in ok}) > 1:
        warnings.append("**Data differs between rows**: synthetic rows measure speed only.")
    return "".join(f'<p class="warning">{_markdown_inline(w)}</p>' for w in warnings)


def _history_table(found: History, out_dir: Path) -> str:
    """``bench history``'s table, each run a link to its directory, inside a closed <details>."""
    frame = history_frame(found)
    if frame.empty:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for point, (_, row) in zip(found.last(None), frame.iterrows()):
        cells = []
        for column, value in row.items():
            text = html.escape(str(value))
            if column == "Run":
                text = f'<a href="{html.escape(_href(point.path, out_dir))}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<details id="history-table"><summary>The history as a table ({len(frame)} points)</summary>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></details>")


def _chart(chart_id: str, title: str, spec: dict | None, caption: str, absent: str, after: str = "") -> str:
    body = (f'<div class="chart" id="{chart_id}" data-chart="{chart_id}"></div>' if spec is not None
            else f'<p class="absent">{html.escape(absent)}</p>')
    return (f'<section id="section-{chart_id}"><h2>{html.escape(title)}</h2>{body}'
            f'<p class="caption">{_markdown_inline(caption)}</p>{after}</section>')


#: The table's columns: key in the row data, header, shown first (True) or behind the toggle.
COLUMNS = (
    ("machine", "Machine", True), ("device", "Device", True), ("batch_size", "Batch", True),
    ("backend", "Backend", True), ("engine", "Engine", True), ("precision", "Precision", True),
    ("images_per_s", "Images/s", True), ("notebook_s", "Est. notebook run", True),
    ("accuracy_pct", "Accuracy", True), ("speedup_vs_cpu", "Speed-up vs CPU", True),
    ("run_id", "Run", False), ("device_type", "Type", False), ("median_step_ms", "Median step (ms)", False),
    ("step_p5_ms", "p5 step (ms)", False), ("step_p95_ms", "p95 step (ms)", False),
    ("train_s", "Time (s)", False), ("steps", "Steps", False), ("data", "Data", False),
    ("split", "Split", False), ("settings", "Settings", False), ("tflops", "TFLOP/s", False),
    ("efficiency_pct", "Efficiency (%)", False), ("other_cpu_pct", "Other CPU (%)", False),
    ("repeats", "Repeats", False),
)

COLUMN_HELP = {
    "images_per_s": "batch size ÷ median steady step time (warm-up excluded, device synced)",
    "notebook_s": f"the notebook's training ({SEED_RUN.epochs} epochs of {SEED_RUN.train_images:,} images) "
                  "projected at the mean steady step time: an estimate",
    "accuracy_pct": "on the held-out images after training (hover a row's note for which images)",
    "speedup_vs_cpu": "the median step of the CPU row of the same machine, batch size and settings ÷ this "
                      "row's; empty where that machine has no such CPU row",
    "median_step_ms": "median steady step time", "train_s": "wall time of the whole training run of the cell",
    "other_cpu_pct": "CPU other processes used while the cell ran, % of the usable CPUs",
}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.caption{color:#555;font-size:12.5px;max-width:900px}
.warning{font-size:12.5px;max-width:900px;background:#fff6dc;padding:3px 6px} .absent{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:12.5px;width:100%} th,td{padding:3px 6px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top;white-space:nowrap} .table-wrap{overflow-x:auto;max-height:80vh}
td.wrap{white-space:normal;min-width:260px} th{cursor:pointer;background:#f6f6f6;position:sticky;top:0;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"} th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums} .more{display:none} table.all .more{display:table-cell}
.badge{display:inline-block;border-radius:8px;padding:0 6px;margin:1px 2px;font-size:11px;background:#eef;
cursor:help;white-space:nowrap} .badge.failed{background:#fdd;color:#900} .badge.skipped{background:#eee;color:#555}
.badge.warn{background:#ffe9b3} .controls{margin:6px 0} #filter{width:320px;padding:3px}
details.run{margin:4px 0} details.run ul{margin:4px 0 8px;font-size:12.5px} code{font-size:12px}
"""

TABLE_SCRIPT = """
(function(){
const rows = JSON.parse(document.getElementById('report-rows').textContent);
const columns = JSON.parse(document.getElementById('report-columns').textContent);
const table = document.getElementById('results');
const head = table.tHead.rows[0], body = table.tBodies[0];
const filter = document.getElementById('filter');
const count = document.getElementById('shown-count');
let sortKey = null, ascending = true;
function shown(value, key){
  if (value === null || value === undefined || value === '') return '';
  if (typeof value === 'number'){
    if (key === 'notebook_s' || key === 'train_s') return duration(value);
    if (key === 'speedup_vs_cpu') return value.toFixed(2) + '×';
    if (key === 'accuracy_pct') return value.toFixed(2) + ' %';
    if (key === 'images_per_s') return Math.round(value).toLocaleString('en');
    return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  }
  return String(value);
}
function duration(s){
  if (s < 60) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? h + ' h ' + (m % 60) + ' m' : m + ' m ' + Math.round(s % 60) + ' s';
}
function badge(text, title, kind){
  const span = document.createElement('span');
  span.className = 'badge' + (kind ? ' ' + kind : '');
  span.textContent = text; span.title = title;
  return span;
}
function render(){
  const needle = filter.value.trim().toLowerCase();
  let list = rows.filter(r => !needle || r._search.includes(needle));
  if (sortKey !== null){
    list = list.slice().sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      const order = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
  }
  body.replaceChildren();
  for (const r of list){
    const tr = document.createElement('tr');
    tr.dataset.status = r.status;
    for (const c of columns){
      const td = document.createElement('td');
      if (!c.first) td.className = 'more';
      if (c.key === 'settings') td.classList.add('wrap');
      if (typeof r[c.key] === 'number') td.classList.add('num');
      td.textContent = shown(r[c.key], c.key);
      if (c.key === 'images_per_s' && r.status !== 'ok'){
        td.replaceChildren(badge(r.status, r.reason || r.status, r.status));
      }
      if (c.key === 'accuracy_pct' && r.status === 'ok' && r.accuracy_pct === null && r.accuracy_note){
        td.replaceChildren(badge('not measured', r.accuracy_note, 'skipped'));
      } else if (c.key === 'accuracy_pct' && r.status === 'ok'){
        td.title = (r.accuracy_note ? r.accuracy_note + '; ' : '') + 'trained ' + r.steps +
          ' steps (epochs × steps per epoch), ' + r.split + ' split';
      }
      if (c.key === 'device'){
        for (const [text, title] of r.badges)
          td.append(' ', badge(text, title, text.startsWith('⚠') || text.startsWith('busy') ? 'warn' : ''));
      }
      if (c.key === 'speedup_vs_cpu' && r.status === 'ok' && r.speedup_vs_cpu === null){
        td.replaceChildren(badge('no CPU row',
          'No CPU row of this machine at the same batch size and settings: no ratio.', 'skipped'));
      }
      tr.append(td);
    }
    body.append(tr);
  }
  count.textContent = list.length + ' of ' + rows.length + ' rows';
}
for (const r of rows){
  r._search = columns.map(c => shown(r[c.key], c.key))
    .concat(r.status, r.reason || '', r.badges.map(b => b[0])).join(' ').toLowerCase();
}
columns.forEach((c, i) => {
  const th = head.cells[i];
  th.addEventListener('click', () => {
    ascending = sortKey === c.key ? !ascending : true; sortKey = c.key;
    for (const other of head.cells) other.removeAttribute('aria-sort');
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    render();
  });
});
filter.addEventListener('input', render);
document.getElementById('all-columns').addEventListener('change', e => table.classList.toggle('all', e.target.checked));
render();
})();
(function(){
const specs = JSON.parse(document.getElementById('report-charts').textContent);
window.reportCharts = {};
const pending = [];
for (const [id, spec] of Object.entries(specs)){
  pending.push(vegaEmbed('#' + id, spec, {renderer: 'svg', actions: false, ast: true}).then(result => {
    window.reportCharts[id] = result.view;
    document.getElementById(id).dataset.rendered = 'true';
  }));
}
Promise.all(pending).then(() => { document.body.dataset.chartsReady = 'true'; },
  err => { document.body.dataset.chartsReady = 'error'; console.error(err); });
})();
"""


def render(runs: Sequence[store.Run], found: History | None = None, out_dir: Path = Path("."),
           title: str = "cifar-bench report") -> str:
    """The whole page as one string: scripts, style, data and charts inline."""
    if not runs and found is None:
        raise ReportError("nothing to report: give at least one run (--run DIR) or --history")
    cells = report_cells(runs)
    names = tables.machine_names(runs) if runs else []
    head_spec, head_caption = headline(cells)
    charts = {"chart-headline": head_spec, "chart-throughput": throughput_spec(cells),
              "chart-steps": step_spec(runs) if runs else None, "chart-curves": curves_spec(runs),
              "chart-energy": energy_spec(cells),
              "chart-history": history_spec(found, out_dir) if found is not None else None}
    has_engine = any(c.engine for c in cells)
    columns: list[dict] = [{"key": key, "header": header, "first": first} for key, header, first in COLUMNS
               if key != "engine" or has_engine]
    extra_keys = sorted({k for c in cells for k in c.extra})
    columns += [{"key": k, "header": k.replace("_", " "), "first": False} for k in extra_keys]
    rows = [_clean({**asdict(c), **c.extra}) for c in cells]
    sections = [
        _chart("chart-headline", "CPU vs GPU: the notebook's training", head_spec, head_caption,
               "No measured cell."),
    ]
    table_head = "".join(f'<th class="{"" if c["first"] else "more"}" '
                         f'title="{html.escape(COLUMN_HELP.get(c["key"], ""))}">'
                         f'{html.escape(c["header"])}</th>' for c in columns)
    sections.append(
        '<section id="section-table"><h2>Results</h2><div class="controls">'
        '<input id="filter" type="search" placeholder="Filter rows (machine, device, backend, status …)"> '
        '<label><input id="all-columns" type="checkbox"> all columns</label> <span id="shown-count"></span></div>'
        f'<div class="table-wrap"><table id="results"><thead><tr>{table_head}</tr></thead><tbody></tbody></table></div>'
        + _table_warnings(cells)
        + '<p class="caption">Click a header to sort, type to filter. One row per cell of a run (repeats by their '
        'median). Badges beside a device are notes on that row; hover one for the whole note. Failed and '
        'skipped cells show their status where images/s would be; hover it for the reason. Hover a header '
        'for what its column measures.</p></section>')
    if runs:
        sections.append('<section id="section-runs"><h2>Runs, machines and their notes</h2>'
                        '<p class="caption">Open a run for every note its summary carries: what each figure '
                        'is, the data, TF32, contention, what was not measured and why.</p>'
                        + "".join(_run_section(run, name) for run, name in zip(runs, names)) + "</section>")
    sections += [
        _chart("chart-throughput", "Throughput against batch size", charts["chart-throughput"],
               "Images/s per row: batch size ÷ median steady step time (warm-up excluded, every step timed "
               "until its loss is on the host). One line per machine, device, backend and precision.",
               "No measured cell."),
        _chart("chart-steps", "Step times per cell", charts["chart-steps"],
               "Per cell: thin line 5th–95th percentile, box the quartiles, black tick the median of the "
               "steady steps (steps.csv, seconds ÷ steps of each record); red rings are the warm-up steps "
               "(tracing, compilation), excluded from every steady figure.", "No steps recorded."),
        _chart("chart-curves", "Accuracy curves", charts["chart-curves"],
               "Per epoch, from each run's curves.csv.",
               "No run here recorded per-epoch curves (curves.csv); the held-out accuracy after training "
               "is in the table."),
        _chart("chart-energy", "Energy and cost", charts["chart-energy"],
               "Each figure as the run recorded it (its column name says its unit and what it covers).",
               "Not measured in these runs."),
    ]
    if found is not None:
        sections.append(_chart(
            "chart-history", "History", charts["chart-history"],
            "Images/s of each cell over time, one point per run (click it to open the run's directory). "
            "Shape: what `check` says of that run against the previous run of the cell on the same machine "
            "(step times of both, busy-machine rule included). Shaded: the lowest to highest images/s of "
            "identical runs from `bench noise --repeat`, where there are some."
            + (" Not read: " + "; ".join(found.problems) if found.problems else ""),
            "No run under the results root has a measured cell.", after=_history_table(found, out_dir)))
    drawn = {k: v for k, v in charts.items() if v is not None}
    scripts = "".join(f"<script>{_inline_script(name)}</script>" for name in SCRIPTS)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class=\"caption\">{len(runs)} run(s) on {len(dict.fromkeys(names))} machine(s)"
        + (": " + ", ".join(f"{html.escape(r.run_id)} ({html.escape(n)})" for r, n in zip(runs, names)) if runs else "")
        + ". Made by <code>python -m bench report</code>; every chart and number is inline.</p>"
        + "".join(sections)
        + f'<script type="application/json" id="report-rows">{_json_for_script(rows)}</script>'
        + f'<script type="application/json" id="report-columns">{_json_for_script(columns)}</script>'
        + f'<script type="application/json" id="report-charts">{_json_for_script(_clean(drawn))}</script>'
        + scripts + f"<script>{TABLE_SCRIPT}</script></body></html>\n")


def write_report(runs: Sequence[store.Run], out_path: Path, history: History | None = None,
                 title: str = "cifar-bench report") -> Path:
    """Write the page atomically to ``out_path``; returns it. ReportError, OSError for the caller."""
    out_path = Path(out_path)
    text = render(runs, history, out_path.parent, title)
    store.write_atomically(out_path, text)
    return out_path
