"""``bench check``: compare a run with a baseline, the CI gate (exit 1 on a slowdown)."""

from __future__ import annotations

import json
import sys

from bench import regression, store
from bench.options import (
    EXIT_STATUSES,
    UsageError,
    add_compare_options,
    check_report_path,
    check_status,
    load_baseline_arg,
    load_run_arg,
    path_arg,
    results_dir_parent,
    say_verdicts,
    show,
    stderr,
    write_report,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("check", parents=[results_dir_parent()],
                                   help="compare a run with a baseline; exit 1 on a slowdown",
                                   epilog=f"Exit statuses: {EXIT_STATUSES}.")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--baseline", required=True, help="baseline name (<results>/baselines/NAME) "
                                                          "or a baseline or run directory")
    parser.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    add_compare_options(parser, "a cell regressed when its step time is confidently this much slower")
    parser.add_argument("--markdown", type=path_arg, help="also write the report as Markdown to this file")
    parser.add_argument("--json", type=path_arg, help="also write the report as JSON to this file")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    markdown_path = check_report_path("--markdown", args.markdown)
    json_path = check_report_path("--json", args.json)
    baseline = load_baseline_arg(args.baseline, root)
    current = load_run_arg(args.run, root)
    try:
        comparison = regression.compare(baseline, current, args.max_slowdown, args.confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    report = regression.comparison_markdown(comparison)
    show(report)
    if comparison.environment_differences:
        stderr("warning: the environments differ: " + "; ".join(comparison.environment_differences))
    if markdown_path:
        write_report(markdown_path, report)
    if json_path:
        write_report(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    say_verdicts(comparison)
    return check_status(comparison)
