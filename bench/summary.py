"""The human summary of a run: the table (pandas -> Markdown) and the notes under it.

Every figure says what it is and how it was measured; the notes say what every row has in
common, what was not measured and why, and what else used the machine.
"""

from __future__ import annotations

import math

import pandas as pd

from bench import matrix
from bench.record import NOTABLE_CONTENTION_PCT, NOTEBOOK_EPOCHS, NOTEBOOK_TRAIN_IMAGES, RUN_COLUMNS
from cifar_model.settings import STRATEGY_DOCS


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


def _dims(runs: pd.DataFrame) -> list[str]:
    return [d.name for d in matrix.DIMENSIONS if d.name in runs.columns]


def shown_dimensions(runs: pd.DataFrame) -> list[str]:
    """Dimensions other than batch size that vary among the measured rows: they get columns."""
    measured = runs[runs["status"] != "skipped"]
    return [d for d in matrix.varying_dimensions([measured]) if d != "batch_size"]


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


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per measured cell (repeats aggregated by their median), in the notebook's columns.

    Cells skipped on every repeat are not rows (the notes say why once); runs.csv keeps them.
    """
    runs = numeric(runs)
    shown = shown_dimensions(runs)
    scaling = is_scaling_run(runs)
    rows = []
    for _, group in runs.groupby(["device_id", *_dims(runs)], sort=False, dropna=False):
        if (group["status"] == "skipped").all():
            continue
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        row = {"System": _system(first), "Device": first["device_name"] or first["device_id"],
               "Device Type": first["device_type"], "Batch size": int(first["batch_size"])}
        row.update({matrix.BY_NAME[d].label: dimension_text(d, first[d], first.get("xla"), _agreed(ok, "math"))
                    for d in shown})
        if ok.empty:
            row["Time"] = f"{group.iloc[-1]['status']}: {group.iloc[-1]['reason']}"
            rows.append(row)
            continue
        median_step = ok["step_median_s"].median()
        row.update({
            "Time": format_duration(ok["train_s"].median()),
            "Accuracy": accuracy_text(ok),
            "Images/s": number(ok["images_per_s"].median(), ",.0f"),
            "Median step": number(median_step * 1000, ".1f", " ms"),
            "Speed-up vs CPU": _speedup(first, runs, median_step),
            "TFLOP/s": number(ok["achieved_tflops"].median(), ".3f"),
            "Efficiency": number(ok["efficiency_pct"].median(), ".0f", " %"),
            "Efficiency (theoretical)": number(_median(ok, "efficiency_theoretical_pct"), ".1f", " %"),
            "Est. notebook run": format_duration(ok["projected_seed_run_s"].median()),
        })
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
        if len(group) > 1:
            row["Repeats"] = f"{len(ok)}/{len(group)}"
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("–")
    # a column no row could fill (no theoretical peak known here) is left out; the notes say why
    frame = frame.drop(columns=[c for c in ("Efficiency (theoretical)",)
                                if c in frame and (frame[c] == "–").all()])
    if scaling:
        frame = frame.rename(columns={"Batch size": "Batch size (per replica)",
                                      "Images/s": "Images/s per replica"})
    return frame


def _scaling_speedup(ok: pd.DataFrame) -> str:
    if (ok["total_replicas"].fillna(1) <= 1).all():
        return "yardstick"
    checks = _texts(ok["scaling_note"])
    return number(ok["speedup_vs_1_replica"].median(), ".2f", "×") + (" (functional check)" if len(checks) else "")


def _texts(column: pd.Series) -> pd.Series:
    """The non-empty strings of a text column (CSV gives NaN or "" for none)."""
    return column[column.map(lambda v: isinstance(v, str) and v != "")]


def is_scaling_run(runs: pd.DataFrame) -> bool:
    """Does any measured row train on more than one replica (or worker)?"""
    return "total_replicas" in runs and bool((pd.to_numeric(runs.loc[runs["status"] == "ok", "total_replicas"],
                                                           errors="coerce") > 1).any())


def _median(rows: pd.DataFrame, column: str) -> float | None:
    return rows[column].median() if column in rows else None


def _system(row: pd.Series) -> str:
    label = row.get("machine_label")
    return f"{label} ({row['system']})" if isinstance(label, str) and label else str(row["system"])


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


def _full_split_images(split) -> int | None:
    from cifar_model.settings import SPLIT_SIZES

    return SPLIT_SIZES.get(split, (None, None))[1]


def _speedup(row: pd.Series, runs: pd.DataFrame, median_step: float) -> str:
    """The CPU row's median step / this row's, same machine, batch size and settings as asked.

    Resolvable dimensions compare as *requested*, so that with ``auto`` each device is
    compared at its own default.
    """
    wanted = runs.loc[row.name]
    cpu = runs[(runs["status"] == "ok") & (runs["device_type"] == "CPU")
               & (runs["system"] == wanted["system"])]
    for d in matrix.DIMENSIONS:
        column = f"{d.name}_requested" if d.resolve is not None else d.name
        if column in runs:
            cpu = cpu[_requested(cpu, d.name, column) == _requested(runs.loc[[row.name]], d.name, column).iloc[0]]
    ratio = cpu["step_median_s"].median() / median_step if not cpu.empty else float("nan")
    return f"{ratio:.2f}×" if math.isfinite(ratio) else "–"  # no steady steps on either side: no ratio


def _requested(runs: pd.DataFrame, name: str, column: str) -> pd.Series:
    """``column`` (e.g. precision_requested), falling back to ``name`` for rows that lack it."""
    requested = runs[column]
    return requested.where(requested.notna() & (requested != ""), runs[name])


def describe_settings(runs: pd.DataFrame, env: dict | None = None) -> list[str]:
    """The notes under the table: what every figure is and how it was measured."""
    runs = numeric(runs)
    ok = runs[runs["status"] == "ok"]
    notes = []
    if not ok.empty:
        first = ok.iloc[0]
        epochs, steps, warmup = int(first["epochs"]), int(first["steps_per_epoch"]), int(first["warmup_steps"])
        notes += [
            f"**Time**: wall time of the whole training run of the cell: {epochs} epoch(s) × "
            f"{steps} steps at the row's batch size, warm-up included; framework start-up "
            f"(median {ok['startup_s'].median():.1f} s), data loading (median "
            f"{ok['data_load_s'].median():.1f} s) and evaluation are not in it.",
            "**Accuracy**: " + _accuracy_note(ok),
            f"**Images/s**: batch size ÷ median steady step time; the first {warmup} step(s) of "
            "each cell (tracing, compilation) are excluded; every step is timed until its loss "
            "is on the host (device synced).",
            "**Median step**: median steady step time. **Speed-up vs CPU**: the CPU row's median "
            "step ÷ this row's, same machine, batch size and settings.",
            "**TFLOP/s**: analytic training FLOPs per image (forward + backward of the conv and "
            f"dense layers, {number(first['flops_per_image'] / 1e6, '.1f', ' M')}) × images/s. "
            "**Efficiency**: TFLOP/s ÷ the device's measured peak in that precision, thread count "
            "and backend (a large dense matrix multiply, `python -m bench peak`). "
            "**Efficiency (theoretical)**: TFLOP/s ÷ the device's theoretical peak in that "
            "precision: " + _theoretical_basis(ok) + ".",
            f"**Est. notebook run**: projected time of the notebook's training ({NOTEBOOK_EPOCHS} "
            f"epochs of {NOTEBOOK_TRAIN_IMAGES:,} images) at the mean steady step time: an estimate, "
            "not a measurement.",
        ]
        if ok["unsynced_images_per_s"].notna().any():
            notes.append("**Unsynced images/s**: the same model trained a further "
                         f"{int(ok['unsynced_steps'].max())} steps timed as one block with a single sync "
                         "at the end. **Sync overhead**: throughput the per-step sync costs, "
                         "1 − images/s ÷ unsynced images/s (negative: within noise of zero).")
        if is_scaling_run(ok):
            notes += _scaling_notes(ok)
        no_steady = ok[ok["step_median_s"].isna()]
        if not no_steady.empty:
            notes.append(f"{len(no_steady)} cell(s) had **no steady steps** (every step was warm-up): "
                         "lower --warmup or raise --steps.")
    measured = runs[runs["status"] != "skipped"]
    fixed = [f"{matrix.BY_NAME[d].label} "
             f"{dimension_text(d, measured[d].iloc[0], _agreed(ok, 'xla'), _agreed(ok, 'math'))}"
             for d in _dims(runs) if d != "batch_size" and d not in shown_dimensions(runs)
             and len(measured)]
    if fixed:
        notes.append("All rows: " + ", ".join(fixed) + ".")
    notes += (math_notes(ok) + _impossible_efficiency_notes(ok) + _cpu_notes(runs, env)
              + _precision_notes(ok, env) + _contention_notes(ok) + _skipped_notes(runs, env))
    return notes


def _theoretical_basis(ok: pd.DataFrame) -> str:
    """Each distinct basis of the theoretical peaks, once per device and precision (twice for
    fp32 on a GPU where one backend ran TF32 and another IEEE fp32)."""
    if "theoretical_basis" not in ok or ok["theoretical_basis"].isna().all():
        return "not recorded for this run"
    shown = []
    for (device, precision), group in ok.groupby(["device_id", "precision"], sort=False):
        for basis, same in group[group["theoretical_basis"].notna()].groupby("theoretical_basis", sort=False):
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
    """What the data-parallel columns are, which engine ran, and which rows cannot show scaling."""
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
        notes.append("**Engine** (strategy column): " + "; ".join(used) + ".")
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


def _agreed(ok: pd.DataFrame, column: str):
    """The value of ``column`` every row that recorded one shares, else None: what ``jit_compile
    auto`` resolved to (backends differ: JAX always compiles), the math fp32 ran in."""
    values = {v for v in ok[column].dropna() if v != ""} if column in ok else set()
    return values.pop() if len(values) == 1 else None


def _cpu_notes(runs: pd.DataFrame, env: dict | None) -> list[str]:
    """A run with fewer usable CPUs than the machine has says so: its CPU figures are not the machine's."""
    cpu = (env or {}).get("cpu") or {}
    usable, logical = cpu.get("usable_cpus"), cpu.get("logical_cpus")
    if isinstance(usable, (int, float)) and isinstance(logical, (int, float)) and usable < logical:
        why = cpu.get("usable_cpus_reason") or "affinity or cgroup quota"
        return [f"**Restricted CPUs**: this run could use {usable:g} of the machine's {logical} "
                f"logical CPUs ({why}); its CPU figures describe that share, not the whole CPU."]
    return []


def _contention_notes(ok: pd.DataFrame) -> list[str]:
    if "other_cpu_pct" not in ok or ok["other_cpu_pct"].isna().all():
        return []
    busy = ok[(ok["other_cpu_pct"] >= NOTABLE_CONTENTION_PCT) | (ok["steal_pct"].fillna(0) >= NOTABLE_CONTENTION_PCT)]
    if busy.empty:
        return [f"**Contention**: other processes used at most {ok['other_cpu_pct'].max():.0f} % of "
                "the usable CPUs while cells ran (negligible)."]
    worst = busy.loc[busy["other_cpu_pct"].idxmax()]
    return [f"**Machine busy**: in {len(busy)} of {len(ok)} cell(s) other processes used "
            f"≥ {NOTABLE_CONTENTION_PCT:g} % of the usable CPUs (worst: {worst['other_cpu_pct']:.0f} % "
            f"in {worst['cell_id']}"
            + (f"; {worst['contention_note']}" if isinstance(worst.get("contention_note"), str)
               and worst["contention_note"] else "")
            + "); those cells' speed figures are likely low."]


def _skipped_notes(runs: pd.DataFrame, env: dict | None) -> list[str]:
    """Skipped cells once, by reason, instead of rows full of dashes."""
    notes = []
    skipped = runs[runs["status"] == "skipped"]
    for reason, group in skipped.groupby("reason", sort=False):
        devices = ", ".join(dict.fromkeys(group["device_id"]))
        notes.append(f"**Not measured** ({len(group)} cell(s) on {devices}): {reason}.")
    ok = runs[runs["status"] == "ok"]
    if "GPU" not in set(ok["device_type"]) and skipped[skipped["device_type"] == "GPU"].empty:
        reason = ("this machine has no GPU" if env is not None and not env.get("gpus")
                  else "no GPU was requested")
        notes.append(f"**No GPU was measured** in this run ({reason}).")
    elif "GPU" not in set(ok["device_type"]):
        notes.append("**No GPU was measured** in this run (see above).")
    return notes


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


def header(runs: pd.DataFrame, env: dict) -> str:
    run_id = runs["run_id"].iloc[0] if len(runs) else "?"
    versions = ", ".join(f"{name} {version}" for name, version in framework_versions(runs, env))
    cpu = (env.get("cpu") or {}).get("model") or "?"
    started = runs["started_at"].dropna() if "started_at" in runs else pd.Series(dtype=str)
    when = str(started.iloc[0])[:10] if len(started) else "?"
    label = env.get("machine_label")
    machine = f"{label}: " if label else ""
    return (f"Run `{run_id}` ({when}) on {machine}{env.get('system', '?')}, {cpu}, "
            f"{versions or 'TensorFlow ?'}, data: {data_label(runs)}.")


def framework_versions(runs: pd.DataFrame, env: dict) -> list[tuple[str, str]]:
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    ok = runs[runs["status"] == "ok"]
    out = []
    for backend in dict.fromkeys(ok["backend"]) if "backend" in ok else ["tensorflow"]:
        rows = ok[ok["backend"] == backend] if "backend" in ok else ok
        version = next((v for v in rows.get("framework_version", pd.Series(dtype=str)) if isinstance(v, str) and v), None)
        if version is None and backend == "tensorflow":
            version = (env.get("tensorflow") or {}).get("version")
        out.append((names.get(backend, backend), version or "?"))
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


def summary_markdown(runs: pd.DataFrame, env: dict, command: str | None = None) -> str:
    """The table with its notes: what summary.md holds and what goes into the README."""
    table = summary_frame(runs)
    lines = [header(runs, env), ""]
    lines += [table.to_markdown(index=False, disable_numparse=True) if len(table)
              else "_No cell was measured._", ""]
    lines += [f"- {note}" for note in describe_settings(runs, env)]
    if command:
        lines += ["", f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def summary_json(runs: pd.DataFrame, env: dict) -> dict:
    """The same table for scripts: the rows as shown, the notes, and the header."""
    table = summary_frame(runs)
    return {"header": header(runs, env), "rows": table.to_dict(orient="records"),
            "notes": describe_settings(runs, env)}
