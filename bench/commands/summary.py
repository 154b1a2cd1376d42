"""``bench summary``: the table of a run, or one table of several runs."""

from __future__ import annotations

import json
import sys

from bench import export, plots, store, tables
from bench.options import (
    EXIT_OK,
    EXIT_WRITE,
    REFERENCE_HELP,
    RESCORE_HELP,
    UsageError,
    check_report_path,
    load_runs_arg,
    path_arg,
    reference_arg,
    rescored_runs,
    results_dir_parent,
    show,
    stderr,
    target_arg,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("summary", parents=[results_dir_parent()], help="print the table of a run")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--run", type=path_arg, action="append", metavar="DIR",
                        help="run directory or baseline; repeat it for one table of several runs, "
                             "of one machine or many (default: the latest run)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON, for scripts")
    parser.add_argument("--reference", metavar="REF", help=REFERENCE_HELP)
    parser.add_argument("--target-accuracy", type=target_arg, metavar="FRACTION", help=RESCORE_HELP)
    parser.add_argument("--plot", type=path_arg, metavar="FILE.png",
                        help="also draw images/s by batch size, one line per machine and device")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    plot_path = check_report_path("--plot", args.plot)
    runs, reference = load_runs_arg(args.run, root), reference_arg(args.reference)
    runs = rescored_runs(runs, args.target_accuracy)
    if args.json and reference.machine is not None:
        raise UsageError("--reference picks what the table's Speed-up column divides by; --json gives every "
                         "cell's numbers with units instead, to divide as you need: drop one of them")
    try:
        if args.json:
            data = (export.summary_json(runs[0].runs, runs[0].env) if len(runs) == 1
                    else export.summary_json_of_runs(runs))
            text = json.dumps(data, indent=2, ensure_ascii=False)
        else:
            text = tables.markdown(runs, reference, rescored_at=args.target_accuracy)
    except tables.TableError as exc:
        raise UsageError(str(exc)) from None
    show(text)
    if plot_path:
        try:
            drawn = plots.comparison_plot(tables.combined(runs), plot_path,
                                          "Training throughput: " + ", ".join(
                                              dict.fromkeys(tables.machine_names(runs))))
        except OSError as exc:
            stderr(f"bench: error: could not write {plot_path}: {exc.strerror or exc}")
            return EXIT_WRITE
        stderr(f"plot: {plot_path}" if drawn else "plot: no measured cell to draw")
    return EXIT_OK
