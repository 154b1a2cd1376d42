"""Pictures of a run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

THROUGHPUT_PNG = "throughput.png"
STEP_TIMES_PNG = "step_times.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on servers and CI without a display
    import matplotlib.pyplot as plt

    return plt


def _series_label(row: pd.Series, varying: list[str]) -> str:
    parts = [f"{row['device_id']} ({row['device_name']})" if row["device_name"] else row["device_id"]]
    parts += [f"{dim}={row[dim]}" for dim in varying]
    return ", ".join(str(p) for p in parts)


def _varying(runs: pd.DataFrame) -> list[str]:
    return [d for d in ("precision", "jit_compile", "cpu_threads", "steps_per_execution",
                      "data_placement")
            if runs[d].nunique(dropna=False) > 1]


def throughput_plot(runs: pd.DataFrame, path: Path) -> Path | None:
    """Steady images/s against batch size, one line per device (and setting)."""
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    plt = _pyplot()
    varying = _varying(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = ["device_id", "device_name", *varying]
    for _, series in ok.groupby(keys, sort=False, dropna=False):
        points = series.groupby("batch_size")["images_per_s"].median().sort_index()
        ax.plot(points.index, points.values, marker="o", label=_series_label(series.iloc[0], varying))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ok["batch_size"].unique()))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("steady images/s (batch / median step, warm-up excluded)")
    ax.set_title(f"Training throughput, run {ok['run_id'].iloc[0]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step_time_plot(runs: pd.DataFrame, steps: pd.DataFrame, path: Path) -> Path | None:
    """The distribution of steady step times of every cell (box plot, ms, log scale)."""
    ok = runs[runs["status"] == "ok"]
    steady = steps[~steps["warmup"]]
    if ok.empty or steady.empty:
        return None
    plt = _pyplot()
    data, labels = [], []
    for cell_id in ok["cell_id"]:
        cell = steady[steady["cell_id"] == cell_id]
        if len(cell):
            data.append((cell["seconds"] / cell["steps"] * 1000).to_numpy())
            labels.append(cell_id)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(data) + 2), 4.8))
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("steady step time (ms, device synced)")
    ax.set_title("Step-time distribution per cell (warm-up excluded)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(runs: pd.DataFrame, steps: pd.DataFrame, directory: Path) -> list[Path]:
    made = [throughput_plot(runs, directory / THROUGHPUT_PNG),
            step_time_plot(runs, steps, directory / STEP_TIMES_PNG)]
    return [p for p in made if p is not None]
