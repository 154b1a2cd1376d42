"""``bench runs``: the runs (and baselines) under the results root, newest first."""

from __future__ import annotations

import json
import sys

from bench import store
from bench.options import EXIT_OK, UsageError, path_arg, results_dir_parent, show


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("runs", parents=[results_dir_parent()],
                                   help="list the runs (and baselines) under the results root, newest first")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("directory", nargs="?", type=path_arg, metavar="DIR",
                        help="list the runs of this directory instead: a results root, a folder of runs "
                             "(e.g. results/published) or one run")
    parser.add_argument("--json", action="store_true", help="print the list as JSON, for scripts")
    parser.add_argument("--no-baselines", action="store_true", help="list runs only")


def runs_table(found: list) -> str:
    import pandas as pd

    return pd.DataFrame([{
        "Kind": r.kind, "ID": r.id, "Date": (r.date or "?")[:16].replace("T", " "),
        "Machine": r.machine or "?", "Data": r.data or "–",
        "Cells ok/failed/skipped": f"{r.ok}/{r.failed}/{r.skipped}" if not r.error else "–",
        "Commit": r.git_commit or "–", "Problem": r.error or ""}
        for r in found]).to_markdown(index=False, disable_numparse=True)


def run(args) -> int:
    root = store.results_root(args.results_dir)
    if args.directory is None:
        found = store.list_runs(root, baselines=not args.no_baselines)
    else:
        try:
            found = store.list_directory(args.directory)
        except store.ResultsError as exc:
            raise UsageError(str(exc)) from None
        if args.no_baselines:
            found = [r for r in found if r.kind != "baseline"]
    if args.json:
        show(json.dumps([vars(listing) for listing in found], indent=2, ensure_ascii=False))
    elif not found:
        show(f"no runs under {args.directory or store.runs_dir(root)}")
    else:
        show(runs_table(found))
    return EXIT_OK
