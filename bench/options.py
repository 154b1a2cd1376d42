"""The command line's vocabulary: value parsers, shared option groups, args -> typed requests,
exit statuses, and the one-line output. The only module besides the commands that knows argparse.

Every argument is validated before anything is written: bad input gets one line on stderr
that names the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import matrix, regression, store, tables, tta
from bench.config import PROFILES, SETTING, SETTINGS, RunConfig, cluster, devices, fraction, path_text
from bench.errors import UsageError, WriteError
from bench.protocol import DataSpec

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_CELL_FAILED, EXIT_WRITE = 0, 1, 2, 3, 4, 5
EXIT_NOTHING_MEASURED = 6
EXIT_STATUSES = (
    "0 ok; 1 a regression (check, run --check-against, ab); 2 bad input (nothing written); "
    "3 inconclusive: no regression found, but the machine was too busy to judge a cell; "
    "4 a cell failed; 5 results could not be written (disk full, permissions); 6 nothing measured "
    "(every cell skipped: a missing device or backend); 128+N stopped "
    "by signal N (130 Ctrl-C, 143 SIGTERM). When several apply, 1 wins over 4, and 4 over 3: "
    "a failed cell never hides a regression; stderr names every regressed, failed and "
    "inconclusive cell")
REFERENCE_HELP = ("what Speed-up divides by: cpu (each machine's own CPU row) or MACHINE:DEVICE, "
                  "e.g. laptop:gpu:0 (a machine label, or the name in the Machine column) "
                  "(default: cpu)")

class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- value parsers (type=)

def typed(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` from a parser that raises ValueError with the message to show."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = what
    return convert


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.5 <= value < 1:
        raise ValueError(f"'{text}' must be a number from 0.5 to below 1")
    return value


positive_int = typed(matrix.integer(1, 10**6), "integer")
non_negative_int = typed(matrix.integer(0, 10**6), "integer")
slowdown = typed(regression.parse_slowdown, "slowdown")
confidence = typed(_confidence, "confidence")
path_arg = typed(lambda text: Path(path_text(text)), "path")
device_list = typed(lambda text: list(devices(text)), "devices")


# --------------------------------------------------------------------------- option groups

def results_dir_parent() -> argparse.ArgumentParser:
    """``--results-dir``: a parent parser every command that reads or writes results takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results-dir", type=path_arg, metavar="DIR",
                        help=f"results root holding runs/, baselines/ and peaks/ (default: "
                             f"${store.RESULTS_ENV}, else ./results)")
    return common


def add_matrix_options(parser: argparse.ArgumentParser, defaults_note: Mapping[str, str] = {}) -> None:
    """One option per dimension of the matrix (:data:`bench.matrix.DIMENSIONS`)."""
    for d in matrix.DIMENSIONS:
        default = defaults_note.get(d.name) or ",".join(str(v) for v in d.default)
        parser.add_argument(d.flag, dest=d.name, type=typed(matrix.comma_list(d.parse, d.example), d.name),
                            metavar=d.name.upper(), help=f"{d.help} (default: {default})")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """What to run and how: the matrix and every run-wide setting (:data:`bench.config.SETTINGS`),
    shared by run, ab and noise --repeat. Each defaults to None, so "given" is knowable."""
    for s in SETTINGS:
        if s.parse is None:
            parser.add_argument(s.flag, dest=s.name, action="store_const", const=True, default=None, help=s.help)
        elif hasattr(s.parse, "choices"):
            parser.add_argument(s.flag, dest=s.name, choices=s.parse.choices, help=s.help)
        else:
            parser.add_argument(s.flag, dest=s.name, type=typed(s.parse, s.name), metavar=s.metavar, help=s.help)
        if s.name == "devices":
            add_matrix_options(parser, {"batch_size": "quick: 64,128,256; seed: 128",
                                        "precision": "quick: auto; seed: fp32"})
    parser.add_argument("--no-eval", action="store_const", const=0, dest="eval_images",
                        help="skip evaluation: accuracy says 'not measured' (same as --eval-images 0)")
    parser.add_argument("--out", type=path_arg, help="run directory; must not exist or be empty "
                                                     "(default: <results>/runs/<run-id>/)")
    parser.add_argument("--require-devices", action="store_true",
                        help="a requested device that is missing is an error instead of a skipped row")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (cells, steps, images) and an estimate of its duration; "
                             "run nothing, write nothing")


def add_compare_options(parser: argparse.ArgumentParser, slowdown_help: str | None,
                        with_confidence: bool = True) -> None:
    """The one home of ``--max-slowdown`` (unless ``slowdown_help`` is None) and ``--confidence``."""
    if slowdown_help is not None:
        parser.add_argument("--max-slowdown", type=slowdown, default=0.10,
                            help=f"{slowdown_help}: a percentage (10%%) or a fraction (0.1); a bare "
                                 "number >= 1 is refused as ambiguous (default: 10%%)")
    if with_confidence:
        parser.add_argument("--confidence", type=confidence, default=0.95,
                            help="confidence level of the intervals, 0.5 to below 1 (default: 0.95)")


# --------------------------------------------------------------------------- args -> requests

def given_settings(args: argparse.Namespace) -> list[str]:
    """The run-wide settings (and matrix dimensions) given on the command line, as flags."""
    flags = [s.flag for s in SETTINGS if getattr(args, s.name, None) is not None]
    return flags + [d.flag for d in matrix.DIMENSIONS if getattr(args, d.name, None) is not None]


def run_config_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> RunConfig:
    """Validate every run option into a RunConfig (nothing touches the disk)."""
    profile = PROFILES[args.profile or SETTING["profile"].default]
    values: dict[str, Any] = {}
    for s in SETTINGS:
        given = getattr(args, s.name, None)
        if given is None:
            given = profile.get(s.name) if s.profile else s.default
        values[s.name] = None if s.zero_is_none and given == 0 else given
    values["cluster"], values["task_index"] = cluster_from(args.cluster, args.task_index, environ)
    if values["synthetic_images"] is not None and values["data"] != "synthetic":
        raise UsageError("--synthetic-images is used only with --data synthetic; drop one of them")
    if values["data"] == "synthetic" and values["data_dir"] is not None:
        raise UsageError("--data-dir is used only with --data cifar10; drop one of them")
    if getattr(args, "energy_window", None) is not None and not values["energy"]:
        raise UsageError("--energy-window is used only with --energy; add --energy or drop --energy-window")
    overrides = dict(profile)
    if values["cluster"] and not args.workers:
        overrides["workers"] = (len(values["cluster"]),)
    plan = matrix.Plan({d.name: getattr(args, d.name, None) or overrides.get(d.name) or d.default
                        for d in matrix.DIMENSIONS})
    config = RunConfig(plan=plan, source=DataSpec("synthetic", split=values["split"],
                                                  synthetic_images=values["synthetic_images"]), **values)
    problems = config.problems()
    if problems:
        raise UsageError(problems[0])
    if getattr(args, "out", None):
        check_output_dir(args.out)
    return config


def cluster_from(given: tuple[str, ...] | None, task_index: int | None,
                 environ: Mapping[str, str] = os.environ) -> tuple[tuple[str, ...], int]:
    """(--cluster or TF_CONFIG's workers, this host's task index); ((), 0) for none.
    A malformed TF_CONFIG is bad input, refused before anything runs."""
    found, task = given or (), task_index
    if not found and environ.get("TF_CONFIG"):
        shape = ("expected {'cluster': {'worker': [host:port, ...]}, 'task': {'type': 'worker', "
                 "'index': I}}")
        try:
            tf_config = json.loads(environ["TF_CONFIG"])
            found = cluster(",".join(tf_config["cluster"]["worker"]))
            if task is None:
                raw = (tf_config.get("task") or {}).get("index", 0)
                task = SETTING["task_index"].decode(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"TF_CONFIG: {shape} ({exc})") from None
        if task >= len(found):
            raise UsageError(f"TF_CONFIG: task index {task} is outside its cluster of {len(found)} "
                             "worker(s); fix TF_CONFIG or give --task-index")
    if task and not found:
        raise UsageError("--task-index needs --cluster (or TF_CONFIG)")
    return found, task or 0


def check_output_dir(path: Path) -> None:
    """``--out`` must be creatable and empty; nothing is created here (the run claims it later)."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--out {path}: is a file; name a directory")
        if any(path.iterdir()):
            raise UsageError(f"--out {path}: already exists and is not empty; choose a new "
                             "directory so no earlier run is overwritten")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--out {path}: not writable; choose a directory you can write to")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {path}: {ancestor} is a file; choose another directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot create it, {ancestor} is not writable; "
                         "choose a directory you can write to")


def run_argv(config: RunConfig, out: Path) -> list[str]:
    """The ``bench run`` arguments that make one run of ``config`` into ``out`` (what a run
    made by another command records as the command that made it)."""
    argv = ["run"]
    profile = PROFILES[config.profile]
    for s in SETTINGS:
        value = getattr(config, s.name)
        default = profile.get(s.name) if s.profile else s.default
        if s.zero_is_none and value is None and default is not None:
            argv += [s.flag, "0"]
        elif value != default and value is not None:
            argv += [s.flag] if s.parse is None else [s.flag, ",".join(map(str, value))
                                                      if isinstance(value, tuple) else f"{value:g}"
                                                      if isinstance(value, float) else str(value)]
    for d in matrix.DIMENSIONS:
        values = config.plan.of(d.name)
        if values != tuple(profile.get(d.name) or d.default):
            argv += [d.flag, ",".join(map(str, values))]
    return [*argv, "--out", str(out)]


# --------------------------------------------------------------------------- runs and baselines

def load_run_arg(run_arg: Path | None, root: Path) -> store.Run:
    try:
        return store.read_run(run_arg if run_arg else store.latest_run(root))
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None


def load_runs_arg(run_args: list[Path] | None, root: Path) -> list[store.Run]:
    """``--run`` given any number of times: run directories or baselines (names or directories)."""
    if not run_args:
        return [load_run_arg(None, root)]
    return [load_run_or_baseline(str(arg), root) for arg in run_args]


RESCORE_HELP = ("score time to this held-out accuracy (a fraction, 0.6 = 60 %%) from the runs' "
                "curves.csv instead of the target they ran with: for choosing a target after "
                "measuring curves (a run evaluated with --eval-every and no target, or a higher one)")


def target_arg(text: str) -> float:
    """``--target-accuracy`` of summary and readme, parsed as the run option's."""
    try:
        return fraction(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rescored_runs(runs: list[store.Run], target: float | None) -> list[store.Run]:
    """``runs`` with time to ``target`` recomputed from their curves (None: as they ran)."""
    if target is None:
        return runs
    try:
        return [dataclasses.replace(run_, runs=tta.rescored(run_.runs, run_.curves, target, str(run_.directory)))
                for run_ in runs]
    except tta.RescoreError as exc:
        raise UsageError(f"--target-accuracy {target:g}: {exc}") from None


def load_run_or_baseline(text: str, root: Path) -> store.Run:
    """A run directory (a path), else a saved baseline by name; UsageError when neither."""
    path = Path(text)
    if not path.exists() and (path.is_absolute() or len(path.parts) > 1):
        raise UsageError(f"{text}: no such run directory")
    return load_baseline_arg(text, root)


def load_baseline_arg(name_or_path: str, root: Path) -> store.Run:
    try:
        return store.load_baseline(name_or_path, root)
    except store.BaselineError as exc:
        raise UsageError(str(exc)) from None


def reference_arg(text: str | None) -> tables.Reference:
    try:
        return tables.Reference.parse(text)
    except tables.TableError as exc:
        raise UsageError(str(exc)) from None


def check_report_path(option: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; name a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: its directory does not exist or is not writable")
    return path


def write_report(path: Path, text: str) -> None:
    """A report or export, written atomically; a refusal (a full disk) is exit 5, one line."""
    from bench.files import write_atomically

    try:
        write_atomically(path, text)
    except OSError as exc:
        raise WriteError(f"could not write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- exit statuses

def check_status(comparison) -> int:
    if comparison.regressions:
        return EXIT_REGRESSION
    if comparison.inconclusive:
        return EXIT_INCONCLUSIVE
    return EXIT_OK


def gate_status(comparison, failed_cells: list[str]) -> int:
    """One exit status for a run that was also checked: regression (1) over a failed cell (4)
    over inconclusive (3). Every one of them is named on stderr, whichever status wins."""
    if failed_cells:
        stderr("failed: " + "; ".join(failed_cells))
    if comparison is not None:
        say_verdicts(comparison)
    if comparison is not None and comparison.regressions:
        return EXIT_REGRESSION
    if failed_cells:
        return EXIT_CELL_FAILED
    return check_status(comparison) if comparison is not None else EXIT_OK


def say_verdicts(comparison) -> None:
    if comparison.regressions:
        stderr("regression: " + "; ".join(
            c.cell + (f" ({c.why})" if c.why else "") for c in comparison.regressions))
    if comparison.inconclusive:
        stderr("inconclusive: " + "; ".join(c.cell for c in comparison.inconclusive)
               + " (machine busy: measure again on a quiet machine, use --retry, or 'bench ab')")


def stopped_or_write_status(outcome, resume_hint: bool = True) -> int | None:
    """Exit 5 for a refused write, 128+N for a stop signal (each said in one line), else None."""
    import signal

    if outcome.write_error:
        stderr(f"bench: error: {outcome.write_error}")
        return EXIT_WRITE
    if outcome.stopped_by is not None:
        name = signal.Signals(outcome.stopped_by).name
        stderr(f"stopped by {name}: {outcome.finished} of {outcome.planned} cell(s) finished and kept in "
               f"{outcome.out}" + (f"; finish it with: python -m bench run --resume {outcome.out}"
                                   if resume_hint else ""))
        return 128 + outcome.stopped_by
    return None


# --------------------------------------------------------------------------- output

def show(text: str) -> None:
    """Print to stdout; a character its encoding cannot hold (an ASCII locale) is replaced, not fatal."""
    try:
        print(text, flush=True)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        print(text.encode(encoding, "replace").decode(encoding), flush=True)


def show_if_read(text: str) -> None:
    """Print, unless nobody reads stdout any more: then print nothing more, quietly."""
    try:
        show(text)
    except (BrokenPipeError, OSError):
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail on a closed pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def stderr(text: str) -> None:
    """One line on stderr: an undecodable file name (surrogate escapes) or a character the
    stream cannot encode is shown escaped, whatever stderr's handler."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, UnicodeEncodeError):
        pass
