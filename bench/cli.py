"""The commands, as argparse parsers: argument parsing and validation, then one call each.

Every argument is validated before anything is written: bad input gets one line on stderr
that names the problem and the fix, and exit status 2. Exit statuses (documented in the
README and ``--help``) are distinct, so CI can act on each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench import __version__, environment, matrix, multirun, plots, readme, regression, runner, store, summary
from bench import export as export_module
from bench import devices as devices_module
from bench import peak as peak_module
from bench.protocol import DataSpec
from cifar_model.settings import BACKENDS, DEFAULT_CONNECT_TIMEOUT_S, SEED_RUN

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_CELL_FAILED, EXIT_WRITE = 0, 1, 2, 3, 4, 5
EXIT_STATUSES = (
    "0 ok; 1 a regression (check, run --check-against, ab); 2 bad input (nothing written); "
    "3 inconclusive: no regression found, but the machine was too busy to judge a cell; "
    "4 a cell failed; 5 results could not be written (disk full, permissions); 128+N stopped "
    "by signal N (130 Ctrl-C, 143 SIGTERM). When several apply, 1 wins over 4, and 4 over 3: "
    "a failed cell never hides a regression; stderr names every regressed, failed and "
    "inconclusive cell")

PROFILES = {
    # quick: every default cell finishes on a 2-core CPU in a few minutes
    # (precision auto: bf16 where the device computes in it; docs/method.md, "Defaults, and why")
    "quick": {"batch_size": (64, 128, 256), "epochs": 1, "steps": 50, "warmup": 5,
              "split": "standard", "precision": ("auto",)},
    # seed: the notebook's run: seed split, batch 128, Adam 1e-4, 26 full epochs, fp32
    "seed": {"batch_size": (SEED_RUN.batch_size,), "epochs": SEED_RUN.epochs, "steps": None, "warmup": 5,
             "split": SEED_RUN.split, "precision": (SEED_RUN.precision,)},
}


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class WriteError(Exception):
    """Results could not be written (a full disk): reported as one line, exit status 5."""


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


positive_int = _typed(matrix.integer(1), "integer")
non_negative_int = _typed(matrix.integer(0), "integer")


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


MAX_PATH_BYTES = 4096     # Linux's PATH_MAX; longer paths fail every system call with ENAMETOOLONG


def _path(text: str) -> Path:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{text.encode('utf-8', 'backslashreplace').decode()!s} is not valid "
                         "UTF-8; choose another name") from None
    if any(len(part.encode()) > 255 for part in Path(text).parts):
        raise ValueError(f"'{text[:60]}...': a name in it is longer than 255 bytes")
    if len(text.encode()) >= MAX_PATH_BYTES:
        raise ValueError(f"'{text[:60]}...': longer than {MAX_PATH_BYTES - 1:,} bytes")
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
    add_run_options(run)
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
    run.add_argument("--retry", type=non_negative_int, default=0, metavar="N",
                     help="with --check-against: measure each cell judged a regression or "
                          "inconclusive because the run was busy again, up to N times, each time in "
                          "fresh workers (as many "
                          "repeats as the run has); the latest attempt decides, earlier ones are "
                          "named in the report and every row stays in runs.csv (default: 0)")

    ab = commands.add_parser(
        "ab", parents=[common], help="A/B: the same cells under two Python environments, interleaved",
        description="Run every cell under two Python environments (each with the project "
                    "installed), alternating arm by arm and cell by cell (A B, then B A, ...; "
                    "repeats are rounds), so drift and background load hit both arms alike. "
                    "Writes OUT/a and OUT/b and compares them as 'check' does (B against A). "
                    "No peak is measured.",
        epilog=f"Exit statuses: {EXIT_STATUSES}.")
    ab.set_defaults(func=cmd_ab)
    ab.add_argument("--python", action="append", type=path_arg, required=True, metavar="PYTHON",
                    help="the Python of one arm (give it twice: A, then B), e.g. venvA/bin/python")
    add_run_options(ab)
    ab.add_argument("--max-slowdown", type=slowdown, default=0.10,
                    help="the slowdown of B over A that counts as a regression (default: 10%%)")
    ab.add_argument("--confidence", type=confidence, default=0.95,
                    help="confidence level of the intervals (default: 0.95)")
    ab.add_argument("--json", type=path_arg, help="also write the comparison as JSON to this file")

    noise = commands.add_parser(
        "noise", parents=[common], help="calibrate: this machine's run-to-run spread, and the "
                                        "smallest --max-slowdown it supports",
        description="Compare identical runs pairwise (given with --run, or made now with "
                    "--repeat N and the run options), each pair both ways, and suggest the "
                    "smallest --max-slowdown at which check (busy-machine rule included) calls "
                    "none of them a regression or faster, rounded up to the next 1 %, plus "
                    f"{regression.NOISE_MARGIN_PCT:g} % margin; also what the statistics alone "
                    "would need. Exit 3 when every pair had a saturated side (no suggestion).")
    noise.set_defaults(func=cmd_noise)
    noise.add_argument("--run", type=path_arg, action="append", dest="runs", metavar="DIR",
                       help="a run directory (give it two or more times; identical settings)")
    noise.add_argument("--repeat", type=positive_int, metavar="N",
                       help="make N identical runs now (under --out, default <results>/runs/<id>-noise) "
                            "with the run options below")
    add_run_options(noise)
    noise.add_argument("--confidence", type=confidence, default=0.95,
                       help="confidence level of the intervals (default: 0.95)")

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
    summary_.add_argument("--run", type=path_arg, action="append", metavar="DIR",
                          help="run directory or baseline; repeat it for one table of several runs, "
                               "of one machine or many (default: the latest run)")
    summary_.add_argument("--json", action="store_true", help="print the table as JSON, for scripts")
    summary_.add_argument("--reference", metavar="REF", help=REFERENCE_HELP)
    summary_.add_argument("--plot", type=path_arg, metavar="FILE.png",
                          help="also draw images/s by batch size, one line per machine and device")

    update = commands.add_parser("readme", parents=[common],
                                 help="regenerate the README statistics table from a run")
    update.set_defaults(func=cmd_readme)
    update.add_argument("--run", type=path_arg, action="append", metavar="DIR",
                        help="run directory or baseline; repeat it for one table of several runs "
                             "(default: the latest run)")
    update.add_argument("--reference", metavar="REF", help=REFERENCE_HELP)
    update.add_argument("--readme", type=path_arg, default=Path("README.md"),
                        help="the file to update (default: README.md)")
    update.add_argument("--marker", default=readme.DEFAULT_MARKER,
                        help="which generated block: the text between <!-- bench:MARKER:start --> "
                             "and <!-- bench:MARKER:end --> (default: table)")

    compare = commands.add_parser("compare", parents=[common],
                                  help="compare any two runs or baselines, of one machine or two "
                                       "(informational; 'check' is the CI gate)",
                                  epilog="Exit statuses: 0 the comparison ran (whatever it found); "
                                         "2 bad input.")
    compare.set_defaults(func=cmd_compare)
    compare.add_argument("run_a", metavar="RUN_A", help="run directory, or baseline name or directory "
                                                        "(the reference side)")
    compare.add_argument("run_b", metavar="RUN_B", help="run directory, or baseline name or directory")
    compare.add_argument("--match", choices=regression.MATCHES, default="device",
                         help="device: cells match when device type and name and every setting "
                              "match (as check); settings: every setting and the device's type and "
                              "index, whatever its name, to compare two machines (default: device)")
    compare.add_argument("--max-slowdown", type=slowdown, default=0.10,
                         help="the change that counts as slower or faster, as for check (default: 10%%)")
    compare.add_argument("--confidence", type=confidence, default=0.95,
                         help="confidence level of the intervals (default: 0.95)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")

    runs = commands.add_parser("runs", parents=[common],
                               help="list the runs (and baselines) under the results root, newest first")
    runs.set_defaults(func=cmd_runs)
    runs.add_argument("--json", action="store_true", help="print the list as JSON, for scripts")
    runs.add_argument("--no-baselines", action="store_true", help="list runs only")

    export = commands.add_parser("export", parents=[common],
                                 help="write a run's results for CI dashboards (Bencher, "
                                      "github-action-benchmark) or as plain JSON")
    export.set_defaults(func=cmd_export)
    export.add_argument("--run", type=path_arg, help="run directory or baseline (default: the latest run)")
    export.add_argument("--format", choices=export_module.FORMATS, required=True,
                        help="bencher: Bencher Metric Format (latency, throughput, accuracy); "
                             "github-action-benchmark: its customSmallerIsBetter array (median step "
                             "in ms); json: this project's flat form")
    export.add_argument("--out", type=path_arg, metavar="FILE", help="write here (default: stdout)")
    return parser


REFERENCE_HELP = ("what Speed-up divides by: cpu (each machine's own CPU row) or MACHINE:DEVICE, "
                  "e.g. laptop:gpu:0 (a machine label, or the name in the Machine column) "
                  "(default: cpu)")


def add_run_options(parser) -> None:
    """What to run and how: shared by run, ab and noise --repeat."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                     help="quick: a few minutes on a 2-core CPU (batch sizes 64,128,256, 1 epoch of "
                          "50 steps, precision auto); seed: the notebook's full run (seed split, "
                          "batch 128, 26 full epochs, fp32) (default: quick)")
    matrix.add_options(parser, {"batch_size": "quick: 64,128,256; seed: 128",
                             "precision": "quick: auto; seed: fp32"})
    parser.add_argument("--epochs", type=positive_int, help="epochs per cell (default: quick 1; seed 26)")
    parser.add_argument("--steps", type=non_negative_int,
                     help="cap on steps per epoch; 0 = full epochs (default: quick 50; seed 0)")
    parser.add_argument("--warmup", type=non_negative_int,
                     help="first steps of each cell left out of the steady statistics (default: 5)")
    parser.add_argument("--repeats", type=positive_int, default=1,
                     help="run each cell N times, each in a fresh process (default: 1)")
    parser.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10",
                     help="cifar10 (falls back to labelled synthetic data when no copy can be found "
                          "or downloaded) or synthetic (speed only) (default: cifar10)")
    parser.add_argument("--data-dir", type=path_arg,
                     help="CIFAR-10 directory or .tar.gz archive (default: $CIFAR10_DIR, the Keras "
                          "cache, ./data/cifar-10-batches-py, then a download)")
    parser.add_argument("--no-download", action="store_true", help="never try to download CIFAR-10")
    parser.add_argument("--split", choices=("standard", "seed"),
                     help="standard: 50,000 train / 10,000 official test; seed: the notebook's "
                          "40,000 / 10,000 (default: quick standard; seed seed)")
    parser.add_argument("--synthetic-images", type=positive_int,
                     help="training images of synthetic data (default: as many as the split has)")
    parser.add_argument("--eval-images", type=non_negative_int,
                     help="evaluate accuracy on the first N held-out images only; 0 = not at all "
                          "(default: the whole held-out split, 10,000 images)")
    parser.add_argument("--no-eval", action="store_const", const=0, dest="eval_images",
                     help="skip evaluation: accuracy says 'not measured' (same as --eval-images 0)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                     help="random seed; repeat r uses seed + r (default: 0)")
    parser.add_argument("--out", type=path_arg, help="run directory; must not exist or be empty "
                                                  "(default: <results>/runs/<run-id>/)")
    parser.add_argument("--machine-label", type=machine_label,
                     help="a short name for this machine in tables (e.g. 'lab workstation')")
    parser.add_argument("--cell-timeout", type=seconds,
                     help="seconds; a cell running longer is killed and recorded as failed "
                          "(default: no limit)")
    parser.add_argument("--require-devices", action="store_true",
                     help="a requested device that is missing is an error instead of a skipped row")
    parser.add_argument("--unsynced-steps", type=non_negative_int, default=0,
                     help="after training, also time N more steps with a single sync at the end, "
                          "to show what per-step timing costs (default: 0, off)")
    parser.add_argument("--cluster", type=cluster_arg, metavar="HOST:PORT,...",
                     help="every worker of a multi-host run, chief first, the same on every host "
                          "(default: $TF_CONFIG's cluster when set; else --workers start local "
                          "workers on 127.0.0.1); --workers then defaults to the host count")
    parser.add_argument("--task-index", type=non_negative_int,
                     help="this host's place in --cluster; 0, the chief, writes the rows that "
                          "count (default: $TF_CONFIG's task, else 0)")
    parser.add_argument("--connect-timeout", type=positive_int, default=DEFAULT_CONNECT_TIMEOUT_S,
                     help="seconds a multi-worker cell waits for every worker to join before it "
                          f"fails (default: {DEFAULT_CONNECT_TIMEOUT_S})")
    parser.add_argument("--no-peak", action="store_true",
                     help="skip measuring the devices' peak (no efficiency columns)")


# --------------------------------------------------------------------------- devices

def cmd_devices(args) -> int:
    probes = {"tensorflow": devices_module.tensorflow_probe()}  # detect() reads it too: ask once
    print(render_devices(devices_module.detect(probe=probes["tensorflow"]), probes))
    return EXIT_OK


def render_devices(inventory: devices_module.Inventory, probes: dict | None = None) -> str:
    """The device table, then each backend: not installed, or what its probe sees (``probes``
    holds answers already had; the others are asked now)."""
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
    for backend in BACKENDS:
        missing = runner.backend_missing(backend)
        if missing:
            lines.append(f"backend {backend}: {missing}")
            continue
        probe = (probes or {}).get(backend) or devices_module.backend_probe(backend)
        if "error" in probe:
            lines.append(f"backend {backend}: installed, but {probe['error']}")
            continue
        version = (probe.get("versions") or {}).get(backend, "?")
        gpus = [g.get("name") for g in probe.get("gpus") or []]
        lines.append(f"backend {backend} {version}: sees the CPU"
                     + (f" and {len(gpus)} GPU(s): {', '.join(map(str, gpus))}" if gpus else ", no GPU"))
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


#: what a resumed run takes from the run itself (env.json's config), so may not be given again
RESUME_KEEPS = ("profile", "epochs", "steps", "warmup", "repeats", "data", "data_dir", "split",
                "synthetic_images", "eval_images", "seed", "unsynced_steps", "devices", "cell_timeout",
                "machine_label", "out", "cluster", "task_index", *(d.name for d in matrix.DIMENSIONS))


def resume_config(args, held: contextlib.ExitStack):
    """The run to resume (locked until ``held`` closes), its config and devices.

    Refuses, before anything is written, what would not be the same run: other settings, a
    directory that is not a run, one another process is still writing.
    """
    defaults = build_parser().parse_args(["run"])
    given = [name for name in RESUME_KEEPS if getattr(args, name) != getattr(defaults, name)]
    if given:
        flags = {d.name: d.flag for d in matrix.DIMENSIONS}
        raise UsageError(f"--resume takes its settings from the run; drop "
                         f"{flags.get(given[0], '--' + given[0].replace('_', '-'))}")
    if not args.resume.is_dir():
        raise UsageError(f"--resume {args.resume}: no such run directory")
    if not (args.resume / store.ENV_JSON).is_file():  # checked before the lock file is made in it
        raise UsageError(f"--resume {args.resume}: not a run directory (no {store.ENV_JSON}); "
                         "not a run that can be resumed")
    try:
        held.callback(store.lock_run_dir(args.resume).release)
        run = store.read_run(args.resume, started=True)
        config = runner.RunConfig.from_dict(run.env.get("config") or {})
    except (store.ResultsError, OSError) as exc:
        reason = exc if isinstance(exc, store.ResultsError) else f"{args.resume}: {exc.strerror or exc}"
        raise UsageError(f"--resume: {reason}; not a run that can be resumed") from None
    except ValueError as exc:
        raise UsageError(f"--resume {args.resume}: {exc}; it cannot be resumed, start a new run") from None
    return run, config, run.env.get("devices_requested") or ["all"]


def cmd_run(args, argv: list[str]) -> int:
    if args.rerun_failed and not args.resume:
        raise UsageError("--rerun-failed goes with --resume DIR; add it or drop --rerun-failed")
    # the run directory's lock, released however this ends; a stop signal from the start
    with contextlib.ExitStack() as held, runner.stop_on_signals() as stops:
        return _run(args, argv, held, stops)


def _run(args, argv: list[str], held: contextlib.ExitStack, stops: runner.StopSignals) -> int:
    root = store.results_root(args.results_dir)
    previous = None
    if args.resume:
        previous, config, device_ids = resume_config(args, held)
    else:
        config = build_run_config(args)
        device_ids = args.devices or ["all"]
    if args.retry and not args.check_against:
        raise UsageError("--retry re-measures cells a check found slower or inconclusive; "
                         "add --check-against BASELINE or drop --retry")
    baseline = load_baseline_arg(args.check_against, root) if args.check_against else None
    if previous is None:
        config = replace(config, data=resolve_data(args))
    inventory = devices_module.detect()
    requested = devices_module.resolve(device_ids, inventory)
    missing = [r for r in requested if r.device is None or not r.device.usable]
    if args.require_devices and missing:
        raise UsageError("--require-devices: " + "; ".join(f"{r.id}: {r.reason}" for r in missing))
    here = environment.fingerprint(inventory)
    planned = runner.plan_cells(config, requested)
    writer, out, cells, env = _open_run(args, previous, config, here, planned, device_ids, argv, root, held)

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

    context = {"run_id": writer.run_id, "system": env["system"], "git_commit": here["git"]["commit"],
               "machine_label": env.get("machine_label")}
    reporter_class = runner.RichReporter if sys.stderr.isatty() else runner.Reporter
    outcome = runner.Outcome(rows=writer.rows)
    comparison = None
    try:
        peaks = {} if args.no_peak else measured_peaks(
            runner.peak_combinations(cells), env, root, out / "logs", refresh=False, say=say)
        usable_cpus = (env.get("cpu") or {}).get("usable_cpus")
        scale = {"gpu_count": len(inventory.gpus), "usable_cpus": usable_cpus}
        hooks = runner.contention_hooks(usable_cpus)
        theoretical = runner.theoretical_peaks(cells)
        with reporter_class() as reporter:
            outcome = runner.execute(config, cells, writer, context, reporter, out / "logs",
                                     peaks=peaks, theoretical=theoretical, **scale, **hooks)

            def rerun(todo):
                return runner.execute(config, todo, writer, context, reporter, out / "logs",
                                      peaks=peaks, theoretical=theoretical, **scale, **hooks)

            if baseline is not None and not outcome.write_error and outcome.stopped_by is None:
                comparison = check_with_retries(baseline, out, cells, config.repeats, args.max_slowdown,
                                                args.retry, rerun, outcome, say)
    except runner.Stopped as stop:
        outcome.stopped_by = stop.signum
        comparison = None
    stops.hold()  # a signal from here on must not cut the summary short
    return _finish_run(args, planned, writer, env, out, outcome, comparison)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _open_run(args, previous, config, env, planned, device_ids, argv, root, held):
    """Claim (or reopen, to resume) the run directory and write its env.json.

    Returns the writer, the directory, the cells to run and the run's env. A new directory
    is locked until ``held`` closes (a resumed one already is). From here on the directory is
    a run that ``--resume`` can finish, whatever stops this process.
    """
    if previous is not None:
        differences = regression.environment_differences(previous.env, env)
        if environment.machine_id(previous.env) != environment.machine_id(env) or differences:
            raise UsageError(f"--resume {args.resume}: this is not the machine or software the run "
                             f"started on ({'; '.join(differences) or 'another machine'}); start a new run")
        done = set(previous.runs["cell_id"][previous.runs["status"].isin(
            ["ok", "skipped"] + ([] if args.rerun_failed else ["failed"]))])
        todo = [c for c in planned if c.cell_id not in done]
        failed = int((previous.runs["status"] == "failed").sum())
        writer = store.RunWriter(args.resume, previous.run_id, _records(previous.runs),
                                 _records(previous.steps))
        if not todo:
            _stderr(f"resuming {args.resume}: nothing to run, all {len(planned)} cell(s) are done"
                    + (f" ({failed} failed; --rerun-failed runs them again)" if failed else ""))
            return writer, Path(args.resume), [], previous.env
        writer.replace_cells({c.cell_id for c in todo})
        run_env = {**previous.env, "resumed": [*previous.env.get("resumed", []), {
            "command": display_command(argv), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": env["git"], "cells": len(todo)}]}
        try:
            writer.write_env(run_env)
        except OSError as exc:
            raise WriteError(f"{args.resume}: cannot write env.json ({exc.strerror or exc})") from None
        _stderr(f"resuming {args.resume}: {len(planned) - len(todo)} of {len(planned)} cell(s) kept, "
                f"{len(todo)} to run")
        return writer, Path(args.resume), todo, run_env
    try:
        out = store.claim_run_dir(args.out, root)
    except OSError as exc:
        target = args.out or store.runs_dir(root)
        if exc.errno in DISK_FULL:
            raise WriteError(f"{target}: cannot create the run directory ({exc.strerror})") from None
        if isinstance(exc, FileExistsError) and args.out:
            raise UsageError(f"--out {args.out}: already exists and is not empty (or another run "
                             "just claimed it); choose a new directory so no run is overwritten") from None
        raise UsageError(f"{'--out ' if args.out else ''}{target}: cannot create the run directory "
                         f"({exc.strerror or exc}); choose a directory you can write to") from None
    held.callback(store.lock_run_dir(out).release)
    env.update(command=display_command(argv), config=config.to_dict(), devices_requested=device_ids,
               machine_label=args.machine_label)
    writer = store.RunWriter(out, out.name)
    try:
        writer.write_env(env)
    except OSError as exc:
        raise WriteError(f"{out}: cannot write env.json ({exc.strerror or exc})") from None
    return writer, out, planned, env


def _records(frame) -> list[dict]:
    """A table read back, as the writer's rows: empty cells None again."""
    import math

    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _finish_run(args, planned, writer, env, out, outcome, comparison) -> int:
    """Summary and plots from what is in memory, then the exit status.

    Files first, the printed table last: a closed stdout (``| head``, a hung-up terminal)
    must cost neither the summary on disk nor the exit status.
    """
    try:
        writer.flush()          # a row kept in memory when a signal cut its write short
    except OSError as exc:
        outcome.write_error = outcome.write_error or f"could not write to {out}: {exc.strerror or exc}"
    rows = writer.frame()
    if len(rows):
        text = summary.summary_markdown(rows, env)
        try:
            store.write_atomically(out / store.SUMMARY_MD, text)
            plots.write_plots(rows, _steps_frame(writer), out)
        except OSError as exc:
            outcome.write_error = outcome.write_error or f"could not write the summary to {out}: {exc.strerror or exc}"
        _print_if_read(text)
    if outcome.write_error:
        _stderr(f"bench: error: {outcome.write_error}")
        return EXIT_WRITE
    if outcome.stopped_by is not None:
        finished = sum(1 for r in writer.rows if r["cell_id"] in {c.cell_id for c in planned})
        _stderr(f"stopped by {signal.Signals(outcome.stopped_by).name}: {finished} of {len(planned)} "
                f"cell(s) finished and kept in {out}; finish it with: python -m bench run --resume {out}")
        return 128 + outcome.stopped_by
    _stderr(f"results: {out}")
    if comparison is not None:
        _print_if_read(regression.comparison_markdown(comparison))
    failed = rows.loc[rows["status"] == "failed", "cell_id"].tolist()
    return gate_status(comparison, failed)


def check_with_retries(baseline, out: Path, cells, repeats: int, max_slowdown: float, retries: int,
                       rerun, outcome, say):
    """Compare the run with the baseline; with ``retries``, measure the cells judged a regression
    or inconclusive (a busy run, not a busy baseline) again -- fresh workers, the run's number
    of repeats, appended as further repeats -- and judge each such cell on its latest attempt
    alone. Earlier attempts stay in runs.csv and are named in the report: nothing is hidden,
    and a busy attempt does not pollute a quiet one. A real slowdown shows again on every
    attempt; contention rarely does."""
    def compare(run):
        try:
            return regression.compare(baseline, run, max_slowdown)
        except (regression.BaselineError, store.ResultsError) as exc:
            raise UsageError(str(exc)) from None

    comparison = compare(_read_run(out))
    for attempt in range(1, retries + 1):
        # a cell inconclusive because the *baseline* was busy cannot be helped by measuring the run again
        pending = {regression.cell_key(c.key): c for c in comparison.cells
                   if c.verdict == regression.REGRESSION
                   or (c.verdict == regression.INCONCLUSIVE and c.busy_side == "run")}
        if not pending:
            break
        run = _read_run(out)
        matrix_keys = {cell_id.rsplit("_r", 1)[0]
                       for cell_id, key in zip(run.runs["cell_id"], _row_keys(run.runs)) if key in pending}
        todo = [replace(c, repeat=c.repeat + attempt * repeats) for c in cells if c.key in matrix_keys]
        say(f"--retry: measuring {len(pending)} cell(s) again (attempt {attempt + 1} of "
            f"{retries + 1}): {'; '.join(c.cell for c in pending.values())}")
        result = rerun(todo)
        outcome.write_error, outcome.stopped_by = result.write_error, result.stopped_by
        if result.write_error or result.stopped_by is not None:
            break
        run = _read_run(out)
        fresh = {c.cell_id for c in todo}
        keys = _row_keys(run.runs)
        latest = run.runs[[cell_id in fresh or key not in pending
                           for cell_id, key in zip(run.runs["cell_id"], keys)]]
        again = compare(replace(run, runs=latest))
        for cell in again.cells:
            before = pending.get(regression.cell_key(cell.key))
            if before is not None:
                cell.attempts = before.attempts + [
                    f"{before.verdict} {before.change_pct:+.1f} %"]
        by_key = {regression.cell_key(c.key): c for c in again.cells}
        comparison.cells = [by_key.get(regression.cell_key(c.key), c) if regression.cell_key(c.key) in pending
                            else c for c in comparison.cells]
    return comparison


def _row_keys(runs) -> list[tuple]:
    return [regression.cell_key(row) for row in runs.to_dict(orient="records")]


def _read_run(out: Path):
    try:
        return store.read_run(out)
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None


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


# --------------------------------------------------------------------------- ab

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


def arm_versions(python: Path) -> dict:
    """The package versions an arm's Python sees; UsageError when it cannot be run."""
    import subprocess

    try:
        done = subprocess.run([str(python), "-c", ARM_VERSIONS], capture_output=True, text=True, timeout=120)
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


def interleaved(cells: list) -> list[tuple[str, object]]:
    """(arm, cell) in the order they run: repeats are rounds; within them A B, B A, A B, ...
    (counterbalanced, so neither arm always runs first, i.e. right after the other's warm caches)."""
    order = []
    for position, cell in enumerate(sorted(cells, key=lambda c: c.repeat)):
        arms = ARMS if position % 2 == 0 else ARMS[::-1]
        order += [(arm, cell) for arm in arms]
    return order


def cmd_ab(args, argv: list[str]) -> int:
    if len(args.python) != 2:
        raise UsageError(f"--python: give it exactly twice (arm A, then arm B), not {len(args.python)} time(s)")
    json_path = check_report_path("--json", args.json)
    root = store.results_root(args.results_dir)
    versions = [arm_versions(python) for python in args.python]
    config = replace(build_run_config(args), data=resolve_data(args))
    inventory = devices_module.detect()
    requested = devices_module.resolve(args.devices or ["all"], inventory)
    env = environment.fingerprint(inventory)
    cells = runner.plan_cells(config, requested)
    try:
        out = store.claim_run_dir(args.out, root)
    except OSError as exc:
        raise UsageError(f"{args.out or store.runs_dir(root)}: cannot create the run directory "
                         f"({exc.strerror or exc}); choose a new one") from None
    writers, envs = {}, {}
    for arm, python, arm_versions_ in zip(ARMS, args.python, versions):
        envs[arm] = arm_env(env, arm_versions_, python, arm)
        envs[arm].update(command=display_command(argv), config=config.to_dict(),
                         devices_requested=args.devices or ["all"], machine_label=args.machine_label)
        writers[arm] = store.RunWriter(out / arm, f"{out.name}-{arm}")
        try:
            (out / arm).mkdir()
            writers[arm].write_env(envs[arm])
        except OSError as exc:
            raise UsageError(f"{out / arm}: cannot write ({exc.strerror or exc})") from None
    for arm, python in zip(ARMS, args.python):
        _stderr(f"arm {arm.upper()}: {envs[arm]['ab_label']} ({python})")
    order = interleaved(cells)
    _stderr(f"{len(cells)} cell(s) x 2 arms, interleaved -> {out}")
    hooks = runner.contention_hooks((env.get("cpu") or {}).get("usable_cpus"))
    theoretical = runner.theoretical_peaks(cells)
    outcome = runner.Outcome()
    reporter_class = runner.RichReporter if sys.stderr.isatty() else runner.Reporter
    with runner.stop_on_signals(), reporter_class() as reporter:
        try:
            for index, (arm, cell) in enumerate(order):
                reporter.say(f"({index + 1}/{len(order)}) arm {arm.upper()}")
                context = {"run_id": writers[arm].run_id, "system": env["system"],
                           "git_commit": env["git"]["commit"], "machine_label": args.machine_label}
                python = args.python[ARMS.index(arm)]
                step = runner.execute(config, [cell], writers[arm], context, reporter, out / arm / "logs",
                                      worker_command=[str(python), "-m", "bench.worker"],
                                      theoretical=theoretical, **hooks)
                if step.write_error or step.stopped_by is not None:
                    outcome = step
                    break
        except runner.Stopped as stop:
            outcome.stopped_by = stop.signum
    failed = []
    for arm in ARMS:
        rows = writers[arm].frame()
        if len(rows):
            try:
                store.write_atomically(out / arm / store.SUMMARY_MD, summary.summary_markdown(rows, envs[arm]))
            except OSError as exc:
                outcome.write_error = outcome.write_error or f"{out / arm}: {exc.strerror or exc}"
            failed += [f"arm {arm.upper()} {c}" for c in rows.loc[rows["status"] == "failed", "cell_id"]]
    if outcome.write_error:
        _stderr(f"bench: error: {outcome.write_error}")
        return EXIT_WRITE
    if outcome.stopped_by is not None:
        _stderr(f"stopped by {signal.Signals(outcome.stopped_by).name}; what finished is in {out}")
        return 128 + outcome.stopped_by
    try:
        comparison = regression.compare(_read_run(out / "a"), _read_run(out / "b"), args.max_slowdown,
                                        args.confidence)
    except regression.BaselineError as exc:
        _stderr(f"nothing to compare: {exc}")
        return gate_status(None, failed) or EXIT_CELL_FAILED
    _print(f"A/B, interleaved: A = {envs['a']['ab_label']} ({args.python[0]}) vs "
           f"B = {envs['b']['ab_label']} ({args.python[1]}); + means B is slower.\n")
    _print(regression.comparison_markdown(comparison))
    _stderr(f"results: {out}/a, {out}/b")
    if json_path:
        write_report(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    return gate_status(comparison, failed)


# --------------------------------------------------------------------------- noise

def cmd_noise(args, argv: list[str]) -> int:
    root = store.results_root(args.results_dir)
    if bool(args.runs) == bool(args.repeat):
        raise UsageError("give either --run DIR two or more times, or --repeat N to make N runs now")
    if args.runs:
        if len(args.runs) < 2:
            raise UsageError("--run: give two or more identical runs to compare")
        runs = [load_run_arg(path, root) for path in args.runs]
    else:
        if args.repeat < 2:
            raise UsageError("--repeat: at least 2 runs are needed to see their spread")
        base = args.out or store.runs_dir(root) / f"{store.new_run_id()}-noise"
        runs = []
        for i in range(args.repeat):
            one = argparse.Namespace(**{**vars(args), "out": Path(base) / f"run-{i + 1}", "resume": None,
                                        "rerun_failed": False, "check_against": None, "retry": 0,
                                        "max_slowdown": 0.10})
            _stderr(f"noise: run {i + 1} of {args.repeat}")
            status = cmd_run(one, argv)
            if status not in (EXIT_OK, EXIT_CELL_FAILED):
                return status
            runs.append(_read_run(one.out))
    try:
        report = regression.noise_report(runs, args.confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    _print(report.table.to_markdown(index=False, disable_numparse=True))
    _print("")
    if report.saturated == len(report.table):
        _print(f"No suggestion: every one of these {len(report.table)} pair-cell(s) had a saturated "
               f"side (other processes took ≥ {regression.SATURATED_PCT:g} % of the usable CPUs), "
               "and check calls any difference there inconclusive, at any threshold. Measure on a "
               f"quieter machine. Statistics alone would need {report.statistics_only_pct:g}%.")
        return EXIT_INCONCLUSIVE
    if report.saturated:
        _print(f"Note: {report.saturated} pair-cell(s) had a saturated side; check calls any "
               "difference there inconclusive, so they do not constrain the suggestion.")
    _print(f"Suggested --max-slowdown: {report.suggested_pct:g}%: the smallest threshold at which "
           f"check, busy-machine rule included, would have flagged none of these "
           f"{len(report.table)} identical pair-cell(s), each compared both ways (differences that "
           "contention explains come out inconclusive instead); rounded up to the next 1 %, plus "
           f"{regression.NOISE_MARGIN_PCT:g} %.")
    _print(f"Conservative: {report.with_contention_pct:g}% keeps even each interval's upper end "
           "below the threshold (room for pairs not seen yet), contention rule included; "
           f"{report.statistics_only_pct:g}% without the rule.")
    if report.busy:
        _print(f"Note: {report.busy} pair-cell(s) had a busy side (other processes ≥ "
               f"{regression.DISTURBED_PCT:g} % of the usable CPUs): expect inconclusive verdicts "
               "at the suggested threshold; on a quieter machine the spread may be smaller.")
    return EXIT_OK

# --------------------------------------------------------------------------- summary, readme

def load_run_arg(run_arg: Path | None, root: Path) -> store.Run:
    try:
        return store.read_run(run_arg if run_arg else store.latest_run(root))
    except store.ResultsError as exc:
        raise UsageError(str(exc)) from None


def load_runs_arg(run_args: list[Path] | None, root: Path) -> list[store.Run]:
    """``--run`` given any number of times: run directories or baselines (names or directories)."""
    if not run_args:
        return [load_run_arg(None, root)]
    return [load_run_or_baseline(str(arg), root) for arg in run_args]


def load_run_or_baseline(text: str, root: Path) -> store.Run:
    """A run directory (a path), else a saved baseline by name; UsageError when neither."""
    path = Path(text)
    if not path.exists() and (path.is_absolute() or len(path.parts) > 1):
        raise UsageError(f"{text}: no such run directory")
    return load_baseline_arg(text, root)


def reference_arg(text: str | None) -> multirun.Reference:
    try:
        return multirun.Reference.parse(text)
    except multirun.MultiRunError as exc:
        raise UsageError(str(exc)) from None


def several(runs: list[store.Run], reference: multirun.Reference) -> bool:
    """The multi-run table: several runs, or a reference other than each machine's CPU."""
    return len(runs) > 1 or reference.machine is not None


def cmd_summary(args) -> int:
    root = store.results_root(args.results_dir)
    plot_path = check_report_path("--plot", args.plot)
    runs, reference = load_runs_arg(args.run, root), reference_arg(args.reference)
    try:
        if several(runs, reference):
            text = (json.dumps(multirun.as_json(runs, reference), indent=2, ensure_ascii=False)
                    if args.json else multirun.markdown(runs, reference))
        else:
            run = runs[0]
            text = (json.dumps(summary.summary_json(run.runs, run.env), indent=2, ensure_ascii=False)
                    if args.json else summary.summary_markdown(run.runs, run.env))
    except multirun.MultiRunError as exc:
        raise UsageError(str(exc)) from None
    _print(text)
    if plot_path:
        try:
            drawn = plots.comparison_plot(multirun.combined(runs), plot_path,
                                          "Training throughput: " + ", ".join(
                                              dict.fromkeys(multirun.machine_names(runs))))
        except OSError as exc:
            _stderr(f"bench: error: could not write {plot_path}: {exc.strerror or exc}")
            return EXIT_WRITE
        _stderr(f"plot: {plot_path}" if drawn else "plot: no measured cell to draw")
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
            tokens[i + 1] = os.path.relpath(run.directory)
    return display_command(tokens[3:]) if tokens[:3] == ["python", "-m", "bench"] else command


def cmd_readme(args) -> int:
    if not re.fullmatch(r"[a-z0-9-]+", args.marker):
        raise UsageError(f"--marker '{args.marker}': use lowercase letters, digits and dashes")
    runs, reference = load_runs_arg(args.run, store.results_root(args.results_dir)), reference_arg(args.reference)
    try:
        if several(runs, reference):
            table = multirun.markdown(runs, reference, [readme_command(run) for run in runs])
        else:
            table = summary.summary_markdown(runs[0].runs, runs[0].env, command=readme_command(runs[0]))
        changed = readme.update_readme(args.readme, table, args.marker)
    except (readme.ReadmeError, multirun.MultiRunError) as exc:
        raise UsageError(str(exc)) from None
    _print(f"{args.readme}: {'table updated' if changed else 'already up to date'} "
           f"from run{'s' if len(runs) > 1 else ''} {', '.join(str(run.directory) for run in runs)}")
    return EXIT_OK


# --------------------------------------------------------------------------- peak

def measured_peaks(combos, env: dict, root: Path, log_dir: Path, refresh: bool, say) -> dict:
    versions = {b: v.get("version") for b, v in (env.get("backends") or {}).items() if isinstance(v, dict)}
    versions.setdefault("tensorflow", (env.get("tensorflow") or {}).get("version"))  # runs before "backends"
    found = peak_module.peaks_for(combos, env, versions, store.peaks_dir(root), log_dir,
                                  refresh=refresh, say=say)
    for (device_id, precision, threads, backend), value in found.items():
        say(f"peak {device_id} {backend} {precision} (threads {threads or 'default'}): "
            f"{value['tflops']:.3f} TFLOP/s, best of {value['repeats']} {value['size']}x{value['size']} "
            f"{value['dtype']} matmuls{_math_text(value)}{' (cached)' if value['cached'] else ''}")
    return found


def _math_text(peak: dict) -> str:
    """What a peak's matmul computed in, as " (tf32)", where the peak says (a float32 one may be TF32)."""
    return f" ({peak['math']})" if isinstance(peak.get("math"), str) and peak["math"] else ""


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
             "Threads": threads or "default", "Matmul": f"{v['size']}×{v['size']} {v['dtype']}{_math_text(v)}",
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
        name = args.name if args.name is not None else environment.machine_id(run.env)
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


def write_report(path: Path, text: str) -> None:
    """A report or export, written atomically; a refusal (a full disk) is exit 5, one line."""
    try:
        store.write_atomically(path, text)
    except OSError as exc:
        raise WriteError(f"could not write {path}: {exc.strerror or exc}") from None


def check_status(comparison) -> int:
    if comparison.regressions:
        return EXIT_REGRESSION
    if comparison.inconclusive:
        return EXIT_INCONCLUSIVE
    return EXIT_OK


def gate_status(comparison, failed_cells: list[str]) -> int:
    """One exit status for a run that was also checked: regression (1) over a failed cell (4)
    over inconclusive (3). Every one of them is named on stderr, whichever status wins."""
    if failed_cells:
        _stderr("failed: " + "; ".join(failed_cells))
    if comparison is not None:
        say_verdicts(comparison)
    if comparison is not None and comparison.regressions:
        return EXIT_REGRESSION
    if failed_cells:
        return EXIT_CELL_FAILED
    return check_status(comparison) if comparison is not None else EXIT_OK


def say_verdicts(comparison) -> None:
    if comparison.regressions:
        _stderr("regression: " + "; ".join(
            c.cell + (f" ({c.why})" if c.why else "") for c in comparison.regressions))
    if comparison.inconclusive:
        _stderr("inconclusive: " + "; ".join(c.cell for c in comparison.inconclusive)
                + " (machine busy: measure again on a quiet machine, use --retry, or 'bench ab')")


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
    if markdown_path:
        write_report(markdown_path, report)
    if json_path:
        write_report(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    say_verdicts(comparison)
    return check_status(comparison)


# --------------------------------------------------------------------------- compare, runs, export

def cmd_compare(args) -> int:
    root = store.results_root(args.results_dir)
    first, second = load_run_or_baseline(args.run_a, root), load_run_or_baseline(args.run_b, root)
    try:
        comparison = regression.compare_runs(first, second, args.match, args.max_slowdown,
                                             args.confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print(json.dumps(comparison.as_dict(), indent=2, ensure_ascii=False))
    else:
        _print(f"RUN_A `{args.run_a}` is the baseline side, RUN_B `{args.run_b}` the run side: "
               "+ means RUN_B takes longer per step. Informational: the exit status is 0 whatever "
               "the verdicts ('check' is the gate).\n")
        _print(regression.comparison_markdown(comparison))
    return EXIT_OK


def cmd_runs(args) -> int:
    root = store.results_root(args.results_dir)
    found = store.list_runs(root, baselines=not args.no_baselines)
    if args.json:
        _print(json.dumps([vars(listing) for listing in found], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not found:
        _print(f"no runs under {store.runs_dir(root)}")
        return EXIT_OK
    import pandas as pd

    _print(pd.DataFrame([{
        "Kind": r.kind, "ID": r.id, "Date": (r.date or "?")[:16].replace("T", " "),
        "Machine": r.machine or "?", "Data": r.data or "–",
        "Cells ok/failed/skipped": f"{r.ok}/{r.failed}/{r.skipped}" if not r.error else "–",
        "Commit": r.git_commit or "–", "Problem": r.error or ""}
        for r in found]).to_markdown(index=False, disable_numparse=True))
    return EXIT_OK


def cmd_export(args) -> int:
    root = store.results_root(args.results_dir)
    out = check_report_path("--out", args.out)
    run = load_run_or_baseline(str(args.run), root) if args.run else load_run_arg(None, root)
    data = export_module.export(run, args.format)
    if not data:
        raise UsageError(f"{run.directory}: no measured cell to export")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        _print(text.rstrip("\n"))
        return EXIT_OK
    write_report(out, text)
    _stderr(f"{args.format}: {out} ({len(data)} benchmark(s) from {run.directory})")
    return EXIT_OK


# --------------------------------------------------------------------------- main

def _print(text: str) -> None:
    print(text, flush=True)


def _print_if_read(text: str) -> None:
    """Print, unless nobody reads stdout any more: then print nothing more, quietly."""
    try:
        _print(text)
    except (BrokenPipeError, OSError):
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail on a closed pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _stderr(text: str) -> None:
    try:  # an undecodable file name (surrogate escapes) is shown escaped, whatever stderr's handler
        print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args, argv) if args.func in (cmd_run, cmd_ab, cmd_noise) else args.func(args)
    except UsageError as exc:
        _stderr(f"bench: error: {exc}")
        return EXIT_USAGE
    except WriteError as exc:
        _stderr(f"bench: error: {exc}")
        return EXIT_WRITE
    except KeyboardInterrupt:
        _stderr("bench: interrupted")
        return 128 + signal.SIGINT
    except runner.Stopped as stop:  # stopped before any cell ran (a run that stops later says more)
        _stderr(f"bench: stopped by {signal.Signals(stop.signum).name}")
        return 128 + stop.signum
    except BrokenPipeError:
        # the reader went away (`bench summary | head`): stop quietly, as `cat` does
        _silence_stdout()
        return 128 + signal.SIGPIPE
