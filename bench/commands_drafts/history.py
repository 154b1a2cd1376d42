"""``bench history``: images/s of each cell over the runs under the results root, as text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import history, store

EXIT_OK, EXIT_USAGE = 0, 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be 1 or more")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "history", help="images/s of each cell over time, each run judged against the one before",
        description="Every cell's images/s over the runs and baselines under the results root, oldest "
                    "first, with the change against the previous run and what 'check' says of it.")
    parser.add_argument("--cell", action="append", dest="cells", metavar="TEXT",
                        help="keep cells whose name contains TEXT (case-insensitive); repeatable")
    parser.add_argument("--last", type=_positive, metavar="N", help="the last N runs of each cell (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--results-dir", type=Path, metavar="DIR",
                        help=f"results root (default: ${store.RESULTS_ENV}, else ./results)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    root = store.results_root(args.results_dir)
    if not store.runs_dir(root).is_dir() and not store.baselines_dir(root).is_dir():
        print(f"bench: error: {root}: no runs/ or baselines/ here; point --results-dir or "
              f"${store.RESULTS_ENV} at your results", file=sys.stderr)
        return EXIT_USAGE
    found = history.history(root, args.cells or ())
    if args.cells and not found.points:
        print(f"bench: error: --cell {' '.join(args.cells)}: no cell matches; run without --cell to see "
              "every cell's name", file=sys.stderr)
        return EXIT_USAGE
    print(history.history_json(found, args.last) if args.json else history.history_table(found, args.last),
          end="")
    return EXIT_OK
