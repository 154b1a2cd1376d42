"""What a run costs: dollars from ``--price``, and the time-against-energy (or cost) picture.

Cost is computed as DAWNBench did: hours of training times the hourly price of what was
used. A price is keyed by device (``cpu``, ``gpu`` for any GPU, ``gpu:N``) or by a machine
label (``--machine-label``); the most specific key that matches a row wins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import pandas as pd

from bench.energy import DeclaredColumns, column

_DEVICE_KEY = re.compile(r"^(cpu|gpu|gpu:\d+)$")
_LOOKS_LIKE_DEVICE = re.compile(r"^(cpu|gpu):", re.IGNORECASE)   # "gpu:x", "cpu:0"; "gpu-box" is a label
PRICE_EXAMPLE = "--price cpu=0.10,gpu:0=2.49 (US dollars per hour, by device or machine label)"


@dataclass(frozen=True)
class Prices:
    """US dollars per hour by device id, device kind or machine label (from ``--price``)."""

    usd_per_hour: Mapping[str, float]

    def lookup(self, device_id: str, machine_label: str | None = None) -> tuple[str, float] | None:
        """(the key that matched, its price) for a row: ``gpu:1``, then ``gpu``, then the machine."""
        kind = "gpu" if device_id.startswith("gpu") else device_id
        for key in (device_id, kind, machine_label):
            if key and key in self.usd_per_hour:
                return key, self.usd_per_hour[key]
        return None


def parse_prices(text: str) -> Prices:
    """``cpu=0.10,gpu:0=2.49,my-box=1.20`` -> Prices; ValueError with a one-line reason and fix."""
    prices: dict[str, float] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            raise ValueError(f"empty entry in --price '{text}'; use {PRICE_EXAMPLE}")
        key, sep, value = entry.rpartition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--price entry '{entry}' needs DEVICE_OR_MACHINE=USD_PER_HOUR; use {PRICE_EXAMPLE}")
        if _LOOKS_LIKE_DEVICE.match(key) and not _DEVICE_KEY.match(key.lower()):
            raise ValueError(f"--price: unknown device '{key}'; use cpu, gpu (any GPU) or gpu:N")
        if len(key) > 60 or any(ord(c) < 32 for c in key) or "|" in key:
            raise ValueError(f"--price: machine label '{key[:60]}' must be 1-60 printable characters without '|'")
        try:
            price = float(value)
        except ValueError:
            raise ValueError(f"--price: '{value}' for {key} is not a number; give US dollars per hour, "
                             "e.g. gpu:0=2.49") from None
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"--price: {key}={value} must be a positive, finite price per hour")
        key = key.lower() if _DEVICE_KEY.match(key.lower()) else key
        if key in prices:
            raise ValueError(f"--price gives {key} twice; give each device or machine once")
        prices[key] = price
    return Prices(prices)


@dataclass(frozen=True)
class CostColumns(DeclaredColumns):
    """The cost columns of a runs.csv row, declared once (each field's metadata is its doc)."""

    cost_usd_per_hour: float | None = column("the price used, US dollars per hour (--price)")
    cost_price_of: str | None = column("which --price key matched: gpu:N, gpu, cpu or the machine label", "text")
    cost_seed_run_usd: float | None = column("projected_seed_run_s / 3600 x cost_usd_per_hour: US dollars "
                                              "for the notebook's run (26 epochs x 40,000 images)")
    cost_usd_per_million_images: float | None = column("1e6 / global_images_per_s / 3600 x "
                                                        "cost_usd_per_hour")
    cost_note: str | None = column("the price used, or why there is no cost", "text")

    @classmethod
    def build(cls, prices: Prices | None, device_id: str, machine_label: str | None,
              projected_seed_run_s: float | None, global_images_per_s: float | None) -> CostColumns:
        """Hours x price (DAWNBench's rule), for the notebook's run and per million images."""
        found = prices.lookup(device_id, machine_label) if prices else None
        if found is None:
            return cls(cost_note=f"no --price for {device_id}" + (f" or {machine_label}" if machine_label else ""))
        key, price = found
        per_run = projected_seed_run_s / 3600 * price if _positive(projected_seed_run_s) else None
        per_million = 1e6 / global_images_per_s / 3600 * price if _positive(global_images_per_s) else None
        note = f"${price:g}/h for {key} (--price), hours x price"
        if per_run is None:
            note += "; no steady time to project"
        return cls(cost_usd_per_hour=price, cost_price_of=key, cost_seed_run_usd=per_run,
                   cost_usd_per_million_images=per_million, cost_note=note)


def _positive(value) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---------------------------------------------------------------------------- the picture

_Y = {"energy": ("energy_seed_run_kwh", ("energy per notebook run, kWh, log scale\n"
                                        "(J per image in the steady window x 26 x 40,000 images)"), "energy"),
      "cost": ("cost_seed_run_usd", "US dollars per notebook run, log scale\n(hours x --price)", "cost")}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on each)."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _cell_label(row: pd.Series, varying: list[str]) -> str:
    from bench import matrix

    device = f"{row['device_id']} ({row['device_name']})" if row.get("device_name") else str(row["device_id"])
    parts = [device] + [f"{matrix.BY_NAME[d].label.lower()} {matrix.BY_NAME[d].show(matrix.plain(row[d]))}"
                        for d in varying]
    return ", ".join(parts)


def _drawn(text: str) -> str:
    """User text as matplotlib draws it literally: a '$' would start mathtext."""
    return text.replace("$", r"\$")


def _minor_tick_label(axis):
    """Plain labels for some minor ticks of a log axis: more of them the fewer decades it spans."""
    def label(value: float, _position) -> str:
        low, high = axis.get_view_interval()
        decades = math.log10(high / low) if low > 0 and high > low else 0.0
        shown = (2, 3, 4, 5, 6, 8) if decades < 0.7 else (2, 5) if decades < 2.5 else ()
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6) if value > 0 else 0
        return f"{value:g}" if mantissa in shown else ""
    return label


def trade_off_figure(runs: pd.DataFrame, measure: str = "energy"):
    """Time per notebook run against its energy (or cost), one labelled point per cell, the
    Pareto front marked; cells without the figure are listed under the plot with the reason.

    None when no cell has both figures.
    """
    from bench import matrix
    from bench.plots import pyplot

    column, y_label, what = _Y[measure]
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    varying = matrix.varying_dimensions([ok])
    points, labels, missing = [], [], []
    for _, row in ok.iterrows():
        label = _cell_label(row, varying)
        x, y = _number(row.get("projected_seed_run_s")), _number(row.get(column))
        if x is None or y is None or x <= 0 or y <= 0:
            why = row.get("energy_covers") if measure == "energy" else row.get("cost_note")
            missing.append(f"{label}: {why if isinstance(why, str) and why else 'not measured'}")
            continue
        points.append((x / 60, y))
        labels.append(label)
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.8))
    front = pareto_front(points)
    others = [i for i in range(len(points)) if i not in front]
    ax.scatter([points[i][0] for i in others], [points[i][1] for i in others], color="tab:blue",
               label="cell", zorder=3)
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", marker="D",
               s=45, label=f"Pareto front: no cell is both faster and lower in {what}", zorder=4)
    ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="tab:red",
            alpha=0.5, zorder=2)
    for (x, y), label in zip(points, labels):
        ax.annotate(_drawn(label), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticker = plt.matplotlib.ticker
    for axis in (ax.xaxis, ax.yaxis):       # 5, 0.02: not 5 x 10^0, 2 x 10^-2
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.FuncFormatter(_minor_tick_label(axis)))
    ax.margins(x=0.25, y=0.15)               # room for the labels beside the points
    ax.set_xlabel("minutes per notebook run, log scale\n(projected: 26 epochs x 40,000 images at the mean steady step)")
    ax.set_ylabel(y_label)
    run_id = ok["run_id"].iloc[0] if "run_id" in ok else ""
    ax.set_title(_drawn(f"Time against {what} per notebook run{f', run {run_id}' if run_id else ''}"
                        "\nlower left is better"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=2)
    if missing:
        text = f"{what} not measured for:\n" + "\n".join(missing[:12])
        if len(missing) > 12:
            text += f"\n... and {len(missing) - 12} more"
        fig.text(0.01, -0.04, _drawn(text), fontsize=7, va="top", ha="left")
    fig.tight_layout()
    return fig


def trade_off_plot(runs: pd.DataFrame, path: Path, measure: str = "energy") -> Path | None:
    """:func:`trade_off_figure` as a PNG at ``path``; None when there is nothing to draw."""
    fig = trade_off_figure(runs, measure)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
