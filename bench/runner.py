"""Run a plan: one worker process per cell, every outcome a row on disk, nothing lost.

One cell, one fresh process: the worker's environment hides every other device and sets
the Keras backend before any framework starts, memory from one cell never pollutes the
next, and a crash, a hang or an out-of-memory costs one row, not the run. Rows are written
to disk after every cell. A stop (Ctrl-C, SIGTERM, SIGHUP) kills the running worker and
ends the loop; a write the disk refuses ends it too, with every row so far kept in memory
for the summary.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import matrix, process, record, yardsticks
from bench.config import RunConfig
from bench.devices import Requested
from bench.energy import EnergySpec
from bench.errors import Stopped
from bench.launch import backend_missing, worker_environment
from bench.progress import Reporter
from bench.protocol import MARK, CellSpec, Event, ProtocolError, WorkerResult
from bench.store import RunWriter
from cifar_model.settings import backend_limitation, is_loopback_cluster, listening_note, parallel_limitation

#: A multi-worker cell's time limit when ``--cell-timeout`` is not given: its peers can hang.
DEFAULT_MULTI_WORKER_TIMEOUT_S = 3600
#: How long the other local workers may take to finish after the chief has.
PEER_GRACE_S = 60

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class StopSignals:
    """Raises :class:`Stopped` on the first stop signal; later ones, or any once ``hold()``
    is called, are only noted (``noted``), so the summary of what finished gets written."""

    def __init__(self):
        self.held = False
        self.noted: list[int] = []

    def hold(self) -> None:
        self.held = True

    def handler(self, signum, frame):
        if self.held:
            self.noted.append(signum)
            return
        self.held = True
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Stopped` while the run goes on.

    What ``timeout``, CI cancellation and ``docker stop`` send is treated like Ctrl-C: the
    running worker is killed, every finished cell is kept and the summary is written. Only
    the first signal stops: one sent again while stopping (a second Ctrl-C, a repeated
    SIGTERM) must not cut the summary short.
    """
    stops = StopSignals()
    previous = {s: signal.signal(s, stops.handler) for s in STOP_SIGNALS}
    try:
        yield stops
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def plan_cells(config: RunConfig, devices: list[Requested]) -> list[matrix.Cell]:
    return matrix.plan(config.plan, devices, config.repeats, config.train_images)


def cell_spec(cell: matrix.Cell, config: RunConfig, cluster: tuple[str, ...] = (),
              task_index: int = 0) -> CellSpec:
    """The worker's spec; a multi-worker cell's names every worker and this one's place."""
    return CellSpec(cell_id=cell.cell_id, device_type=cell.device_type,
                    settings=cell.settings(**config.run_wide(cell.repeat),
                                           cluster=cluster if cell["workers"] > 1 else (),
                                           task_index=task_index if cell["workers"] > 1 else 0),
                    data=config.source, energy=energy_spec(cell, config))


def energy_spec(cell: matrix.Cell, config: RunConfig) -> EnergySpec | None:
    """What a cell's worker meters with ``--energy``: its GPUs in NVML's numbering (PCI order,
    as ``gpu:N`` is; NVML ignores CUDA_VISIBLE_DEVICES), or the CPU package ((): a CPU cell)."""
    if not config.energy:
        return None
    found = cell.device.found
    gpus = (tuple(found.gpu_index + i for i in range(cell["replicas"]))
            if cell.device_type == "GPU" and found is not None else ())
    return EnergySpec(min_window_s=config.energy_window, nvml_indices=gpus)


def contention_sampler(usable_cpus: float | None, interval_s: float = 0.5):
    """A factory ``watch(pid, cell, cell_pids)`` that samples what else used the machine
    while a worker ran (see :class:`RunContext`)."""
    from bench.contention import ContentionSampler

    def watch(pid: int, cell: matrix.Cell, cell_pids: tuple[int, ...] = ()):
        gpu = cell.device.found.index if cell.device_type == "GPU" and cell.device.found else None
        return ContentionSampler(pid, usable_cpus=usable_cpus, gpu_index=gpu, interval_s=interval_s,
                                 cell_pids=cell_pids).start()

    return watch


def contention_columns(contention) -> dict:
    """A :class:`bench.contention.Contention` as runs.csv values."""
    return contention.columns()


@dataclass(frozen=True)
class RunContext:
    """What every cell of one run shares besides its config: the row values that name the
    run, where logs go, which worker to start, the yardsticks, what the machine has, and how
    contention is sampled. Built once by the session; the runner only reads it."""

    config: RunConfig
    run_id: str
    log_dir: Path
    system: str | None = None
    git_commit: str | None = None
    machine_label: str | None = None
    worker_command: tuple[str, ...] = process.WORKER_COMMAND
    #: measured peak of each (device id, precision, threads, backend), for the efficiency columns
    measured_peaks: Mapping[yardsticks.PeakKey, yardsticks.MeasuredPeak] = field(default_factory=dict)
    #: theoretical peak of each (device id, precision), see yardsticks.theoretical_peaks
    theoretical: Mapping[tuple[str, str], yardsticks.TheoreticalPeak] = field(default_factory=dict)
    gpu_count: int | None = None          # GPUs on the machine (None: not checked)
    usable_cpus: float | None = None
    #: ``watch(pid, cell, cell_pids)`` starts a contention sampler for a worker (None: none)
    watch: Callable[..., object] | None = None
    contention_columns: Callable[[object], dict] = contention_columns

    def row_values(self) -> dict:
        """The run-wide values of every row: which run, machine and commit."""
        return {"run_id": self.run_id, "system": self.system, "git_commit": self.git_commit,
                "machine_label": self.machine_label}

    def planned(self, cell: matrix.Cell) -> dict:
        """``cell``'s columns known before it runs: the cell, this run's names and settings."""
        config = self.config
        run_wide = {"data": config.source.kind, "split": config.source.split, "epochs": config.epochs,
                    "warmup_steps": config.warmup_steps}
        return record.planned(cell, run_wide, self.row_values())


@dataclass
class Outcome:
    """How ``execute`` ended: the rows kept, and why it stopped early if it did."""

    rows: list[dict] = field(default_factory=list)
    stopped_by: int | None = None          # the signal that stopped the run
    write_error: str = ""                  # the disk refused a write: the run stopped there


def skip_reason(cell: matrix.Cell, config: RunConfig | None = None,
                gpu_count: int | None = None) -> str | None:
    """Why ``cell`` cannot run here (device, backend, data parallelism), or None.

    ``gpu_count``: GPUs on the machine (None: not checked). On a non-chief host of a
    ``--cluster`` run, the single-worker yardstick cells are the chief's to measure.
    """
    if cell.device.found is None or not cell.device.found.usable:
        return cell.device.reason
    if config is not None and config.task_index > 0 and cell["workers"] == 1:
        return "single-worker cells run on the chief (--task-index 0) only"
    available = None
    if gpu_count is not None and cell.device_type == "GPU":
        available = gpu_count - cell.device.found.gpu_index
    return backend_missing(cell["backend"]) or backend_limitation(
        cell["backend"], cell["jit_compile"], cell["cpu_threads"], cell["replicas"], cell["workers"],
        cell["steps_per_execution"], cell["engine"]
    ) or parallel_limitation(cell.device_type, cell["replicas"], cell["workers"], cell["data_placement"],
                             cell["steps_per_execution"],
                             config.unsynced_steps if config is not None else 0, available
    ) or (OPEN_PORTS_REASON if open_ports_refused(cell, config) else None)


OPEN_PORTS_REASON = ("TensorFlow's multi-worker gRPC server would listen on every interface "
                     "(0.0.0.0:PORT, unauthenticated; TensorFlow cannot bind it to loopback), beyond "
                     "this loopback cluster; add --allow-open-ports to run it behind a firewall that "
                     "closes the port")


def open_ports_refused(cell: matrix.Cell, config: RunConfig | None) -> bool:
    """A TensorFlow multi-worker cell on this machine's loopback (local workers, or a
    ``--cluster`` of loopback addresses) the user did not allow to open a port on every
    interface. A ``--cluster`` of other hosts asked for the network: it runs."""
    if cell["backend"] != "tensorflow" or cell["workers"] <= 1:
        return False
    if config is None:
        return True
    return not config.allow_open_ports and cluster_on_this_machine(config)


def cluster_on_this_machine(config: RunConfig) -> bool:
    """Local workers (no ``--cluster``) or a ``--cluster`` of loopback addresses only."""
    return not config.cluster or is_loopback_cluster(config.cluster)


def scaling_note(cell: matrix.Cell, config: RunConfig, usable_cpus: float | None) -> str | None:
    """What a cell's speed-up can show: nothing about scaling when its replicas or workers
    share this machine's CPU cores (logical CPU devices, local or loopback workers)."""
    cores = f"{usable_cpus:g}" if usable_cpus else "the"
    if cell.device_type == "CPU" and cell["replicas"] > 1:
        return (f"{cell['replicas']} logical devices sharing {cores} CPU cores: a functional "
                "check, no speed-up expected (no hardware is added; a speed-up here only means "
                "one device left some cores idle)")
    if cell["workers"] > 1 and cluster_on_this_machine(config):
        return (f"{cell['workers']} worker processes on this one machine sharing {cores} CPU cores"
                + (" and its GPU(s)" if cell.device_type == "GPU" else "")
                + ": a functional check of the multi-worker path, no speed-up expected")
    return None


def free_loopback_ports(count: int) -> tuple[str, ...]:
    """``count`` 127.0.0.1:port addresses free right now, for local workers to listen on."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return tuple(f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def _watcher(watch, cell: matrix.Cell, peers: list):
    """``watch`` for this cell's chief; a multi-worker cell's local peers count as its own."""
    if watch is None:
        return None
    if not peers:
        return lambda pid: watch(pid, cell)
    pids = tuple(peer.pid for peer, _ in peers)
    return lambda pid: watch(pid, cell, pids)


def start_peers(cell: matrix.Cell, config: RunConfig, cluster: tuple[str, ...], log_dir: Path,
                env: dict, worker_command) -> list[tuple[subprocess.Popen, Path]]:
    """Start workers 1 .. N-1 of a local multi-worker cell, each writing everything (its
    result line included) to ``<cell>.task<i>.log``; the runner follows worker 0 itself."""
    peers = []
    for task in range(1, len(cluster)):
        log_path = log_dir / f"{cell.cell_id}.task{task}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            peer = process.start_process(worker_command, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, text=True)
        peers.append((peer, log_path))
        assert peer.stdin is not None                # started with stdin=PIPE
        try:
            peer.stdin.write(cell_spec(cell, config, cluster, task).to_json())
            peer.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    return peers


def finish_peers(peers: list[tuple[subprocess.Popen, Path]], grace_s: float = PEER_GRACE_S) -> list[WorkerResult]:
    """Wait up to ``grace_s`` for the other local workers, kill what is left, and read each
    one's result from its log (a worker with none contributes nothing)."""
    deadline = time.monotonic() + grace_s
    results = []
    for peer, log_path in peers:
        try:
            peer.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        process.kill_group(peer)
        result = _result_in_log(log_path)
        if result is not None:
            results.append(result)
    return results


def _result_in_log(log_path: Path) -> WorkerResult | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(MARK):
            try:
                event = Event.parse(line[len(MARK):])
                if event.kind == "result":
                    return WorkerResult.from_dict(event.fields.get("result"))
            except (ProtocolError, ValueError, TypeError):
                return None
    return None


def execute(cells: list[matrix.Cell], writer: RunWriter, context: RunContext, reporter: Reporter) -> Outcome:
    """Run every cell; each outcome becomes a row on disk before the next cell starts.

    A :class:`Stopped` ends the loop after the running worker is killed; every finished row
    is already on disk. A row that cannot be built from what a worker returned is that cell's
    failed row, with the reason; the run goes on.

    A multi-worker cell (``workers`` > 1) runs this host's worker of ``config.cluster``, or,
    without a cluster, all its workers here on free 127.0.0.1 ports: worker 0 (the chief)
    is followed as any cell's worker and writes the row; the others' logs (each ending
    with its full result, step times included) stay beside the chief's.
    """
    outcome = Outcome(rows=writer.rows)
    try:
        context.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        outcome.write_error = f"cannot create {context.log_dir}: {exc.strerror or exc}"
        return outcome
    for index, cell in enumerate(cells):
        reporter.cell_started(index, len(cells), cell)
        planned = context.planned(cell)
        try:
            row, steps, curves = _run_cell(cell, planned, writer, context, reporter)
        except Stopped as stop:
            outcome.stopped_by = stop.signum
            return outcome
        try:
            writer.add(row, steps, curves)
        except OSError as exc:
            outcome.write_error = (f"could not write the results of {cell.cell_id} to {writer.directory}: "
                                   f"{exc.strerror or exc}; the run stopped there (earlier cells are on disk)")
            reporter.cell_finished(index, len(cells), cell, record.as_dict(row))
            return outcome
        reporter.cell_finished(index, len(cells), cell, writer.rows[-1])
    return outcome


def _run_cell(cell: matrix.Cell, planned, writer: RunWriter, context: RunContext,
              reporter: Reporter) -> tuple[object, list[dict], list[dict]]:
    """One cell's row, step rows and curve rows: skipped, failed (with why) or measured."""
    config = context.config
    reason = skip_reason(cell, config, context.gpu_count)
    if reason:
        return record.skipped_row(planned, reason), [], []
    env = worker_environment(cell.device, cell["backend"], replicas=cell["replicas"])
    cluster: tuple[str, ...] = ()
    task, peers, timeout, result = 0, [], config.cell_timeout, None
    if cell["workers"] > 1:
        cluster = config.cluster or free_loopback_ports(cell["workers"])
        task = config.task_index if config.cluster else 0
        timeout = timeout or DEFAULT_MULTI_WORKER_TIMEOUT_S
    if cell["workers"] > 1:   # the run says where the cluster listens, not only the workers' logs
        reporter.say(f"    {cell.cell_id}: worker {task} " + listening_note(cluster, task, cell["backend"]))
    try:
        if cell["workers"] > 1 and not config.cluster:
            peers = start_peers(cell, config, cluster, context.log_dir, env, context.worker_command)
        result = process.run_worker(
            cell_spec(cell, config, cluster, task).to_json(), env,
            context.log_dir / f"{cell.cell_id}.log", timeout,
            on_event=lambda event: reporter.cell_event(cell, event),
            command=context.worker_command, watch=_watcher(context.watch, cell, peers))
    finally:
        chief_done = result is not None and result.result is not None
        peer_results = finish_peers(peers, PEER_GRACE_S if chief_done else 0)
    if result.log_error:
        reporter.say(f"warning: {result.log_error}")
    contention = None
    try:
        contention = context.contention_columns(result.watched) if result.watched is not None else None
        if result.result is None:
            return record.failed_row(planned, result.reason, contention), [], []
        yardstick = yardsticks.for_cell(cell, result.result.train, context.measured_peaks, context.theoretical)
        row = record.ok_row(planned, result.result, yardstick, contention=contention, peers=peer_results,
                            prices=config.prices)
        row = record.with_scaling(row, writer.rows, scaling_note(cell, config, context.usable_cpus))
        return (row, record.step_rows(context.run_id, cell.cell_id, result.result.train.records),
                record.curve_rows(cell.cell_id, cell.repeat, result.result.train.curve))
    except Exception as exc:  # noqa: BLE001 - whatever the worker sent, the cell is a row and the run goes on
        return record.failed_row(planned, f"the worker's result could not be recorded "
                                          f"({type(exc).__name__}: {str(exc)[:200]})", contention), [], []
