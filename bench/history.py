"""Images/s of each cell over time, from every run and baseline under a results root.

One model for two views: ``bench history`` prints it as a table and ``bench report --history``
draws it. A cell's history is the runs that measured it on one machine, oldest first; each
point is judged against the one before it with ``check``'s own decision
(:func:`bench.regression.compare`, busy-machine rule included), so the history never says
"slower" where ``check`` would have said "within noise" or "inconclusive".

Where ``bench noise --repeat`` left identical runs (``<root>/runs/<id>-noise/run-N``), their
spread of images/s per cell is the cell's noise band. Runs that cannot be read are listed
with the reason instead of stopping the history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench import matrix, regression, store, tables
from bench.regression import MATCH_KEYS, cell_key

#: A directory under ``<root>/runs`` whose name ends so holds ``bench noise --repeat``'s runs.
NOISE_SUFFIX = "-noise"


@dataclass(frozen=True)
class HistoryPoint:
    """One run's measurement of one cell, and how it compares with the run before."""

    series: str                  # machine and cell: what the points of one line share
    machine: str
    cell: str                    # device, batch size and the dimensions that vary, by value
    run_id: str                  # the run's id, or the baseline's name
    kind: str                    # "run" or "baseline"
    path: str
    date: str | None             # when the run's first cell started (UTC, ISO 8601)
    commit: str | None           # the project's commit (12 characters)
    images_per_s: float          # batch size / median steady step time, median over repeats
    change_pct: float | None = None   # images/s against the previous point, % (+ is faster)
    verdict: str | None = None        # check's verdict of this run against the previous one
    why: str = ""                     # why inconclusive, or a regression's likely cause
    baselines: tuple[str, ...] = ()   # baselines saved from this run


@dataclass(frozen=True)
class NoiseBand:
    """The images/s that identical runs of one cell spread over (``bench noise --repeat``)."""

    series: str
    low: float
    high: float
    runs: int
    source: str


@dataclass
class History:
    points: list[HistoryPoint]
    bands: list[NoiseBand] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # runs that could not be read, and why

    def series(self) -> list[str]:
        return list(dict.fromkeys(p.series for p in self.points))

    def last(self, count: int | None) -> list[HistoryPoint]:
        """The last ``count`` points of every series (all with None), series by series."""
        out = []
        for name in self.series():
            points = [p for p in self.points if p.series == name]
            out += points[-count:] if count else points
        return out

    def as_dict(self) -> dict:
        return {"points": [asdict(p) for p in self.points], "bands": [asdict(b) for b in self.bands],
                "problems": self.problems}


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class _Source:
    run: store.Run
    kind: str
    name: str                          # the run's id, or the baseline's name
    date: str | None
    commit: str | None
    baselines: tuple[str, ...] = ()    # a run: the baselines saved from it


def _date(run: store.Run) -> str | None:
    started = sorted(v for v in run.runs["started_at"] if isinstance(v, str) and v)
    return started[0] if started else None


def _commit(run: store.Run) -> str | None:
    commit = (run.env.get("git") or {}).get("commit") or next(
        (v for v in run.runs["git_commit"] if isinstance(v, str) and v), None)
    return str(commit)[:12] if commit else None


def read_sources(root: Path, baselines: bool = True) -> tuple[list[_Source], list[str]]:
    """Every readable run (and baseline) under ``root``, oldest first, and the unreadable ones.
    ``root`` is a results root (its runs/ and baselines/) or any folder of runs, such as
    ``results/published`` (:func:`bench.store.list_directory`).

    A baseline is a copy of a run: when that run is here too, it is one measurement, kept once
    as the run, which names the baselines saved from it."""
    root = Path(root)
    sources, problems = [], []
    results_root = store.runs_dir(root).is_dir() or store.baselines_dir(root).is_dir()
    for listing in store.list_runs(root, baselines=baselines) if results_root else store.list_directory(root):
        if any(part.endswith(NOISE_SUFFIX) for part in Path(listing.path).parts[-2:]):
            continue                                  # identical runs (<id>-noise/run-N): the noise band, not history
        if listing.error:
            problems.append(f"{listing.kind} {listing.id}: {listing.error}")
            continue
        try:
            run = store.read_run(listing.path)
        except store.ResultsError as exc:             # changed since it was listed
            problems.append(f"{listing.kind} {listing.id}: {exc}")
            continue
        name = run.run_id if listing.kind == "run" else listing.id
        sources.append(_Source(run, listing.kind, name, _date(run), _commit(run)))
    copies: dict[str, list[str]] = {}
    for source in sources:
        if source.kind == "baseline" and any(s.kind == "run" and s.run.run_id == source.run.run_id for s in sources):
            copies.setdefault(source.run.run_id, []).append(source.name)
    sources = [replace(s, baselines=tuple(sorted(copies.get(s.run.run_id, ())))) if s.kind == "run" else s
               for s in sources if not (s.kind == "baseline" and s.run.run_id in copies)]
    sources.sort(key=lambda s: (s.date or "", s.name))
    return sources, problems


def noise_runs(root: Path) -> list[tuple[Path, list[store.Run]]]:
    """``bench noise --repeat`` groups under ``<root>/runs``: (directory, its readable runs)."""
    base = store.runs_dir(Path(root))
    groups = []
    for directory in sorted(base.glob(f"*{NOISE_SUFFIX}")) if base.is_dir() else []:
        runs = []
        for member in sorted(p for p in directory.iterdir() if p.is_dir()):
            try:
                runs.append(store.read_run(member))
            except store.ResultsError:
                continue
        if len(runs) >= 2:
            groups.append((directory, runs))
    return groups


# --------------------------------------------------------------------------- the model

def _measured(run: store.Run) -> pd.DataFrame:
    """The run's ok rows with a steady figure; a dimension the run predates reads as its legacy
    value (store upgrades only schema-1 files, and replicas/workers came after schema 2)."""
    ok = run.runs[(run.runs["status"] == "ok") & run.runs["images_per_s"].notna()].copy()
    for column, value in matrix.legacy_values().items():
        if column in ok:
            ok[column] = ok[column].where(ok[column].notna() & (ok[column] != ""), value)
    return ok


def _varying(runs: Sequence[store.Run]) -> set[str]:
    """The dimensions that tell cells apart across all ``runs`` (backend and precision always)."""
    frames = [_measured(run) for run in runs]
    return set(matrix.varying_dimensions([f for f in frames if len(f)])) | {"backend", "precision"}


def _cells(run: store.Run, varying: set[str]) -> dict[tuple, tuple[str, float]]:
    """Each ok cell of the run (repeats together): match key -> (label, images/s)."""
    ok = _measured(run)
    out = {}
    for _, group in ok.groupby(list(MATCH_KEYS), sort=False, dropna=False):
        first = group.iloc[0]
        out[cell_key(first)] = (matrix.describe(first, varying), float(group["images_per_s"].median()))
    return out


def build(sources: Sequence[_Source], problems: Sequence[str] = (), noise: Sequence = (),
          max_slowdown: float = 0.10, confidence: float = 0.95) -> History:
    """The history of every cell on every machine; each point judged against the previous one."""
    names = tables.machine_names([s.run for s in sources])
    varying = _varying([s.run for s in sources] + [run for _, runs in noise for run in runs])
    points: list[HistoryPoint] = []
    previous: dict[tuple, tuple[int, float]] = {}      # series -> (its last source, images/s)
    comparisons: dict[tuple[int, int], regression.Comparison | None] = {}
    for index, (source, machine) in enumerate(zip(sources, names)):
        for key, (label, images) in _cells(source.run, varying).items():
            series_key = (machine, key)
            verdict, why, change = None, "", None
            if series_key in previous:
                before, before_images = previous[series_key]
                change = (images / before_images - 1) * 100
                pair = (before, index)
                if pair not in comparisons:
                    comparisons[pair] = _compare(sources[before].run, source.run, max_slowdown, confidence)
                judged = _find(comparisons[pair], key)
                if judged is not None:
                    verdict, why = judged.verdict, judged.why
                else:
                    why = "check matched no steady steps of this cell in both runs"
            points.append(HistoryPoint(
                series=f"{machine} · {label}", machine=machine, cell=label, run_id=source.name,
                kind=source.kind, baselines=source.baselines, path=str(source.run.directory), date=source.date,
                commit=source.commit,
                images_per_s=images, change_pct=change, verdict=verdict, why=why))
            previous[series_key] = (index, images)
    by_series = {(p.machine, p.cell): p.series for p in points}
    return History(points, noise_bands(noise, by_series, varying), list(problems))


def _compare(before: store.Run, after: store.Run, max_slowdown: float,
             confidence: float) -> regression.Comparison | None:
    try:
        return regression.compare(before, after, max_slowdown, confidence)
    except regression.BaselineError:
        return None


def _find(comparison: regression.Comparison | None, key: tuple):
    if comparison is None:
        return None
    return next((c for c in comparison.cells if cell_key(c.key) == key), None)


def noise_bands(groups: Sequence[tuple[Path, list[store.Run]]], series: dict[tuple[str, str], str],
                varying: set[str]) -> list[NoiseBand]:
    """Per cell of a noise group: the lowest and highest images/s of its identical runs."""
    bands = []
    for directory, runs in groups:
        machine = tables.machine_names(runs)[0]
        measured: dict[tuple, list[float]] = {}
        labels: dict[tuple, str] = {}
        for run in runs:
            for key, (label, images) in _cells(run, varying).items():
                measured.setdefault(key, []).append(images)
                labels[key] = label
        for key, values in measured.items():
            name = series.get((machine, labels[key]), f"{machine} · {labels[key]}")
            if len(values) >= 2:
                bands.append(NoiseBand(name, float(np.min(values)), float(np.max(values)), len(values),
                                       str(directory)))
    return bands


def history(root: Path, cells: Sequence[str] = (), baselines: bool = True,
            max_slowdown: float = 0.10, confidence: float = 0.95) -> History:
    """The history under a results root; ``cells``: keep series whose name holds one of these."""
    sources, problems = read_sources(Path(root), baselines)
    found = build(sources, problems, noise_runs(Path(root)), max_slowdown, confidence)
    if cells:
        wanted = [c.lower() for c in cells]
        keep = {s for s in found.series() if any(w in s.lower() for w in wanted)}
        found = History([p for p in found.points if p.series in keep],
                        [b for b in found.bands if b.series in keep], found.problems)
    return found


# --------------------------------------------------------------------------- the text view

def history_frame(found: History, last: int | None = None) -> pd.DataFrame:
    """The table ``bench history`` prints: the last ``last`` runs of every cell."""
    bands = {b.series: b for b in found.bands}
    rows = []
    for p in found.last(last):
        band = bands.get(p.series)
        rows.append({
            "Cell": p.series, "Date": (p.date or "?")[:16].replace("T", " "),
            "Run": p.run_id + (" (baseline)" if p.kind == "baseline" else "")
                   + (f" (saved as baseline {', '.join(p.baselines)})" if p.baselines else ""),
            "Commit": p.commit or "–", "Images/s": f"{p.images_per_s:,.1f}",
            "Change": "first" if p.change_pct is None else f"{p.change_pct:+.1f} %",
            "Verdict": (p.verdict or ("first" if p.change_pct is None else "not judged"))
                       + (f" ({p.why})" if p.why else ""),
            "Noise band": f"{band.low:,.0f}–{band.high:,.0f}" if band else "–",
        })
    return pd.DataFrame(rows)


def history_table(found: History, last: int | None = None) -> str:
    """The history as Markdown, with what each column means."""
    frame = history_frame(found, last)
    lines = [frame.to_markdown(index=False, disable_numparse=True) if len(frame)
             else "_No measured cell in these runs._", ""]
    lines += [
        ("- Images/s: batch size ÷ median steady step time (median over repeats). Change: images/s "
         "against the previous run of the same cell on the same machine (+ is faster)."),
        ("- Verdict: what `check` says of that run against the previous one (step times of both, "
         "busy-machine rule included); 'not judged': check found no steady steps of the cell in both runs."),
        ("- Noise band: the lowest and highest images/s of identical runs made by `bench noise "
         "--repeat` on that machine (under <results>/runs/*-noise); '–': none made."),
    ]
    lines += [f"- Not read: {problem}" for problem in found.problems]
    return "\n".join(lines) + "\n"


def history_json(found: History, last: int | None = None) -> str:
    kept = History(found.last(last), found.bands, found.problems)
    return json.dumps(kept.as_dict(), indent=2, ensure_ascii=False) + "\n"
