"""One table from several runs: machines side by side, as airspeed velocity merges per-machine results.

Each run keeps its own files; this module only reads several and lays their cells out in
one table. Rows are told apart by a short *machine* name (the user's ``--machine-label``,
else "CPU model (short OS)"); the long descriptions go once into the notes. Settings that
differ between the runs (data, steps, a dimension) become columns, never averages, and the
notes say which figures cannot be read across them. "Speed-up" is against a reference the
user names (:class:`Reference`), and the column says which.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench import matrix, summary
from bench.environment import machine_id
from bench.store import Run


class MultiRunError(Exception):
    """The runs cannot be put in one table as asked (an unknown reference)."""


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
    names, seen = [], {}
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

DEVICE = re.compile(r"^(?P<machine>.+):(?P<device>cpu|gpu(?::\d+)?)$")


@dataclass(frozen=True)
class Reference:
    """What "Speed-up" divides by: each machine's own CPU, or one named machine's device."""

    machine: str | None = None     # None: the CPU row of the row's own machine
    device_id: str = "cpu"

    @classmethod
    def parse(cls, text: str | None) -> "Reference":
        if text is None or text.strip().lower() == "cpu":
            return cls()
        found = DEVICE.match(text.strip())
        if not found:
            raise MultiRunError(f"--reference '{text}': write 'cpu' (each machine's own CPU) or "
                                "MACHINE:DEVICE, e.g. 'laptop:gpu:0' or 'laptop:cpu'")
        device = found["device"] if found["device"] != "gpu" else "gpu:0"
        return cls(found["machine"], device)

    @property
    def column(self) -> str:
        return "Speed-up vs CPU" if self.machine is None else f"Speed-up vs {self.machine} {self.device_id}"

    @property
    def note(self) -> str:
        if self.machine is None:
            return ("**Speed-up vs CPU**: the median step of the CPU row of the same machine (the "
                    "same run where it has one), batch size and settings as asked ÷ this row's.")
        return (f"**{self.column}**: the median step of {self.device_id} on {self.machine} at the "
                "same batch size and settings as asked ÷ this row's (>1: this row is faster).")


# --------------------------------------------------------------------------- the table

#: Run-wide settings that become a column when they differ between rows: column -> header.
SETTINGS = {"data": "Data", "split": "Split", "steps_text": "Steps", "warmup_steps": "Warm-up"}


def combined(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run's rows in one frame, with the run's ``machine`` name and position."""
    frames = []
    for index, (run, machine) in enumerate(zip(runs, machine_names(runs))):
        frame = summary.numeric(run.runs)
        frame["machine"], frame["run_index"], frame["source"] = machine, index, str(run.directory)
        frame["steps_text"] = [f"{int(e)} × {int(s)}" if pd.notna(e) and pd.notna(s) else "–"
                               for e, s in zip(frame["epochs"], frame["steps_per_epoch"])]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def varying_settings(frame: pd.DataFrame) -> list[str]:
    measured = frame[frame["status"] == "ok"]
    return [name for name in SETTINGS
            if measured[name].map(lambda v: str(matrix.plain(v))).nunique() > 1]


def _requested_key(frame: pd.DataFrame) -> pd.DataFrame:
    """Every dimension as asked (resolvable ones by their ``_requested`` column), as text."""
    out = pd.DataFrame(index=frame.index)
    for d in matrix.DIMENSIONS:
        column = f"{d.name}_requested" if d.resolve is not None else d.name
        values = frame[column].where(frame[column].notna() & (frame[column] != ""), frame[d.name])
        out[d.name] = values.map(lambda v: str(matrix.plain(v)))
    return out


def check_reference(frame: pd.DataFrame, reference: Reference) -> None:
    """A named reference must be a measured device of a machine in the table."""
    if reference.machine is None:
        return
    ok = frame[frame["status"] == "ok"]
    available = list(dict.fromkeys(f"{m}:{d}" for m, d in zip(ok["machine"], ok["device_id"])))
    if not ((ok["machine"] == reference.machine) & (ok["device_id"] == reference.device_id)).any():
        raise MultiRunError(f"--reference {reference.machine}:{reference.device_id}: no measured "
                            f"cell of that machine and device; choose from {', '.join(available)} "
                            "or 'cpu'")


def _speedups(frame: pd.DataFrame, reference: Reference) -> pd.Series:
    """Per row: the reference's median step ÷ the row's (NaN where there is no reference row)."""
    ok = frame[(frame["status"] == "ok") & frame["step_median_s"].notna()]
    keys = _requested_key(frame)
    out = pd.Series(float("nan"), index=frame.index)
    for index in ok.index:
        row = frame.loc[index]
        same = (keys.loc[ok.index] == keys.loc[index]).all(axis=1)
        if reference.machine is None:
            candidates = ok[same & (ok["device_type"] == "CPU") & (ok["machine"] == row["machine"])]
            own_run = candidates[candidates["run_index"] == row["run_index"]]
            candidates = own_run if len(own_run) else candidates
        else:
            candidates = ok[same & (ok["machine"] == reference.machine)
                            & (ok["device_id"] == reference.device_id)]
        if len(candidates):
            out[index] = candidates["step_median_s"].median() / row["step_median_s"]
    return out


def table(runs: Sequence[Run], reference: Reference = Reference()) -> pd.DataFrame:
    """One row per machine, device and cell (repeats by their median), ordered by machine,
    device type and batch size; run-wide settings that differ become columns."""
    frame = combined(runs)
    check_reference(frame, reference)
    frame["speedup"] = _speedups(frame, reference)
    measured = frame[frame["status"] != "skipped"]
    dims = [d for d in matrix.varying_dimensions([measured]) if d != "batch_size"]
    settings = varying_settings(frame)
    several_runs = frame.groupby("machine")["run_index"].nunique().max() > 1
    keys = ["machine", *(["run_id"] if several_runs else []), "device_id",
            *(d.name for d in matrix.DIMENSIONS), *settings]
    order = {m: i for i, m in reversed(list(enumerate(frame["machine"])))}
    rows = []
    for _, group in measured.groupby(keys, sort=False, dropna=False):
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        row = {"Machine": first["machine"], **({"Run": first["run_id"]} if several_runs else {}),
               "Device": first["device_name"] or first["device_id"], "Device Type": first["device_type"],
               "Batch size": int(first["batch_size"])}
        row.update({matrix.BY_NAME[d].label: summary.dimension_text(d, first[d], first.get("xla"),
                                                                    first.get("math"))
                    for d in dims})
        row.update({SETTINGS[s]: str(matrix.plain(first[s])) for s in settings})
        if ok.empty:
            row["Time"] = f"{group.iloc[-1]['status']}: {group.iloc[-1]['reason']}"
        else:
            speedup = ok["speedup"].median()
            row.update({
                "Time": summary.format_duration(ok["train_s"].median()),
                "Accuracy": summary.accuracy_text(ok),
                "Images/s": summary.number(ok["images_per_s"].median(), ",.0f"),
                "Median step": summary.number(ok["step_median_s"].median() * 1000, ".1f", " ms"),
                reference.column: summary.number(speedup, ".2f", "×"),
                "Est. notebook run": summary.format_duration(ok["projected_seed_run_s"].median()),
            })
        if len(group) > 1:
            row["Repeats"] = f"{len(ok)}/{len(group)}"
        row["_order"] = (order[first["machine"]], first["device_type"] != "CPU", str(first["device_id"]),
                         int(first["batch_size"]))
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    result = pd.DataFrame(rows).drop(columns="_order") if rows else pd.DataFrame()
    return result.fillna("–")


# --------------------------------------------------------------------------- notes

def _versions(run: Run) -> str:
    return ", ".join(f"{name} {version}" for name, version in summary.framework_versions(run.runs, run.env))


def notes(runs: Sequence[Run], reference: Reference = Reference()) -> list[str]:
    frame = combined(runs)
    names = machine_names(runs)
    ok = frame[frame["status"] == "ok"]
    out = []
    for run, name in zip(runs, names):
        env = run.env
        gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "no GPU"
        out.append(f"**{name}**: {env.get('system') or _first(run.runs, 'system') or '?'}, "
                   f"{(env.get('cpu') or {}).get('model') or '?'}, {gpus}; {_versions(run)}; "
                   f"run `{run.run_id}` ({_date(run)}), data: {summary.data_label(run.runs)}.")
    settings = varying_settings(frame)
    if "data" in settings:
        out.append("**Data differs between rows** (see Data): accuracy is measured only on "
                   "CIFAR-10 rows; synthetic rows measure speed only.")
    if "steps_text" in settings or "warmup_steps" in settings:
        out.append("**Time covers different numbers of training steps** (see Steps: epochs × "
                   "steps per epoch): do not compare Time across them; Images/s, Median step "
                   "and Est. notebook run are per-step figures and do compare.")
    with_accuracy = ok[ok["heldout_images"].fillna(0) > 0]
    if with_accuracy[["split", "steps_text"]].drop_duplicates().shape[0] > 1:
        out.append("**Accuracy** of rows trained on another split or for another number of "
                   "steps is not comparable; it is shown as measured.")
    versions = {name: _versions(run) for run, name in zip(runs, names)}
    if len(set(versions.values())) > 1:
        out.append("**Software differs between runs**: "
                   + "; ".join(f"{name}: {v}" for name, v in versions.items()) + ".")
    out += [
        "**Time**: wall time of the whole training run of the cell (warm-up included; start-up, "
        "data loading and evaluation not). **Accuracy**: on the held-out images after training.",
        "**Images/s**: batch size ÷ median steady step time (warm-up excluded, device synced). "
        "**Median step**: median steady step time.",
        reference.note,
        "**Est. notebook run**: the notebook's training (26 epochs of 40,000 images) projected "
        "at the mean steady step time: an estimate, not a measurement.",
    ]
    measured = frame[frame["status"] != "skipped"]
    shown = set(matrix.varying_dimensions([measured]))
    fixed = [f"{matrix.BY_NAME[d.name].label} {summary.dimension_text(d.name, measured[d.name].iloc[0])}"
             for d in matrix.DIMENSIONS if d.name not in shown and d.name != "batch_size" and len(measured)]
    if fixed:
        out.append("All rows: " + ", ".join(fixed) + ".")
    out += summary.math_notes(ok)
    for name, group in frame[frame["status"] == "skipped"].groupby("machine", sort=False):
        reasons = "; ".join(dict.fromkeys(group["reason"]))
        out.append(f"**Not measured on {name}** ({len(group)} cell(s)): {reasons}.")
    return out


def _date(run: Run) -> str:
    started = [v for v in run.runs.get("started_at", []) if isinstance(v, str) and v]
    return min(started)[:10] if started else "?"


# --------------------------------------------------------------------------- outputs

def header(runs: Sequence[Run]) -> str:
    names = machine_names(runs)
    machines = len(dict.fromkeys(names))
    return (f"{len(runs)} runs on {machines} machine{'s' if machines != 1 else ''}: "
            + ", ".join(f"`{run.run_id}` ({name})" for run, name in zip(runs, names)) + ".")


def markdown(runs: Sequence[Run], reference: Reference = Reference(),
             commands: Sequence[str | None] = ()) -> str:
    """The table, its notes and one "Produced by" line per run: deterministic, so a README
    regenerated from the same runs does not change."""
    frame = table(runs, reference)
    lines = [header(runs), ""]
    lines += [frame.to_markdown(index=False, disable_numparse=True) if len(frame)
              else "_No cell was measured._", ""]
    lines += [f"- {note}" for note in notes(runs, reference)]
    produced = [(command, name) for command, name in zip(commands, machine_names(runs)) if command]
    if produced:
        lines.append("")
        lines += [f"Produced by `{command}` ({name})." for command, name in produced]
    return "\n".join(lines) + "\n"


def as_json(runs: Sequence[Run], reference: Reference = Reference()) -> dict:
    frame = table(runs, reference)
    return {"header": header(runs), "reference": reference.column,
            "rows": frame.to_dict(orient="records"), "notes": notes(runs, reference)}
