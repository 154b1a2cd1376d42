"""``bench report``: one self-contained HTML page of runs, machines and (with --history) history."""

from __future__ import annotations

import sys

from bench import history, report, store
from bench.options import (
    EXIT_OK,
    UsageError,
    WriteError,
    check_report_path,
    load_run_arg,
    load_run_or_baseline,
    path_arg,
    results_dir_parent,
    stderr,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", parents=[results_dir_parent()],
        help="one HTML page (opens offline) of runs: headline, table, charts, history",
        description="Write one self-contained HTML file: the notebook's training time per device (CPU vs "
                    "GPU), a sortable results table, throughput against batch size, step-time "
                    "distributions and, with --history, images/s of every cell over time.")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--run", type=path_arg, action="append", dest="runs", metavar="DIR",
                        help="run directory or baseline name; repeat for several (default: the latest run under the "
                             "results root)")
    parser.add_argument("--history", action="store_true",
                        help="add the history of every cell from the runs and baselines under the results root")
    parser.add_argument("--out", type=path_arg, required=True, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--headline-png", type=path_arg, metavar="FILE",
                        help="also draw the headline (CPU vs GPU) as a PNG, e.g. docs/img/cpu-vs-gpu.png")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    out = check_report_path("--out", args.out)
    assert out is not None                     # --out is required
    headline_png = check_report_path("--headline-png", args.headline_png)
    if args.runs:
        runs = [load_run_or_baseline(str(path), root) for path in args.runs]
    elif args.history and not any(store.runs_dir(root).glob(f"*/{store.RUNS_CSV}")):
        runs = []                              # history of baselines alone
    else:
        runs = [load_run_arg(None, root)]
    try:
        found = history.history(root) if args.history else None
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None
    try:
        report.write_report(runs, out, history=found)
        if headline_png and report.write_headline_png(report.report_cells(runs), headline_png) is None:
            stderr(f"bench: warning: {headline_png} not drawn: no measured cell has a steady step time")
    except report.ReportError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise WriteError(f"could not write {exc.filename or out}: {exc.strerror or exc}") from None
    stderr(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {len(runs)} run(s)"
           + (f", history of {len(found.series())} cell(s)" if found is not None else "") + ")")
    return EXIT_OK
