"""``bench readme``: regenerate the README's statistics table from a run (or several)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from bench import readme, store, tables
from bench.options import (
    EXIT_OK,
    REFERENCE_HELP,
    RESCORE_HELP,
    UsageError,
    load_runs_arg,
    path_arg,
    reference_arg,
    rescored_runs,
    results_dir_parent,
    show,
    target_arg,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("readme", parents=[results_dir_parent()],
                                   help="regenerate the README statistics table from a run")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--run", type=path_arg, action="append", metavar="DIR",
                        help="run directory or baseline; repeat it for one table of several runs "
                             "(default: the latest run)")
    parser.add_argument("--reference", metavar="REF", help=REFERENCE_HELP)
    parser.add_argument("--target-accuracy", type=target_arg, metavar="FRACTION", help=RESCORE_HELP)
    parser.add_argument("--readme", type=path_arg, default=Path("README.md"),
                        help="the file to update (default: README.md)")
    parser.add_argument("--marker", default=readme.DEFAULT_MARKER,
                        help="which generated block: the text between <!-- bench:MARKER:start --> "
                             "and <!-- bench:MARKER:end --> (default: table)")


def readme_command(run_: store.Run) -> str | None:
    """The command that made ``run_`` as it was recorded, with its output directory where the run
    now lives. Nothing else is rewritten: the recorded command was already shown relative to the
    directory it ran in, and re-relativizing it here would make a published block depend on where
    ``bench readme`` runs (a CI checkout elsewhere would regenerate different bytes)."""
    command = run_.env.get("command")
    if not command:
        return None
    try:
        tokens = shlex.split(command)
    except ValueError:
        return command
    if tokens[:3] != ["python", "-m", "bench"] or "--out" not in tokens[3:-1]:
        return command
    at = tokens.index("--out", 3)
    tokens[at + 1] = os.path.relpath(run_.directory)
    return "python -m bench " + shlex.join(tokens[3:])


def run(args) -> int:
    if not re.fullmatch(r"[a-z0-9-]+", args.marker):
        raise UsageError(f"--marker '{args.marker}': use lowercase letters, digits and dashes")
    runs, reference = load_runs_arg(args.run, store.results_root(args.results_dir)), reference_arg(args.reference)
    runs = rescored_runs(runs, args.target_accuracy)
    try:
        table = tables.markdown(runs, reference, [readme_command(r) for r in runs],
                                rescored_at=args.target_accuracy)
        changed = readme.update_readme(args.readme, table, args.marker)
    except (readme.ReadmeError, tables.TableError) as exc:
        raise UsageError(str(exc)) from None
    show(f"{args.readme}: {'table updated' if changed else 'already up to date'} "
         f"from run{'s' if len(runs) > 1 else ''} {', '.join(str(r.directory) for r in runs)}")
    return EXIT_OK
