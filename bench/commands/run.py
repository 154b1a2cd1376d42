"""``bench run``: time training on each device and batch size (a :mod:`bench.session`)."""

from __future__ import annotations

import sys
from dataclasses import replace

from bench import fleet, session, store
from bench.options import (
    EXIT_NOTHING_MEASURED,
    EXIT_OK,
    EXIT_STATUSES,
    EXIT_USAGE,
    UsageError,
    add_compare_options,
    add_run_options,
    gate_status,
    given_settings,
    load_baseline_arg,
    non_negative_int,
    path_arg,
    results_dir_parent,
    run_config_from,
    show,
    show_if_read,
    stderr,
    stopped_or_write_status,
    typed,
)
from bench.progress import reporter_for


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", parents=[results_dir_parent()],
                                   help="time training on each device and batch size",
                                   epilog=f"Exit statuses: {EXIT_STATUSES}.")
    parser.set_defaults(command=sys.modules[__name__])
    add_run_options(parser)
    parser.add_argument("--resume", type=path_arg, metavar="DIR",
                        help="finish an interrupted run: run only its missing cells, with its own "
                             "settings (every run option it was started with), appending to its files")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="with --resume: also run again the cells that failed")
    parser.add_argument("--check-against", metavar="BASELINE",
                        help="after the run, compare it with this baseline (name or directory), as "
                             "'check' does")
    add_compare_options(parser, "with --check-against: the slowdown that counts as a regression",
                        with_confidence=False)
    parser.add_argument("--retry", type=non_negative_int, default=0, metavar="N",
                        help="with --check-against: measure each cell judged a regression or "
                             "inconclusive because the run was busy again, up to N times, each time in "
                             "fresh workers (as many repeats as the run has); the latest attempt "
                             "decides, earlier ones are named in the report and every row stays in "
                             "runs.csv (default: 0)")
    ray = parser.add_argument_group("a fleet (docs/fleet.md; needs pip install 'cifar-bench[ray]')")
    ray.add_argument("--ray", metavar="HOST:PORT",
                     help="run the matrix on every selected node of the Ray cluster whose head is at "
                          "HOST:PORT (auto: the cluster ray start joined on this host), one cell at a time "
                          "per node, each node a machine of the table; "
                          "writes one run directory per machine plus the combined table. With "
                          "--resume, give the fleet directory")
    ray.add_argument("--ray-nodes", type=typed(fleet.parse_node_selector, "selector"), metavar="SELECTOR",
                     help="with --ray: all, or LABEL=VALUE,... (the nodes carrying every pair, e.g. "
                          f"{fleet.MACHINE_LABEL_KEY}=gpu-box) (default: all)")


def run(args) -> int:
    if args.rerun_failed and not args.resume:
        raise UsageError("--rerun-failed goes with --resume DIR; add it or drop --rerun-failed")
    root = store.results_root(args.results_dir)
    if args.ray_nodes and not args.ray:
        raise UsageError("--ray-nodes picks the nodes of a --ray cluster; add --ray HOST:PORT or drop it")
    if args.resume:
        given = given_settings(args) + (["--out"] if args.out else []) + (["--ray-nodes"] if args.ray_nodes else [])
        if given:  # the run keeps every setting it was started with
            raise UsageError(f"--resume takes its settings from the run; drop {given[0]}")
        if args.dry_run:
            raise UsageError("--dry-run plans a new run; drop it or --resume")
        config = None
    else:
        config = run_config_from(args)
    if args.ray:
        return run_fleet(args, config, root)
    if args.retry and not args.check_against:
        raise UsageError("--retry re-measures cells a check found slower or inconclusive; "
                         "add --check-against BASELINE or drop --retry")
    check = None
    if args.check_against:
        check = session.CheckRequest(load_baseline_arg(args.check_against, root), args.max_slowdown, args.retry,
                                     name=args.check_against)
    request = session.RunRequest(
        config=config, command=session.display_command(args.argv), results_root=root, out=args.out,
        resume=args.resume, rerun_failed=args.rerun_failed, require_devices=args.require_devices,
        check=check, dry_run=args.dry_run)
    outcome = session.run(request, stderr, reporter_for(sys.stderr))
    return report(outcome, dry_run=args.dry_run)


def run_fleet(args, config, root) -> int:
    """``--ray``: the matrix on every selected machine of a Ray cluster (:mod:`bench.fleet`)."""
    refused = [flag for flag, given in (("--check-against", args.check_against), ("--retry", args.retry),
                                        ("--dry-run", args.dry_run), ("--require-devices", args.require_devices),
                                        ("--cluster", config is not None and config.cluster)) if given]
    if refused:
        raise UsageError(f"{refused[0]} is not available with --ray (each node is a machine of its own); "
                         f"drop {refused[0]} or --ray")
    try:
        fleet.connect(args.ray)          # before the data is looked for (and maybe downloaded)
        if config is not None:
            config = replace(config, source=session.resolve_source(config))
        outcome = fleet.run_fleet(fleet.FleetRequest(
            address=args.ray, config=config, out=args.resume or args.out, results_root=root,
            command=session.display_command(args.argv), selector=args.ray_nodes or fleet.NodeSelector(),
            resume=bool(args.resume), rerun_failed=args.rerun_failed), stderr)
    except fleet.FleetError as exc:
        raise UsageError(str(exc)) from None
    if outcome.summary:
        show_if_read(outcome.summary)
    status = stopped_or_write_status(outcome, resume_hint=False)
    return status if status is not None else gate_status(None, outcome.failed)


def report(outcome: session.RunOutcome, dry_run: bool = False, resume_hint: bool = True) -> int:
    """What a finished run prints: the table, then where it is, then what failed or regressed."""
    if dry_run:
        assert outcome.estimate is not None          # a dry run's outcome carries its plan
        show(f"plan: {outcome.estimate.describe()}; nothing run, nothing written (--dry-run)")
        return EXIT_OK
    if outcome.summary:
        show_if_read(outcome.summary)
    status = stopped_or_write_status(outcome, resume_hint)
    if status is not None:
        return status
    stderr(f"results: {outcome.out}")
    if outcome.nothing_measured:        # a CI job must not pass on a run that measured nothing
        stderr(f"bench: error: {outcome.nothing_measured}")
        return EXIT_NOTHING_MEASURED
    if outcome.comparison_error:        # the run and its summary are kept; only the check is lost
        stderr(f"bench: error: {outcome.comparison_error}")
        return gate_status(None, outcome.failed) if outcome.failed else EXIT_USAGE
    if outcome.comparison is not None:
        from bench import regression

        show_if_read(regression.comparison_markdown(outcome.comparison))
    return gate_status(outcome.comparison, outcome.failed)
