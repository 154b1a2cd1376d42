"""``bench baseline save|list``: keep a run as a named baseline, or list the kept ones."""

from __future__ import annotations

import sys

from bench import environment, store
from bench.options import EXIT_OK, Parser, UsageError, load_run_arg, path_arg, results_dir_parent, show


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("baseline", help="save a run as a named baseline, or list them")
    actions = parser.add_subparsers(dest="baseline_command", metavar="ACTION", parser_class=Parser)
    actions.required = True
    save = actions.add_parser("save", parents=[results_dir_parent()], help="store a run's rows, steps and environment")
    save.set_defaults(command=sys.modules[__name__], action=save_baseline)
    save.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    save.add_argument("--name", help="baseline name (default: this machine's fingerprint id)")
    save.add_argument("--replace", action="store_true", help="overwrite a baseline of that name")
    listing = actions.add_parser("list", parents=[results_dir_parent()], help="the saved baselines")
    listing.set_defaults(command=sys.modules[__name__], action=list_baselines)


def run(args) -> int:
    return args.action(args)


def list_baselines(args) -> int:
    root = store.results_root(args.results_dir)
    saved = store.list_baselines(root)
    if not saved:
        show(f"no baselines under {store.baselines_dir(root)}")
    for meta in saved:
        show(f"{meta.get('name')}: run {meta.get('run_id')}, {meta.get('cells')} cell(s), "
             f"saved {meta.get('saved_at')}, machine {meta.get('machine')}"
             + (f" ({meta['error']})" if "error" in meta else ""))
    return EXIT_OK


def save_baseline(args) -> int:
    root = store.results_root(args.results_dir)
    run_ = load_run_arg(args.run, root)
    try:
        name = args.name if args.name is not None else environment.machine_id(run_.env)
        path = store.save_baseline(run_, name, root, replace=args.replace)
    except store.BaselineError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot save the baseline under {store.baselines_dir(root)}: "
                         f"{exc.strerror or exc}") from None
    show(f"baseline '{path.name}' saved at {path} from run {run_.directory}")
    return EXIT_OK
