"""``bench report``: one self-contained HTML page of runs, machines and (with --history) history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import history, report, store

EXIT_OK, EXIT_USAGE, EXIT_WRITE = 0, 2, 5


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="one HTML page (opens offline) of runs: headline, table, charts, history",
        description="Write one self-contained HTML file: the notebook's training time per device (CPU vs "
                    "GPU), a sortable results table, throughput against batch size, step-time "
                    "distributions and, with --history, images/s of every cell over time.")
    parser.add_argument("--run", type=Path, action="append", dest="runs", metavar="DIR",
                        help="run directory or baseline name; repeat for several (default: the latest run under the "
                             "results root)")
    parser.add_argument("--history", action="store_true",
                        help="add the history of every cell from the runs and baselines under the results root")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--headline-png", type=Path, metavar="FILE",
                        help="also draw the headline (CPU vs GPU) as a PNG, e.g. docs/img/cpu-vs-gpu.png")
    parser.add_argument("--results-dir", type=Path, metavar="DIR",
                        help=f"results root (default: ${store.RESULTS_ENV}, else ./results)")
    parser.set_defaults(run=run)
    return parser


def _error(text: str, status: int = EXIT_USAGE) -> int:
    print(f"bench: error: {text}", file=sys.stderr)
    return status


def _load(text: str, root: Path) -> store.Run:
    """A run directory, else a saved baseline by name (store.BaselineError otherwise)."""
    return store.load_baseline(text, root)


def run(args) -> int:
    root = store.results_root(args.results_dir)
    out = Path(args.out)
    for option, path in (("--out", out), ("--headline-png", args.headline_png)):
        if path is None:
            continue
        if path.is_dir():
            return _error(f"{option} {path}: is a directory; name a file")
        if not (path.parent if str(path.parent) else Path(".")).is_dir():
            return _error(f"{option} {path}: its directory does not exist; create it or choose another")
    try:
        if args.runs:
            runs = [_load(str(path), root) for path in args.runs]
        elif args.history and not any(store.runs_dir(root).glob(f"*/{store.RUNS_CSV}")):
            runs = []                              # history of baselines alone
        else:
            runs = [store.read_run(store.latest_run(root))]
        found = history.history(root) if args.history else None
    except (store.ResultsError, store.BaselineError) as exc:
        return _error(str(exc))
    try:
        report.write_report(runs, out, history=found)
        if args.headline_png and report.write_headline_png(report.report_cells(runs), args.headline_png) is None:
            print(f"bench: warning: {args.headline_png} not drawn: no measured cell has a steady step time",
                  file=sys.stderr)
    except report.ReportError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"could not write {exc.filename or out}: {exc.strerror or exc}", EXIT_WRITE)
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {len(runs)} run(s)"
          + (f", history of {len(found.series())} cell(s)" if found is not None else "") + ")", file=sys.stderr)
    return EXIT_OK
