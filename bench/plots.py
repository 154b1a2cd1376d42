"""Pictures of a run (matplotlib, no display needed), labelled from the matrix's dimensions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import matrix
from cifar_model.results import seconds_per_step
from cifar_model.settings import STRATEGY_DOCS

THROUGHPUT_PNG = "throughput.png"
STEP_TIMES_PNG = "step_times.png"
SCALING_PNG = "scaling.png"
TIME_VS_ENERGY_PNG = "time_vs_energy.png"
TIME_VS_COST_PNG = "time_vs_cost.png"


def pyplot():
    """matplotlib.pyplot drawing into files only (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on servers and CI without a display
    import matplotlib.pyplot as plt

    return plt


def series_label(row: pd.Series, varying: list[str]) -> str:
    """The device, then each varying dimension (other than batch size) by label and value."""
    device = f"{row['device_id']} ({row['device_name']})" if row.get("device_name") else str(row["device_id"])
    parts = [device] + [f"{matrix.BY_NAME[d].label.lower()} {matrix.BY_NAME[d].show(matrix.plain(row[d]))}"
                        for d in varying if d != "batch_size"]
    return ", ".join(parts)


def throughput_plot(runs: pd.DataFrame, path: Path) -> Path | None:
    """Steady images/s against batch size, one line per device (and setting)."""
    ok = runs[(runs["status"] == "ok") & runs["images_per_s"].notna()]
    if ok.empty:
        return None
    plt = pyplot()
    varying = [d for d in matrix.varying_dimensions([ok]) if d != "batch_size"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    keys = ["device_id", "device_name", *varying]
    for _, series in ok.groupby(keys, sort=False, dropna=False):
        points = series.groupby("batch_size")["images_per_s"].median().sort_index()
        ax.plot(points.index, points.values, marker="o", label=series_label(series.iloc[0], varying))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ok["batch_size"].unique()))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("steady images/s\n(batch ÷ median step, warm-up excluded)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Training throughput, run {ok['run_id'].iloc[0]}")
    ax.grid(True, alpha=0.3)
    # under the axes: a legend inside would hide the points it names
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def step_time_plot(runs: pd.DataFrame, steps: pd.DataFrame, path: Path) -> Path | None:
    """The spread of every cell's steady steps as images/s, one panel per batch size.

    Images/s (batch ÷ step time) rather than raw step time, so cells of different batch
    sizes read on one scale; cells are labelled by the dimensions that vary.
    """
    ok = runs[runs["status"] == "ok"]
    steady = steps[~steps["warmup"].astype(bool)]
    if ok.empty or steady.empty:
        return None
    plt = pyplot()
    varying = [d for d in matrix.varying_dimensions([ok]) if d != "batch_size"]
    batches = sorted(ok["batch_size"].unique())
    most = max(len(ok[ok["batch_size"] == b].groupby(["device_id", *varying], dropna=False)) for b in batches)
    fig, axes = plt.subplots(1, len(batches), figsize=(max(6.5, len(batches) * max(3.2, 1.3 * most)), 5.2),
                             sharey=True, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        data, labels = [], []
        for _key, cells in ok[ok["batch_size"] == batch].groupby(
                ["device_id", "device_name", *varying], sort=False, dropna=False):
            cell_steps = steady[steady["cell_id"].isin(cells["cell_id"])]
            if len(cell_steps):
                data.append((batch / seconds_per_step(cell_steps["seconds"], cell_steps["steps"])).to_numpy())
                labels.append(series_label(cells.iloc[0], varying).replace(", ", "\n"))
        if data:
            ax.boxplot(data, showfliers=True)
            ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(f"batch {int(batch)}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("images/s of each steady step\n(batch ÷ step time, device synced)")
    fig.suptitle("Spread of steady steps per cell (warm-up excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Above this ratio between the fastest and the slowest line, images/s is drawn on a log scale.
LOG_SCALE_SPREAD = 10


def y_scale(images_per_s: pd.Series) -> str:
    """"log" when the fastest is more than :data:`LOG_SCALE_SPREAD` times the slowest, else "linear"."""
    return "log" if images_per_s.max() > LOG_SCALE_SPREAD * images_per_s.min() else "linear"


def comparison_plot(cells: pd.DataFrame, path: Path, title: str = "Training throughput") -> Path | None:
    """Images/s against batch size for cells of several runs: one line per machine and device.

    ``cells`` are runs.csv rows with a ``machine`` column (:func:`bench.tables.combined`).
    Dimensions that vary (backend, precision, ...) split lines further and are named in the
    legend. A CPU next to a GPU is often 10-100x apart: then the y axis is logarithmic, so
    the slow lines do not flatten onto zero.
    """
    ok = cells[(cells["status"] == "ok") & cells["images_per_s"].notna()]
    if ok.empty:
        return None
    plt = pyplot()
    varying = [d for d in matrix.varying_dimensions([ok]) if d != "batch_size"]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    keys = ["machine", "device_type", "device_id", "device_name", *varying]
    groups = sorted(ok.groupby(keys, sort=False, dropna=False), key=lambda g: (
        list(dict.fromkeys(ok["machine"])).index(g[0][0]), g[0][1] != "CPU", str(g[0][2])))
    markers = "osD^v<>ph*"
    for i, (_key, series) in enumerate(groups):
        points = series.groupby("batch_size")["images_per_s"].median().sort_index()
        first = series.iloc[0]
        device = first["device_name"] or first["device_id"]
        label = ", ".join([f"{first['machine']}: {first['device_type']} {device}",
                           *(f"{matrix.BY_NAME[d].label.lower()} {matrix.BY_NAME[d].show(matrix.plain(first[d]))}"
                             for d in varying)])
        ax.plot(points.index, points.values, marker=markers[i % len(markers)],
                linestyle="-" if first["device_type"] == "GPU" else "--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ok["batch_size"].unique()))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(plt.matplotlib.ticker.NullLocator())
    ax.set_xlabel("batch size (images per step)")
    ticker = plt.matplotlib.ticker
    if y_scale(ok["images_per_s"]) == "log":
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("steady images/s, log scale\n(batch ÷ median step, warm-up excluded)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("steady images/s\n(batch ÷ median step, warm-up excluded)")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    # under the axes: long machine and device names never squeeze the plot
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False,
              title="machine: device (dashed: CPU, solid: GPU)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def scaling_plot(runs: pd.DataFrame, path: Path) -> Path | None:
    """Global images/s against replicas (x workers), one line per device and setting, each
    with its ideal: the 1-replica figure times the replicas. None when nothing scaled."""
    if "total_replicas" not in runs:
        return None
    ok = runs[(runs["status"] == "ok") & runs["global_images_per_s"].notna()].copy()
    ok["total_replicas"] = pd.to_numeric(ok["total_replicas"], errors="coerce").fillna(1)
    if not (ok["total_replicas"] > 1).any():
        return None
    plt = pyplot()
    varying = [d for d in matrix.varying_dimensions([ok]) if d not in ("replicas", "workers")]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    checks = False
    strategy_names = {name: short for name, (short, _) in STRATEGY_DOCS.items()}
    for _, group in ok.groupby(["device_id", "device_name", *varying], sort=False, dropna=False):
        base = group[group["total_replicas"] == 1]
        if base.empty:
            continue
        label = series_label(group.iloc[0], [d for d in varying if d != "batch_size"])
        if "batch_size" in varying:
            label += f", batch {int(group['batch_size'].iloc[0])}/replica"
        scaled_rows = group[group["total_replicas"] > 1]
        if scaled_rows.empty:
            continue
        replicas = sorted(group["total_replicas"].unique())
        ideal = base["global_images_per_s"].median() * pd.Series(replicas, index=replicas)
        ax.plot(ideal.index, ideal.values, linestyle=":", color="grey",
                label=f"ideal, N × 1 replica: {label}")
        multi = pd.to_numeric(scaled_rows["workers"], errors="coerce").fillna(1) > 1
        for (strategy, across), scaled in scaled_rows.groupby([scaled_rows["strategy"], multi], sort=False):
            points = pd.concat([base, scaled]).groupby("total_replicas")["global_images_per_s"].median()
            shown = strategy_names.get(strategy, strategy)
            if across and strategy == "keras_data_parallel":   # one strategy, in or across processes
                shown += " across processes"
            ax.plot(points.index, points.values, marker="o", label=f"{label}, {shown}")
            checks |= scaled["scaling_note"].map(lambda v: isinstance(v, str) and v != "").any()
    ax.set_xticks(sorted(ok["total_replicas"].unique()))
    ax.set_xlabel("replicas in sync (replicas × workers)")
    ax.set_ylabel("steady global images/s\n(global batch ÷ median step)")
    ax.set_ylim(bottom=0)
    title = f"Data-parallel scaling, run {ok['run_id'].iloc[0]}"
    if checks:
        title += "\nfunctional check: replicas share one machine's cores, no speed-up expected"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(runs: pd.DataFrame, steps: pd.DataFrame, directory: Path) -> list[Path]:
    """Every picture the run's rows can draw: throughput, step spread, scaling, and, where
    --energy or --price filled their columns, time per notebook run against energy or cost."""
    from bench.cost import trade_off_plot

    made = [throughput_plot(runs, directory / THROUGHPUT_PNG),
            step_time_plot(runs, steps, directory / STEP_TIMES_PNG),
            scaling_plot(runs, directory / SCALING_PNG)]
    for measure, column, name in (("energy", "energy_covers", TIME_VS_ENERGY_PNG),
                                  ("cost", "cost_note", TIME_VS_COST_PNG)):
        if column in runs and runs[column].map(lambda v: isinstance(v, str) and v != "").any():
            made.append(trade_off_plot(runs, directory / name, measure))
    return [p for p in made if p is not None]
