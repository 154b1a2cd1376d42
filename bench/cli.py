"""The commands, as argparse parsers: argument parsing and validation, then one call each.

Every argument is validated before anything is written: bad input gets one line on stderr
that names the problem and the fix, and exit status 2. Exit statuses (documented in the
README and ``--help``) are distinct, so CI can act on each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from bench import __version__, environment, matrix, plots, readme, regression, runner, store, summary
from bench import devices as devices_module
from bench import peak as peak_module
from bench.protocol import DataSpec
from cifar_model.settings import DEFAULT_CONNECT_TIMEOUT_S

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_CELL_FAILED, EXIT_WRITE = 0, 1, 2, 3, 4, 5
EXIT_STATUSES = (
    "0 ok; 1 a regression (check, run --check-against); 2 bad input (nothing written); "
    "3 inconclusive: a machine too busy to judge; 4 a cell failed; 5 results could not be "
    "written (disk full, permissions); 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM)")

PROFILES = {
    # quick: every default cell finishes on a 2-core CPU in a few minutes
    # (precision auto: bf16 where the device computes in it; docs/method.md, "Defaults, and why")
    "quick": {"batch_size": (64, 128, 256), "epochs": 1, "steps": 50, "warmup": 5,
              "split": "standard", "precision": ("auto",)},
    # seed: the notebook's run: seed split, batch 128, Adam 1e-4, 26 full epochs, fp32
    "seed": {"batch_size": (128,), "epochs": 26, "steps": None, "warmup": 5, "split": "seed",
             "precision": ("fp32",)},
}


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- value parsers (type=)

def _typed(parse, what: str):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = what
    return convert


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"'{text}' is not {'a positive' if minimum else 'a non-negative'} integer")
        return value
    return _typed(parse, "integer")


positive_int, non_negative_int = _integer(1), _integer(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"'{text}' is not a positive number of seconds")
    return value


seconds = _typed(_seconds, "seconds")
slowdown = _typed(regression.parse_slowdown, "slowdown")


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.5 <= value < 1:
        raise ValueError(f"'{text}' must be a number from 0.5 to below 1")
    return value


confidence = _typed(_confidence, "confidence")


def _label(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 60 or any(ord(c) < 32 for c in text) or "|" in text:
        raise ValueError(f"'{text[:60]}' must be 1-60 printable characters without '|'")
    return text


machine_label = _typed(_label, "label")


def _path(text: str) -> Path:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{text.encode('utf-8', 'backslashreplace').decode()!s} is not valid "
                         "UTF-8; choose another name") from None
    if any(len(part.encode()) > 255 for part in Path(text).parts):
        raise ValueError(f"'{text[:60]}...': a name in it is longer than 255 bytes")
    return Path(text)


path_arg = _typed(_path, "path")


# --------------------------------------------------------------------------- the parser

def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results-dir", type=path_arg, metavar="DIR",
                        help=f"results root holding runs/, baselines/ and peaks/ (default: "
                             f"${store.RESULTS_ENV}, else ./results)")
    parser = Parser(prog="python -m bench", description=(
        "Benchmark training the seed CIFAR-10 network (Keras 3 on TensorFlow, JAX or PyTorch) on "
        "every CPU and GPU of this machine, at several batch sizes, and catch slowdowns."),
        epilog=f"Exit statuses: {EXIT_STATUSES}.")
    parser.add_argument("--version", action="version", version=f"cifar-bench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    devices = commands.add_parser("devices", parents=[common],
                                  help="list the CPUs and GPUs this machine has, and the backends")
    devices.set_defaults(func=cmd_devices)

    run = commands.add_parser("run", parents=[common], help="time training on each device and batch size",
                              epilog=f"Exit statuses: {EXIT_STATUSES}.")
    run.set_defaults(func=cmd_run)
    run.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                     help="quick: a few minutes on a 2-core CPU (batch sizes 64,128,256, 1 epoch of "
                          "50 steps, precision auto); seed: the notebook's full run (seed split, "
                          "batch 128, 26 full epochs, fp32) (default: quick)")
    matrix.add_options(run, {"batch_size": "quick: 64,128,256; seed: 128",
                             "precision": "quick: auto; seed: fp32"})
    run.add_argument("--epochs", type=positive_int, help="epochs per cell (default: quick 1; seed 26)")
    run.add_argument("--steps", type=non_negative_int,
                     help="cap on steps per epoch; 0 = full epochs (default: quick 50; seed 0)")
    run.add_argument("--warmup", type=non_negative_int,
                     help="first steps of each cell left out of the steady statistics (default: 5)")
    run.add_argument("--repeats", type=positive_int, default=1,
                     help="run each cell N times, each in a fresh process (default: 1)")
    run.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10",
                     help="cifar10 (falls back to labelled synthetic data when no copy can be found "
                          "or downloaded) or synthetic (speed only) (default: cifar10)")
    run.add_argument("--data-dir", type=path_arg,
                     help="CIFAR-10 directory or .tar.gz archive (default: $CIFAR10_DIR, the Keras "
                          "cache, ./data/cifar-10-batches-py, then a download)")
    run.add_argument("--no-download", action="store_true", help="never try to download CIFAR-10")
    run.add_argument("--split", choices=("standard", "seed"),
                     help="standard: 50,000 train / 10,000 official test; seed: the notebook's "
                          "40,000 / 10,000 (default: quick standard; seed seed)")
    run.add_argument("--synthetic-images", type=positive_int,
                     help="training images of synthetic data (default: as many as the split has)")
    run.add_argument("--eval-images", type=non_negative_int,
                     help="evaluate accuracy on the first N held-out images only; 0 = not at all "
                          "(default: the whole held-out split, 10,000 images)")
    run.add_argument("--no-eval", action="store_const", const=0, dest="eval_images",
                     help="skip evaluation: accuracy says 'not measured' (same as --eval-images 0)")
    run.add_argument("--seed", type=non_negative_int, default=0,
                     help="random seed; repeat r uses seed + r (default: 0)")
    run.add_argument("--out", type=path_arg, help="run directory; must not exist or be empty "
                                                  "(default: <results>/runs/<run-id>/)")
    run.add_argument("--machine-label", type=machine_label,
                     help="a short name for this machine in tables (e.g. 'lab workstation')")
    run.add_argument("--cell-timeout", type=seconds,
                     help="seconds; a cell running longer is killed and recorded as failed "
                          "(default: no limit)")
    run.add_argument("--require-devices", action="store_true",
                     help="a requested device that is missing is an error instead of a skipped row")
    run.add_argument("--unsynced-steps", type=non_negative_int, default=0,
                     help="after training, also time N more steps with a single sync at the end, "
                          "to show what per-step timing costs (default: 0, off)")
    run.add_argument("--cluster", type=cluster_arg, metavar="HOST:PORT,...",
                     help="every worker of a multi-host run, chief first, the same on every host "
                          "(default: $TF_CONFIG's cluster when set; else --workers start local "
                          "workers on 127.0.0.1); --workers then defaults to the host count")
    run.add_argument("--task-index", type=non_negative_int,
                     help="this host's place in --cluster; 0, the chief, writes the rows that "
                          "count (default: $TF_CONFIG's task, else 0)")
    run.add_argument("--connect-timeout", type=positive_int, default=DEFAULT_CONNECT_TIMEOUT_S,
                     help="seconds a multi-worker cell waits for every worker to join before it "
                          f"fails (default: {DEFAULT_CONNECT_TIMEOUT_S})")
    run.add_argument("--no-peak", action="store_true",
                     help="skip measuring the devices' peak (no efficiency columns)")
    run.add_argument("--resume", type=path_arg, metavar="DIR",
                     help="finish an interrupted run: run only its missing cells, with its own "
                          "settings, appending to its files")
    run.add_argument("--rerun-failed", action="store_true",
                     help="with --resume: also run again the cells that failed")
    run.add_argument("--check-against", metavar="BASELINE",
                     help="after the run, compare it with this baseline (name or directory), as "
                          "'check' does")
    run.add_argument("--max-slowdown", type=slowdown, default=0.10,
                     help="with --check-against: the slowdown that counts as a regression, as a "
                          "percentage (10%%) or a fraction (0.1) (default: 10%%)")

    baseline = commands.add_parser("baseline", help="save a run as a named baseline, or list them")
    baseline_commands = baseline.add_subparsers(dest="baseline_command", metavar="ACTION",
                                                parser_class=Parser)
    baseline_commands.required = True
    save = baseline_commands.add_parser("save", parents=[common],
                                        help="store a run's rows, steps and environment")
    save.set_defaults(func=cmd_baseline_save)
    save.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    save.add_argument("--name", help="baseline name (default: this machine's fingerprint id)")
    save.add_argument("--replace", action="store_true", help="overwrite a baseline of that name")
    listing = baseline_commands.add_parser("list", parents=[common], help="the saved baselines")
    listing.set_defaults(func=cmd_baseline_list)

    check = commands.add_parser("check", parents=[common],
                                help="compare a run with a baseline; exit 1 on a slowdown",
                                epilog=f"Exit statuses: {EXIT_STATUSES}.")
    check.set_defaults(func=cmd_check)
    check.add_argument("--baseline", required=True, help="baseline name (<results>/baselines/NAME) "
                                                         "or a baseline or run directory")
    check.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    check.add_argument("--max-slowdown", type=slowdown, default=0.10,
                       help="a cell regressed when its step time is confidently this much slower: "
                            "a percentage (10%%) or a fraction (0.1); a bare number >= 1 is "
                            "refused as ambiguous (default: 10%%)")
    check.add_argument("--confidence", type=confidence, default=0.95,
                       help="confidence level of the intervals, 0.5 to below 1 (default: 0.95)")
    check.add_argument("--markdown", type=path_arg, help="also write the report as Markdown to this file")
    check.add_argument("--json", type=path_arg, help="also write the report as JSON to this file")

    peak = commands.add_parser("peak", parents=[common],
                               help="measure each device's peak TFLOP/s per precision (large dense "
                                    "matmul), cached per machine")
    peak.set_defaults(func=cmd_peak)
    peak.add_argument("--devices", type=matrix.device_list,
                      help="as for run (default: every device found)")
    peak.add_argument("--precision", type=matrix.comma_list(matrix.BY_NAME["precision"].parse, "fp32"),
                      default=("fp32", "mixed_bfloat16", "mixed_float16"),
                      help="comma-separated (default: fp32,mixed_bfloat16,mixed_float16)")
    peak.add_argument("--cpu-threads", type=matrix.comma_list(matrix.BY_NAME["cpu_threads"].parse, "0"),
                      default=(0,), help="intra-op threads, comma-separated; 0 = default (default: 0)")
    peak.add_argument("--backend", type=matrix.comma_list(matrix.BY_NAME["backend"].parse, "tensorflow"),
                      default=("tensorflow",), help="comma-separated (default: tensorflow)")
    peak.add_argument("--refresh", action="store_true", help="measure again even when cached")

    summary_ = commands.add_parser("summary", parents=[common], help="print the table of a run")
    summary_.set_defaults(func=cmd_summary)
    summary_.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    summary_.add_argument("--json", action="store_true", help="print the table as JSON, for scripts")

    update = commands.add_parser("readme", parents=[common],
                                 help="regenerate the README statistics table from a run")
    update.set_defaults(func=cmd_readme)
    update.add_argument("--run", type=path_arg, help="run directory (default: the latest run)")
    update.add_argument("--readme", type=path_arg, default=Path("README.md"),
                        help="the file to update (default: README.md)")
    update.add_argument("--marker", default=readme.DEFAULT_MARKER,
                        help="which generated block: the text between <!-- bench:MARKER:start --> "
                             "and <!-- bench:MARKER:end --> (default: table)")
    return parser


# --------------------------------------------------------------------------- devices

def cmd_devices(args) -> int:
    inventory = devices_module.detect()
    print(render_devices(inventory))
    return EXIT_OK


def render_devices(inventory: devices_module.Inventory) -> str:
    import pandas as pd

    rows = []
    for d in inventory.devices:
        rows.append({
            "ID": d.id, "Type": d.type, "Name": d.name,
            "Cores/threads": f"{d.cores}/{d.threads}" if d.type == "CPU" else "–",
            "Memory": f"{d.memory_bytes / 2**30:.1f} GiB" if d.memory_bytes else "?",
            "Compute capability": d.compute_capability or "–",
            "Usable": "yes" if d.usable else f"no: {d.note}",
        })
    lines = [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]
    cuda = inventory.built_with_cuda
    build = ("built with CUDA" + (f" {inventory.cuda_version}, cuDNN {inventory.cudnn_version}"
                                  if inventory.cuda_version else "")
             if cuda else "built without CUDA" if cuda is False else "build unknown")
    lines.append(f"TensorFlow {inventory.tensorflow_version or 'not installed'} ({build}), "
                 f"Keras {inventory.keras_version or '?'}"
                 + (f", NVIDIA driver {inventory.driver_version}" if inventory.driver_version else ""))
    for backend in matrix.BY_NAME["backend"].default + tuple(
            b for b in ("jax", "torch") if b not in matrix.BY_NAME["backend"].default):
        missing = runner.backend_missing(backend)
        lines.append(f"backend {backend}: {'installed' if missing is None else missing}")
    if not inventory.gpus:
        lines.append("No GPU found (NVML and TensorFlow see none).")
    lines += [f"note: {n}" for n in inventory.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run

def resolve_data(args) -> DataSpec:
    """What the cells train on; an unusable explicit directory is a UsageError."""
    from cifar_model import DataError, DatasetNotFound, locate_cifar10, read_cifar10

    split = args.split or PROFILES[args.profile]["split"]
    if args.data == "synthetic":
        if args.data_dir:
            raise UsageError("--data-dir is used only with --data cifar10; drop one of them")
        return DataSpec("synthetic", None, "synthetic data requested (--data synthetic): speed only",
                        split, args.synthetic_images)
    source = args.data_dir if args.data_dir is not None else os.environ.get("CIFAR10_DIR")
    origin = "--data-dir" if args.data_dir is not None else "CIFAR10_DIR"
    try:
        path = locate_cifar10(args.data_dir, download=not args.no_download)
    except DatasetNotFound as exc:
        return DataSpec("synthetic", None, f"synthetic fallback: {exc}", split, args.synthetic_images)
    except DataError as exc:
        raise UsageError(f"{origin} {source}: {exc}") from None
    if source and not os.access(path, os.R_OK):
        raise UsageError(f"{origin} {path}: not readable; check its permissions")
    try:
        read_cifar10(path)  # reads every file once: a broken copy fails here, not in each cell
    except DataError as exc:
        raise UsageError(f"CIFAR-10 at {path} is unusable: {exc}") from None
    return DataSpec("cifar10", str(path), "", split, None)


SYNTHETIC_FIX = ("to measure accuracy, point the run at CIFAR-10: --data-dir DIR or "
                 "CIFAR10_DIR=DIR (the 'CIFAR-10 python version' archive or its extracted "
                 "cifar-10-batches-py folder, from https://www.cs.toronto.edu/~kriz/cifar.html)")


def _cluster(text: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{address}' is not host:port")
    if len(addresses) < 2 or len(set(addresses)) != len(addresses):
        raise ValueError("give two or more distinct host:port addresses, the chief first")
    return addresses


cluster_arg = _typed(_cluster, "cluster")


def cluster_from(args, environ=os.environ) -> tuple[tuple[str, ...], int]:
    """(--cluster or TF_CONFIG's workers, this host's task index); ((), 0) for none."""
    cluster, task = args.cluster or (), args.task_index
    if not cluster and environ.get("TF_CONFIG"):
        try:
            tf_config = json.loads(environ["TF_CONFIG"])
            cluster = _cluster(",".join(tf_config["cluster"]["worker"]))
            task = tf_config.get("task", {}).get("index", 0) if task is None else task
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"TF_CONFIG: expected {{'cluster': {{'worker': [host:port, ...]}}, "
                             f"'task': {{'type': 'worker', 'index': I}}}} ({exc})") from None
    if task and not cluster:
        raise UsageError("--task-index needs --cluster (or TF_CONFIG)")
    return cluster, task or 0


def build_run_config(args) -> runner.RunConfig:
    """Validate every ``run`` argument into a RunConfig (nothing touches the disk)."""
    profile = PROFILES[args.profile]
    cluster, task_index = cluster_from(args)
    if cluster and not args.workers:
        profile = {**profile, "workers": (len(cluster),)}
    if args.synthetic_images is not None and args.data != "synthetic":
        raise UsageError("--synthetic-images is used only with --data synthetic; drop one of them")
    steps = args.steps if args.steps is not None else profile["steps"]
    config = runner.RunConfig(
        plan=matrix.plan_from_args(args, profile),
        epochs=args.epochs or profile["epochs"], steps=steps or None,
        warmup=args.warmup if args.warmup is not None else profile["warmup"],
        repeats=args.repeats, cell_timeout=args.cell_timeout, seed=args.seed,
        unsynced_steps=args.unsynced_steps, eval_images=args.eval_images,
        cluster=cluster, task_index=task_index, connect_timeout_s=args.connect_timeout,
        data=DataSpec("synthetic", split=args.split or profile["split"],
                      synthetic_images=args.synthetic_images))
    problems = config.problems()
    if problems:
        raise UsageError(problems[0])
    if args.out:
        check_output_dir(args.out)
    return config


def check_output_dir(path: Path) -> None:
    """``--out`` must be creatable and empty; nothing is created here (the run claims it later)."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--out {path}: is a file; name a directory")
        if any(path.iterdir()):
            raise UsageError(f"--out {path}: already exists and is not empty; choose a new "
                             "directory so no earlier run is overwritten")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--out {path}: not writable; choose a directory you can write to")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {path}: {ancestor} is a file; choose another directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot create it, {ancestor} is not writable; "
                         "choose a directory you can write to")


RESUME_KEEPS = ("profile", "epochs", "steps", "warmup", "repeats", "data", "data_dir", "split",
                "synthetic_images", "eval_images", "seed", "unsynced_steps", "devices", "cluster",
                "task_index",
                *(d.name for d in matrix.DIMENSIONS))


def resume_config(args, root: Path):
    """The run to resume, its config and its devices; refuses what would not be the same run."""
    given = [name for name in RESUME_KEEPS if getattr(args, name, None) not in (None, False, 0, "quick", "cifar10", 1)]
    if given:
        raise UsageError(f"--resume takes its settings from the run; drop --{given[0].replace('_', '-')}")
    if args.out:
        raise UsageError("--resume DIR appends to DIR; drop --out")
    try:
        run = store.read_run(args.resume)
        config = runner.RunConfig.from_dict(run.env.get("config") or {})
    except store.ResultsError as exc:
        raise UsageError(f"--resume: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"--resume {args.resume}: {exc}; it cannot be resumed, start a new run") from None
    return run, config, run.env.get("devices_requested") or ["all"]


def cmd_run(args, argv: list[str]) -> int:
    root = store.results_root(args.results_dir)
    previous = None
    if args.resume:
        previous, config, device_ids = resume_config(args, root)
    else:
        config = build_run_config(args)
        device_ids = args.devices or ["all"]
    baseline = load_baseline_arg(args.check_against, root) if args.check_against else None
    if previous is None:
        config = replace(config, data=resolve_data(args))
    inventory = devices_module.detect()
    requested = devices_module.resolve(device_ids, inventory)
    missing = [r for r in requested if r.device is None or not r.device.usable]
    if args.require_devices and missing:
        raise UsageError("--require-devices: " + "; ".join(f"{r.id}: {r.reason}" for r in missing))
    env = environment.fingerprint(inventory)
    cells = runner.plan_cells(config, requested)
    writer, out, cells = _open_run(args, previous, config, env, cells, device_ids, argv, root)

    say = _stderr
    if config.data.kind == "synthetic":
        say(f"WARNING: training on SYNTHETIC data ({config.data.note}). Speed only: accuracy is not "
            "measured." + (f" Fix: {SYNTHETIC_FIX}." if "fallback" in config.data.note else ""))
    else:
        say(f"data: CIFAR-10 from {config.data.path} ({config.data.split} split)")
    for r in missing:
        say(f"{r.id}: skipped: {r.reason}")
    for warning in dict.fromkeys(matrix.precision_warning(c["precision"], c.device.device) for c in cells):
        if warning:
            say(f"WARNING: {warning}")
    say(f"{len(cells)} cell(s) -> {out}")

    context = {"run_id": writer.run_id, "system": env["system"], "git_commit": env["git"]["commit"],
               "machine_label": env.get("machine_label")}
    reporter_class = runner.RichReporter if sys.stderr.isatty() else runner.Reporter
    outcome = runner.Outcome(rows=writer.rows)
    with runner.stop_on_signals():
        try:
            peaks = {} if args.no_peak else measured_peaks(
                runner.peak_combinations(cells), env, root, out / "logs", refresh=False, say=say)
            with reporter_class() as reporter:
                outcome = runner.execute(config, cells, writer, context, reporter, out / "logs",
                                         peaks=peaks, gpu_count=len(inventory.gpus),
                                         usable_cpus=(env.get("cpu") or {}).get("usable_cpus"),
                                         **runner.contention_hooks(
                                             (env.get("cpu") or {}).get("usable_cpus")))
        except runner.Stopped as stop:
            outcome.stopped_by = stop.signum
        return _finish_run(args, config, cells, writer, env, out, outcome, baseline)


def _open_run(args, previous, config, env, cells, device_ids, argv, root):
    """Claim (or reopen, to resume) the run directory and write its env.json."""
    if previous is not None:
        differences = regression.environment_differences(previous.env, env)
        if environment.machine_id(previous.env) != environment.machine_id(env) or differences:
            raise UsageError(f"--resume {args.resume}: this is not the machine or software the run "
                             f"started on ({'; '.join(differences) or 'another machine'}); start a new run")
        done = set(previous.runs["cell_id"][previous.runs["status"].isin(
            ["ok", "skipped"] + ([] if args.rerun_failed else ["failed"]))])
        todo = [c for c in cells if c.cell_id not in done]
        rows = [_row_record(r) for r in previous.runs.to_dict(orient="records")]
        writer = store.RunWriter(args.resume, previous.run_id, rows,
                                 previous.steps.to_dict(orient="records"))
        writer.replace_cells({c.cell_id for c in todo})
        _stderr(f"resuming {args.resume}: {len(cells) - len(todo)} of {len(cells)} cell(s) kept, "
                f"{len(todo)} to run")
        return writer, Path(args.resume), todo
    try:
        out = store.claim_run_dir(args.out, root)
    except OSError as exc:
        target = args.out or store.runs_dir(root)
        if isinstance(exc, FileExistsError) and args.out:
            raise UsageError(f"--out {args.out}: already exists and is not empty (or another run "
                             "just claimed it); choose a new directory so no run is overwritten") from None
        raise UsageError(f"{'--out ' if args.out else ''}{target}: cannot create the run directory "
                         f"({exc.strerror or exc}); choose a directory you can write to") from None
    env.update(command=display_command(argv), config=config.to_dict(), devices_requested=device_ids,
               machine_label=args.machine_label)
    writer = store.RunWriter(out, out.name)
    try:
        writer.write_env(env)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write env.json ({exc.strerror or exc})") from None
    return writer, out, cells


def _row_record(row: dict) -> dict:
    import math

    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _finish_run(args, config, cells, writer, env, out, outcome, baseline) -> int:
    """Summary and plots from what is in memory, then the exit status."""
    try:
        writer.flush()          # a row kept in memory when a signal cut its write short
    except OSError as exc:
        outcome.write_error = outcome.write_error or f"could not write to {out}: {exc.strerror or exc}"
    rows = writer.frame()
    if len(rows):
        text = summary.summary_markdown(rows, env)
        _print(text)
        try:
            store.write_atomically(out / store.SUMMARY_MD, text)
            plots.write_plots(rows, _steps_frame(writer), out)
        except OSError as exc:
            outcome.write_error = outcome.write_error or f"could not write the summary to {out}: {exc.strerror or exc}"
    if outcome.write_error:
        _stderr(f"bench: error: {outcome.write_error}")
        return EXIT_WRITE
    if outcome.stopped_by is not None:
        finished = sum(1 for r in writer.rows if r["cell_id"] in {c.cell_id for c in cells})
        _stderr(f"stopped by {signal.Signals(outcome.stopped_by).name}: {finished} of {len(cells)} "
                f"cell(s) finished and kept in {out}; finish it with: python -m bench run --resume {out}")
        return 128 + outcome.stopped_by
    _stderr(f"results: {out}")
    status = EXIT_CELL_FAILED if (rows["status"] == "failed").any() else EXIT_OK
    if baseline is not None:
        try:
            comparison = regression.compare(baseline, store.read_run(out), args.max_slowdown)
        except (regression.BaselineError, store.ResultsError) as exc:
            raise UsageError(str(exc)) from None
        _print(regression.comparison_markdown(comparison))
        verdict_status = check_status(comparison)
        if verdict_status != EXIT_OK:
            status = verdict_status
    return status


def _steps_frame(writer):
    import pandas as pd

    from bench.record import STEP_COLUMNS

    return pd.DataFrame(writer.steps, columns=list(STEP_COLUMNS))


def display_command(argv: list[str], cwd: Path | None = None) -> str:
    """The command as a user would type it: paths under the working directory's parent relative."""
    cwd = Path(cwd or os.getcwd())
    shown = []
    for token in argv:
        if token.startswith("/"):
            relative = os.path.relpath(token, cwd)
            token = relative if not relative.startswith("../..") else token
        shown.append(token)
    return "python -m bench " + shlex.join(shown)


# --------------------------------------------------------------------------- summary, readme

def load_run_arg(run_arg: Path | None, root: Path) -> store.Run:
    try:
        return store.read_run(run_arg if run_arg else store.latest_run(root))
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None


def cmd_summary(args) -> int:
    run = load_run_arg(args.run, store.results_root(args.results_dir))
    if args.json:
        _print(json.dumps(summary.summary_json(run.runs, run.env), indent=2, ensure_ascii=False))
    else:
        _print(summary.summary_markdown(run.runs, run.env))
    return EXIT_OK


def readme_command(run: store.Run) -> str | None:
    """The command that made ``run``, with its output directory where the run now lives."""
    command = run.env.get("command")
    if not command:
        return None
    try:
        tokens = shlex.split(command)
    except ValueError:
        return command
    for i, token in enumerate(tokens[:-1]):
        if token == "--out":
            tokens[i + 1] = os.path.relpath(run.directory) if not str(run.directory).startswith("..") \
                else str(run.directory)
    return display_command(tokens[3:]) if tokens[:3] == ["python", "-m", "bench"] else command


def cmd_readme(args) -> int:
    if not re.fullmatch(r"[a-z0-9-]+", args.marker):
        raise UsageError(f"--marker '{args.marker}': use lowercase letters, digits and dashes")
    run = load_run_arg(args.run, store.results_root(args.results_dir))
    table = summary.summary_markdown(run.runs, run.env, command=readme_command(run))
    try:
        changed = readme.update_readme(args.readme, table, args.marker)
    except readme.ReadmeError as exc:
        raise UsageError(str(exc)) from None
    _print(f"{args.readme}: {'table updated' if changed else 'already up to date'} "
           f"from run {run.directory}")
    return EXIT_OK


# --------------------------------------------------------------------------- peak

def measured_peaks(combos, env: dict, root: Path, log_dir: Path, refresh: bool, say) -> dict:
    versions = {b: v.get("version") for b, v in (env.get("backends") or {}).items() if isinstance(v, dict)}
    versions.setdefault("tensorflow", (env.get("tensorflow") or {}).get("version"))
    found = peak_module.peaks_for(combos, env, versions, store.peaks_dir(root), log_dir,
                                  refresh=refresh, say=say)
    for (device_id, precision, threads, backend), value in found.items():
        say(f"peak {device_id} {backend} {precision} (threads {threads or 'default'}): "
            f"{value['tflops']:.3f} TFLOP/s, best of {value['repeats']} {value['size']}x{value['size']} "
            f"{value['dtype']} matmuls{' (cached)' if value['cached'] else ''}")
    return found


def cmd_peak(args) -> int:
    root = store.results_root(args.results_dir)
    inventory = devices_module.detect()
    requested = devices_module.resolve(args.devices or ["all"], inventory)
    for r in requested:
        if r.device is None or not r.device.usable:
            _stderr(f"{r.id}: skipped: {r.reason}")
    env = environment.fingerprint(inventory)
    combos = [(r, precision, threads, backend) for r in requested
              if r.device is not None and r.device.usable
              for backend in args.backend if runner.backend_missing(backend) is None
              for precision in args.precision for threads in args.cpu_threads]
    found = measured_peaks(combos, env, root, store.peaks_dir(root) / "logs", args.refresh, say=_stderr)
    import pandas as pd

    rows = [{"Device": device_id, "Backend": backend, "Precision": precision,
             "Threads": threads or "default", "Matmul": f"{v['size']}×{v['size']} {v['dtype']}",
             "Peak TFLOP/s (best)": f"{v['tflops']:.3f}", "Median TFLOP/s": f"{v['median_tflops']:.3f}",
             "Repeats": v["repeats"], "Cached": "yes" if v["cached"] else "no"}
            for (device_id, precision, threads, backend), v in found.items()]
    if rows:
        _print(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))
    _print(f"\ncache: {peak_module.cache_path(env, store.peaks_dir(root))} (per machine, usable "
           f"CPUs {(env.get('cpu') or {}).get('usable_cpus')})")
    return EXIT_OK if rows else EXIT_CELL_FAILED


# --------------------------------------------------------------------------- baselines, check

def load_baseline_arg(name_or_path: str, root: Path) -> store.Run:
    try:
        return store.load_baseline(name_or_path, root)
    except store.BaselineError as exc:
        raise UsageError(str(exc)) from None


def cmd_baseline_list(args) -> int:
    root = store.results_root(args.results_dir)
    saved = store.list_baselines(root)
    if not saved:
        _print(f"no baselines under {store.baselines_dir(root)}")
    for meta in saved:
        _print(f"{meta.get('name')}: run {meta.get('run_id')}, {meta.get('cells')} cell(s), "
               f"saved {meta.get('saved_at')}, machine {meta.get('machine')}"
               + (f" ({meta['error']})" if "error" in meta else ""))
    return EXIT_OK


def cmd_baseline_save(args) -> int:
    root = store.results_root(args.results_dir)
    run = load_run_arg(args.run, root)
    try:
        name = args.name or environment.machine_id(run.env)
        path = store.save_baseline(run, name, root, replace=args.replace)
    except store.BaselineError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot save the baseline under {store.baselines_dir(root)}: "
                         f"{exc.strerror or exc}") from None
    _print(f"baseline '{path.name}' saved at {path} from run {run.directory}")
    return EXIT_OK


def check_report_path(option: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; name a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: its directory does not exist or is not writable")
    return path


def check_status(comparison) -> int:
    if comparison.regressions:
        return EXIT_REGRESSION
    if getattr(comparison, "inconclusive", None):
        return EXIT_INCONCLUSIVE
    return EXIT_OK


def cmd_check(args) -> int:
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
    _print(report)
    if comparison.environment_differences:
        _stderr("warning: the environments differ: " + "; ".join(comparison.environment_differences))
    try:
        if markdown_path:
            store.write_atomically(markdown_path, report)
        if json_path:
            store.write_atomically(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    except OSError as exc:
        _stderr(f"bench: error: could not write the report: {exc.strerror or exc}")
        return EXIT_WRITE
    if comparison.regressions:
        _stderr("regression: " + "; ".join(c.cell for c in comparison.regressions))
    return check_status(comparison)


# --------------------------------------------------------------------------- main

def _print(text: str) -> None:
    print(text, flush=True)


def _stderr(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args, argv) if args.func is cmd_run else args.func(args)
    except UsageError as exc:
        _stderr(f"bench: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _stderr("bench: interrupted")
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # the reader went away (`bench summary | head`): stop quietly, as `cat` does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 128 + signal.SIGPIPE
