"""The commands: ``devices``, ``run``, ``peak``, ``baseline``, ``check``, ``summary``, ``readme``.

Every argument is validated before anything is written: bad input gets one line on
stderr that names the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench import devices as devices_module
from bench import environment, plots, readme, regression, results, runner
from bench import peak as peak_module
from cifar_model.data import DATA_PLACEMENTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_RUNS_DIR = Path("results") / "runs"

PROFILES = {
    # quick: every default cell finishes on a 2-core CPU in a few minutes
    # (precision auto: bf16 where the device computes in it; README, "Defaults, and why")
    "quick": {"batch_sizes": (64, 128, 256), "epochs": 1, "steps": 50, "warmup": 5,
              "split": "standard", "precisions": ("auto",)},
    # seed: the notebook's run: seed split, batch 128, Adam 1e-4, 26 full epochs, fp32
    "seed": {"batch_sizes": (128,), "epochs": 26, "steps": None, "warmup": 5, "split": "seed",
             "precisions": ("fp32",)},
}
PRECISION_CHOICES = ("auto", "fp32", "mixed_bfloat16", "mixed_float16")
JIT_CHOICES = ("auto", "on", "off")


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- value parsers

def positive_int(text: str, what: str, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 0 or (value == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise UsageError(f"{what}: '{text}' is not {kind} integer")
    return value


def int_list(text: str, what: str, example: str, allow_zero: bool = False) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{what}: give at least one value, e.g. {what} {example}")
    values = tuple(positive_int(p, what, allow_zero) for p in parts)
    return tuple(dict.fromkeys(values))


def choice_list(text: str, what: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    for part in parts or ("",):
        if part not in choices:
            raise UsageError(f"{what}: unknown value '{part}'; choose from {', '.join(choices)}")
    return parts


# --------------------------------------------------------------------------- the parser

def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=(
        "Benchmark training the seed CIFAR-10 network with TensorFlow on every CPU and GPU "
        "of this machine, at several batch sizes."))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    commands.add_parser("devices", help="list the CPUs and GPUs this machine has")

    run = commands.add_parser("run", help="time training on each device and batch size")
    run.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                     help="quick (default): a few minutes on a 2-core CPU; seed: the notebook's "
                          "full run (seed split, batch 128, 26 epochs)")
    run.add_argument("--devices", help="cpu, gpu (the first GPU), gpu:N, all; comma-separated "
                                       "(default: every device found)")
    run.add_argument("--batch-sizes", help="comma-separated (quick: 64,128,256; seed: 128)")
    run.add_argument("--epochs", help="epochs per cell (quick: 1; seed: 26)")
    run.add_argument("--steps", help="cap on steps per epoch; 0 = full epochs (quick: 50)")
    run.add_argument("--warmup", help="first steps left out of the steady statistics (default 5)")
    run.add_argument("--repeats", default="1", help="run each cell N times, each in a fresh process")
    run.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10",
                     help="cifar10 (default; falls back to labelled synthetic data when no copy "
                          "can be found or downloaded) or synthetic (speed only)")
    run.add_argument("--data-dir", help="CIFAR-10 directory or archive (also: $CIFAR10_DIR)")
    run.add_argument("--no-download", action="store_true", help="never try to download CIFAR-10")
    run.add_argument("--split", choices=("standard", "seed"),
                     help="standard: 50,000 train / 10,000 official test; seed: the notebook's "
                          "40,000 / 10,000 (quick: standard; seed: seed)")
    run.add_argument("--synthetic-images", help="training images of synthetic data "
                                                "(default: as many as the split has)")
    run.add_argument("--precision",
                     help="comma-separated: auto (bf16 where the device computes in it, else fp32), "
                          "fp32, mixed_bfloat16, mixed_float16 (quick: auto; seed: fp32)")
    run.add_argument("--jit-compile", default="auto", help="XLA, comma-separated: auto, on, off")
    run.add_argument("--cpu-threads", default="0",
                     help="TensorFlow intra-op threads, comma-separated; 0 = TensorFlow's default")
    run.add_argument("--steps-per-execution", default="1",
                     help="training steps per call of the compiled train function, comma-separated")
    run.add_argument("--data-placement", default="auto",
                     help="where the training images live, comma-separated: auto (in GPU memory "
                          "when the set takes at most a quarter of it, else host), host (tf.data "
                          "feeds each batch from host memory), device (the whole set in the "
                          "training device's memory)")
    run.add_argument("--seed", default="0", help="random seed (repeat r uses seed + r)")
    run.add_argument("--out", help="run directory (default results/runs/<run-id>/); must not "
                                   "exist or be empty")
    run.add_argument("--cell-timeout", help="seconds; a cell running longer is killed and recorded "
                                            "as failed")
    run.add_argument("--require-devices", action="store_true",
                     help="a requested device that is missing is an error instead of a skipped row")

    run.add_argument("--unsynced-steps", default="0",
                     help="after training, also time N more steps with a single sync at the end, "
                          "to show what per-step timing costs (default 0: off)")
    run.add_argument("--no-peak", action="store_true",
                     help="skip measuring the devices' peak (no efficiency columns)")
    run.add_argument("--check-against", metavar="BASELINE",
                     help="after the run, compare it with this baseline (name or directory), as "
                          "'check' does; exit 1 on a regression")
    run.add_argument("--max-slowdown", default="10%",
                     help="with --check-against: the slowdown that counts as a regression (default 10%%)")

    baseline = commands.add_parser("baseline", help="save a run as a named baseline, or list them")
    baseline_commands = baseline.add_subparsers(dest="baseline_command", metavar="ACTION",
                                                parser_class=Parser)
    baseline_commands.required = True
    save = baseline_commands.add_parser("save", help="store a run's rows, steps and environment")
    save.add_argument("--run", help="run directory (default: the latest under results/runs)")
    save.add_argument("--name", help="baseline name (default: this machine's fingerprint id)")
    save.add_argument("--replace", action="store_true", help="overwrite a baseline of that name")
    baseline_commands.add_parser("list", help="the saved baselines")

    check = commands.add_parser("check", help="compare a run with a baseline; exit 1 on a slowdown")
    check.add_argument("--baseline", required=True, help="baseline name (results/baselines/NAME) "
                                                         "or a baseline or run directory")
    check.add_argument("--run", help="run directory (default: the latest under results/runs)")
    check.add_argument("--max-slowdown", default="10%",
                       help="a cell regressed when its step time is confidently this much slower "
                            "(default 10%%)")
    check.add_argument("--confidence", default="0.95", help="confidence level of the intervals "
                                                            "(default 0.95)")
    check.add_argument("--markdown", help="also write the report as Markdown to this file")
    check.add_argument("--json", help="also write the report as JSON to this file")

    peak = commands.add_parser("peak", help="measure each device's peak TFLOP/s per precision "
                                            "(large dense matmul), cached per machine")
    peak.add_argument("--devices", help="as for run (default: every device found)")
    peak.add_argument("--precision", default="fp32,mixed_bfloat16,mixed_float16",
                      help="comma-separated (default: all three)")
    peak.add_argument("--cpu-threads", default="0", help="TensorFlow intra-op threads; 0 = default")
    peak.add_argument("--refresh", action="store_true", help="measure again even when cached")

    summary = commands.add_parser("summary", help="print the table of a run")
    summary.add_argument("--run", help="run directory (default: the latest under results/runs)")

    update = commands.add_parser("readme", help="regenerate the README statistics table from a run")
    update.add_argument("--run", help="run directory (default: the latest under results/runs)")
    update.add_argument("--readme", default="README.md", help="the file to update (default README.md)")
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
    lines.append(f"TensorFlow {inventory.tensorflow_version or '?'} ({build}), "
                 f"Keras {inventory.keras_version or '?'}"
                 + (f", NVIDIA driver {inventory.driver_version}" if inventory.driver_version else ""))
    if not inventory.gpus:
        lines.append("No GPU found (nvidia-smi and TensorFlow see none).")
    lines += [f"note: {n}" for n in inventory.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run

def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def check_output_dir(path: Path) -> None:
    """The run directory must be creatable and empty; nothing is created here."""
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
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {path}: {ancestor} is a file; choose another directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot create it, {ancestor} is not writable; "
                         "choose a directory you can write to")


def resolve_data(args) -> tuple[str, str | None, str]:
    """(data kind, CIFAR-10 path, note); an unusable explicit directory is a UsageError."""
    from cifar_model.data import DataError, DatasetNotFound, locate_cifar10, read_cifar10

    if args.data == "synthetic":
        if args.data_dir:
            raise UsageError("--data-dir is used only with --data cifar10; drop one of them")
        return "synthetic", None, "synthetic data requested (--data synthetic): speed only"
    source = args.data_dir if args.data_dir is not None else os.environ.get("CIFAR10_DIR")
    origin = "--data-dir" if args.data_dir is not None else "CIFAR10_DIR"
    try:
        path = locate_cifar10(args.data_dir, download=not args.no_download)
    except DatasetNotFound as exc:
        return "synthetic", None, f"synthetic fallback: {exc}"
    except DataError as exc:
        raise UsageError(f"{origin} {source}: {exc}") from None
    if source and not os.access(path, os.R_OK):
        raise UsageError(f"{origin} {path}: not readable; check its permissions")
    try:
        read_cifar10(path)  # reads every file once: a broken copy fails here, not in each cell
    except DataError as exc:
        raise UsageError(f"CIFAR-10 at {path} is unusable: {exc}") from None
    return "cifar10", str(path), ""


def build_run_config(args) -> tuple[runner.RunConfig, list[str] | None, Path]:
    """Validate every ``run`` argument (nothing touches the disk)."""
    profile = PROFILES[args.profile]
    batch_sizes = (int_list(args.batch_sizes, "--batch-sizes", "64,128,256")
                   if args.batch_sizes is not None else profile["batch_sizes"])
    epochs = positive_int(args.epochs, "--epochs") if args.epochs is not None else profile["epochs"]
    steps = (positive_int(args.steps, "--steps", allow_zero=True) or None
             if args.steps is not None else profile["steps"])
    warmup = positive_int(args.warmup, "--warmup", allow_zero=True) if args.warmup is not None \
        else profile["warmup"]
    if steps is not None and warmup >= epochs * steps:
        raise UsageError(f"--warmup {warmup} leaves no steady steps out of {epochs * steps}; "
                         "lower --warmup or raise --steps/--epochs")
    synthetic_images = (positive_int(args.synthetic_images, "--synthetic-images")
                        if args.synthetic_images is not None else None)
    if synthetic_images is not None and max(batch_sizes) > synthetic_images:
        raise UsageError(f"--batch-sizes {max(batch_sizes)} is larger than --synthetic-images "
                         f"{synthetic_images}; raise --synthetic-images")
    timeout = None
    if args.cell_timeout is not None:
        try:
            timeout = float(args.cell_timeout)
        except ValueError:
            timeout = -1
        if not timeout > 0:
            raise UsageError(f"--cell-timeout: '{args.cell_timeout}' is not a positive number of seconds")
    device_ids = None
    if args.devices is not None:
        try:
            device_ids = devices_module.parse_device_ids(args.devices)
        except ValueError as exc:
            raise UsageError(f"--devices: {exc}") from None
    config = runner.RunConfig(
        batch_sizes=batch_sizes, epochs=epochs, steps=steps, warmup=warmup,
        repeats=positive_int(args.repeats, "--repeats"), data=args.data,
        split=args.split or profile["split"],
        precisions=(choice_list(args.precision, "--precision", PRECISION_CHOICES)
                    if args.precision is not None else profile["precisions"]),
        jit_compile=choice_list(args.jit_compile, "--jit-compile", JIT_CHOICES),
        cpu_threads=int_list(args.cpu_threads, "--cpu-threads", "0,1,2", allow_zero=True),
        steps_per_execution=int_list(args.steps_per_execution, "--steps-per-execution", "1,8"),
        data_placements=choice_list(args.data_placement, "--data-placement", DATA_PLACEMENTS),
        cell_timeout=timeout, seed=positive_int(args.seed, "--seed", allow_zero=True),
        synthetic_images=synthetic_images,
        unsynced_steps=positive_int(args.unsynced_steps, "--unsynced-steps", allow_zero=True),
    )
    run_id = new_run_id()
    out = Path(args.out) if args.out else DEFAULT_RUNS_DIR / run_id
    if not args.out:
        suffix = 1
        while out.exists():
            suffix += 1
            out = DEFAULT_RUNS_DIR / f"{run_id}-{suffix}"
    check_output_dir(out)
    return config, device_ids, out


def cmd_run(args, argv: list[str]) -> int:
    config, device_ids, out = build_run_config(args)
    baseline = None
    if args.check_against:
        max_slowdown = slowdown_arg(args.max_slowdown)
        baseline = load_baseline_arg(args.check_against)
    kind, path, note = resolve_data(args)
    config = replace(config, data=kind, data_path=path, data_note=note)
    inventory = devices_module.detect()
    requested = devices_module.resolve(device_ids or ["all"], inventory)
    missing = [r for r in requested if r.device is None or not r.device.usable]
    if args.require_devices and missing:
        raise UsageError("--require-devices: " + "; ".join(f"{r.id}: {r.reason}" for r in missing))
    cells = runner.plan(config, requested)

    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if kind == "synthetic":
        say(f"WARNING: training on SYNTHETIC data ({note}). Speed only: accuracy is not measured.")
    else:
        say(f"data: CIFAR-10 from {path} ({config.split} split)")
    for r in missing:
        say(f"{r.id}: skipped: {r.reason}")
    say(f"{len(cells)} cell(s) -> {out}")

    out.mkdir(parents=True, exist_ok=True)
    env = environment.fingerprint(inventory)
    env["command"] = "python -m bench " + shlex.join(argv)
    env["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
    run_id = out.name
    writer = results.RunWriter(out, run_id)
    writer.write_env(env)
    context = {"run_id": run_id, "system": env["system"], "git_commit": env["git"]["commit"]}
    reporter_class = runner.RichReporter if sys.stderr.isatty() else runner.Reporter
    interrupted = False
    try:
        peaks = {} if args.no_peak else measured_peaks(
            runner.peak_combinations(cells), env, inventory, out / "logs", refresh=False, say=say)
        with reporter_class() as reporter:
            runner.execute(config, cells, writer, context, reporter, out / "logs", peaks=peaks)
    except KeyboardInterrupt:
        interrupted = True
    rows = writer.frame()
    if len(rows):
        summary = results.summary_markdown(rows, env)
        results.write_atomically(out / results.SUMMARY_MD, summary)
        run = results.read_run(out)
        plots.write_plots(run.runs, run.steps, out)
        print(summary)
    if interrupted:
        say(f"interrupted: {len(rows)} of {len(cells)} cell(s) finished and kept in {out}")
        return EXIT_INTERRUPTED
    say(f"results: {out}")
    status = EXIT_FAILED if (rows["status"] == "failed").any() else EXIT_OK
    if baseline is not None:
        try:
            comparison = regression.compare(baseline, results.read_run(out), max_slowdown)
        except regression.BaselineError as exc:
            raise UsageError(str(exc)) from None
        print(regression.comparison_markdown(comparison))
        if comparison.regressions:
            status = EXIT_FAILED
    return status


# --------------------------------------------------------------------------- summary, readme

def load_run_arg(run_arg: str | None) -> results.Run:
    try:
        return results.read_run(run_arg if run_arg else results.latest_run(DEFAULT_RUNS_DIR))
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None


def cmd_summary(args) -> int:
    run = load_run_arg(args.run)
    print(results.summary_markdown(run.runs, run.env))
    return EXIT_OK


def cmd_readme(args) -> int:
    run = load_run_arg(args.run)
    table = results.summary_markdown(run.runs, run.env, command=run.env.get("command"))
    try:
        if not re.fullmatch(r"[a-z0-9-]+", args.marker):
            raise UsageError(f"--marker '{args.marker}': use lowercase letters, digits and dashes")
        changed = readme.update_readme(args.readme, table, args.marker)
    except readme.ReadmeError as exc:
        raise UsageError(str(exc)) from None
    print(f"{args.readme}: {'table updated' if changed else 'already up to date'} "
          f"from run {run.directory}")
    return EXIT_OK


# --------------------------------------------------------------------------- peak

def measured_peaks(combos, env: dict, inventory, log_dir: Path, refresh: bool, say) -> dict:
    found = peak_module.peaks_for(combos, env, inventory.tensorflow_version, log_dir,
                                  refresh=refresh, say=say)
    for (device_id, precision, threads), value in found.items():
        say(f"peak {device_id} {precision} (threads {threads or 'default'}): {value['tflops']:.3f} "
            f"TFLOP/s, best of {value['repeats']} {value['size']}x{value['size']} "
            f"{value['dtype']} matmuls{' (cached)' if value['cached'] else ''}")
    return found


def cmd_peak(args) -> int:
    precisions = choice_list(args.precision, "--precision", PRECISION_CHOICES)
    threads = int_list(args.cpu_threads, "--cpu-threads", "0,1,2", allow_zero=True)
    try:
        device_ids = devices_module.parse_device_ids(args.devices) if args.devices else ["all"]
    except ValueError as exc:
        raise UsageError(f"--devices: {exc}") from None
    inventory = devices_module.detect()
    requested = devices_module.resolve(device_ids, inventory)
    for r in requested:
        if r.device is None or not r.device.usable:
            print(f"{r.id}: skipped: {r.reason}", file=sys.stderr)
    env = environment.fingerprint(inventory)
    log_dir = peak_module.PEAKS_DIR / "logs"
    cells = runner.plan(runner.RunConfig(batch_sizes=(1,), epochs=1, steps=None, warmup=0,
                                         precisions=precisions, cpu_threads=threads), requested)
    found = measured_peaks(runner.peak_combinations(cells), env, inventory, log_dir, args.refresh,
                           say=lambda text: print(text, file=sys.stderr))
    import pandas as pd

    rows = [{"Device": device_id, "Precision": precision, "Threads": threads or "default",
             "Matmul": f"{v['size']}×{v['size']} {v['dtype']}",
             "Peak TFLOP/s (best)": f"{v['tflops']:.3f}", "Median TFLOP/s": f"{v['median_tflops']:.3f}",
             "Repeats": v["repeats"], "Cached": "yes" if v["cached"] else "no"}
            for (device_id, precision, threads), v in found.items()]
    if rows:
        print(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))
    print(f"\nTensorFlow {inventory.tensorflow_version}; cache: "
          f"{peak_module.PeakCache(env).path} (per machine fingerprint)")
    return EXIT_OK if rows else EXIT_FAILED


# --------------------------------------------------------------------------- baselines, check

def slowdown_arg(text: str) -> float:
    try:
        return regression.parse_slowdown(text)
    except ValueError as exc:
        raise UsageError(f"--max-slowdown: {exc}") from None


def load_baseline_arg(name_or_path: str) -> results.Run:
    try:
        return regression.load_baseline(name_or_path)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None


def check_report_path(option: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; name a file")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UsageError(f"{option} {path}: its directory does not exist or is not writable")
    return path


def cmd_baseline(args) -> int:
    if args.baseline_command == "list":
        saved = regression.list_baselines()
        if not saved:
            print(f"no baselines under {regression.DEFAULT_BASELINES_DIR}")
        for meta in saved:
            print(f"{meta.get('name')}: run {meta.get('run_id')}, {meta.get('cells')} cell(s), "
                  f"saved {meta.get('saved_at')}, machine {meta.get('machine')}")
        return EXIT_OK
    run = load_run_arg(args.run)
    try:
        path = regression.save_baseline(run, args.name, replace=args.replace)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    print(f"baseline '{path.name}' saved at {path} from run {run.directory}")
    return EXIT_OK


def cmd_check(args) -> int:
    max_slowdown = slowdown_arg(args.max_slowdown)
    try:
        confidence = float(args.confidence)
    except ValueError:
        confidence = -1
    if not 0.5 <= confidence < 1:
        raise UsageError(f"--confidence: '{args.confidence}' must be a number from 0.5 to below 1")
    markdown_path = check_report_path("--markdown", args.markdown)
    json_path = check_report_path("--json", args.json)
    baseline = load_baseline_arg(args.baseline)
    current = load_run_arg(args.run)
    try:
        comparison = regression.compare(baseline, current, max_slowdown, confidence)
    except regression.BaselineError as exc:
        raise UsageError(str(exc)) from None
    report = regression.comparison_markdown(comparison)
    print(report)
    if comparison.environment_differences:
        print("warning: the environments differ: " + "; ".join(comparison.environment_differences),
              file=sys.stderr)
    if markdown_path:
        results.write_atomically(markdown_path, report)
    if json_path:
        results.write_atomically(json_path, json.dumps(comparison.as_dict(), indent=2) + "\n")
    if comparison.regressions:
        print("regression: " + "; ".join(c.cell for c in comparison.regressions), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "devices":
            return cmd_devices(args)
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "peak":
            return cmd_peak(args)
        if args.command == "baseline":
            return cmd_baseline(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "summary":
            return cmd_summary(args)
        if args.command == "readme":
            return cmd_readme(args)
    except UsageError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover
