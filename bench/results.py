"""The result schema, and writing and reading a run directory (pandas).

A run directory holds ``runs.csv`` (one row a cell), ``steps.csv`` (one row a timed
step), ``env.json`` (the machine's fingerprint) and ``summary.md``. Both CSV files are
rewritten atomically after every cell, so a crash or Ctrl-C never leaves a half-written
row, and a reader never sees a cell in ``runs.csv`` whose steps are missing.

Files read back are untrusted: columns are checked against the schema and values are
parsed as numbers or text, never evaluated.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats

RUNS_CSV, STEPS_CSV, ENV_JSON, SUMMARY_MD = "runs.csv", "steps.csv", "env.json", "summary.md"
STATUSES = ("ok", "skipped", "failed")
NOTEBOOK_EPOCHS = 26               # the seed run: 26 epochs ...
NOTEBOOK_TRAIN_IMAGES = 40_000     # ... of the seed split's 40,000 training images

#: Dimensions of the benchmark matrix: a cell is one value of each.
DIMENSIONS = ("device_id", "batch_size", "precision", "jit_compile", "cpu_threads",
              "steps_per_execution", "data_placement")

#: runs.csv, in order: column -> what it holds. Times are seconds of wall-clock time.
RUN_COLUMNS = {
    "run_id": "the run this cell belongs to",
    "cell_id": "device, batch size and settings of the cell, and its repeat",
    "repeat": "0-based repeat index (each repeat is a fresh process)",
    "status": "ok, skipped (device absent) or failed (crash, timeout, error)",
    "reason": "why the cell was skipped or failed",
    "system": "operating system",
    "device_id": "cpu, gpu:0, ...",
    "device_name": "CPU model or GPU name",
    "device_type": "CPU or GPU",
    "batch_size": "images per training step",
    "precision": "fp32, mixed_bfloat16 or mixed_float16 (Keras dtype policy)",
    "precision_requested": "the precision as asked for (auto resolves per device)",
    "jit_compile": "XLA: auto, on or off",
    "cpu_threads": "TensorFlow intra-op threads (0: TensorFlow's default)",
    "steps_per_execution": "training steps per call into the compiled train function",
    "data_placement": "where the training images lived: host (tf.data gathers each batch in host "
                      "memory, prefetched) or device (the whole set in device memory, gathered "
                      "inside the step)",
    "data_placement_requested": "the data placement as asked for (auto resolves per device)",
    "data_device": "the TensorFlow device that held the training images (CPU:0, GPU:0)",
    "data": "cifar10 or synthetic",
    "split": "standard (50k/10k official) or seed (notebook: 40k/10k)",
    "epochs": "epochs trained",
    "steps_per_epoch": "steps per epoch (full batches, optionally capped)",
    "steps": "steps timed in total (epochs x steps_per_epoch)",
    "warmup_steps": "first steps excluded from the steady statistics",
    "train_s": "full training time: wall time of the whole training run, warm-up included",
    "first_step_s": "the first step alone (tracing, compilation, allocations)",
    "data_load_s": "reading + standardising the dataset + building the input pipeline",
    "startup_s": "worker start until TensorFlow and Keras were imported",
    "build_s": "building and compiling the model",
    "eval_s": "evaluating on the held-out split",
    "epoch_median_s": "median wall time of one epoch",
    "step_median_s": "median steady step time (device synced)",
    "step_mean_s": "mean steady step time",
    "step_p5_s": "5th percentile of steady step times",
    "step_p95_s": "95th percentile of steady step times",
    "step_iqr_s": "interquartile range of steady step times",
    "step_median_ci_low_s": "95% bootstrap confidence interval of the median step: low",
    "step_median_ci_high_s": "95% bootstrap confidence interval of the median step: high",
    "steady_steps": "steps in the steady statistics",
    "steady_wall_s": "wall time from the first steady step's start to the last one's end",
    "images_per_s": "steady images/s = batch_size / step_median_s",
    "images_per_s_wall": "steady images/s over wall time = steady_steps * batch_size / steady_wall_s",
    "projected_seed_run_s": "26 epochs of the 40,000-image seed split at step_mean_s (estimate)",
    "train_loss": "mean training loss over the last epoch (dropout active)",
    "train_accuracy": "mean training accuracy over the last epoch (dropout active)",
    "heldout_accuracy": "accuracy on the whole held-out split after training",
    "heldout_loss": "loss on the whole held-out split after training",
    "heldout_images": "images in the held-out split",
    "accuracy_note": "what the accuracy was measured on, or why it was not",
    "peak_rss_mb": "peak resident memory of the worker process (MiB)",
    "peak_gpu_mem_mb": "peak GPU memory held by TensorFlow (MiB, GPU cells)",
    "cpu_util_pct": "mean CPU use of the worker while training, % of the CPUs it could use",
    "xla": "whether XLA compiled the train step (what jit_compile resolved to)",
    "unsynced_steps": "steps of the unsynced throughput phase (0: not run)",
    "unsynced_images_per_s": "images/s over a block of steps with one sync at the end",
    "sync_overhead_pct": "throughput lost to per-step syncing: 100 x (1 - images_per_s / unsynced_images_per_s)",
    "flops_per_image": "analytic training FLOPs per image (forward + backward)",
    "achieved_tflops": "flops_per_image x images_per_s / 1e12",
    "peak_tflops": "measured peak of the device in this precision (large matmul, python -m bench peak)",
    "efficiency_pct": "100 x achieved_tflops / peak_tflops",
    "tensorflow_version": "TensorFlow in the worker",
    "keras_version": "Keras in the worker",
    "numpy_version": "NumPy in the worker",
    "python_version": "Python in the worker",
    "started_at": "when the cell started (UTC)",
    "git_commit": "the project's commit",
}
STEP_COLUMNS = {
    "run_id": "the run",
    "cell_id": "the cell (runs.csv)",
    "epoch": "0-based epoch",
    "step": "0-based step within the epoch (first step of the record)",
    "steps": "steps covered by this record (steps_per_execution)",
    "seconds": "wall time of the record, device synced",
    "warmup": "True for warm-up steps (excluded from the steady statistics)",
}
INTEGER_COLUMNS = ("repeat", "batch_size", "cpu_threads", "steps_per_execution", "epochs",
                   "steps_per_epoch", "steps", "warmup_steps", "steady_steps", "heldout_images",
                   "flops_per_image", "unsynced_steps")
BOOLEAN_COLUMNS = {"warmup", "xla"}
TEXT_COLUMNS = {"run_id", "cell_id", "status", "reason", "system", "device_id", "device_name",
                "device_type", "precision", "precision_requested", "jit_compile", "data_placement",
                "data_placement_requested", "data_device", "data", "split", "accuracy_note",
                "tensorflow_version", "keras_version", "numpy_version", "python_version",
                "started_at", "git_commit"}


class ResultsError(Exception):
    """A results file is missing, unreadable or does not follow the schema."""


# --------------------------------------------------------------------------- rows

def base_row(cell: dict, run_id: str, system: str, git_commit: str | None) -> dict:
    row = dict.fromkeys(RUN_COLUMNS)
    row.update({k: v for k, v in cell.items() if k in RUN_COLUMNS})
    row.update(run_id=run_id, system=system, git_commit=git_commit)
    return row


def skipped_row(cell: dict, reason: str, **context) -> dict:
    return {**base_row(cell, **context), "status": "skipped", "reason": reason}


def failed_row(cell: dict, reason: str, **context) -> dict:
    return {**base_row(cell, **context), "status": "failed", "reason": reason}


def ok_row(cell: dict, result: dict, peak: dict | None = None, **context) -> dict:
    """A measured cell: the worker's raw result condensed into the schema's columns.

    ``peak`` is the device's measured peak in the cell's precision ({"tflops": ...}).
    """
    records = result["records"]
    steady = np.array([r["seconds"] / r["steps"] for r in records if not r["warmup"]])
    steady_steps = sum(r["steps"] for r in records if not r["warmup"])
    batch = result["batch_size"]
    row = {**base_row(cell, **context), "status": "ok", "reason": ""}
    row.update(
        epochs=result["epochs"], steps_per_epoch=result["steps_per_epoch"],
        steps=sum(r["steps"] for r in records), warmup_steps=result["warmup_steps"],
        data=result["data"], split=result["split"], data_device=result.get("data_device"),
        train_s=result["train_seconds"], first_step_s=records[0]["seconds"] / records[0]["steps"],
        data_load_s=result["data_seconds"], startup_s=result["startup_seconds"],
        build_s=result["build_seconds"], eval_s=result["eval_seconds"],
        epoch_median_s=float(np.median(result["epoch_seconds"])),
        steady_steps=steady_steps, steady_wall_s=result["steady_wall_seconds"],
        train_loss=result["train_loss"], train_accuracy=result["train_accuracy"],
        heldout_accuracy=result["heldout_accuracy"], heldout_loss=result["heldout_loss"],
        heldout_images=result["heldout_images"], accuracy_note=result["accuracy_note"],
        peak_rss_mb=_mib(result.get("peak_rss_bytes")),
        peak_gpu_mem_mb=_mib(result.get("peak_gpu_bytes")),
        cpu_util_pct=result.get("cpu_util_pct"),
        flops_per_image=result["training_flops_per_image"],
        xla=result.get("xla"), unsynced_steps=result.get("unsynced_steps", 0),
        started_at=result.get("started_at"),
        **{f"{name}_version": version for name, version in result.get("versions", {}).items()},
    )
    if result.get("device_name"):
        row["device_name"] = result["device_name"]
    if len(steady):
        summary = stats.summarise(steady)
        row.update(
            step_median_s=summary.median, step_mean_s=summary.mean, step_p5_s=summary.p5,
            step_p95_s=summary.p95, step_iqr_s=summary.iqr,
            step_median_ci_low_s=summary.median_ci_low, step_median_ci_high_s=summary.median_ci_high,
            images_per_s=batch / summary.median,
            images_per_s_wall=steady_steps * batch / result["steady_wall_seconds"],
            projected_seed_run_s=NOTEBOOK_EPOCHS * (NOTEBOOK_TRAIN_IMAGES // batch) * summary.mean,
            achieved_tflops=result["training_flops_per_image"] * batch / summary.median / 1e12,
        )
        if result.get("unsynced_seconds"):
            unsynced = result["unsynced_steps"] * batch / result["unsynced_seconds"]
            row.update(unsynced_images_per_s=unsynced,
                       sync_overhead_pct=100 * (1 - row["images_per_s"] / unsynced))
        if peak:
            row.update(peak_tflops=peak["tflops"],
                       efficiency_pct=100 * row["achieved_tflops"] / peak["tflops"])
    return row


def step_rows(run_id: str, cell_id: str, records: list[dict]) -> list[dict]:
    return [{"run_id": run_id, "cell_id": cell_id, **{k: r[k] for k in
             ("epoch", "step", "steps", "seconds", "warmup")}} for r in records]


def _mib(value) -> float | None:
    return None if value is None else value / 2**20


# --------------------------------------------------------------------------- writing

def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers never see half."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8", newline="") as f:  # honours the umask
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RunWriter:
    """Keeps a run's rows and rewrites its files after every cell."""

    def __init__(self, directory: Path, run_id: str):
        self.directory = Path(directory)
        self.run_id = run_id
        self.rows: list[dict] = []
        self.steps: list[dict] = []

    def write_env(self, env: dict) -> None:
        write_atomically(self.directory / ENV_JSON, json.dumps(env, indent=2, sort_keys=True) + "\n")

    def add(self, row: dict, steps: list[dict] = ()) -> None:
        self.rows.append(row)
        self.steps.extend(steps)
        # steps first: runs.csv never names a cell whose steps are not on disk yet
        write_atomically(self.directory / STEPS_CSV,
                         pd.DataFrame(self.steps, columns=list(STEP_COLUMNS)).to_csv(index=False))
        write_atomically(self.directory / RUNS_CSV, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(RUN_COLUMNS))
        # whole numbers stay whole in the CSV even where a skipped row leaves a gap
        return frame.astype({c: "Int64" for c in INTEGER_COLUMNS})


# --------------------------------------------------------------------------- reading

@dataclass
class Run:
    """A run read back from disk."""

    directory: Path
    runs: pd.DataFrame
    steps: pd.DataFrame
    env: dict

    @property
    def run_id(self) -> str:
        return str(self.runs["run_id"].iloc[0]) if len(self.runs) else self.directory.name

    def steady_steps(self, cell_id: str) -> np.ndarray:
        """Seconds per step of the cell's steady records."""
        cell = self.steps[(self.steps["cell_id"] == cell_id) & ~self.steps["warmup"]]
        return (cell["seconds"] / cell["steps"]).to_numpy(dtype=float)


def read_table(path: Path, columns: dict, required: set[str] | None = None) -> pd.DataFrame:
    """Read a schema CSV as data: unknown columns dropped, required ones checked, types parsed."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path}: not a readable CSV file ({type(exc).__name__})") from None
    missing = sorted((required if required is not None else set(columns)) - set(frame.columns))
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}; "
                           "not a cifar-bench results file")
    for name in columns:
        if name not in frame.columns:
            frame[name] = ""
    frame = frame[list(columns)].copy()
    for name in columns:
        if name in BOOLEAN_COLUMNS:
            allowed = ["True", "False"] if name == "warmup" else ["True", "False", ""]  # a step is
            bad = ~frame[name].isin(allowed)                                        # always one or other
            if bad.any():
                raise ResultsError(f"{path}: column {name} must be True/False")
            frame[name] = frame[name].map({"True": True, "False": False, "": None})
        elif name not in TEXT_COLUMNS:
            numbers = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
            bad = numbers.isna() & (frame[name] != "")
            if bad.any():
                raise ResultsError(f"{path}: column {name} holds a non-number "
                                   f"({frame[name][bad].iloc[0][:40]!r})")
            frame[name] = numbers
    return frame


def read_run(directory: str | os.PathLike) -> Run:
    """Read and validate a run directory (runs.csv, steps.csv, env.json)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such run directory")
    runs = read_table(directory / RUNS_CSV, RUN_COLUMNS, required={
        "run_id", "cell_id", "status", "device_id", "device_type", "batch_size", "step_median_s"})
    bad = ~runs["status"].isin(STATUSES)
    if bad.any():
        raise ResultsError(f"{directory / RUNS_CSV}: unknown status {runs['status'][bad].iloc[0]!r}")
    if (runs["data_placement"] == "").all():
        # written before data placement was a setting, when every cell was fed from the host
        runs["data_placement"] = runs["data_placement_requested"] = "host"
    steps = read_table(directory / STEPS_CSV, STEP_COLUMNS)
    try:
        env = json.loads((directory / ENV_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        env = {}
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{directory / ENV_JSON}: not readable JSON ({exc})") from None
    if not isinstance(env, dict):
        raise ResultsError(f"{directory / ENV_JSON}: expected a JSON object")
    return Run(directory, runs, steps, env)


def latest_run(root: str | os.PathLike) -> Path:
    """The newest run directory under ``root`` (run ids sort by time)."""
    root = Path(root)
    candidates = sorted(p for p in root.glob("*") if (p / RUNS_CSV).is_file()) if root.is_dir() else []
    if not candidates:
        raise ResultsError(f"{root}: no runs here yet; run 'python -m bench run' first or pass --run DIR")
    return candidates[-1]


# --------------------------------------------------------------------------- the summary table

def format_duration(seconds: float | None) -> str:
    """Like the notebook's table: "21 m 12 s"; short times as "8.6 s"."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} m {secs} s" if hours else f"{minutes} m {secs} s"


def _number(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:{fmt}}{suffix}"


def numeric(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with its number columns as floats (None -> NaN), whether read or in memory."""
    runs = runs.copy()
    for name in RUN_COLUMNS:
        if name in runs.columns and name not in TEXT_COLUMNS | BOOLEAN_COLUMNS:
            runs[name] = pd.to_numeric(runs[name], errors="coerce")
    return runs


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (repeats aggregated by their median), in the notebook's columns."""
    runs = numeric(runs)
    dims = [d for d in DIMENSIONS if d in runs.columns]
    fixed = [d for d in dims[2:] if runs[d].nunique(dropna=False) <= 1]
    shown_dims = [d for d in dims[2:] if d not in fixed]
    rows = []
    for _, group in runs.groupby(dims, sort=False, dropna=False):
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        row = {"System": first["system"], "Device": first["device_name"] or first["device_id"],
               "Device Type": first["device_type"], "Batch size": int(first["batch_size"])}
        row.update({_LABELS[d]: _dim_text(d, first[d], first.get("xla")) for d in shown_dims})
        if ok.empty:
            status = group.iloc[-1]
            row["Time"] = f"{status['status']}: {status['reason']}"
            rows.append(row)
            continue
        median_step = ok["step_median_s"].median()
        row.update({
            "Time": format_duration(ok["train_s"].median()),
            "Accuracy": _accuracy_text(ok["heldout_accuracy"].dropna()),
            "Images/s": _number(ok["images_per_s"].median(), ",.0f"),
            "Median step": _number(median_step * 1000, ".1f", " ms"),
            "Speed-up vs CPU": _speedup(first, runs, median_step),
            "TFLOP/s": _number(ok["achieved_tflops"].median(), ".3f"),
            "Efficiency": _number(ok["efficiency_pct"].median(), ".0f", " %"),
            "Est. notebook run": format_duration(ok["projected_seed_run_s"].median()),
        })
        if ok["unsynced_images_per_s"].notna().any():
            row["Unsynced images/s"] = _number(ok["unsynced_images_per_s"].median(), ",.0f")
            row["Sync overhead"] = _number(ok["sync_overhead_pct"].median(), "+.1f", " %")
        if len(group) > 1:
            row["Repeats"] = f"{len(ok)}/{len(group)}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def _accuracy_text(accuracies: pd.Series) -> str:
    """Mean held-out accuracy; with repeats, ± the standard deviation across them (seeds)."""
    if accuracies.empty:
        return "–"
    if len(accuracies) == 1:
        return f"{accuracies.iloc[0] * 100:.2f} %"
    return f"{accuracies.mean() * 100:.2f} % ± {accuracies.std(ddof=1) * 100:.2f}"


_LABELS = {"precision": "Precision", "jit_compile": "XLA", "cpu_threads": "CPU threads",
           "steps_per_execution": "Steps/execution", "data_placement": "Data placement"}


def _dim_text(dim: str, value, xla=None) -> str:
    if dim == "cpu_threads" and not value:
        return "default"
    if dim == "jit_compile" and value == "auto" and xla in (True, False):
        return f"auto ({'on' if xla else 'off'})"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


#: What must match for a row to be compared with a CPU row: the precision *as requested*,
#: so that with "auto" each device is compared at its own default.
SPEEDUP_SETTINGS = ("batch_size", "precision_requested", "jit_compile", "cpu_threads",
                    "steps_per_execution", "data_placement_requested")


def _speedup(row: pd.Series, runs: pd.DataFrame, median_step: float) -> str:
    """The CPU row's median step / this row's, at the same batch size and settings."""
    runs = runs.assign(precision_requested=_requested(runs, "precision"),
                       data_placement_requested=_requested(runs, "data_placement"))
    wanted = runs.loc[row.name]
    cpu = runs[(runs["status"] == "ok") & (runs["device_type"] == "CPU")]
    for setting in SPEEDUP_SETTINGS:
        cpu = cpu[cpu[setting] == wanted[setting]]
    return f"{cpu['step_median_s'].median() / median_step:.2f}×" if not cpu.empty else "–"


def _requested(runs: pd.DataFrame, setting: str) -> pd.Series:
    """``<setting>_requested``, falling back to ``setting`` itself for rows that lack it."""
    column = f"{setting}_requested"
    requested = runs[column] if column in runs else runs[setting]
    return requested.where(requested.notna() & (requested != ""), runs[setting])


def describe_settings(runs: pd.DataFrame, env: dict | None = None) -> list[str]:
    """The notes under the table: what every figure is and how it was measured."""
    runs = numeric(runs)
    ok = runs[runs["status"] == "ok"]
    notes = []
    if not ok.empty:
        first = ok.iloc[0]
        epochs, steps, warmup = int(first["epochs"]), int(first["steps_per_epoch"]), int(first["warmup_steps"])
        fixed = [f"{_LABELS[d]} {_dim_text(d, runs[d].iloc[0], first.get('xla'))}"
                 for d in DIMENSIONS[2:] if runs[d].nunique(dropna=False) <= 1]
        notes += [
            f"**Time**: wall time of the whole training run of the cell: {epochs} epoch(s) × "
            f"{steps} steps at the row's batch size, warm-up included; TensorFlow start-up "
            f"(median {ok['startup_s'].median():.1f} s), data loading (median "
            f"{ok['data_load_s'].median():.1f} s) and evaluation are not in it.",
            "**Accuracy**: " + _accuracy_note(ok),
            f"**Images/s**: batch size ÷ median steady step time; the first {warmup} step(s) of "
            "each cell (tracing, compilation) are excluded; every step is timed until its loss "
            "is on the host (device synced).",
            "**Median step**: median steady step time. **Speed-up vs CPU**: the CPU row's median "
            "step ÷ this row's, same batch size and settings.",
            "**TFLOP/s**: analytic training FLOPs per image (forward + backward of the conv and "
            f"dense layers, {_number(first['flops_per_image'] / 1e6, '.1f', ' M')}) × images/s. "
            "**Efficiency**: TFLOP/s ÷ the device's measured peak in that precision (a large "
            "dense matrix multiply in TensorFlow, `python -m bench peak`).",
            f"**Est. notebook run**: projected time of the notebook's training ({NOTEBOOK_EPOCHS} "
            f"epochs of {NOTEBOOK_TRAIN_IMAGES:,} images) at the mean steady step time: an estimate, "
            "not a measurement.",
        ]
        if ok["unsynced_images_per_s"].notna().any():
            notes.append("**Unsynced images/s**: the same model trained a further "
                         f"{int(ok['unsynced_steps'].max())} steps timed as one block with a single sync "
                         "at the end. **Sync overhead**: throughput the per-step sync costs, "
                         "1 − images/s ÷ unsynced images/s (negative: within noise of zero).")
        if fixed:
            notes.append("All rows: " + ", ".join(fixed) + ".")
    if "GPU" not in set(ok["device_type"]):
        skipped = runs[(runs["device_type"] == "GPU") | (runs["status"] == "skipped")]
        if not skipped.empty:
            reason = skipped["reason"].iloc[0]
        elif env is not None and not env.get("gpus"):
            reason = "this machine has no GPU"
        else:
            reason = "no GPU was requested"
        notes.append(f"**No GPU was measured** in this run ({reason}).")
    return notes


def _accuracy_note(ok: pd.DataFrame) -> str:
    measured = ok[ok["heldout_images"] > 0]
    if measured.empty:
        return ("not measured: " + str(ok["accuracy_note"].iloc[0]).removeprefix("not measured: ")
                + ". Synthetic data measures speed only.")
    split = measured["split"].iloc[0]
    images = int(measured["heldout_images"].iloc[0])
    where = "the official test set" if split == "standard" else "the last 10,000 training images"
    spread = (" With repeats: mean ± standard deviation across them (each repeat uses "
              "another seed)." if ok["repeat"].max() > 0 else "")
    return (f"on the whole held-out split ({images:,} images, {where}) after that training, "
            "not the best mini-batch." + spread)


def summary_markdown(runs: pd.DataFrame, env: dict, command: str | None = None) -> str:
    """The table with its notes: what summary.md holds and what goes into the README."""
    table = summary_frame(runs).to_markdown(index=False, disable_numparse=True)
    run_id = runs["run_id"].iloc[0] if len(runs) else "?"
    tf_version = env.get("tensorflow", {}).get("version") or "?"
    cpu = env.get("cpu", {}).get("model") or "?"
    when = str(runs["started_at"].dropna().iloc[0])[:10] if runs["started_at"].notna().any() else "?"
    header = (f"Run `{run_id}` ({when}) on {env.get('system', '?')}, {cpu}, "
              f"TensorFlow {tf_version}, data: {_data_label(runs)}.")
    lines = [header, "", table, ""]
    lines += [f"- {note}" for note in describe_settings(runs, env)]
    if command:
        lines += ["", f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def _data_label(runs: pd.DataFrame) -> str:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return "–"
    data = set(ok["data"])
    if data == {"synthetic"}:
        return "**synthetic** (random images: speed only)"
    split = ok["split"].iloc[0]
    return f"CIFAR-10, {split} split"
