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

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from bench import matrix, stats
from bench.matrix import MATCH_KEYS
from bench.store import BaselineError, Run

REGRESSION, FASTER, WITHIN_NOISE = "regression", "faster", "within noise"

#: (label, where in env.json) of what can change a measurement between two runs.
ENV_FIELDS = (
    ("OS", ("system",)), ("CPU model", ("cpu", "model")), ("logical CPUs", ("cpu", "logical_cpus")),
    ("CPUs usable by the process", ("cpu", "usable_cpus")), ("memory", ("memory_bytes",)),
    ("GPUs", ("gpus",)), ("Python", ("python",)), ("TensorFlow", ("tensorflow", "version")),
    ("Keras", ("tensorflow", "keras")), ("JAX", ("backends", "jax", "version")),
    ("PyTorch", ("backends", "torch", "version")), ("NumPy", ("packages", "numpy")),
    ("oneDNN", ("tensorflow", "onednn_enabled")), ("NVIDIA driver", ("driver_version",)),
    ("CUDA", ("tensorflow", "cuda_version")), ("cuDNN", ("tensorflow", "cudnn_version")),
    ("environment variables", ("environment",)),
)


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


#: Matching across machines: every dimension, the device by type and index but not by name
#: (two machines' CPUs have different names). ``bench compare --match settings``.
SETTINGS_MATCH_KEYS = ("device_type", "device_id", *(d.name for d in matrix.DIMENSIONS))


def _keyed(run: Run, keys: tuple[str, ...] = MATCH_KEYS) -> dict[tuple, tuple[dict, list[np.ndarray]]]:
    """Each matched cell's key -> (key as dict, steady step times of each ok repeat)."""
    ok = run.runs[run.runs["status"] == "ok"]
    cells = {}
    for key, group in ok.groupby(list(keys), sort=False, dropna=False):
        repeats = [steps for steps in map(run.steady_steps, group["cell_id"]) if len(steps)]
        if repeats:
            cells[tuple(str(matrix.plain(v)) for v in key)] = (dict(zip(keys, key)), repeats)
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


def compare(baseline: Run, current: Run, max_slowdown: float = 0.10,
            confidence: float = 0.95, match_keys: tuple[str, ...] = MATCH_KEYS) -> Comparison:
    """Match cells (on ``match_keys``) and decide each; BaselineError when nothing matches.

    Cells are labelled by their device, batch size and every dimension that varies across
    the two runs, by value, so no two compared cells read alike.
    """
    base_cells, cur_cells = _keyed(baseline, match_keys), _keyed(current, match_keys)
    matched = [k for k in cur_cells if k in base_cells]
    varying = matrix.varying_dimensions([pd.DataFrame([spec for spec, _ in cells.values()])
                                         for cells in (base_cells, cur_cells) if cells])

    def _cell_label(key: dict) -> str:
        # matched by settings, a cell has no device name: its index says which device
        return matrix.describe({"device_name": key.get("device_id", ""), **key}, varying)

    comparison = Comparison(
        cells=[], only_in_baseline=[_cell_label(base_cells[k][0]) for k in base_cells if k not in cur_cells],
        only_in_current=[_cell_label(cur_cells[k][0]) for k in cur_cells if k not in base_cells],
        environment_differences=environment_differences(baseline.env, current.env),
        max_slowdown=max_slowdown, confidence=confidence,
        baseline=str(baseline.directory), current=str(current.directory))
    if not matched:
        raise BaselineError(
            f"nothing to compare: no cell of {current.directory} matches one of {baseline.directory} "
            f"(by {', '.join(match_keys)}); baseline has {len(base_cells)} cell(s), run has "
            f"{len(cur_cells)}")
    for key in matched:
        spec, base = base_cells[key]
        _, cur = cur_cells[key]
        verdict = decide(base, cur, max_slowdown, confidence)
        batch = float(spec["batch_size"])
        comparison.cells.append(CellComparison(
            cell=_cell_label(spec), key={k: str(matrix.plain(v)) for k, v in spec.items()},
            baseline_images_per_s=batch / float(np.median(np.concatenate(base))),
            current_images_per_s=batch / float(np.median(np.concatenate(cur))),
            change_pct=(verdict.ratio - 1) * 100, low_pct=(verdict.low - 1) * 100,
            high_pct=(verdict.high - 1) * 100, verdict=verdict.verdict,
            baseline_steps=sum(map(len, base)), current_steps=sum(map(len, cur)),
            baseline_repeats=len(base), current_repeats=len(cur)))
    return comparison


MATCHES = ("device", "settings")


def compare_runs(reference: Run, other: Run, match: str = "device", max_slowdown: float = 0.10,
                 confidence: float = 0.95) -> Comparison:
    """``bench compare``: any two runs, of one machine or two.

    ``match="device"`` matches cells as ``check`` does (device type and name, every
    dimension); ``"settings"`` matches every dimension and the device by type and index
    (cpu with cpu, gpu:0 with gpu:0) whatever its name, and the report names the devices
    that differ. With device matching and nothing in common, the error says whether
    ``--match settings`` would match.
    """
    keys = MATCH_KEYS if match == "device" else SETTINGS_MATCH_KEYS
    try:
        comparison = compare(reference, other, max_slowdown, confidence, keys)
    except BaselineError as exc:
        if match == "device" and set(_keyed(reference, SETTINGS_MATCH_KEYS)) & set(_keyed(other, SETTINGS_MATCH_KEYS)):
            raise BaselineError(f"{exc}; the devices have different names (two machines?): "
                                "pass --match settings to compare them by settings") from None
        raise
    if match == "settings":
        names = [_device_names(run) for run in (reference, other)]
        differ = [f"{device_id}: {names[0][device_id]} vs {names[1][device_id]}"
                  for device_id in dict.fromkeys(c.key["device_id"] for c in comparison.cells)
                  if names[0].get(device_id) != names[1].get(device_id)]
        comparison.notes.append(
            "Cells matched by settings (--match settings): every dimension and the device's "
            "type and index, not its name. " + (f"The devices differ ({'; '.join(differ)}): the "
                                                "ratio compares devices, not a change of code."
                                                if differ else "The devices have the same names."))
    return comparison


def _device_names(run: Run) -> dict[str, str]:
    ok = run.runs[run.runs["status"] == "ok"]
    return {str(i): str(n) for i, n in zip(ok["device_id"], ok["device_name"])}


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
    lines += [f"- {note}" for note in comparison.notes]
    if comparison.environment_differences:
        lines.append("- WARNING: the environments differ: "
                     + "; ".join(comparison.environment_differences) + ".")
    return "\n".join(lines) + "\n"


def parse_slowdown(text: str) -> float:
    """A slowdown as a percentage with '%' ('10%') or a fraction below 1 ('0.1') -> 0.10.

    A bare number of 1 or more ('10', '1') is refused: it could mean 10 % or 1000 %.
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(f"'{text}' is not a slowdown; write a percentage (10%) or a fraction (0.1)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"'{text}' must be positive: a percentage (10%) or a fraction (0.1)")
    if percent:
        return value / 100
    if value >= 1:
        raise ValueError(f"'{text}' is ambiguous; write {value:g}% for {value:g} percent, or a "
                         "fraction below 1 (0.1 = 10%)")
    return value
