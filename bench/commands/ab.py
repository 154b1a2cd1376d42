"""``bench ab``: the same cells under two Python environments, interleaved, compared B against A.

Two :class:`bench.session.Session` s, one an arm, share the plan; their cells alternate A B,
B A, ... so drift and background load hit both arms alike.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from dataclasses import replace
from pathlib import Path

from bench import isolation, matrix, regression, runner, session, store
from bench.options import (
    EXIT_CELL_FAILED,
    EXIT_NOTHING_MEASURED,
    EXIT_OK,
    EXIT_STATUSES,
    UsageError,
    add_compare_options,
    add_run_options,
    check_report_path,
    gate_status,
    path_arg,
    results_dir_parent,
    run_config_from,
    show,
    stderr,
    stopped_or_write_status,
    write_report,
)
from bench.progress import reporter_for

ARMS = ("a", "b")
#: Asked of each arm's Python: the versions that label it (and land in its env.json).
ARM_VERSIONS = """
import json, platform
from importlib import metadata
out = {"python": platform.python_version()}
for name in ("tensorflow", "tensorflow-cpu", "keras", "jax", "torch", "numpy", "cifar-bench"):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ab", parents=[results_dir_parent()],
        help="A/B: the same cells under two Python environments, interleaved",
        description="Run every cell under two Python environments (each with the project "
                    "installed), alternating arm by arm and cell by cell (A B, then B A, ...; "
                    "repeats are rounds), so drift and background load hit both arms alike. "
                    "Writes OUT/a and OUT/b and compares them as 'check' does (B against A). "
                    "No peak is measured (as with --no-peak): each arm's Python would need its own.",
        epilog=f"Exit statuses: {EXIT_STATUSES}.")
    parser.set_defaults(command=sys.modules[__name__])
    parser.add_argument("--python", action="append", type=path_arg, required=True, metavar="PYTHON",
                        help="the Python of one arm (give it twice: A, then B), e.g. venvA/bin/python")
    add_run_options(parser)
    add_compare_options(parser, "the slowdown of B over A that counts as a regression")
    parser.add_argument("--json", type=path_arg, help="also write the comparison as JSON to this file")


def arm_versions(python: Path) -> dict:
    """The package versions an arm's Python sees; UsageError when it cannot be run."""
    import subprocess

    try:
        done = subprocess.run([str(python), "-E", "-c", ARM_VERSIONS], capture_output=True, text=True,
                              timeout=120)
        versions = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        raise UsageError(f"--python {python}: cannot run it ({exc})") from None
    if not isinstance(versions, dict):
        raise UsageError(f"--python {python}: exited {done.returncode}: "
                         f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return versions


def arm_label(versions: dict) -> str:
    names = (("tensorflow", "TensorFlow"), ("tensorflow-cpu", "TensorFlow"), ("jax", "JAX"),
             ("torch", "PyTorch"), ("keras", "Keras"))
    shown = dict.fromkeys(f"{label} {versions[name]}" for name, label in names if versions.get(name))
    return ", ".join(shown) or f"Python {versions.get('python', '?')}"


def arm_env(env: dict, versions: dict, python: Path, arm: str) -> dict:
    """The harness's fingerprint with the arm's own software: arms differ only in their Python."""
    tensorflow = versions.get("tensorflow") or versions.get("tensorflow-cpu")
    return {**env, "python": versions.get("python"), "ab_arm": arm, "ab_python": str(python),
            "ab_label": arm_label(versions),
            "packages": {**(env.get("packages") or {}),
                         **{k: v for k, v in versions.items() if k != "python"}},
            "tensorflow": {**(env.get("tensorflow") or {}), "version": tensorflow,
                           "keras": versions.get("keras")}}


def interleaved(cells: list[matrix.Cell]) -> list[tuple[str, matrix.Cell]]:
    """(arm, cell) in the order they run: repeats are rounds; within them A B, B A, A B, ...
    (counterbalanced, so neither arm always runs first, i.e. right after the other's warm caches)."""
    order = []
    for position, cell in enumerate(sorted(cells, key=lambda c: c.repeat)):
        arms = ARMS if position % 2 == 0 else ARMS[::-1]
        order += [(arm, cell) for arm in arms]
    return order


def run(args) -> int:
    if len(args.python) != 2:
        raise UsageError(f"--python: give it exactly twice (arm A, then arm B), not {len(args.python)} time(s)")
    json_path = check_report_path("--json", args.json)
    root = store.results_root(args.results_dir)
    versions = [arm_versions(python) for python in args.python]
    config = replace(run_config_from(args), no_peak=True)
    command = session.display_command(args.argv)
    with contextlib.ExitStack() as held, runner.stop_on_signals() as stops:
        sessions = {}
        for arm, python, arm_versions_ in zip(ARMS, args.python, versions):
            request = session.RunRequest(
                config=config, command=command, results_root=root, require_devices=args.require_devices,
                dry_run=args.dry_run, worker_command=tuple(isolation.worker_command(python)),
                describe_env=functools.partial(arm_env, versions=arm_versions_, python=python, arm=arm))
            sessions[arm] = session.Session(request, held, stderr)
        estimate = sessions["a"].plan()
        if args.dry_run:
            show(f"plan: {estimate.describe()}, in each of 2 arms; nothing run, nothing written (--dry-run)")
            return EXIT_OK
        for arm in ARMS[1:]:      # the same machine, data and plan: decided once, for arm A
            other = sessions[arm]
            other.config, other.inventory, other.missing, other.here = (
                sessions["a"].config, sessions["a"].inventory, sessions["a"].missing, sessions["a"].here)
            other.planned = other.todo = sessions["a"].planned
        out = _claim_parent(args.out, root)
        for arm in ARMS:
            sessions[arm].request = replace(sessions[arm].request, out=out / arm, run_id=f"{out.name}-{arm}")
            sessions[arm].open()
        sessions["a"].warn(estimate)
        for arm, python in zip(ARMS, args.python):
            stderr(f"arm {arm.upper()}: {sessions[arm].env['ab_label']} ({python})")
        order = interleaved(sessions["a"].todo)
        stderr(f"{len(sessions['a'].todo)} cell(s) x 2 arms, interleaved -> {out}: {estimate.describe()}")
        try:
            with reporter_for(sys.stderr)() as reporter:
                for arm in ARMS:
                    sessions[arm].measure_yardsticks(reporter.say)
                for index, (arm, cell) in enumerate(order):
                    reporter.say(f"({index + 1}/{len(order)}) arm {arm.upper()}")
                    sessions[arm].execute([cell], reporter)
                    if any(s.interrupted for s in sessions.values()):
                        break
        except runner.Stopped as stop:
            sessions["a"].outcome.stopped_by = stop.signum
        stops.hold()
        outcomes = {arm: sessions[arm].finish() for arm in ARMS}
    first = next((o for o in outcomes.values() if o.write_error), None) or next(
        (o for o in outcomes.values() if o.stopped_by is not None), None)
    if first is not None:
        status = stopped_or_write_status(replace(first, out=out, planned=2 * first.planned,
                                                 finished=sum(o.finished for o in outcomes.values())),
                                         resume_hint=False)
        assert status is not None            # first has a write error or a stop signal
        return status
    failed = [f"arm {arm.upper()} {c}" for arm in ARMS for c in outcomes[arm].failed]
    nothing = next((o.nothing_measured for o in outcomes.values() if o.nothing_measured), "")
    if nothing:           # the arms share the plan: what one skipped entirely, the other did too
        stderr(f"bench: error: {nothing}")
        return EXIT_NOTHING_MEASURED
    try:
        comparison = regression.compare(sessions["a"].current(), sessions["b"].current(), args.max_slowdown,
                                        args.confidence)
    except regression.BaselineError as exc:
        stderr(f"nothing to compare: {exc}")
        return gate_status(None, failed) or EXIT_CELL_FAILED
    show(f"A/B, interleaved: A = {sessions['a'].env['ab_label']} ({args.python[0]}) vs "
         f"B = {sessions['b'].env['ab_label']} ({args.python[1]}); + means B is slower.\n")
    show(regression.comparison_markdown(comparison))
    stderr(f"results: {out}/a, {out}/b")
    if json_path:
        write_report(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    return gate_status(comparison, failed)


def _claim_parent(out: Path | None, root: Path) -> Path:
    """The directory holding both arms, claimed as a run's is (the same statuses for the same faults)."""
    claimer = session.Session(session.RunRequest(config=None, command="", results_root=root, out=out),
                              contextlib.ExitStack(), stderr)
    return claimer.claim_directory()
