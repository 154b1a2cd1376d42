"""``bench export``: a run's results for CI dashboards (Bencher, github-action-benchmark) or as JSON."""

from __future__ import annotations

import json
import sys

from bench import export, store
from bench.options import (
    EXIT_OK,
    UsageError,
    check_report_path,
    load_run_arg,
    load_run_or_baseline,
    path_arg,
    results_dir_parent,
    show,
    stderr,
    write_report,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", parents=[results_dir_parent()],
                                   help="write a run's results for CI dashboards (Bencher, "
                                        "github-action-benchmark) or as plain JSON")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--run", type=path_arg, help="run directory or baseline (default: the latest run)")
    parser.add_argument("--format", choices=export.FORMATS, required=True,
                        help="bencher: Bencher Metric Format (latency, throughput, accuracy); "
                             "github-action-benchmark: its customSmallerIsBetter array (median step "
                             "in ms); json: this project's flat form")
    parser.add_argument("--out", type=path_arg, metavar="FILE", help="write here (default: stdout)")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    out = check_report_path("--out", args.out)
    run_ = load_run_or_baseline(str(args.run), root) if args.run else load_run_arg(None, root)
    data = export.export(run_, args.format)
    if not export.count(args.format, data):
        raise UsageError(f"{run_.directory}: no measured cell to export")
    for warning in export.warnings(run_):
        stderr(f"warning: {warning}")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        show(text.rstrip("\n"))
        return EXIT_OK
    write_report(out, text)
    stderr(f"{args.format}: {out} ({export.count(args.format, data)} benchmark(s) from {run_.directory})")
    return EXIT_OK
