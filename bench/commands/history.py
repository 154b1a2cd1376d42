"""``bench history``: images/s of each cell over the runs under the results root, as text."""

from __future__ import annotations

import sys

from bench import history, store
from bench.options import EXIT_OK, UsageError, positive_int, results_dir_parent, show


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "history", parents=[results_dir_parent()],
        help="images/s of each cell over time, each run judged against the one before",
        description="Every cell's images/s over the runs and baselines under the results root (or any "
                    "folder of runs, e.g. --results-dir results/published), oldest first, with the change "
                    "against the previous run and what 'check' says of it.")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--cell", action="append", dest="cells", metavar="TEXT",
                        help="keep cells whose name contains TEXT (case-insensitive); repeatable")
    parser.add_argument("--last", type=positive_int, metavar="N", help="the last N runs of each cell (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory, so no runs/ or baselines/ here; point --results-dir "
                         f"or ${store.RESULTS_ENV} at your results (or at a folder of runs)")
    found = history.history(root, args.cells or ())
    if args.cells and not found.points:
        raise UsageError(f"--cell {' '.join(args.cells)}: no cell matches; run without --cell to see "
                         "every cell's name")
    text = history.history_json(found, args.last) if args.json else history.history_table(found, args.last)
    show(text.rstrip("\n"))
    return EXIT_OK
