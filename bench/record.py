"""One row of runs.csv (a cell) and of steps.csv (a timed step): the schema, declared once.

:class:`RunRow` is made from :data:`RUN_COLUMNS`; each field's metadata documents its
column and gives its CSV dtype, and the cell's own columns (device and every matrix
dimension) come from :mod:`bench.matrix`. The builders turn a worker's typed result into a
row; they never see a framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

import numpy as np

from bench import matrix, stats
from bench.contention import Contention
from bench.cost import CostColumns, Prices
from bench.energy import EnergyColumns
from bench.protocol import WorkerResult
from bench.tta import CURVE_COLUMNS, target_columns
from cifar_model.results import CurvePoint, StepRecord, TrainResult
from cifar_model.settings import SEED_RUN

if TYPE_CHECKING:                        # bench.yardsticks reads the peak cache through store,
    from bench.yardsticks import Yardstick  # which imports this module

STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class Column:
    doc: str
    dtype: str = "float"           # float, int, text or bool


_IDENTITY = {
    "run_id": Column("the run this cell belongs to", "text"),
    "cell_id": Column("device, dimensions and repeat of the cell", "text"),
    "repeat": Column("0-based repeat index (each repeat is a fresh process)", "int"),
    "status": Column("ok, skipped (device or backend absent) or failed (crash, timeout, error)", "text"),
    "reason": Column("why the cell was skipped or failed", "text"),
    "system": Column("operating system", "text"),
    "machine_label": Column("the user's short name for the machine (--machine-label)", "text"),
}
_MEASURED = {
    "data_device": Column("where the training images lived (CPU:0, GPU:0, ...)", "text"),
    "data": Column("cifar10 or synthetic", "text"),
    "split": Column("standard (50k/10k official) or seed (notebook: 40k/10k)", "text"),
    "epochs": Column("epochs trained", "int"),
    "steps_per_epoch": Column("steps per epoch (full batches, optionally capped)", "int"),
    "steps": Column("steps timed in total (epochs x steps_per_epoch)", "int"),
    "warmup_steps": Column("first steps excluded from the steady statistics", "int"),
    "train_s": Column("full training time: wall time of the whole training run, warm-up included"),
    "first_step_s": Column("the first step alone (tracing, compilation, allocations)"),
    "data_load_s": Column("reading + standardising the dataset + building the input pipeline"),
    "startup_s": Column("worker start until the framework and Keras were imported"),
    "build_s": Column("building and compiling the model"),
    "eval_s": Column("evaluating on the held-out images"),
    "epoch_median_s": Column("median wall time of one epoch"),
    "step_median_s": Column("median steady step time (device synced)"),
    "step_mean_s": Column("mean steady step time"),
    "step_p5_s": Column("5th percentile of steady step times"),
    "step_p95_s": Column("95th percentile of steady step times"),
    "step_iqr_s": Column("interquartile range of steady step times"),
    "step_median_ci_low_s": Column("95% bootstrap confidence interval of the median step: low"),
    "step_median_ci_high_s": Column("95% bootstrap confidence interval of the median step: high"),
    "steady_steps": Column("steps in the steady statistics", "int"),
    "steady_wall_s": Column("wall time from the first steady step's start to the last one's end"),
    "images_per_s": Column("steady images/s per replica = batch_size / step_median_s "
                           "(the whole cell's: global_images_per_s)"),
    "images_per_s_wall": Column("steady images/s over wall time = steady_steps * batch_size / steady_wall_s"),
    "projected_seed_run_s": Column("26 epochs of the 40,000-image seed split at step_mean_s and "
                                   "the global batch (estimate)"),
    "strategy": Column("the data-parallel engine: none, mirrored (tf MirroredStrategy), "
                       "multi_worker_mirrored (tf MultiWorkerMirroredStrategy), "
                       "keras_data_parallel (keras.distribution.DataParallel on JAX)", "text"),
    "task_index": Column("which worker of the cluster wrote the row (0: the chief)", "int"),
    "total_replicas": Column("replicas training in sync over every worker = replicas x workers", "int"),
    "global_batch_size": Column("images per step over every replica = batch_size x total_replicas", "int"),
    "global_images_per_s": Column("steady images/s of the whole cell = global_batch_size / step_median_s"),
    "speedup_vs_1_replica": Column("global_images_per_s / that of the 1-replica, 1-worker cell of the "
                                   "same settings in the same run (same repeat when there is one)"),
    "scaling_efficiency_pct": Column("100 x speedup_vs_1_replica / total_replicas (100: ideal)"),
    "scaling_note": Column("what the speed-up can show: a functional check when the replicas "
                           "share one machine's cores", "text"),
    "peer_step_median_s": Column("the slowest other worker's median steady step (multi-worker "
                                 "cells started by this run)"),
    "train_loss": Column("mean training loss over the last epoch (dropout active)"),
    "train_accuracy": Column("mean training accuracy over the last epoch (dropout active)"),
    "heldout_accuracy": Column("accuracy on the held-out images after training (see heldout_images)"),
    "heldout_loss": Column("loss on the held-out images after training"),
    "heldout_images": Column("held-out images evaluated (0: not evaluated)", "int"),
    "accuracy_note": Column("what the accuracy was measured on, or why it was not", "text"),
    "params": Column("trainable and non-trainable parameters of the network", "int"),
    "peak_rss_mb": Column("peak resident memory of the worker process (MiB)"),
    "peak_gpu_mem_mb": Column("peak GPU memory held by the framework (MiB, GPU cells)"),
    "cpu_util_pct": Column("mean CPU use of the worker while training, % of the CPUs it could use"),
    "xla": Column("whether the train step was compiled (what jit_compile resolved to)", "bool"),
    "compile_note": Column("what jit_compile means and resolved to on this backend", "text"),
    "math": Column("what the cell's convolutions and matmuls computed in: ieee (IEEE fp32), tf32 "
                   "(an fp32 cell on TF32 tensor cores: fp32's range, a 10-bit mantissa; every "
                   "backend's default for convolutions on a GPU of compute capability 8.0 or "
                   "newer), bf16 or fp16 (a mixed policy's compute dtype); empty: not recorded "
                   "(runs before it was)", "text"),
    "math_note": Column("the backend setting that decided math (e.g. torch.backends.cudnn.allow_tf32"
                        "=True); in runs before peak_note, also why a measured peak in another math "
                        "was not used", "text"),
    "unsynced_steps": Column("steps of the unsynced throughput phase (0: not run)", "int"),
    "unsynced_images_per_s": Column("images/s over a block of steps with one sync at the end"),
    "sync_overhead_pct": Column("throughput lost to per-step syncing: "
                                "100 x (1 - images_per_s / unsynced_images_per_s)"),
    "flops_per_image": Column("analytic training FLOPs per image (forward + backward)", "int"),
    "achieved_tflops": Column("flops_per_image x global_images_per_s / 1e12"),
    "peak_tflops": Column("measured peak of the device in this precision, threads and backend "
                          "(large matmul, python -m bench peak), in the cell's math: a TF32 "
                          "matmul for an fp32 cell whose convolutions ran in TF32"),
    "efficiency_pct": Column("100 x achieved_tflops / peak_tflops (one-replica cells only: the "
                             "peak is one device's)"),
    "peak_note": Column("why the measured peak is not this row's yardstick: measured while other "
                        "processes used the machine (too low), or its matmul ran in another math; "
                        "empty: it is, or none was measured", "text"),
    "theoretical_tflops": Column("theoretical peak of the device in this precision: datasheet (GPU; "
                                 "its TF32 figure for an fp32 cell whose math is tf32) "
                                 "or cores x clock x FLOPs/cycle scaled to the usable CPUs (CPU)"),
    "efficiency_theoretical_pct": Column("100 x achieved_tflops / theoretical_tflops"),
    "theoretical_basis": Column("how theoretical_tflops was reached, or why it is unknown", "text"),
    **{name: Column(doc, dtype) for name, (doc, dtype) in Contention.COLUMNS.items()},
    "framework_version": Column("the backend framework's version in the worker", "text"),
    "tensorflow_version": Column("TensorFlow in the worker (tensorflow backend)", "text"),
    "keras_version": Column("Keras in the worker", "text"),
    "numpy_version": Column("NumPy in the worker", "text"),
    "python_version": Column("Python in the worker", "text"),
    "started_at": Column("when the cell started (UTC)", "text"),
    "git_commit": Column("the project's commit", "text"),
}
#: Time to a target accuracy (--target-accuracy): MLPerf Training's figure. Empty when no
#: target was asked; a target not reached has no time, only ``target_note``.
_TIME_TO_TARGET = {
    "target_accuracy": Column("the held-out accuracy the cell trained to reach (--target-accuracy); "
                              "training stopped at the first evaluation at or above it"),
    "time_to_target_s": Column("MLPerf's clock: data_load_s + wall time from the start of training to the "
                               "end of the evaluation that reached the target, evaluations included"),
    "train_time_to_target_s": Column("training time alone to that evaluation: evaluations and data "
                                     "loading excluded"),
    "epochs_to_target": Column("epochs trained when the target was reached: steps / steps_per_epoch "
                               "(fractional with --eval-every below 1)"),
    "images_to_target": Column("training images seen when the target was reached: steps x global batch", "int"),
    "target_note": Column("'not reached in N epochs' when the budget ended first (no time is given then)",
                          "text"),
    "curve_evals": Column("held-out evaluations during training (--eval-every); each is a row of curves.csv",
                          "int"),
    "curve_eval_s": Column("their time in total, kept out of train_s"),
}
_RUN_SETTINGS = ("data", "split", "epochs", "warmup_steps")


def _cell_columns() -> dict[str, Column]:
    return {name: Column(doc, dtype) for name, (doc, dtype) in matrix.columns().items()}


#: --energy and --price: declared in bench.energy and bench.cost, empty unless asked for.
_ENERGY_AND_COST = {name: Column(doc, dtype) for name, (doc, dtype)
                    in {**EnergyColumns.schema(), **CostColumns.schema()}.items()}

#: runs.csv, in order: column -> what it holds and its dtype. Times are seconds of wall time.
RUN_COLUMNS: dict[str, Column] = {**_IDENTITY, **_cell_columns(), **_MEASURED, **_TIME_TO_TARGET,
                                   **_ENERGY_AND_COST}
STEP_COLUMNS: dict[str, Column] = {
    "run_id": Column("the run", "text"),
    "cell_id": Column("the cell (runs.csv)", "text"),
    "epoch": Column("0-based epoch", "int"),
    "step": Column("0-based step within the epoch (first step of the record)", "int"),
    "steps": Column("steps covered by this record (steps_per_execution)", "int"),
    "seconds": Column("wall time of the record, device synced"),
    "warmup": Column("True for warm-up steps (excluded from the steady statistics)", "bool"),
}


_CURVE_DOCS = {
    "cell_id": "the cell (runs.csv)", "repeat": "0-based repeat of the cell",
    "epoch": "1-based epoch the evaluation fell in", "step": "training steps done when it ran",
    "images_seen": "training images seen: step x global batch",
    "train_seconds": "training wall time so far, evaluations excluded",
    "wall_seconds": "wall time since training started, evaluations included (add data_load_s for MLPerf's clock)",
    "eval_seconds": "this evaluation's own time", "heldout_accuracy": "accuracy on the whole held-out split",
    "heldout_loss": "mean softmax cross-entropy on it"}
#: curves.csv: one row per held-out evaluation during training (bench.tta.CURVE_COLUMNS, in order).
CURVE_SCHEMA: dict[str, Column] = {
    name: Column(_CURVE_DOCS[name], "text" if name == "cell_id" else
                 "int" if name == "repeat" or get_type_hints(CurvePoint)[name] is int else "float")
    for name in CURVE_COLUMNS}


def columns_of(dtype: str, schema: dict[str, Column] = RUN_COLUMNS) -> tuple[str, ...]:
    return tuple(name for name, column in schema.items() if column.dtype == dtype)


#: One row of runs.csv; every field defaults to None (a skipped row fills few of them).
RunRow = make_dataclass(
    "RunRow",
    [(name, object, field(default=None, metadata={"doc": c.doc, "dtype": c.dtype}))
     for name, c in RUN_COLUMNS.items()],
    frozen=True)
RunRow.__doc__ = "One cell's outcome: a row of runs.csv. Field metadata documents each column."


def as_dict(row) -> dict:
    return asdict(row)


def planned(cell: matrix.Cell, run_wide: dict, context: dict) -> dict:
    """A cell's columns known before it runs: what was asked, so every row says it."""
    return {**context, "cell_id": cell.cell_id, "repeat": cell.repeat, **cell.columns(),
            **{k: run_wide[k] for k in _RUN_SETTINGS if k in run_wide}}


def skipped_row(planned_: dict, reason: str) -> Any:   # a RunRow (made at run time: no static type)
    return RunRow(**planned_, status="skipped", reason=reason)


def failed_row(planned_: dict, reason: str, contention: dict | None = None) -> Any:   # a RunRow
    return RunRow(**planned_, status="failed", reason=reason, **_contention_columns(contention))


def ok_row(planned_: dict, result: WorkerResult, yardstick: Yardstick | None = None,
           contention: dict | None = None, peers: Sequence[WorkerResult] = (),
           prices: Prices | None = None) -> Any:   # a RunRow
    """A measured cell: the worker's typed result condensed into the schema's columns.

    Every figure comes from :class:`cifar_model.TrainResult`'s own fields and properties;
    nothing is derived again here. ``yardstick`` is what :func:`bench.yardsticks.for_cell`
    chose the cell is measured against (its ``peak_note`` says why a measured peak was not
    used); ``contention`` what :mod:`bench.contention` saw while the cell ran; ``peers`` the
    other workers' results of a multi-worker cell (their slowest median step is kept).
    With ``--energy`` the worker's reading fills the energy columns (or says why it could
    not); with ``--price`` the cost columns are hours x price of the projected notebook run.
    A cell with no steady step is a clear ``ok`` row without steady figures, and says so.
    """
    train = result.train
    measured, theoretical = (yardstick.measured, yardstick.theoretical) if yardstick else (None, None)
    versions = result.versions
    values = dict(
        planned_, status="ok", reason="",
        epochs=train.epochs, steps_per_epoch=train.steps_per_epoch,
        steps=train.total_steps, warmup_steps=train.warmup_steps,
        data=train.data, split=train.split, data_device=train.data_device,
        train_s=train.train_seconds, first_step_s=train.first_step_seconds,
        data_load_s=train.data_seconds, startup_s=result.startup_seconds,
        build_s=train.build_seconds, eval_s=train.eval_seconds,
        epoch_median_s=float(np.median(train.epoch_seconds)) if train.epoch_seconds else None,
        steady_steps=train.steady_steps, steady_wall_s=train.steady_wall_seconds,
        train_loss=train.train_loss, train_accuracy=train.train_accuracy,
        heldout_accuracy=train.heldout_accuracy, heldout_loss=train.heldout_loss,
        heldout_images=train.heldout_images, accuracy_note=train.accuracy_note,
        params=train.params,
        peak_rss_mb=_mib(result.peak_rss_bytes), peak_gpu_mem_mb=_mib(result.peak_gpu_bytes),
        cpu_util_pct=result.cpu_util_pct, flops_per_image=train.training_flops_per_image,
        xla=train.xla, compile_note=train.compile_note,
        math=train.math, math_note=train.math_note, peak_note=yardstick.peak_note if yardstick else "",
        unsynced_steps=train.unsynced_steps, started_at=result.started_at,
        strategy=train.strategy, task_index=train.task_index,
        total_replicas=train.total_replicas, global_batch_size=train.global_batch_size,
        framework_version=versions.get(train.backend),
        **{f"{name}_version": versions.get(name) for name in ("tensorflow", "keras", "numpy", "python")},
        **_contention_columns(contention), **_target_columns(train),
    )
    if result.device_name:
        values["device_name"] = result.device_name
    peer_medians = [float(np.median(peer.train.steady_step_seconds)) for peer in peers
                    if peer.train.steady_step_seconds]
    if peer_medians:
        values["peer_step_median_s"] = max(peer_medians)
    if result.energy is not None:
        values.update(EnergyColumns.build(result.energy.window, result.energy.idle, train.global_batch_size,
                                          SEED_RUN.epochs * SEED_RUN.train_images).as_row())
    if prices is not None:   # before the steady figures: a cell without them still says its price
        values.update(CostColumns.build(prices, planned_["device_id"], planned_.get("machine_label"),
                                        None, None).as_row())
    if not train.steady_step_seconds:
        values["reason"] = (f"no steady steps: all {train.total_steps} step(s) were warm-up; "
                            "lower --warmup or raise --steps")
        return RunRow(**values)
    summary = stats.summarise(np.array(train.steady_step_seconds))
    achieved_tflops = train.training_flops_per_image * train.global_batch_size / summary.median / 1e12
    values.update(
        step_median_s=summary.median, step_mean_s=summary.mean, step_p5_s=summary.p5,
        step_p95_s=summary.p95, step_iqr_s=summary.iqr,
        step_median_ci_low_s=summary.median_ci_low, step_median_ci_high_s=summary.median_ci_high,
        images_per_s=train.batch_size / summary.median,
        global_images_per_s=train.global_batch_size / summary.median,
        images_per_s_wall=(train.steady_steps * train.batch_size / train.steady_wall_seconds
                           if stats.finite_positive(train.steady_wall_seconds) else None),
        projected_seed_run_s=SEED_RUN.projected_seconds(train.global_batch_size, summary.mean),
        achieved_tflops=achieved_tflops,
    )
    if prices is not None:
        values.update(CostColumns.build(prices, planned_["device_id"], planned_.get("machine_label"),
                                        values["projected_seed_run_s"], values["global_images_per_s"]).as_row())
    if train.unsynced_images_per_s is not None:
        values.update(unsynced_images_per_s=train.unsynced_images_per_s,
                      sync_overhead_pct=100 * (1 - values["images_per_s"] / train.unsynced_images_per_s))
    if measured is not None:
        values.update(peak_tflops=measured.tflops, efficiency_pct=100 * achieved_tflops / measured.tflops)
    if theoretical is not None:
        values.update(theoretical_tflops=theoretical.tflops, theoretical_basis=theoretical.basis)
        if theoretical.tflops:
            values["efficiency_theoretical_pct"] = 100 * achieved_tflops / theoretical.tflops
    return RunRow(**values)


#: The dimensions whose 1-value cell is the yardstick of a speed-up.
SCALING_DIMENSIONS = ("replicas", "workers")


def with_scaling(row: Any, earlier: list[dict], note: str | None = None) -> Any:   # RunRow -> RunRow
    """``row`` with its speed-up over the 1-replica, 1-worker cell of the same settings among
    ``earlier`` rows (the planner runs that cell first); ``note`` says what it can show."""
    values = asdict(row)
    if values["status"] != "ok" or not values.get("total_replicas") or values["total_replicas"] <= 1:
        return row
    values["scaling_note"] = note
    same = [r for r in earlier if r["status"] == "ok" and r.get("global_images_per_s")
            and r["device_id"] == values["device_id"]
            and all(r.get(name) == 1 for name in SCALING_DIMENSIONS)
            and all(r.get(name) == values[name] for name in matrix.MATCH_KEYS
                    if name not in SCALING_DIMENSIONS and name != "device_name")]
    same = [r for r in same if r["repeat"] == values["repeat"]] or same
    if same and values.get("global_images_per_s"):
        base = float(np.median([r["global_images_per_s"] for r in same]))
        values["speedup_vs_1_replica"] = values["global_images_per_s"] / base
        values["scaling_efficiency_pct"] = 100 * values["speedup_vs_1_replica"] / values["total_replicas"]
    return RunRow(**values)


def _contention_columns(contention: dict | None) -> dict:
    if not contention:
        return {}
    return {k: contention[k] for k in Contention.COLUMNS if k in contention}


def _target_columns(train: TrainResult) -> dict:
    """The curve's count and time, and the time to target when one was asked."""
    out: dict[str, Any] = ({"curve_evals": len(train.curve), "curve_eval_s": train.curve_eval_seconds}
                           if train.curve else {})
    if train.target_accuracy is None:
        return out
    return {**out, **target_columns(train.curve, train.target_accuracy, train.epochs, train.steps_per_epoch,
                                    train.data_seconds)}


def curve_rows(cell_id: str, repeat: int, points: Sequence[CurvePoint]) -> list[dict]:
    return [{"cell_id": cell_id, "repeat": repeat, **p.as_dict()} for p in points]


def step_rows(run_id: str, cell_id: str, records: Sequence[StepRecord]) -> list[dict]:
    return [{"run_id": run_id, "cell_id": cell_id, **asdict(r)} for r in records]


def _mib(value) -> float | None:
    return None if value is None else value / 2**20
