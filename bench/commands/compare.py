"""``bench compare``: any two runs or baselines, of one machine or two (informational)."""

from __future__ import annotations

import json
import sys

from bench import regression, store
from bench.options import EXIT_OK, UsageError, add_compare_options, load_run_or_baseline, results_dir_parent, show


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", parents=[results_dir_parent()],
                                   help="compare any two runs or baselines, of one machine or two "
                                        "(informational; 'check' is the CI gate)",
                                   epilog="Exit statuses: 0 the comparison ran (whatever it found); "
                                          "2 bad input.")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("run_a", metavar="RUN_A", help="run directory, or baseline name or directory "
                                                       "(the reference side)")
    parser.add_argument("run_b", metavar="RUN_B", help="run directory, or baseline name or directory")
    parser.add_argument("--match", choices=regression.MATCHES, default="device",
                        help="device: cells match when device type and name and every setting "
                             "match (as check); settings: every setting and the device's type and "
                             "index, whatever its name, to compare two machines (default: device)")
    add_compare_options(parser, "the change that counts as slower or faster, as for check")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run(args) -> int:
    root = store.results_root(args.results_dir)
    first, second = load_run_or_baseline(args.run_a, root), load_run_or_baseline(args.run_b, root)
    try:
        comparison = regression.compare_runs(first, second, args.match, args.max_slowdown, args.confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        show(json.dumps(comparison.as_dict(), indent=2, ensure_ascii=False))
    else:
        show(f"RUN_A `{args.run_a}` is the baseline side, RUN_B `{args.run_b}` the run side: "
             "+ means RUN_B takes longer per step. Informational: the exit status is 0 whatever "
             "the verdicts ('check' is the gate).\n")
        show(regression.comparison_markdown(comparison))
    return EXIT_OK
