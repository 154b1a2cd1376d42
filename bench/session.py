"""One run's life, without argparse: open (or resume) its directory, measure the yardsticks,
execute the cells, retry what a check found slower, finish with the summary and plots.

``run``, ``ab`` and ``noise`` all go through a :class:`Session`, so they share the same exit
statuses, skips, warnings and records. A session never imports a command; bad input is a
:class:`bench.errors.UsageError`, a refused write a :class:`bench.errors.WriteError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from bench import config as config_module
from bench import devices, environment, matrix, plots, regression, runner, store, tables, tta, yardsticks
from bench.config import RunConfig
from bench.errors import UsageError, WriteError
from bench.files import write_atomically
from bench.progress import Reporter
from bench.protocol import DataSpec
from bench.record import STEP_COLUMNS

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
REPORT_HTML = "report.html"               # each run's page, beside summary.md
SYNTHETIC_FIX = ("to measure accuracy, point the run at CIFAR-10: --data-dir DIR or "
                 "CIFAR10_DIR=DIR (the 'CIFAR-10 python version' archive or its extracted "
                 "cifar-10-batches-py folder, from https://www.cs.toronto.edu/~kriz/cifar.html)")


@dataclass(frozen=True)
class CheckRequest:
    """Compare the finished run with ``baseline``; re-measure what it finds slower ``retries`` times."""

    baseline: store.Run
    max_slowdown: float = 0.10
    retries: int = 0
    name: str = ""                        # the baseline as given (--check-against NAME), for messages


@dataclass(frozen=True)
class RunRequest:
    """What one run is asked to do. ``config`` is None for a resume (the run keeps its own)."""

    config: RunConfig | None
    command: str                          # the command line env.json records as what made the run
    results_root: Path
    out: Path | None = None               # a new run's directory (None: <results>/runs/<run id>)
    resume: Path | None = None            # the run to finish instead
    rerun_failed: bool = False
    require_devices: bool = False
    check: CheckRequest | None = None
    dry_run: bool = False
    #: an A/B arm: the Python its workers run under, and what env.json says of its software
    worker_command: tuple[str, ...] | None = None    # None: process.WORKER_COMMAND when the run starts
    describe_env: Callable[[dict], dict] | None = None
    run_id: str | None = None


@dataclass
class RunOutcome:
    """How a run ended: where it is, what its rows say, and what stopped it early if anything."""

    out: Path
    planned: int = 0
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    comparison: regression.Comparison | None = None
    stopped_by: int | None = None
    write_error: str = ""
    summary: str = ""                     # the table, as summary.md holds it ("" when no row)
    estimate: config_module.Estimate | None = None
    nothing_measured: str = ""            # why no cell was measured (or failed): exit 6, not 0
    comparison_error: str = ""            # why the check could not compare, once the run was done


def display_command(argv: list[str], cwd: Path | None = None) -> str:
    """The command as a user would type it: paths under the working directory's parent relative."""
    cwd = Path(cwd or os.getcwd())
    shown = []
    for token in argv:
        if token.startswith("/"):
            relative = os.path.relpath(token, cwd)
            token = relative if not relative.startswith("../..") else token
        shown.append(token)
    return "python -m bench " + shlex.join(shown)


def resolve_source(config: RunConfig) -> DataSpec:
    """What the cells train on (:func:`cifar_model.resolve_source`); an unusable explicit copy is a UsageError."""
    from cifar_model import DataError
    from cifar_model import resolve_source as resolve

    split = config.split or "standard"
    if config.data == "synthetic" and config.data_dir:
        raise UsageError("--data-dir is used only with --data cifar10; drop one of them")
    if config.synthetic_images is not None and config.data != "synthetic":
        raise UsageError("--synthetic-images is used only with --data synthetic; drop one of them")
    origin = "--data-dir" if config.data_dir is not None else "CIFAR10_DIR"
    try:
        found = resolve(config.data_dir, synthetic=config.data == "synthetic", download=not config.no_download)
    except DataError as exc:
        given = config.data_dir if config.data_dir is not None else os.environ.get("CIFAR10_DIR")
        if given is not None and str(exc).startswith(str(Path(given).expanduser())):
            raise UsageError(f"{origin} {given}: {exc}") from None
        raise UsageError(f"CIFAR-10 is unusable: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{origin} {config.data_dir}: {exc.strerror or exc}") from None
    if found.kind == "synthetic":
        note = "synthetic data requested (--data synthetic): speed only" if config.data == "synthetic" else found.note
        return DataSpec("synthetic", None, note, split, config.synthetic_images)
    if not os.access(found.path, os.R_OK):
        raise UsageError(f"{origin} {found.path}: not readable; check its permissions")
    return DataSpec("cifar10", found.path, "", split, None)


class Session:
    """One run: :meth:`open`, :meth:`measure_yardsticks`, :meth:`execute`, :meth:`retry_checks`,
    :meth:`finish`. ``held`` keeps the run directory locked until it closes; ``say`` reports."""

    def __init__(self, request: RunRequest, held: contextlib.ExitStack, say: Callable[[str], None]):
        self.request, self.held, self.say = request, held, say
        self.config: RunConfig = request.config          # type: ignore[assignment]  # None on resume: set by open()
        self.previous: store.Run | None = None
        self.planned: list[matrix.Cell] = []
        self.todo: list[matrix.Cell] = []
        self.outcome = runner.Outcome()
        self.context: runner.RunContext | None = None

    # ----------------------------------------------------------------------- open

    def plan(self) -> config_module.Estimate:
        """Everything before the disk: data, devices, the cells; refuses bad input (UsageError)."""
        if self.request.resume is not None:
            self.previous, self.config = _reopen(self.request.resume, self.held)
        else:
            self.config = replace(self.config, source=resolve_source(self.config))
        self.inventory = devices.detect()
        requested = devices.resolve(self.config.device_ids, self.inventory)
        self.missing = [r for r in requested if r.found is None or not r.found.usable]
        if self.request.require_devices and self.missing:
            raise UsageError("--require-devices: " + "; ".join(f"{r.id}: {r.reason}" for r in self.missing))
        problems = self.config.problems(len(requested)) + self.config.source_problems()
        if problems:
            raise UsageError(problems[0])
        self.here = environment.fingerprint(self.inventory)
        self.planned = runner.plan_cells(self.config, requested)
        self.todo = list(self.planned)
        for cell in self.planned:   # each cell's TrainSettings validates what no check above knew
            if cell.device.found is None or not cell.device.found.usable:
                continue            # a skipped row: its device is not there to resolve 'auto' against
            try:
                runner.cell_spec(cell, self.config)
            except ValueError as exc:
                raise UsageError(f"{cell.cell_id}: {exc}") from None
        self.refuse_unmatchable()
        return config_module.estimate(self.config, self.planned)

    def refuse_unmatchable(self) -> None:
        """A baseline no planned cell can match is refused before anything is measured or written."""
        check = self.request.check
        if check is None:
            return
        problems = regression.matchable(check.baseline, self.planned)
        if problems:
            raise UsageError(f"--check-against {check.name or check.baseline.directory}: " + "; ".join(problems))

    def open(self) -> None:
        """Claim a new directory (or reopen the resumed one) and write env.json. From here on
        the directory is a run ``--resume`` can finish, whatever stops this process."""
        if self.previous is not None:
            self._reopen_writer(self.previous)
        else:
            self._claim()

    def claim_directory(self) -> Path:
        """Create the run directory (``out``, or a fresh one under the results root); a refusal
        is a WriteError when the disk is full, else a UsageError naming the fix."""
        request = self.request
        try:
            return store.claim_run_dir(request.out, request.results_root, run_id=request.run_id)
        except OSError as exc:
            target = request.out or store.runs_dir(request.results_root)
            if exc.errno in DISK_FULL:
                raise WriteError(f"{target}: cannot create the run directory ({exc.strerror})") from None
            if isinstance(exc, FileExistsError) and request.out:
                raise UsageError(f"--out {request.out}: already exists and is not empty (or another run "
                                 "just claimed it); choose a new directory so no run is overwritten") from None
            raise UsageError(f"{'--out ' if request.out else ''}{target}: cannot create the run directory "
                             f"({exc.strerror or exc}); choose a directory you can write to") from None

    def _claim(self) -> None:
        request = self.request
        self.out = self.claim_directory()
        self.held.callback(store.lock_run_dir(self.out).release)
        env = {**self.here, "command": request.command, "config": self.config.to_dict(),
               "devices_requested": self.config.device_ids, "machine_label": self.config.machine_label}
        self.env = request.describe_env(env) if request.describe_env else env
        self.writer = store.RunWriter(self.out, request.run_id or self.out.name)
        self._write_env()

    def _reopen_writer(self, previous: store.Run) -> None:
        assert self.request.resume is not None   # self.previous is only set on resume
        out = Path(self.request.resume)
        differences = regression.environment_differences(previous.env, self.here)
        if environment.machine_id(previous.env) != environment.machine_id(self.here) or differences:
            raise UsageError(f"--resume {out}: this is not the machine or software the run "
                             f"started on ({'; '.join(differences) or 'another machine'}); start a new run")
        done = set(previous.runs["cell_id"][previous.runs["status"].isin(
            ["ok", "skipped"] + ([] if self.request.rerun_failed else ["failed"]))])
        self.todo = [c for c in self.planned if c.cell_id not in done]
        self.out, self.env = out, previous.env
        self.writer = store.RunWriter(out, previous.run_id, store.records(previous.runs),
                                      store.records(previous.steps), store.records(previous.curves))
        if not self.todo:
            failed = int((previous.runs["status"] == "failed").sum())
            self.say(f"resuming {out}: nothing to run, all {len(self.planned)} cell(s) are done"
                     + (f" ({failed} failed; --rerun-failed runs them again)" if failed else ""))
            return
        self.writer.replace_cells({c.cell_id for c in self.todo})
        self.env = {**previous.env, "resumed": [*previous.env.get("resumed", []), {
            "command": self.request.command, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": self.here["git"], "cells": len(self.todo)}]}
        self._write_env()
        self.say(f"resuming {out}: {len(self.planned) - len(self.todo)} of {len(self.planned)} cell(s) "
                 f"kept, {len(self.todo)} to run")

    def _write_env(self) -> None:
        try:
            self.writer.write_env(self.env)
        except OSError as exc:
            raise WriteError(f"{self.out}: cannot write env.json ({exc.strerror or exc})") from None

    def warn(self, estimate: config_module.Estimate) -> None:
        """What the user must know before the cells start: the data, skips, slow precisions, size."""
        source = self.config.source
        if source.kind == "synthetic":
            self.say(f"WARNING: training on SYNTHETIC data ({source.note}). Speed only: accuracy is not "
                     "measured." + (f" Fix: {SYNTHETIC_FIX}." if "fallback" in source.note else ""))
        else:
            self.say(f"data: CIFAR-10 from {source.path} ({source.split} split)")
        for r in self.missing:
            self.say(f"{r.id}: skipped: {r.reason}")
        for warning in dict.fromkeys(matrix.precision_warning(c["precision"], c.device.found) for c in self.todo):
            if warning:
                self.say(f"WARNING: {warning}")
        if estimate.large:
            self.say(f"WARNING: a large run: {estimate.describe()}; --dry-run shows the plan without running it")

    # ----------------------------------------------------------------------- measure

    def measure_yardsticks(self, reporter_say: Callable[[str], None] | None = None) -> runner.RunContext:
        """The measured peaks (unless ``no_peak``), the theoretical ones, and the run's context."""
        say = reporter_say or self.say
        usable_cpus = (self.env.get("cpu") or {}).get("usable_cpus")
        peaks = {} if self.config.no_peak or not self.todo else yardsticks.measured_peaks(
            yardsticks.peak_combinations(self.todo), self.env, self.request.results_root, self.out / "logs",
            refresh=False, say=say)
        self.context = runner.RunContext(
            config=self.config, run_id=self.writer.run_id, log_dir=self.out / "logs",
            system=self.env.get("system"), git_commit=(self.here.get("git") or {}).get("commit"),
            machine_label=self.env.get("machine_label"),
            worker_command=tuple(self.request.worker_command or runner.process.WORKER_COMMAND),
            measured_peaks=peaks, theoretical=yardsticks.theoretical_peaks(self.todo),
            gpu_count=len(self.inventory.gpus), usable_cpus=usable_cpus,
            watch=runner.contention_sampler(usable_cpus))
        return self.context

    def execute(self, cells: list[matrix.Cell], reporter: Reporter) -> runner.Outcome:
        """Run ``cells`` into this run's files; what ended it early is kept in the outcome."""
        if self.context is None:
            raise RuntimeError("Session.execute before the run context was made")
        try:
            step = runner.execute(cells, self.writer, self.context, reporter)
        except runner.Stopped as stop:
            step = runner.Outcome(rows=self.writer.rows, stopped_by=stop.signum)
        self.outcome.write_error = self.outcome.write_error or step.write_error
        if step.stopped_by is not None:
            self.outcome.stopped_by = step.stopped_by
        return step

    @property
    def interrupted(self) -> bool:
        return bool(self.outcome.write_error) or self.outcome.stopped_by is not None

    def current(self) -> store.Run:
        """This run as it is in memory now (never read back from disk)."""
        return store.Run(self.out, self.writer.frame(), steps_frame(self.writer.steps), self.env,
                         self.writer.curve_frame())

    def retry_checks(self, reporter: Reporter) -> regression.Comparison | None:
        check = self.request.check
        if check is None or self.interrupted:
            return None
        return retry_checks(check, self.current, self.planned, self.config.repeats,
                            lambda todo: self.execute(todo, reporter), self.say)

    # ----------------------------------------------------------------------- finish

    def finish(self, comparison: regression.Comparison | None = None, comparison_error: str = "") -> RunOutcome:
        """Flush, then the summary, report page and plots from memory. Files first: a closed stdout
        must cost neither the summary on disk nor the exit status (the caller prints)."""
        outcome = self.outcome
        try:
            self.writer.flush()          # a row kept in memory when a signal cut its write short
        except OSError as exc:
            outcome.write_error = outcome.write_error or f"could not write to {self.out}: {exc.strerror or exc}"
        rows = self.writer.frame()
        text = ""
        if len(rows):
            text = tables.markdown([tables.in_memory(rows, self.env, self.out)])
            try:
                write_atomically(self.out / store.SUMMARY_MD, text)
                self.write_report_page()
                plots.write_plots(rows, steps_frame(self.writer.steps), self.out)
                self.write_accuracy_plot(rows)
            except OSError as exc:
                outcome.write_error = (outcome.write_error
                                       or f"could not write the summary to {self.out}: {exc.strerror or exc}")
        planned_ids = {c.cell_id for c in self.planned}
        return RunOutcome(
            out=self.out, planned=len(self.planned),
            finished=sum(1 for r in self.writer.rows if r["cell_id"] in planned_ids),
            failed=rows.loc[rows["status"] == "failed", "cell_id"].tolist() if len(rows) else [],
            comparison=None if self.interrupted else comparison, stopped_by=outcome.stopped_by,
            write_error=outcome.write_error, summary=text,
            nothing_measured=(regression.nothing_measured(rows) or "") if len(rows) else "",
            comparison_error="" if self.interrupted else comparison_error)

    def write_report_page(self) -> None:
        """``report.html`` beside ``summary.md``: this run's page (:mod:`bench.report`), from memory.
        A refused write is an OSError, as the summary's is."""
        from bench import report

        try:
            report.write_report([self.current()], self.out / REPORT_HTML, title=f"cifar-bench run {self.out.name}")
        except report.ReportError as exc:
            self.say(f"WARNING: {self.out / REPORT_HTML} not written: {exc}")


    def write_accuracy_plot(self, rows):
        """accuracy.png when any cell was evaluated more than once during training: one line
        per cell (the repeats' median), labelled by the device and the dimensions that vary."""
        curves = self.writer.curve_frame()
        if curves.empty:
            return None
        ok = rows[rows["status"] == "ok"]
        varying = matrix.varying_dimensions([ok])
        cells = {}        # runs.csv's cell id -> the cell without its repeat, which repeats share
        labels = {}
        for _, row in ok.iterrows():
            key = str(row["cell_id"]).removesuffix(f"_r{int(row['repeat'])}")
            cells[row["cell_id"]] = key
            labels[key] = matrix.describe(row.to_dict(), varying)
        shown = curves[curves["cell_id"].isin(cells)].assign(cell_id=lambda f: f["cell_id"].map(cells))
        target = self.config.target_accuracy
        first = ok.iloc[0]        # what every line shares, so the picture says what it shows
        shared = [str(first[d]) for d in ("backend", "engine", "precision") if d in ok and d not in varying]
        label = self.env.get("machine_label")
        cadence = (f"evaluated every {self.config.eval_every:g} epoch(s)" if self.config.eval_every
                   else "evaluated at the end")
        subtitle = ", ".join([*([str(label)] if label else []), *shared,
                              f"{first['data']} {first['split']} split", cadence])
        return tta.accuracy_plot(shown, labels, target, self.out / tta.ACCURACY_PNG,
                                 "Held-out accuracy during training"
                                 + (f" (target {target:.0%}: MLPerf-style time to accuracy)" if target else "")
                                 + f"\n{subtitle}")


def run(request: RunRequest, say: Callable[[str], None], reporter_class: type[Reporter]) -> RunOutcome:
    """One whole run (``run`` and each of ``noise``'s): a stop signal from the start keeps
    every finished cell and still writes the summary."""
    with contextlib.ExitStack() as held, runner.stop_on_signals() as stops:
        session = Session(request, held, say)
        estimate = session.plan()
        if request.dry_run:
            return RunOutcome(out=request.out or request.resume or store.runs_dir(request.results_root),
                              planned=len(session.planned), estimate=estimate)
        session.open()
        estimate = config_module.estimate(session.config, session.todo)   # a resume runs only what is missing
        session.warn(estimate)
        say(f"{len(session.todo)} cell(s) -> {session.out}: {estimate.describe()}")
        comparison, comparison_error = None, ""
        try:
            with reporter_class() as reporter:
                session.measure_yardsticks(reporter.say)
                session.execute(session.todo, reporter)
                try:
                    comparison = session.retry_checks(reporter)
                except UsageError as exc:   # after the run: it costs the comparison, never the summary
                    comparison_error = str(exc)
        except runner.Stopped as stop:
            session.outcome.stopped_by = stop.signum
        stops.hold()  # a signal from here on must not cut the summary short
        outcome = session.finish(comparison, comparison_error)
        outcome.estimate = estimate
        return outcome


def retry_checks(check: CheckRequest, current: Callable[[], store.Run], cells: list[matrix.Cell], repeats: int,
                 rerun: Callable[[list[matrix.Cell]], runner.Outcome],
                 say: Callable[[str], None]) -> regression.Comparison:
    """Compare the run with the baseline; with ``check.retries``, measure the cells judged a
    regression or inconclusive (a busy run, not a busy baseline) again -- fresh workers, the
    run's number of repeats, appended as further repeats -- and judge each such cell on its
    latest attempt alone. Earlier attempts stay in runs.csv and are named in the report:
    nothing is hidden, and a busy attempt does not pollute a quiet one. A real slowdown shows
    again on every attempt; contention rarely does. ``current()`` is the run as it is in memory."""
    def compare(run: store.Run) -> regression.Comparison:
        try:
            return regression.compare(check.baseline, run, check.max_slowdown)
        except (regression.BaselineError, store.ResultsError) as exc:
            raise UsageError(str(exc)) from None

    comparison = compare(current())
    for attempt in range(1, check.retries + 1):
        # a cell inconclusive because the *baseline* was busy cannot be helped by measuring the run again
        pending = {regression.cell_key(c.key): c for c in comparison.cells
                   if c.verdict == regression.REGRESSION
                   or (c.verdict == regression.INCONCLUSIVE and c.busy_side == "run")}
        if not pending:
            break
        key_of = {row["cell_id"]: regression.cell_key(row) for row in current().runs.to_dict(orient="records")}
        todo = [replace(c, repeat=c.repeat + attempt * repeats) for c in cells
                if key_of.get(c.cell_id) in pending]
        say(f"--retry: measuring {len(pending)} cell(s) again (attempt {attempt + 1} of "
            f"{check.retries + 1}): {'; '.join(c.cell for c in pending.values())}")
        result = rerun(todo)
        if result.write_error or result.stopped_by is not None:
            break
        run = current()
        fresh = {c.cell_id for c in todo}
        keys = [regression.cell_key(row) for row in run.runs.to_dict(orient="records")]
        latest = run.runs[[cell_id in fresh or key not in pending for cell_id, key in zip(run.runs["cell_id"], keys)]]
        again = compare(replace(run, runs=latest))
        for cell in again.cells:
            before = pending.get(regression.cell_key(cell.key))
            if before is not None:
                cell.attempts = [*before.attempts, f"{before.verdict} {before.change_pct:+.1f} %"]
        by_key = {regression.cell_key(c.key): c for c in again.cells}
        comparison.cells = [by_key.get(regression.cell_key(c.key), c) if regression.cell_key(c.key) in pending
                            else c for c in comparison.cells]
    return comparison


def _reopen(directory: Path, held: contextlib.ExitStack) -> tuple[store.Run, RunConfig]:
    """The run to resume (locked until ``held`` closes) and its config, every value parsed as
    its option would be. Refuses what is not a run, or one another process still writes."""
    if not directory.is_dir():
        raise UsageError(f"--resume {directory}: no such run directory")
    if not (directory / store.ENV_JSON).is_file():  # checked before the lock file is made in it
        raise UsageError(f"--resume {directory}: not a run directory (no {store.ENV_JSON}); "
                         "not a run that can be resumed")
    try:
        held.callback(store.lock_run_dir(directory).release)
        run = store.read_run(directory, started=True)
    except (store.ResultsError, OSError) as exc:
        reason = exc if isinstance(exc, store.ResultsError) else f"{directory}: {exc.strerror or exc}"
        raise UsageError(f"--resume: {reason}; not a run that can be resumed") from None
    try:
        config = RunConfig.from_dict(run.env.get("config"))
    except ValueError as exc:
        raise UsageError(f"--resume {directory / store.ENV_JSON}: {exc}; it cannot be resumed, "
                         "start a new run") from None
    requested = run.env.get("devices_requested")
    if config.devices is None and isinstance(requested, list) and requested != ["all"]:
        try:  # a run from before the devices were part of its config
            config = replace(config, devices=config_module.devices(",".join(map(str, requested))))
        except ValueError:
            pass
    return run, config


def steps_frame(steps: list[dict]):
    import pandas as pd

    return pd.DataFrame(steps, columns=list(STEP_COLUMNS))
