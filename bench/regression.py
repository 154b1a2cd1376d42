"""Compare a run with a baseline: per-cell verdicts from the step-time samples of both sides.

Like airspeed velocity, results and comparison are kept apart: a baseline is plain data
(the run's ``runs.csv``, ``steps.csv`` and ``env.json`` plus a small ``baseline.json``),
and this module only reads two such sets and decides.

The decision for a cell uses every steady step of both sides, not one number: the ratio
of median step times (current / baseline) with a bootstrap confidence interval
(hierarchical over repeats when a side has several). A cell is
a regression only when the whole interval lies above ``1 + max_slowdown``, faster when the
whole interval lies below ``1 / (1 + max_slowdown)``, and otherwise within noise.

Then the machine gets its say (:func:`contention_verdict`): a verdict that contention alone
could have produced is replaced by *inconclusive: machine busy*, naming the side and how
busy it was. An environment change (fewer usable CPUs, another framework or driver) is not
noise: it stays a regression, with the change named as its likely cause.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench import matrix, stats
from bench.contention import BUSY_PCT
from bench.environment import FRAMEWORK_VARIABLES
from bench.matrix import MATCH_KEYS
from bench.store import BaselineError, Run
from cifar_model.settings import BACKEND_INFO

REGRESSION, FASTER, WITHIN_NOISE, INCONCLUSIVE = "regression", "faster", "within noise", "inconclusive"
#: `bench noise` adds this to the largest spread seen between identical runs.
NOISE_MARGIN_PCT = 1.0
#: A side counts as disturbed only when it was busy (:data:`bench.contention.BUSY_PCT`: other
#: processes + steal took at least that share of its usable CPUs, or another process used its
#: GPU): a worker share that fell on a quiet machine is the code's doing (a real regression can
#: serialise work), not contention. The name stays for ``bench noise``'s message.
DISTURBED_PCT = BUSY_PCT
#: A side on which other processes (+ steal) took at least half the usable CPUs was saturated:
#: the worker's threads competed with as many runnable threads as it had CPUs, and its speed
#: no longer follows the measured shares. Measured here: identical runs at 56-78 % other load
#: differed by up to 2x with equal shares (24 % vs 25 % worker), and one with *less* load
#: (59 % vs 67 %) was 35 % slower. Such a side cannot show a regression or a speed-up.
SATURATED_PCT = 50.0

@dataclass(frozen=True)
class EnvField:
    """One fact of env.json that can change training speed, and how a change of it is named.

    ``resource``: the hardware a worker may use (not its software): a change of it is a
    known cause of its own, and contention shares are not comparable across it.
    """

    label: str
    path: tuple[str, ...]
    resource: bool = False


#: What can change a measurement between two runs, and nothing else: a changed data
#: directory, hostname or a few KiB of reported memory are not causes. A fact one side did
#: not record (an older env.json) is unknown, not a difference.
ENV_FIELDS = (
    EnvField("OS", ("system",)), EnvField("CPU model", ("cpu", "model"), resource=True),
    EnvField("CPU family", ("cpu", "family"), resource=True),
    EnvField("CPU model number", ("cpu", "model_number"), resource=True),
    EnvField("CPU stepping", ("cpu", "stepping"), resource=True),
    EnvField("CPU microcode", ("cpu", "microcode"), resource=True),
    EnvField("CPU instruction sets", ("cpu", "flags"), resource=True),
    EnvField("CPUs usable by the process", ("cpu", "usable_cpus"), resource=True),
    EnvField("memory", ("memory_bytes",), resource=True),
    EnvField("GPUs", ("gpus",), resource=True),
    EnvField("NVIDIA driver", ("driver_version",)), EnvField("CUDA", ("tensorflow", "cuda_version")),
    EnvField("cuDNN", ("tensorflow", "cudnn_version")), EnvField("Python", ("python",)),
    EnvField("TensorFlow", ("tensorflow", "version")), EnvField("Keras", ("tensorflow", "keras")),
    # TensorFlow's version is recorded under "tensorflow", above
    *(EnvField(info.display_name, ("backends", name, "version")) for name, info in BACKEND_INFO.items()
      if name != "tensorflow"),
    EnvField("NumPy", ("packages", "numpy")), EnvField("oneDNN", ("tensorflow", "onednn_enabled")),
    EnvField("environment variables", ("environment",)),
)
#: Total memory is a difference only beyond this (the kernel's reservations move it by a few
#: hundred KiB from boot to boot); a machine with another amount of RAM is well past it.
MEMORY_TOLERANCE_PCT = 2.0
#: Recorded variables that cannot change speed: where the data is read from, where Keras keeps
#: its files, how much TensorFlow logs. (Variables outside FRAMEWORK_VARIABLES, which older
#: env.json recorded by prefix, are not compared either.)
SPEED_NEUTRAL_VARIABLES = frozenset({"CIFAR10_DIR", "KERAS_HOME", "TF_CPP_MIN_LOG_LEVEL"})


# --------------------------------------------------------------------------- the decision

@dataclass(frozen=True)
class Verdict:
    ratio: float          # median(current) / median(baseline) step time; > 1 is slower
    low: float
    high: float
    kind: str             # REGRESSION, FASTER or WITHIN_NOISE


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


@dataclass(frozen=True)
class SideContention:
    """What else used the machine while one side's repeats of a cell ran (means over repeats).

    pressure_pct    other processes' CPU + steal, % of the usable CPUs (0-100)
    worker_pct      the worker's CPU share, % of the usable CPUs
    usable_cpus     the CPUs the worker could use
    gpu_others      other processes seen on the cell's GPU (most over repeats), None: not measured
    """

    pressure_pct: float
    worker_pct: float | None
    usable_cpus: float | None
    gpu_others: int | None = None

    @property
    def available_pct(self) -> float:
        """The share of its usable CPUs the worker could have had (at least 1 %)."""
        return max(1.0, 100.0 - self.pressure_pct)

    @property
    def disturbed(self) -> bool:
        return self.pressure_pct >= DISTURBED_PCT or bool(self.gpu_others)

    @property
    def saturated(self) -> bool:
        return self.pressure_pct >= SATURATED_PCT

    def describe(self) -> str:
        cpus = f" of the {self.usable_cpus:g} usable CPUs" if self.usable_cpus else ""
        text = f"other processes used {self.pressure_pct:.0f} %{cpus}"
        if self.gpu_others:
            text += f"; {self.gpu_others} other process(es) on the GPU"
        return text


def side_contention(rows: pd.DataFrame) -> SideContention | None:
    """The contention of one side's ok rows of a cell, or None for runs that did not record it."""
    if "other_cpu_pct" not in rows or rows["other_cpu_pct"].isna().all():
        return None

    def mean(column):
        values = pd.to_numeric(rows[column], errors="coerce") if column in rows else pd.Series(dtype=float)
        return float(values.mean()) if values.notna().any() else None

    pressure = (mean("other_cpu_pct") or 0.0) + (mean("steal_pct") or 0.0)
    gpu = pd.to_numeric(rows["gpu_other_processes"], errors="coerce") if "gpu_other_processes" in rows else None
    return SideContention(pressure_pct=min(100.0, max(0.0, pressure)), worker_pct=mean("worker_cpu_pct"),
                          usable_cpus=mean("usable_cpus"),
                          gpu_others=int(gpu.max()) if gpu is not None and gpu.notna().any() else None)


def contention_factor(quiet: SideContention, busy: SideContention) -> float:
    """How much slower contention alone could have made ``busy`` than ``quiet`` (1: not at all).

    Shares are % of each side's *own* usable CPUs, so a change in usable CPUs (an environment
    change, reported as such) is not counted as contention. Two measures, the larger wins:
    the share of the CPUs left to the worker (100 - other - steal) and the worker's own CPU
    share. Counted only when ``busy`` was disturbed (see :data:`DISTURBED_PCT`); a GPU that
    other processes used cannot be quantified and explains any difference.
    """
    if not busy.disturbed:
        return 1.0
    if busy.gpu_others and not quiet.gpu_others:
        return math.inf
    factor = quiet.available_pct / busy.available_pct
    if quiet.worker_pct and busy.worker_pct:
        factor = max(factor, quiet.worker_pct / max(busy.worker_pct, 1.0))
    return factor


def contention_verdict(verdict: str, baseline: SideContention | None, current: SideContention | None,
                       max_slowdown: float, resources_changed: bool = False) -> tuple[str, str, str]:
    """(verdict, why, busy side) once contention is considered: ``why`` and the side ("run" or
    "baseline") are empty when contention changed nothing.

    The rule: multithreaded steps wait for their slowest thread, so losing x % of the CPUs can
    cost far more than x % of the speed. The measured shares are therefore a lower bound of
    the harm, and a verdict is kept only when contention could *not* have crossed the
    threshold by itself:

    - regression: inconclusive when the run was disturbed and its contention factor against
      the baseline (:func:`contention_factor`) reaches 1 + max_slowdown;
    - faster or within noise: inconclusive when the *baseline* was disturbed that much (it
      was slowed: a faster run may be an illusion, a regression may hide);
    - a run slower while the baseline was the busy one stays a regression (contention there
      only shrinks the measured slowdown), and so does anything with equal contention on
      both sides (an interleaved A/B) -- unless a side was *saturated* (other processes took
      half its CPUs or more, :data:`SATURATED_PCT`): then speed does not follow the shares,
      and a regression or a speed-up is inconclusive whatever the balance. Not so when the
      hardware the worker may use changed (``resources_changed``: fewer usable CPUs, another
      CPU or GPU): that change is a known cause of its own, and the shares, being of each
      side's own CPUs, already put the two sides on one scale.

    Without contention records on both sides (older runs) the verdict stands as it was.
    """
    if baseline is None or current is None:
        return verdict, "", ""
    limit = 1 + max_slowdown
    if verdict == REGRESSION:
        if contention_factor(baseline, current) >= limit:
            return INCONCLUSIVE, ("inconclusive: machine busy during the run ("
                                  + _busy_text(current, baseline, "the baseline") + ")"), "run"
    elif contention_factor(current, baseline) >= limit:
        what = "a speed-up may be an illusion" if verdict == FASTER else "a slowdown may hide"
        return INCONCLUSIVE, ("inconclusive: machine busy during the baseline ("
                              + _busy_text(baseline, current, "the run") + f"; {what})"), "baseline"
    if verdict in (REGRESSION, FASTER) and not resources_changed and (current.saturated
                                                                     or baseline.saturated):
        side, busy, other, other_name = (("run", current, baseline, "the baseline") if current.saturated
                                         else ("baseline", baseline, current, "the run"))
        return INCONCLUSIVE, (f"inconclusive: machine saturated during the {side} ("
                              + _busy_text(busy, other, other_name)
                              + f"; at ≥ {SATURATED_PCT:g} % other load speed does not follow the "
                                "CPU shares)"), side
    return verdict, "", ""


def _busy_text(busy: SideContention, other: SideContention, other_name: str) -> str:
    text = busy.describe()
    if busy.worker_pct is not None and other.worker_pct is not None:
        text += f"; worker {busy.worker_pct:.0f} % vs {other.worker_pct:.0f} % in {other_name}"
    return text


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
    statistical_verdict: str = ""   # from the step times alone, before contention was considered
    why: str = ""                   # why inconclusive, or a regression's likely cause
    busy_side: str = ""             # inconclusive: "run" or "baseline", the side that was busy
    baseline_contention: str = ""   # "other 3 %, worker 85 %" (empty: not recorded)
    current_contention: str = ""
    baseline_pressure_pct: float | None = None   # other processes' CPU + steal, % of usable CPUs
    current_pressure_pct: float | None = None
    attempts: list[str] = field(default_factory=list)  # with --retry: earlier attempts' verdicts
    time_to_target: str = ""        # the time-to-target comparison (target_verdict), "" when no target
    #: --energy / --price figures of each side (median of its repeats; None: not measured there)
    baseline_energy_j_per_1k_images: float | None = None
    current_energy_j_per_1k_images: float | None = None
    baseline_cost_seed_run_usd: float | None = None
    current_cost_seed_run_usd: float | None = None


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

    @property
    def inconclusive(self) -> list[CellComparison]:
        return [c for c in self.cells if c.verdict == INCONCLUSIVE]

    def as_dict(self) -> dict:
        return asdict(self)


#: Matching across machines: every dimension, the device by type and index but not by name
#: (two machines' CPUs have different names). ``bench compare --match settings``.
SETTINGS_MATCH_KEYS = ("device_type", "device_id", *(d.name for d in matrix.DIMENSIONS))


def _keyed(run: Run, keys: tuple[str, ...] = MATCH_KEYS
           ) -> dict[tuple, tuple[dict, list[np.ndarray], SideContention | None]]:
    """Each matched cell's key -> (key as dict, steady step times of each ok repeat, contention)."""
    ok = run.runs[run.runs["status"] == "ok"]
    cells = {}
    for key, group in ok.groupby(list(keys), sort=False, dropna=False):
        repeats = [steps for steps in map(run.steady_steps, group["cell_id"]) if len(steps)]
        if repeats:
            cells[tuple(str(matrix.plain(v)) for v in key)] = (dict(zip(keys, key)), repeats,
                                                               side_contention(group))
    return cells


def cell_key(spec: dict) -> tuple:
    """The key :func:`compare` matches cells by, from a row or a CellComparison's ``key``."""
    return tuple(str(matrix.plain(spec[k])) for k in MATCH_KEYS)


def matchable(baseline: Run, planned_cells) -> list[str]:
    """Why no planned cell (:class:`bench.matrix.Cell`) can match a cell of ``baseline``, one
    line a problem; empty when at least one can. A run checked against a baseline asks this
    before measuring anything, so a baseline from another machine or of other settings costs
    a one-line error, not a whole run's time.

    Cells on a device that is not there (they will be skipped) cannot match; the match is
    :func:`compare`'s own (device type and name, every dimension's concrete value).
    """
    name = baseline.directory.name
    ok = baseline.runs[baseline.runs["status"] == "ok"]
    if ok.empty:
        return [(f"baseline '{name}' has no successful cell to compare with; save one from a run "
                 "whose cells succeeded")]
    measurable = [c for c in planned_cells if c.device.found is not None and c.device.found.usable]
    if not measurable:
        return [("no planned cell can run on this machine (every requested device is missing), "
                 f"so nothing can be compared with baseline '{name}'")]
    base_keys = {cell_key(row) for row in ok.to_dict(orient="records")}
    planned_keys = {cell_key(c.columns()) for c in measurable}
    if base_keys & planned_keys:
        return []
    devices = {(k[0], k[1]) for k in base_keys}
    here = {(k[0], k[1]) for k in planned_keys}
    shared = devices & here
    if not shared:
        return [(f"baseline '{name}' was measured on {_devices_text(devices)}, this run plans "
                 f"{_devices_text(here)}: another machine's baseline matches nothing here; save a "
                 "baseline from a run on this machine ('python -m bench baseline save --run DIR "
                 "--name NAME')")]
    # same device: say which settings the baseline has that the plan lacks
    on_device = [k for k in base_keys if (k[0], k[1]) in shared]
    planned_on = [k for k in planned_keys if (k[0], k[1]) in shared]
    lines = []
    for index, key_name in enumerate(MATCH_KEYS[2:], start=2):
        theirs = sorted({k[index] for k in on_device})
        ours = sorted({k[index] for k in planned_on})
        if not set(theirs) & set(ours):
            lines.append(f"{key_name}: baseline {', '.join(theirs)}; planned {', '.join(ours)}")
    return [f"no planned cell matches a cell of baseline '{name}' on {_devices_text(shared)} ("
            + ("; ".join(lines) or "no combination of the settings is in both")
            + "); plan the baseline's settings, or save a baseline of these"]


def nothing_measured(rows: pd.DataFrame) -> str | None:
    """Why a run measured nothing, when it did not: no cell ok and none failed (a failed cell
    has its own status), e.g. ``--devices gpu`` without a GPU or ``--backend jax`` without
    JAX. A CI job must not pass on such a run. None when something was measured or failed."""
    if (rows["status"] == "ok").any() or (rows["status"] == "failed").any():
        return None
    if rows.empty:
        return "nothing measured: the run planned no cell"
    reasons = rows["reason"].fillna("").astype(str).replace("", "no reason recorded")
    devices = rows.groupby(reasons, sort=False)["device_id"].agg(lambda ids: ", ".join(dict.fromkeys(ids)))
    counts = reasons.value_counts(sort=False)
    why = "; ".join(f"{_short(devices[reason])}: {_short(reason, 120)} ({counts[reason]} cell(s))"
                    for reason in devices.index)
    return f"nothing measured: all {len(rows)} cell(s) were skipped ({why})"


def _devices_text(devices) -> str:
    return ", ".join(f"{kind} {_short(device)!r}" for kind, device in sorted(devices))


def _contention_text(side: SideContention | None) -> str:
    if side is None:
        return ""
    worker = f", worker {side.worker_pct:.0f} %" if side.worker_pct is not None else ""
    return f"other {side.pressure_pct:.0f} %{worker}"


def _lookup(env: dict, path: tuple[str, ...]):
    node: Any = env
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def environment_differences(baseline_env: dict, current_env: dict) -> list[str]:
    """Each difference between two env.json that can change speed (:data:`ENV_FIELDS`), named."""
    differences = []
    for item in ENV_FIELDS:
        before, after = _lookup(baseline_env, item.path), _lookup(current_env, item.path)
        if before is None or after is None or before == after:
            continue
        text = _difference(item.label, before, after)
        if text:
            differences.append(text)
    return differences


def _difference(label: str, before, after) -> str:
    """How one changed fact reads in a report ('' when the change cannot matter)."""
    if label == "memory":
        if not all(isinstance(v, (int, float)) and v > 0 for v in (before, after)):
            return ""
        change = 100 * abs(after - before) / before
        if change <= MEMORY_TOLERANCE_PCT:
            return ""
        return f"memory: {before / 2**30:.1f} GiB -> {after / 2**30:.1f} GiB"
    if label == "environment variables" and isinstance(before, dict) and isinstance(after, dict):
        changed = sorted(k for k in set(before) | set(after)
                         if before.get(k) != after.get(k) and k in FRAMEWORK_VARIABLES
                         and k not in SPEED_NEUTRAL_VARIABLES)
        return f"{label}: {', '.join(_short(k) for k in changed)} changed" if changed else ""
    if label == "CPU instruction sets" and isinstance(before, list) and isinstance(after, list):
        had, has = set(map(str, before)), set(map(str, after))
        lost, gained = sorted(had - has), sorted(has - had)
        parts = ([f"lost {', '.join(map(_short, lost))}"] if lost else []) + (
            [f"gained {', '.join(map(_short, gained))}"] if gained else [])
        return f"{label}: {'; '.join(parts)}" if parts else ""
    if label == "GPUs" and isinstance(before, list) and isinstance(after, list):
        names = [[_short(g.get("name")) for g in side if isinstance(g, dict)] for side in (before, after)]
        return f"{label}: {names[0]} -> {names[1]}" if names[0] != names[1] else ""
    if isinstance(before, dict) and isinstance(after, dict):
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"{label}: {', '.join(map(_short, changed))} changed"
    return f"{label}: {_short(before)} -> {_short(after)}"


def _short(value, limit: int = 60) -> str:
    """A value from an untrusted env.json, bounded for a one-line report."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class TargetVerdict:
    """Time to a target accuracy (runs.csv's ``time_to_target_s``), baseline against run.

    ``kind``: ``stopped`` (the run no longer reaches a target every baseline repeat reached),
    ``later`` (reaches it markedly later), ``missed`` (not reached by some repeat on a side,
    no verdict), ``not compared`` (the targets differ) or ``same``."""

    kind: str
    text: str

    @property
    def regression(self) -> bool:
        return self.kind in ("stopped", "later")


def target_verdict(baseline: pd.DataFrame, current: pd.DataFrame, max_slowdown: float = 0.10) -> TargetVerdict | None:
    """One cell's time to target across its repeats on both sides, or None when neither had a target.

    A regression when the run stops reaching the target that every baseline repeat reached,
    or reaches it markedly later: its fastest repeat slower than the baseline's slowest by more
    than ``max_slowdown`` (time to target moves by whole evaluation intervals from seed to
    seed, so only a gap beyond both sides' spread counts). A target not reached on a side is
    said in words, never given a time.
    """
    base_side, cur_side = sides = [_target_side(rows) for rows in (baseline, current)]
    if base_side is None and cur_side is None:
        return None
    if base_side is None or cur_side is None or base_side[0] != cur_side[0]:
        targets = ["none" if side is None else f"{side[0]:.0%}" for side in sides]
        return TargetVerdict("not compared", f"time to target not compared: target {targets[0]} in the baseline, "
                                    f"{targets[1]} in the run")
    (target, base_times, base_n), (_, cur_times, cur_n) = base_side, cur_side
    said = f"time to {target:.0%}: baseline {_reached_text(base_times, base_n)}, run {_reached_text(cur_times, cur_n)}"
    if len(base_times) == base_n and len(cur_times) < cur_n:
        return TargetVerdict("stopped", f"{said}: the run stopped reaching the target")
    if len(base_times) < base_n or len(cur_times) < cur_n:
        return TargetVerdict("missed", said)
    later = min(cur_times) > max(base_times) * (1 + max_slowdown)
    if not later:
        return TargetVerdict("same", said)
    return TargetVerdict("later", f"{said}: every run repeat more than {max_slowdown:.0%} later than the "
                                  "slowest baseline repeat")


def _target_side(rows: pd.DataFrame) -> tuple[float, list[float], int] | None:
    """(target, times of the repeats that reached it, repeats) of one side's ok rows, or None."""
    if "target_accuracy" not in rows or rows["target_accuracy"].isna().all():
        return None
    times = pd.to_numeric(rows["time_to_target_s"], errors="coerce").dropna().astype(float).tolist()
    return float(rows["target_accuracy"].dropna().iloc[0]), times, len(rows)


def _reached_text(times: list[float], runs: int) -> str:
    if not times:
        return f"not reached in {runs} run(s)"
    spread = f"{min(times):.1f} s" if len(times) == 1 else f"{min(times):.1f}–{max(times):.1f} s"
    return f"{spread} ({len(times)}/{runs} reached)"


def _ok_groups(run: Run, keys: tuple[str, ...]) -> dict[tuple, pd.DataFrame]:
    ok = run.runs[run.runs["status"] == "ok"]
    return {tuple(str(matrix.plain(v)) for v in key): group
            for key, group in ok.groupby(list(keys), sort=False, dropna=False)}


def compare(baseline: Run, current: Run, max_slowdown: float = 0.10,
            confidence: float = 0.95, match_keys: tuple[str, ...] = MATCH_KEYS) -> Comparison:
    """Match cells (on ``match_keys``) and decide each; BaselineError when nothing matches.

    Cells are labelled by their device, batch size and every dimension that varies across
    the two runs, by value, so no two compared cells read alike.
    """
    base_cells, cur_cells = _keyed(baseline, match_keys), _keyed(current, match_keys)
    matched = [k for k in cur_cells if k in base_cells]
    varying = matrix.varying_dimensions([pd.DataFrame([spec for spec, _, _ in cells.values()])
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
    resources_changed = any(d.startswith(f"{item.label}:") for d in comparison.environment_differences
                            for item in ENV_FIELDS if item.resource)
    base_maths, cur_maths = _maths(baseline, match_keys), _maths(current, match_keys)
    base_groups, cur_groups = _ok_groups(baseline, match_keys), _ok_groups(current, match_keys)
    base_costs, cur_costs = _energy_and_cost(baseline, match_keys), _energy_and_cost(current, match_keys)
    for key in matched:
        spec, base, base_load = base_cells[key]
        _, cur, cur_load = cur_cells[key]
        verdict = decide(base, cur, max_slowdown, confidence)
        final, why, busy_side = contention_verdict(verdict.kind, base_load, cur_load, max_slowdown,
                                                   resources_changed=resources_changed)
        changed = "; ".join(comparison.environment_differences + _math_difference(
            base_maths.get(key), cur_maths.get(key)))
        if final == REGRESSION and changed:
            why = f"likely cause: {changed}"
        elif final == INCONCLUSIVE and changed and verdict.kind == REGRESSION:
            why += f"; the environment changed too: {changed}"
        target = target_verdict(base_groups[key], cur_groups[key], max_slowdown)
        if target is not None and target.kind != "same":
            # a busy machine delays reaching the target but cannot stop it: only "later" waits for a quiet one
            if target.kind == "stopped" or (target.kind == "later" and final != INCONCLUSIVE):
                final = REGRESSION
            why = f"{why}; {target.text}" if why else target.text
        batch = float(spec["batch_size"])
        costs: dict[str, Any] = {
            **{f"baseline_{name}": value for name, value in base_costs.get(key, {}).items()},
            **{f"current_{name}": value for name, value in cur_costs.get(key, {}).items()}}
        comparison.cells.append(CellComparison(
            cell=_cell_label(spec), key={k: str(matrix.plain(v)) for k, v in spec.items()},
            baseline_images_per_s=batch / float(np.median(np.concatenate(base))),
            current_images_per_s=batch / float(np.median(np.concatenate(cur))),
            change_pct=(verdict.ratio - 1) * 100, low_pct=(verdict.low - 1) * 100,
            high_pct=(verdict.high - 1) * 100, verdict=final,
            baseline_steps=sum(map(len, base)), current_steps=sum(map(len, cur)),
            baseline_repeats=len(base), current_repeats=len(cur),
            statistical_verdict=verdict.kind, why=why, busy_side=busy_side,
            baseline_contention=_contention_text(base_load),
            current_contention=_contention_text(cur_load),
            baseline_pressure_pct=base_load.pressure_pct if base_load else None,
            current_pressure_pct=cur_load.pressure_pct if cur_load else None,
            time_to_target=target.text if target else "", **costs))
    return comparison


ENERGY_AND_COST = ("energy_j_per_1k_images", "cost_seed_run_usd")


def _energy_and_cost(run: Run, keys: tuple[str, ...]) -> dict[tuple, dict[str, float]]:
    """Each ok cell's key -> its measured energy per 1,000 images and cost per notebook run
    (median over repeats), where ``--energy`` / ``--price`` recorded them."""
    present = [c for c in ENERGY_AND_COST if c in run.runs]
    if not present:
        return {}
    ok = run.runs[run.runs["status"] == "ok"]
    out = {}
    for key, group in ok.groupby(list(keys), sort=False, dropna=False):
        figures = {c: float(v) for c in present
                   if pd.notna(v := pd.to_numeric(group[c], errors="coerce").median())}
        if figures:
            out[tuple(str(matrix.plain(v)) for v in key)] = figures
    return out


def _maths(run: Run, keys: tuple[str, ...]) -> dict[tuple, str]:
    """Each ok cell's key -> what its convolutions computed in (``math``), where recorded."""
    ok = run.runs[(run.runs["status"] == "ok") & (run.runs["math"].fillna("").astype(str) != "")]
    return {tuple(str(matrix.plain(v)) for v in key): ",".join(sorted(set(map(str, group["math"]))))
            for key, group in ok.groupby(list(keys), sort=False, dropna=False)}


def _math_difference(before: str | None, after: str | None) -> list[str]:
    """A cell's math as a cause (an fp32 cell now in TF32 is another computation), when both
    sides recorded it and it changed."""
    return [f"math: {before} -> {after}"] if before and after and before != after else []


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


@dataclass
class NoiseReport:
    """Identical runs compared pairwise (see :func:`noise_report`)."""

    table: pd.DataFrame
    suggested_pct: float          # check (rule included) would have flagged none of the pairs
    with_contention_pct: float    # conservative: above every interval's upper end the rule leaves
    statistics_only_pct: float    # conservative, without the rule: above every upper end
    busy: int                     # pair-cells with a disturbed side
    saturated: int = 0            # pair-cells with a saturated side: the rule never judges them


def noise_report(runs: list[Run], confidence: float = 0.95) -> NoiseReport:
    """Identical runs compared pairwise, in both directions (either could be the baseline).

    Each threshold is the smallest whole percent that passes, plus :data:`NOISE_MARGIN_PCT`:

    - suggested: check, busy-machine rule included, would have flagged none of the pairs
      (no interval wholly past the threshold that contention does not explain);
    - conservative: no interval's *upper end* reaches past the threshold, either way round
      (high, and 1/low for the reverse), unless contention explains it -- room for pairs
      not seen yet;
    - statistics only: the conservative one without the rule (the brief, classical bound).
    """
    from itertools import combinations

    rows, judged, busy, saturated = [], [], 0, 0
    for (i, first), (j, second) in combinations(enumerate(runs, 1), 2):
        comparison = compare(first, second, max_slowdown=0.10, confidence=confidence)
        sides_first, sides_second = _keyed(first), _keyed(second)
        for c in comparison.cells:
            low, high = 1 + c.low_pct / 100, 1 + c.high_pct / 100
            bound = 100 * max(high - 1, 1 / low - 1)
            a, b = sides_first[cell_key(c.key)][2], sides_second[cell_key(c.key)][2]
            judged += [(low, high, a, b), (1 / high, 1 / low, b, a)]
            busy += any((pressure or 0.0) >= DISTURBED_PCT
                        for pressure in (c.baseline_pressure_pct, c.current_pressure_pct))
            saturated += any((pressure or 0.0) >= SATURATED_PCT
                             for pressure in (c.baseline_pressure_pct, c.current_pressure_pct))
            rows.append({"Runs": f"{i} vs {j}", "Cell": c.cell, "Step time change": f"{c.change_pct:+.1f} %",
                         f"{confidence * 100:g} % interval": f"[{c.low_pct:+.1f} %, {c.high_pct:+.1f} %]",
                         "Largest slowdown allowed (either way)": f"{bound:.1f} %",
                         "Machine (first / second)": f"{c.baseline_contention or '?'} / "
                                                     f"{c.current_contention or '?'}"})
    statistics_only = max((100 * (high - 1) for _, high, _, _ in judged), default=0.0)

    def alarms(threshold_pct: float, end: int) -> int:
        """Directed pairs whose interval (its low end, or its high end) lies past the threshold
        and whose contention would not make a regression of them inconclusive."""
        t = threshold_pct / 100
        return sum(bounds[end] > 1 + t and contention_verdict(REGRESSION, base, cur, t)[0] == REGRESSION
                   for *bounds, base, cur in judged)

    def smallest(end: int) -> float:
        top = math.ceil(statistics_only)
        return next((t for t in range(1, top + 1) if not alarms(t, end)), top) + NOISE_MARGIN_PCT

    return NoiseReport(pd.DataFrame(rows), smallest(0), smallest(1),
                       math.ceil(statistics_only) + NOISE_MARGIN_PCT, busy, saturated)


# --------------------------------------------------------------------------- reports

def verdict_text(cell: CellComparison) -> str:
    """The verdict as a table shows it: a regression loud, with its likely cause; the reason
    an inconclusive cell could not be judged; earlier attempts when --retry re-measured it."""
    text = cell.verdict.upper() if cell.verdict == REGRESSION else cell.verdict
    if cell.why:
        text = cell.why if cell.verdict == INCONCLUSIVE else f"{text}, {cell.why}"
    if cell.attempts:
        text += f" (attempt {len(cell.attempts) + 1}; before: {', '.join(cell.attempts)})"
    return text


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    level = f"{comparison.confidence * 100:g} %"
    measured = any(c.baseline_contention or c.current_contention for c in comparison.cells)
    # energy and cost beside speed where both runs measured them for some cell
    energy = any(c.baseline_energy_j_per_1k_images is not None and c.current_energy_j_per_1k_images is not None
                 for c in comparison.cells)
    cost = any(c.baseline_cost_seed_run_usd is not None and c.current_cost_seed_run_usd is not None
               for c in comparison.cells)
    return pd.DataFrame([{
        "Cell": c.cell,
        "Baseline images/s": f"{c.baseline_images_per_s:,.1f}",
        "Current images/s": f"{c.current_images_per_s:,.1f}",
        "Step time change": f"{c.change_pct:+.1f} %",
        f"{level} interval": f"[{c.low_pct:+.1f} %, {c.high_pct:+.1f} %]",
        "Verdict": verdict_text(c),
        "Steady steps (base/current)": f"{c.baseline_steps}/{c.current_steps}",
        "Repeats": f"{c.baseline_repeats}/{c.current_repeats}",
        **({"Machine (base / current)": f"{c.baseline_contention or '?'} / {c.current_contention or '?'}"}
           if measured else {}),
        **({"J/1k images (base / current)": _pair(c.baseline_energy_j_per_1k_images,
                                                  c.current_energy_j_per_1k_images, "{:,.1f}")}
           if energy else {}),
        **({"$ per notebook run (base / current)": _pair(c.baseline_cost_seed_run_usd,
                                                          c.current_cost_seed_run_usd, "{:,.4f}")}
           if cost else {}),
    } for c in comparison.cells])


def _pair(before: float | None, after: float | None, form: str) -> str:
    """Both sides' figure; "not measured" where one side has none."""
    return " / ".join(form.format(v) if v is not None else "not measured" for v in (before, after))


def comparison_markdown(comparison: Comparison) -> str:
    threshold = comparison.max_slowdown * 100
    lines = [
        f"Baseline `{comparison.baseline}` vs run `{comparison.current}`: "
        f"{len(comparison.regressions)} regression(s), {len(comparison.inconclusive)} inconclusive "
        f"in {len(comparison.cells)} matched cell(s).",
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
        f"- Inconclusive (machine busy): contention alone could have moved the step time by "
        f"{threshold:g} %: on the slower-looking side other processes (+ steal) took ≥ "
        f"{DISTURBED_PCT:g} % of the usable CPUs, and the CPU share left to the worker, or the "
        f"worker's own CPU share, was ≥ {threshold:g} % smaller than on the other side (or another "
        "process used the GPU). Machine: other processes' CPU + steal and the worker's CPU, % "
        "of the usable CPUs, mean over repeats. Measure again on a quiet machine, or with "
        "`bench ab` (both sides interleaved, so load hits both alike).",
    ]
    for label, cells in (("only in the baseline", comparison.only_in_baseline),
                         ("only in the run", comparison.only_in_current)):
        if cells:
            lines.append(f"- Cells {label} (not compared): {'; '.join(cells)}.")
    if any(column.startswith(("J/1k", "$ per")) for column in comparison_frame(comparison).columns):
        lines.append("- J/1k images: energy over each cell's steady window per 1,000 images (--energy; "
                     "what it covers is in runs.csv, energy_covers); $ per notebook run: projected "
                     "hours of 26 epochs x 40,000 images x --price. Both: median of the repeats, "
                     "smaller is better; shown where both runs measured them.")
    lines += [f"- {note}" for note in comparison.notes]
    if comparison.environment_differences:
        lines.append("- WARNING: the environments differ: "
                     + "; ".join(comparison.environment_differences)
                     + ". A change of environment is not noise: a regression names it as its likely cause.")
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
