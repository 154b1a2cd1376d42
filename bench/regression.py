"""Compare a run with a baseline: per-cell verdicts from the step-time samples of both sides.

Like airspeed velocity, results and comparison are kept apart: a baseline is plain data
(the run's ``runs.csv``, ``steps.csv`` and ``env.json`` plus a small ``baseline.json``),
and this module only reads two such sets and decides.

The decision for a cell uses every steady step of both sides, not one number: the ratio
of median step times (current / baseline) with a bootstrap confidence interval
(hierarchical over repeats when a side has several). A cell is
a regression only when the whole interval lies above ``1 + max_slowdown``, faster when the
whole interval lies below ``1 / (1 + max_slowdown)``, and otherwise within noise.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bench import results, stats
from bench.environment import machine_id

BASELINE_JSON = "baseline.json"
BASELINE_SCHEMA = "cifar-bench-baseline/1"
DEFAULT_BASELINES_DIR = Path("results") / "baselines"
MATCH_KEYS = ("device_type", "device_name", "batch_size", "precision", "jit_compile",
              "cpu_threads", "steps_per_execution", "data_placement")
REGRESSION, FASTER, WITHIN_NOISE = "regression", "faster", "within noise"

#: (label, where in env.json) of what can change a measurement between two runs.
ENV_FIELDS = (
    ("OS", ("system",)), ("CPU model", ("cpu", "model")), ("logical CPUs", ("cpu", "logical_cpus")),
    ("CPUs usable by the process", ("cpu", "usable_cpus")), ("memory", ("memory_bytes",)),
    ("GPUs", ("gpus",)), ("Python", ("python",)), ("TensorFlow", ("tensorflow", "version")),
    ("Keras", ("tensorflow", "keras")), ("NumPy", ("packages", "numpy")),
    ("oneDNN", ("tensorflow", "onednn_enabled")), ("NVIDIA driver", ("driver_version",)),
    ("CUDA", ("tensorflow", "cuda_version")), ("cuDNN", ("tensorflow", "cudnn_version")),
    ("environment variables", ("environment",)),
)


class BaselineError(Exception):
    """A baseline is missing, malformed or foreign; or nothing could be compared."""


# --------------------------------------------------------------------------- baselines

def baseline_path(name_or_path: str, root: Path = DEFAULT_BASELINES_DIR) -> Path:
    """A directory path as given, else the named baseline under ``root``."""
    path = Path(name_or_path)
    if path.exists() or path.is_absolute() or len(path.parts) > 1:
        return path
    return root / name_or_path


def save_baseline(run: results.Run, name: str | None = None, root: Path = DEFAULT_BASELINES_DIR,
                  replace: bool = False) -> Path:
    """Store ``run`` as a named baseline (default name: the machine's id); returns its path."""
    name = name or machine_id(run.env)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise BaselineError(f"--name '{name}': use a plain name (letters, digits, dashes), not a path")
    ok = run.runs[run.runs["status"] == "ok"]
    if ok.empty:
        raise BaselineError(f"{run.directory}: no successful cell to keep as a baseline")
    target = root / name
    if target.exists() and not replace:
        raise BaselineError(f"baseline '{name}' already exists at {target}; pass --replace to "
                            "overwrite it or --name to choose another")
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for filename in (results.RUNS_CSV, results.STEPS_CSV, results.ENV_JSON):
        shutil.copyfile(run.directory / filename, staging / filename)
    meta = {"schema": BASELINE_SCHEMA, "name": name, "run_id": run.run_id,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_id(run.env), "cells": int(len(ok))}
    (staging / BASELINE_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def load_baseline(name_or_path: str, root: Path = DEFAULT_BASELINES_DIR) -> results.Run:
    """A baseline (or any run directory) read and validated; BaselineError otherwise."""
    path = baseline_path(name_or_path, root)
    if not path.exists():
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        hint = f" (saved: {', '.join(known)})" if known else " (save one with 'python -m bench baseline save')"
        raise BaselineError(f"baseline '{name_or_path}' not found at {path}{hint}")
    if not path.is_dir():
        raise BaselineError(f"{path}: not a baseline directory (expected runs.csv, steps.csv, env.json)")
    meta_file = path / BASELINE_JSON
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BaselineError(f"{meta_file}: not readable JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("schema") != BASELINE_SCHEMA:
            raise BaselineError(f"{meta_file}: not a cifar-bench baseline (schema "
                                f"{meta.get('schema') if isinstance(meta, dict) else None!r}, "
                                f"expected {BASELINE_SCHEMA!r})")
    try:
        return results.read_run(path)
    except results.ResultsError as exc:
        raise BaselineError(f"malformed baseline: {exc}") from None


def list_baselines(root: Path = DEFAULT_BASELINES_DIR) -> list[dict]:
    found = []
    for meta_file in sorted(root.glob(f"*/{BASELINE_JSON}")) if root.is_dir() else []:
        try:
            found.append(json.loads(meta_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            found.append({"name": meta_file.parent.name, "error": "unreadable baseline.json"})
    return found


# --------------------------------------------------------------------------- the decision

@dataclass(frozen=True)
class Verdict:
    ratio: float          # median(current) / median(baseline) step time; > 1 is slower
    low: float
    high: float
    verdict: str


def decide(baseline, current, max_slowdown: float = 0.10, confidence: float = 0.95,
           seed: int = 0) -> Verdict:
    """Regression, faster or within noise, from the two samples of step times."""
    ratio, low, high = stats.ratio_of_medians(baseline, current, confidence, seed=seed)
    if low > 1 + max_slowdown:
        verdict = REGRESSION
    elif high < 1 / (1 + max_slowdown):
        verdict = FASTER
    else:
        verdict = WITHIN_NOISE
    return Verdict(ratio, low, high, verdict)


@dataclass
class CellComparison:
    cell: str
    key: dict
    baseline_images_per_s: float
    current_images_per_s: float
    change_pct: float            # step time change, + is slower
    low_pct: float
    high_pct: float
    verdict: str
    baseline_steps: int
    current_steps: int
    baseline_repeats: int = 1
    current_repeats: int = 1


@dataclass
class Comparison:
    cells: list[CellComparison]
    only_in_baseline: list[str]
    only_in_current: list[str]
    environment_differences: list[str]
    max_slowdown: float
    confidence: float
    baseline: str
    current: str
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.verdict == REGRESSION]

    def as_dict(self) -> dict:
        return asdict(self)


def _cell_label(key: dict) -> str:
    extras = [f"{k}={key[k]}" for k in MATCH_KEYS[3:] if str(key[k]) not in ("fp32", "auto", "0", "1", "host")]
    return " ".join([f"{key['device_type']} {key['device_name']}", f"bs{key['batch_size']}", *extras])


def _keyed(run: results.Run) -> dict[tuple, tuple[dict, list[np.ndarray]]]:
    """Each matched cell's key -> (key as dict, steady step times of each ok repeat)."""
    ok = run.runs[run.runs["status"] == "ok"]
    cells = {}
    for key, group in ok.groupby(list(MATCH_KEYS), sort=False, dropna=False):
        repeats = [steps for steps in map(run.steady_steps, group["cell_id"]) if len(steps)]
        if repeats:
            cells[tuple(str(v) for v in key)] = (dict(zip(MATCH_KEYS, key)), repeats)
    return cells


def _lookup(env: dict, path: tuple[str, ...]):
    for part in path:
        if not isinstance(env, dict):
            return None
        env = env.get(part)
    return env


def environment_differences(baseline_env: dict, current_env: dict) -> list[str]:
    differences = []
    for label, path in ENV_FIELDS:
        before, after = _lookup(baseline_env, path), _lookup(current_env, path)
        if before != after and before is not None and after is not None:
            if isinstance(before, dict):
                changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                differences.append(f"{label}: {', '.join(changed)} changed")
            elif label == "GPUs":
                differences.append(f"{label}: {[g.get('name') for g in before]} -> "
                                   f"{[g.get('name') for g in after]}")
            else:
                differences.append(f"{label}: {before} -> {after}")
    return differences


def compare(baseline: results.Run, current: results.Run, max_slowdown: float = 0.10,
            confidence: float = 0.95) -> Comparison:
    """Match cells and decide each; BaselineError when nothing matches."""
    base_cells, cur_cells = _keyed(baseline), _keyed(current)
    matched = [k for k in cur_cells if k in base_cells]
    comparison = Comparison(
        cells=[], only_in_baseline=[_cell_label(base_cells[k][0]) for k in base_cells if k not in cur_cells],
        only_in_current=[_cell_label(cur_cells[k][0]) for k in cur_cells if k not in base_cells],
        environment_differences=environment_differences(baseline.env, current.env),
        max_slowdown=max_slowdown, confidence=confidence,
        baseline=str(baseline.directory), current=str(current.directory))
    if not matched:
        raise BaselineError(
            f"nothing to compare: no cell of {current.directory} matches one of {baseline.directory} "
            f"(by {', '.join(MATCH_KEYS)}); baseline has {len(base_cells)} cell(s), run has "
            f"{len(cur_cells)}")
    for key in matched:
        spec, base = base_cells[key]
        _, cur = cur_cells[key]
        verdict = decide(base, cur, max_slowdown, confidence)
        batch = float(spec["batch_size"])
        comparison.cells.append(CellComparison(
            cell=_cell_label(spec), key={k: str(v) for k, v in spec.items()},
            baseline_images_per_s=batch / float(np.median(np.concatenate(base))),
            current_images_per_s=batch / float(np.median(np.concatenate(cur))),
            change_pct=(verdict.ratio - 1) * 100, low_pct=(verdict.low - 1) * 100,
            high_pct=(verdict.high - 1) * 100, verdict=verdict.verdict,
            baseline_steps=sum(map(len, base)), current_steps=sum(map(len, cur)),
            baseline_repeats=len(base), current_repeats=len(cur)))
    return comparison


# --------------------------------------------------------------------------- reports

def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    level = f"{comparison.confidence * 100:g} %"
    return pd.DataFrame([{
        "Cell": c.cell,
        "Baseline images/s": f"{c.baseline_images_per_s:,.1f}",
        "Current images/s": f"{c.current_images_per_s:,.1f}",
        "Step time change": f"{c.change_pct:+.1f} %",
        f"{level} interval": f"[{c.low_pct:+.1f} %, {c.high_pct:+.1f} %]",
        "Verdict": c.verdict.upper() if c.verdict == REGRESSION else c.verdict,
        "Steady steps (base/current)": f"{c.baseline_steps}/{c.current_steps}",
        "Repeats": f"{c.baseline_repeats}/{c.current_repeats}",
    } for c in comparison.cells])


def comparison_markdown(comparison: Comparison) -> str:
    threshold = comparison.max_slowdown * 100
    lines = [
        f"Baseline `{comparison.baseline}` vs run `{comparison.current}`: "
        f"{len(comparison.regressions)} regression(s) in {len(comparison.cells)} matched cell(s).",
        "",
        comparison_frame(comparison).to_markdown(index=False, disable_numparse=True),
        "",
        f"- Step time change: median steady step time of the run ÷ the baseline's, minus 1 "
        f"(+ is slower); interval: {comparison.confidence * 100:g} % bootstrap confidence interval "
        "from every steady step of both sides (warm-up excluded); with repeats, the repeats are "
        "resampled too, so the interval also covers run-to-run variation.",
        f"- Regression: the whole interval above +{threshold:g} % (--max-slowdown). Faster: the "
        f"whole interval below {(1 / (1 + comparison.max_slowdown) - 1) * 100:+.1f} %. Otherwise "
        "within noise.",
    ]
    for label, cells in (("only in the baseline", comparison.only_in_baseline),
                         ("only in the run", comparison.only_in_current)):
        if cells:
            lines.append(f"- Cells {label} (not compared): {'; '.join(cells)}.")
    if comparison.environment_differences:
        lines.append("- WARNING: the environments differ: "
                     + "; ".join(comparison.environment_differences) + ".")
    return "\n".join(lines) + "\n"


def parse_slowdown(text: str) -> float:
    """'10%', '10', '0.1' (a fraction below 1) -> 0.10; ValueError when not a positive amount."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise ValueError(f"'{text}' is not a percentage (e.g. 10%)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"'{text}' must be a positive percentage (e.g. 10%)")
    return value / 100 if percent or value >= 1 else value
