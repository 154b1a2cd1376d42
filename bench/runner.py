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
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import matrix, process, record
from bench.devices import Requested
from bench.protocol import MARK, CellSpec, DataSpec, Event, ProtocolError, WorkerResult
from bench.store import RunWriter
from cifar_model.settings import (BACKEND_INSTALL, DEFAULT_CONNECT_TIMEOUT_S, MAX_SEED,
                                  backend_limitation, parallel_limitation, split_sizes,
                                  steps_per_epoch)

#: Local worker processes a ``--workers`` cell may start on 127.0.0.1 without ``--cluster``.
MAX_LOCAL_WORKERS = 8
#: A multi-worker cell's time limit when ``--cell-timeout`` is not given: its peers can hang.
DEFAULT_MULTI_WORKER_TIMEOUT_S = 3600
#: How long the other local workers may take to finish after the chief has.
PEER_GRACE_S = 60

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Stopped(BaseException):
    """The run was asked to stop by a signal; ``signum`` says which (SIGINT for Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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


@dataclass(frozen=True)
class RunConfig:
    """Everything ``bench run`` was asked to do, validated: the matrix and the run-wide values."""

    plan: matrix.Plan
    epochs: int
    steps: int | None                     # cap on steps per epoch; None: full epochs
    warmup: int
    repeats: int = 1
    data: DataSpec = DataSpec()
    cell_timeout: float | None = None
    seed: int = 0
    unsynced_steps: int = 0               # > 0: also time that many steps with one sync at the end
    eval_images: int | None = None        # None: the whole held-out split; 0: no evaluation
    cluster: tuple[str, ...] = ()         # host:port of every worker (--cluster); () : local workers
    task_index: int = 0                   # this host's place in ``cluster`` (0: the chief)
    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S

    @property
    def train_images(self) -> int:
        if self.data.kind == "synthetic" and self.data.synthetic_images:
            return self.data.synthetic_images
        return split_sizes(self.data.split)[0]

    def problems(self) -> list[str]:
        """What can be known to fail before any cell runs (each a one-line message)."""
        out = []
        workers = self.plan.of("workers")
        if self.cluster and set(workers) - {1, len(self.cluster)}:
            return [f"--workers {max(workers)} does not match the {len(self.cluster)} hosts of "
                    f"--cluster; give --workers {len(self.cluster)} (or leave it out)"]
        if not self.cluster and max(workers) > MAX_LOCAL_WORKERS:
            return [f"--workers {max(workers)}: at most {MAX_LOCAL_WORKERS} local workers; "
                    "give --cluster for more hosts"]
        if self.task_index >= max(1, len(self.cluster)):
            return [f"--task-index {self.task_index} is outside the cluster of {len(self.cluster)} host(s)"]
        most = max(self.plan.of("replicas")) * max(workers)
        batch_sizes = [b * most for b in self.plan.of("batch_size")]   # global batches
        if max(batch_sizes) > self.train_images:
            out.append(f"global batch {max(batch_sizes)} (--batch-sizes is per replica) is larger "
                       f"than the {self.train_images:,} training images; lower it"
                       + (" or raise --synthetic-images" if self.data.kind == "synthetic" else ""))
            return out
        fewest = min(self.epochs * steps_per_epoch(self.train_images, b, self.steps) for b in batch_sizes)
        if self.warmup >= fewest:
            out.append(f"--warmup {self.warmup} leaves no steady steps: a cell runs as few as "
                       f"{fewest} step(s); lower --warmup or raise --steps/--epochs")
        if self.seed + self.repeats - 1 > MAX_SEED:
            out.append(f"--seed {self.seed} with {self.repeats} repeat(s) passes {MAX_SEED}; lower it")
        return out

    def run_wide(self, repeat: int) -> dict:
        """The TrainSettings values every cell of this run shares (repeat r uses seed + r)."""
        return {"epochs": self.epochs, "max_steps_per_epoch": self.steps, "warmup_steps": self.warmup,
                "seed": self.seed + repeat, "unsynced_steps": self.unsynced_steps,
                "eval_images": self.eval_images, "connect_timeout_s": self.connect_timeout_s}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["plan"] = {name: list(self.plan.of(name)) for name in matrix.BY_NAME}
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        """From env.json's ``config`` (a run to resume); ValueError when it does not fit."""
        try:
            plan = matrix.Plan({name: tuple(raw["plan"][name]) for name in matrix.BY_NAME})
            data = DataSpec(**raw["data"])
            fields_ = {k: raw[k] for k in ("epochs", "steps", "warmup", "repeats", "cell_timeout",
                                           "seed", "unsynced_steps", "eval_images")}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the run's recorded settings are incomplete ({exc})") from None
        optional = {k: raw[k] for k in ("task_index", "connect_timeout_s") if k in raw}
        return cls(plan=plan, data=data, cluster=tuple(raw.get("cluster") or ()), **optional, **fields_)


def plan_cells(config: RunConfig, devices: list[Requested]) -> list[matrix.Cell]:
    return matrix.plan(config.plan, devices, config.repeats, config.train_images)


def peak_combinations(cells: list[matrix.Cell]) -> list[tuple[Requested, str, int, str]]:
    """Each (usable device, precision, threads, backend) the cells need a peak for, in plan order."""
    combos = {}
    for cell in cells:
        if cell.device.device is not None and cell.device.device.usable and backend_missing(cell["backend"]) is None:
            key = (cell.device.id, cell["precision"], cell["cpu_threads"], cell["backend"])
            combos.setdefault(key, (cell.device, *key[1:]))
    return list(combos.values())


def backend_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (not installed), or None. Never imports it."""
    if importlib.util.find_spec(backend) is None or importlib.util.find_spec("keras") is None:
        return f"the {backend} backend is not installed ({BACKEND_INSTALL[backend]})"
    return None


def worker_environment(device: Requested, backend: str = "tensorflow", base: dict | None = None,
                       replicas: int = 1) -> dict:
    """A worker's environment: only ``device`` (and the ``replicas`` - 1 GPUs after it)
    visible and the Keras backend chosen, before any framework starts; for a JAX cell of
    ``replicas`` > 1 on the CPU, JAX splits the CPU into that many devices."""
    env = dict(os.environ if base is None else base)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"          # the same numbering as nvidia-smi
    env["CUDA_VISIBLE_DEVICES"] = "-1" if device.id == "cpu" else ",".join(
        str(device.device.index + i) for i in range(replicas))
    env.pop("TF_CONFIG", None)                       # the cluster comes in the cell spec
    env["KERAS_BACKEND"] = backend
    if device.id == "cpu":
        env["JAX_PLATFORMS"] = "cpu"                 # JAX would otherwise look for a GPU
        if backend == "jax" and replicas > 1:        # JAX's CPU devices are fixed when it starts
            flag = f"--xla_force_host_platform_device_count={replicas}"
            env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flag) if f)
    else:
        env.pop("JAX_PLATFORMS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cell_spec(cell: matrix.Cell, config: RunConfig, cluster: tuple[str, ...] = (),
              task_index: int = 0) -> CellSpec:
    """The worker's spec; a multi-worker cell's names every worker and this one's place."""
    return CellSpec(cell_id=cell.cell_id, device_type=cell.device_type,
                    settings=cell.settings(**config.run_wide(cell.repeat),
                                           cluster=cluster if cell["workers"] > 1 else (),
                                           task_index=task_index if cell["workers"] > 1 else 0),
                    data=config.data)


class Reporter:
    """What the user sees while a run goes on: plain log lines (not a terminal, CI logs)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cell_started(self, index: int, total: int, cell: matrix.Cell) -> None:
        self._say(f"[{index + 1}/{total}] {cell.cell_id}: starting")

    def cell_event(self, cell: matrix.Cell, event: Event) -> None:
        if event.kind == "phase":
            self._say(f"    {cell.cell_id}: {event.fields.get('phase')}")
        elif event.kind == "step":
            self._say(f"    {cell.cell_id}: step {event.fields['done']}/{event.fields['total']}")

    def cell_finished(self, index: int, total: int, cell: matrix.Cell, row: dict) -> None:
        self._say(f"[{index + 1}/{total}] {cell.cell_id}: {finished_text(cell, row)}")

    def say(self, text: str) -> None:
        self._say(text)

    def _say(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (BrokenPipeError, OSError):
            pass  # a closed terminal or pipe must not cost the run


def finished_text(cell: matrix.Cell, row: dict) -> str:
    """One line per finished cell, saying what each figure is."""
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    if row.get("images_per_s") is None:
        return f"ok, {row['reason']}"
    return (f"ok, {row['images_per_s']:.0f} images/s (batch {cell['batch_size']} / median step "
            f"{row['step_median_s'] * 1000:.1f} ms, {row['steady_steps']} steady steps, warm-up "
            f"excluded, {cell['backend']}); full training {row['train_s']:.1f} s")


class RichReporter(Reporter):
    """Progress bars on a terminal: cells overall, and the current cell's phase and steps."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=self.stream))
        self.progress.__enter__()
        self.cells = self.progress.add_task("cells", total=None)
        self.steps = self.progress.add_task("steps", total=None, visible=False)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        return False

    def cell_started(self, index, total, cell):
        self.progress.update(self.cells, total=total, completed=index)
        self.progress.reset(self.steps, total=None, visible=True,
                            description=f"{cell.cell_id}: starting the worker")

    def cell_event(self, cell, event):
        if event.kind == "phase":
            self.progress.update(self.steps, description=f"{cell.cell_id}: {event.fields.get('phase')}")
        elif event.kind == "step":
            self.progress.update(self.steps, total=event.fields["total"], completed=event.fields["done"],
                                 description=f"{cell.cell_id}: training")

    def cell_finished(self, index, total, cell, row):
        self.progress.update(self.cells, completed=index + 1)
        self.progress.update(self.steps, visible=False)
        super().cell_finished(index, total, cell, row)

    def _say(self, text):
        try:
            self.progress.console.print(text, markup=False, highlight=False)
        except (BrokenPipeError, OSError):
            pass


def theoretical_peaks(cells: list[matrix.Cell]) -> dict:
    """The theoretical peak of each (device, precision) the cells use, for this process's CPUs;
    for a GPU with fp32 cells also its TF32 figure, as (device, "tf32"): whether an fp32 cell
    runs in TF32 is the backend's setting, which only its worker can read
    (:func:`theoretical_for` picks when the row is made)."""
    from bench import hardware

    wanted = {(c.device.id, c["precision"]): c.device.device for c in cells
              if c.device.device is not None and c.device.device.usable}
    wanted.update({(device_id, "tf32"): device for (device_id, precision), device
                   in list(wanted.items()) if precision == "fp32" and device.type == "GPU"})
    return {(device_id, precision): hardware.peak(device, precision)
            for (device_id, precision), device in wanted.items()}


def theoretical_for(theoretical: dict, cell: matrix.Cell, train: dict):
    """The theoretical peak (:class:`bench.hardware.Peak`) a finished cell is measured against:
    its precision's, but for an fp32 cell whose worker reports its convolutions ran in TF32
    (``train["math"]``) the GPU's TF32 figure, saying why; never the fp32 one, which TF32
    work can exceed several times over. None: not known."""
    from bench import hardware

    if cell["precision"] != "fp32" or train.get("math") != "tf32":
        return theoretical.get((cell.device.id, cell["precision"]))
    tf32 = theoretical.get((cell.device.id, "tf32"))
    if tf32 is None:
        return None
    return hardware.Peak(tf32.tflops, "tf32 (fp32 cells run their convolutions in TF32 on this GPU: "
                                      f"{train.get('math_note') or 'the backend default'}); {tf32.basis}")


def contention_hooks(usable_cpus: float | None, interval_s: float = 0.5) -> dict:
    """``execute``'s hooks that sample what else used the machine while each worker ran."""
    from bench.contention import ContentionSampler

    def watch(pid: int, cell: matrix.Cell, cell_pids: tuple[int, ...] = ()):
        gpu = cell.device.device.index if cell.device_type == "GPU" and cell.device.device else None
        return ContentionSampler(pid, usable_cpus=usable_cpus, gpu_index=gpu, interval_s=interval_s,
                                 cell_pids=cell_pids).start()

    return {"watch": watch, "contention_columns": contention_columns}


def contention_columns(contention) -> dict:
    """A :class:`bench.contention.Contention` as runs.csv values."""
    return contention.columns()


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
    if cell.device.device is None or not cell.device.device.usable:
        return cell.device.reason
    if config is not None and config.task_index > 0 and cell["workers"] == 1:
        return "single-worker cells run on the chief (--task-index 0) only"
    available = None
    if gpu_count is not None and cell.device_type == "GPU":
        available = gpu_count - cell.device.device.index
    return backend_missing(cell["backend"]) or backend_limitation(
        cell["backend"], cell["jit_compile"], cell["cpu_threads"], cell["replicas"], cell["workers"],
        cell["steps_per_execution"]
    ) or parallel_limitation(cell.device_type, cell["replicas"], cell["workers"], cell["data_placement"],
                             cell["steps_per_execution"],
                             config.unsynced_steps if config is not None else 0, available)


def scaling_note(cell: matrix.Cell, config: RunConfig, usable_cpus: float | None) -> str | None:
    """What a cell's speed-up can show: nothing about scaling when its replicas or workers
    share this machine's CPU cores (logical CPU devices, local or loopback workers)."""
    cores = f"{usable_cpus:g}" if usable_cpus else "the"
    if cell.device_type == "CPU" and cell["replicas"] > 1:
        return (f"{cell['replicas']} logical devices sharing {cores} CPU cores: a functional "
                "check, no speed-up expected (no hardware is added; a speed-up here only means "
                "one device left some cores idle)")
    hosts = {address.rpartition(":")[0] for address in config.cluster}
    if cell["workers"] > 1 and (not config.cluster or hosts <= {"127.0.0.1", "localhost", "::1", "[::1]"}):
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
            peer = subprocess.Popen(list(worker_command), stdin=subprocess.PIPE, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, text=True,
                                    start_new_session=True)
        peers.append((peer, log_path))
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


def execute(config: RunConfig, cells: list[matrix.Cell], writer: RunWriter, context: dict,
            reporter: Reporter, log_dir: Path, worker_command=process.WORKER_COMMAND,
            peaks: dict | None = None, watch: Callable[[int, matrix.Cell], object] | None = None,
            contention_columns: Callable[[object], dict] = lambda watched: {},
            theoretical: dict | None = None, gpu_count: int | None = None,
            usable_cpus: float | None = None) -> Outcome:
    """Run every cell; each outcome becomes a row on disk before the next cell starts.

    ``context`` holds the run-wide row values (run id, system, git commit, machine label);
    ``peaks`` the measured peak of each (device, precision, threads, backend), for the
    efficiency columns; ``theoretical`` the theoretical peak (:class:`bench.hardware.Peak`) of
    each (device, precision), as :func:`theoretical_peaks` gives them (each row takes its own
    with :func:`theoretical_for`); ``watch(pid, cell)`` starts a contention sampler for a
    worker and ``contention_columns`` turns what it saw into row values. A :class:`Stopped` ends the
    loop after the running worker is killed; every finished row is already on disk.

    A multi-worker cell (``workers`` > 1) runs this host's worker of ``config.cluster``, or,
    without a cluster, all its workers here on free 127.0.0.1 ports: worker 0 (the chief)
    is followed as any cell's worker and writes the row; the others' logs (each ending
    with its full result, step times included) stay beside the chief's.
    """
    peaks = peaks or {}
    outcome = Outcome(rows=writer.rows)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        outcome.write_error = f"cannot create {log_dir}: {exc.strerror or exc}"
        return outcome
    run_wide = {"data": config.data.kind, "split": config.data.split, "epochs": config.epochs,
                "warmup_steps": config.warmup}
    for index, cell in enumerate(cells):
        reporter.cell_started(index, len(cells), cell)
        planned = record.planned(cell, run_wide, context)
        steps: list[dict] = []
        try:
            reason = skip_reason(cell, config, gpu_count)
            if reason:
                row = record.skipped_row(planned, reason)
            else:
                env = worker_environment(cell.device, cell["backend"], replicas=cell["replicas"])
                cluster, task, peers, timeout, result = (), 0, [], config.cell_timeout, None
                if cell["workers"] > 1:
                    cluster = config.cluster or free_loopback_ports(cell["workers"])
                    task = config.task_index if config.cluster else 0
                    timeout = timeout or DEFAULT_MULTI_WORKER_TIMEOUT_S
                try:
                    if cell["workers"] > 1 and not config.cluster:
                        peers = start_peers(cell, config, cluster, log_dir, env, worker_command)
                    result = process.run_worker(
                        cell_spec(cell, config, cluster, task).to_json(), env,
                        log_dir / f"{cell.cell_id}.log", timeout,
                        on_event=lambda event, cell=cell: reporter.cell_event(cell, event),
                        command=worker_command,
                        watch=_watcher(watch, cell, peers))
                finally:
                    chief_done = result is not None and result.result is not None
                    peer_results = finish_peers(peers, PEER_GRACE_S if chief_done else 0)
                contention = contention_columns(result.watched) if result.watched is not None else None
                if result.result is None:
                    row = record.failed_row(planned, result.reason, contention)
                else:
                    peak = peaks.get((cell.device.id, cell["precision"], cell["cpu_threads"], cell["backend"]))
                    row = record.ok_row(planned, result.result, peak=peak, contention=contention,
                                        theoretical=theoretical_for(theoretical or {}, cell,
                                                                    result.result.train),
                                        peers=peer_results)
                    row = record.with_scaling(row, writer.rows, scaling_note(cell, config, usable_cpus))
                    steps = record.step_rows(context["run_id"], cell.cell_id, result.result.train["records"])
                if result.log_error:
                    reporter.say(f"warning: {result.log_error}")
        except Stopped as stop:
            outcome.stopped_by = stop.signum
            return outcome
        try:
            writer.add(row, steps)
        except OSError as exc:
            outcome.write_error = (f"could not write the results of {cell.cell_id} to {writer.directory}: "
                                   f"{exc.strerror or exc}; the run stopped there (earlier cells are on disk)")
            reporter.cell_finished(index, len(cells), cell, record.as_dict(row))
            return outcome
        reporter.cell_finished(index, len(cells), cell, writer.rows[-1])
    return outcome
