"""``bench noise``: this machine's run-to-run spread, and the smallest --max-slowdown it supports."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import regression, session, store
from bench.commands import run as run_command
from bench.options import (
    EXIT_CELL_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    UsageError,
    add_compare_options,
    add_run_options,
    load_run_arg,
    path_arg,
    positive_int,
    results_dir_parent,
    run_argv,
    run_config_from,
    show,
    stderr,
)
from bench.progress import reporter_for


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "noise", parents=[results_dir_parent()],
        help="calibrate: this machine's run-to-run spread, and the smallest --max-slowdown it supports",
        description="Compare identical runs pairwise (given with --run, or made now with "
                    "--repeat N and the run options), each pair both ways, and suggest the "
                    "smallest --max-slowdown at which check (busy-machine rule included) calls "
                    "none of them a regression or faster, rounded up to the next 1 %, plus "
                    f"{regression.NOISE_MARGIN_PCT:g} % margin; also what the statistics alone "
                    "would need. Exit 3 when every pair had a saturated side (no suggestion).")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--run", type=path_arg, action="append", dest="runs", metavar="DIR",
                        help="a run directory (give it two or more times; identical settings)")
    parser.add_argument("--repeat", type=positive_int, metavar="N",
                        help="make N identical runs now (under --out, default <results>/runs/<id>-noise) "
                             "with the run options below")
    add_run_options(parser)
    add_compare_options(parser, slowdown_help=None)


def run(args) -> int:
    root = store.results_root(args.results_dir)
    if bool(args.runs) == bool(args.repeat):
        raise UsageError("give either --run DIR two or more times, or --repeat N to make N runs now")
    if args.runs:
        if len(args.runs) < 2:
            raise UsageError("--run: give two or more identical runs to compare")
        runs = [load_run_arg(path, root) for path in args.runs]
    else:
        made = make_runs(args, root)
        if isinstance(made, int):
            return made
        runs = made
    try:
        report = regression.noise_report(runs, args.confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    return show_report(report)


def make_runs(args, root: Path) -> list[store.Run] | int:
    """``--repeat N`` identical runs through the session, each recording the ``bench run``
    command that makes it alone (and this one, as ``noise_command``)."""
    if args.repeat < 2:
        raise UsageError("--repeat: at least 2 runs are needed to see their spread")
    config = run_config_from(args)
    base = Path(args.out or store.runs_dir(root) / f"{store.new_run_id()}-noise")
    noise_command = session.display_command(args.argv)
    runs = []
    for i in range(args.repeat):
        out = base / f"run-{i + 1}"
        request = session.RunRequest(config=config, command=session.display_command(run_argv(config, out)),
                                     results_root=root, out=out, require_devices=args.require_devices,
                                     dry_run=args.dry_run,
                                     describe_env=lambda env: {**env, "noise_command": noise_command})
        stderr(f"noise: run {i + 1} of {args.repeat}")
        outcome = session.run(request, stderr, reporter_for(sys.stderr))
        if args.dry_run:
            assert outcome.estimate is not None      # a dry run's outcome carries its plan
            show(f"plan: {outcome.estimate.describe()}, in each of {args.repeat} runs; nothing run, "
                 "nothing written (--dry-run)")
            return EXIT_OK
        status = run_command.report(outcome)
        if status not in (EXIT_OK, EXIT_CELL_FAILED):
            return status
        runs.append(_as_run(outcome))
    return runs


def _as_run(outcome: session.RunOutcome) -> store.Run:
    try:
        return store.read_run(outcome.out)
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None


def show_report(report) -> int:
    show(report.table.to_markdown(index=False, disable_numparse=True))
    show("")
    if report.saturated == len(report.table):
        show(f"No suggestion: every one of these {len(report.table)} pair-cell(s) had a saturated "
             f"side (other processes took ≥ {regression.SATURATED_PCT:g} % of the usable CPUs), "
             "and check calls any difference there inconclusive, at any threshold. Measure on a "
             f"quieter machine. Statistics alone would need {report.statistics_only_pct:g}%.")
        return EXIT_INCONCLUSIVE
    if report.saturated:
        show(f"Note: {report.saturated} pair-cell(s) had a saturated side; check calls any "
             "difference there inconclusive, so they do not constrain the suggestion.")
    show(f"Suggested --max-slowdown: {report.suggested_pct:g}%: the smallest threshold at which "
         f"check, busy-machine rule included, would have flagged none of these "
         f"{len(report.table)} identical pair-cell(s), each compared both ways (differences that "
         "contention explains come out inconclusive instead); rounded up to the next 1 %, plus "
         f"{regression.NOISE_MARGIN_PCT:g} %.")
    show(f"Conservative: {report.with_contention_pct:g}% keeps even each interval's upper end "
         "below the threshold (room for pairs not seen yet), contention rule included; "
         f"{report.statistics_only_pct:g}% without the rule.")
    if report.busy:
        show(f"Note: {report.busy} pair-cell(s) had a busy side (other processes ≥ "
             f"{regression.DISTURBED_PCT:g} % of the usable CPUs): expect inconclusive verdicts "
             "at the suggested threshold; on a quieter machine the spread may be smaller.")
    return EXIT_OK

