"""One matrix on every selected machine of a Ray cluster (``bench run --ray ADDRESS``).

Each node of the cluster is one machine of the table. On each, a Ray task first describes the
machine (devices, fingerprint, measured and theoretical peaks: facts only that machine can
know), then each cell is a Ray task pinned to that node (``NodeAffinitySchedulingStrategy``,
``soft=False``) that runs the ordinary cell loop (:func:`bench.runner.execute`) for that one
cell: a fresh ``bench.worker`` process, its contention sampled there. The driver keeps one
cell at a time per machine (it submits a machine's next cell only when its last has ended,
and each task asks for all the node's CPUs and GPUs, so no other Ray work shares the machine
while it is timed); different machines run in parallel. Rows come back as each cell ends and
are written on the driver as one run directory per machine -- what ``bench run
--machine-label`` would have written there -- plus ``summary.md``, the combined table.

A machine that drops out turns its unfinished cells into failed rows ("node <id> (<label>)
lost: ..."), every other row kept; ``--resume`` later runs only what is missing, on the
machines that are back. A stop signal on the driver cancels the running tasks
(``ray.cancel(force=True)``); the worker process on each node exits with its parent
(:func:`bench.worker.watch_parent`).

Ray is imported only here, and only once a fleet is asked for: without ``--ray`` nothing of
this module touches Ray. The harness opens no port; the cluster's own ports are the user's
to protect (docs/guarantees.md, "Ray fleets").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import devices as devices_module
from bench import environment, matrix, process, runner, store, yardsticks
from bench.config import RunConfig
from bench.files import read_json_object, write_atomically
from bench.progress import Reporter, finished_text

INSTALL_HINT = "install it with pip install 'cifar-bench[ray]'"
#: A node label naming the machine in the table (``ray start --labels bench-machine=NAME``);
#: without it the node's hostname is used.
MACHINE_LABEL_KEY = "bench-machine"
FLEET_JSON = "fleet.json"
SUMMARY_MD = "summary.md"
CONNECT_TIMEOUT_S = 10
#: How long a failed task's node may take to show as dead before the failure counts as the
#: cell's own (Ray's health checks mark a silent node dead after about 15-30 s).
LOSS_CONFIRM_S = 45
#: How long cancelled tasks get to end before the driver returns.
CANCEL_WAIT_S = 30
#: Most of a cell log brought back from a node (its end is kept: that is where errors are).
MAX_LOG_BYTES = 4 * 2**20
LOST_REASON = re.compile(r"^node \S+ \(.*\) lost: ")


class FleetError(ValueError):
    """Bad input for a fleet run, in one line: the CLI prints it and exits with status 2."""


# --------------------------------------------------------------------------- what is asked

@dataclass(frozen=True)
class NodeSelector:
    """Which nodes are machines of the run: every node, or those carrying all these labels."""

    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, node_labels: dict) -> bool:
        return all(node_labels.get(key) == value for key, value in self.labels)

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels) or "all"


def parse_node_selector(text: str) -> NodeSelector:
    """``all`` or ``LABEL=VALUE,...`` (a node must carry every pair); ValueError says what is wrong."""
    text = text.strip()
    if text == "all":
        return NodeSelector()
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise FleetError(f"--ray-nodes: '{part}' is not LABEL=VALUE; give all or LABEL=VALUE,... "
                             f"(e.g. {MACHINE_LABEL_KEY}=gpu-box)")
        pairs.append((key.strip(), value.strip()))
    return NodeSelector(tuple(pairs))


@dataclass(frozen=True)
class FleetRequest:
    """A fleet run as the command asks for it (``out`` is the fleet directory to create, or,
    with ``resume``, the one to finish: its fleet.json then supplies the config and selector,
    and ``config``/``selector`` are ignored). The config says the devices (``--devices``, on
    each machine), the label put before each machine's name (``--machine-label``) and
    whether peaks are measured (``--no-peak``)."""

    address: str                           # host:port of the cluster's head (--ray)
    config: RunConfig | None
    out: Path | None                       # None: a new directory under <results>/runs/
    results_root: Path
    command: str                           # the command line, recorded in each run's env.json
    selector: NodeSelector = NodeSelector()
    resume: bool = False
    rerun_failed: bool = False


@dataclass(frozen=True)
class Machine:
    """One node of the cluster, as a machine of the table."""

    node_id: str
    label: str                             # the machine label of its rows
    address: str
    cpus: float
    gpus: float

    @property
    def directory_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.label).strip("-.") or self.node_id[:12]


@dataclass
class FleetOutcome:
    """How a fleet run ended."""

    out: Path
    run_dirs: dict[str, Path] = field(default_factory=dict)   # machine label -> its run directory
    failed: list[str] = field(default_factory=list)           # "<machine>: <cell id>: <reason>"
    lost: list[str] = field(default_factory=list)             # machines lost during the run
    stopped_by: int | None = None                             # the signal that stopped it
    summary: str = ""                                         # the combined table (summary.md)
    write_error: str = ""
    planned: int = 0                                          # cells of every machine
    finished: int = 0                                         # rows on disk for them


# --------------------------------------------------------------------------- connecting

def _ray():
    try:
        import ray
    except ImportError:
        raise FleetError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Join the Ray cluster at ``address`` (host:port, or ``auto``: the cluster this host's
    ``ray start`` joined) as a driver; FleetError when it cannot.

    A host:port is tried first with a plain TCP connect, so a wrong address fails in seconds
    with one line instead of Ray's minutes of retries.
    """
    ray = _ray()
    if address.strip() == "auto":
        if ray.is_initialized():
            return
        try:
            ray.init(address="auto", log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FleetError(f"--ray auto: no Ray cluster started on this host ({str(exc).splitlines()[0]}); "
                             "run ray start (docs/fleet.md) or give the head's HOST:PORT") from None
        return
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FleetError(f"--ray {address}: give the head node's HOST:PORT (ray start --head prints it), or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise FleetError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                         "start one (docs/fleet.md) or fix the address") from None
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == address.strip():
            return                         # already joined (the command connects before it resolves data)
        ray.shutdown()
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FleetError(f"--ray {address}: could not join the Ray cluster ({str(exc).splitlines()[0]}); "
                         "is it a Ray head of the same Ray and Python version?") from None


def select_machines(selector: NodeSelector, label_prefix: str = "") -> list[Machine]:
    """The live nodes ``selector`` picks, as machines; FleetError when it picks none."""
    ray = _ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    chosen = [n for n in nodes if selector.matches(n.get("Labels") or {})]
    if not chosen:
        seen = sorted({f"{k}={v}" for n in nodes for k, v in (n.get("Labels") or {}).items()
                       if not k.startswith("ray.io/")})
        raise FleetError(f"--ray-nodes {selector}: matches none of the {len(nodes)} live node(s) "
                         f"(their labels: {', '.join(seen) or 'none'}); give all or a label they carry")
    names = [(n.get("Labels") or {}).get(MACHINE_LABEL_KEY) or n.get("NodeManagerHostname") or n["NodeID"][:12]
             for n in chosen]
    machines = []
    for node, name in zip(chosen, names):
        if names.count(name) > 1:                      # two nodes on one host, or the same label
            name = f"{name}-{node['NodeID'][:6]}"
        resources = node.get("Resources") or {}
        machines.append(Machine(node["NodeID"], _clean_label(f"{label_prefix}{name}"),
                                node.get("NodeManagerAddress", ""), resources.get("CPU", 0), resources.get("GPU", 0)))
    return machines


def _clean_label(text: str) -> str:
    """A node's label or hostname is the cluster's text, not ours: keep it to what a
    --machine-label may be (1-60 printable characters without '|'), so tables stay intact."""
    return "".join(c for c in str(text) if c.isprintable() and c != "|").strip()[:60] or "node"


def _alive(ray, node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def _on(machine: Machine) -> dict:
    """Ray options pinning a task to ``machine`` and holding all of it while the task runs."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(machine.node_id, soft=False),
            "num_cpus": machine.cpus, "num_gpus": machine.gpus, "max_retries": 0}


# --------------------------------------------------------------------------- on each node

@dataclass(frozen=True)
class MachineFacts:
    """What only the machine itself can say: taken by a task on it, never by the driver."""

    env: dict                              # environment.fingerprint
    requested: list[devices_module.Requested]   # --devices, as resolved there
    peaks: dict[tuple, yardsticks.MeasuredPeak]           # measured there (none with --no-peak)
    theoretical: dict[tuple, yardsticks.TheoreticalPeak]  # of its cells, for its CPUs and GPUs
    gpu_count: int
    said: list[str]                        # what measuring the peaks reported


def describe_machine(config: RunConfig) -> MachineFacts:
    """Runs on the node: its devices, fingerprint and peaks (measured in a fresh worker there,
    with an empty peak cache: a node keeps no results of its own)."""
    inventory = devices_module.detect()
    requested = devices_module.resolve(config.device_ids, inventory)
    env = environment.fingerprint(inventory)
    cells = runner.plan_cells(config, requested)
    said: list[str] = []
    peaks = {}
    if not config.no_peak:
        with tempfile.TemporaryDirectory(prefix="bench-peak-") as tmp:
            peaks = yardsticks.measured_peaks(yardsticks.peak_combinations(cells), env, Path(tmp),
                                              Path(tmp) / "logs", refresh=True, say=said.append)
    return MachineFacts(env, requested, peaks, yardsticks.theoretical_peaks(cells), len(inventory.gpus), said)


@dataclass(frozen=True)
class CellDone:
    """One cell's outcome as its node sends it back."""

    rows: list[dict]
    steps: list[dict]
    logs: dict[str, str]                   # log file name -> its text (the last MAX_LOG_BYTES)
    said: list[str]                        # the node's warnings (a log it could not write ...)
    started: float                         # epoch seconds on the node, around runner.execute
    ended: float


def run_cell(context: runner.RunContext, cell: matrix.Cell, earlier_rows: list[dict]) -> CellDone:
    """Runs on the node: the ordinary cell loop for one cell, in a scratch directory there.

    ``context`` is the machine's, from the driver; the worker command, the log directory and
    the contention sampler are this node's own. ``earlier_rows`` are the machine's rows so far
    (a speed-up over 1 replica needs them).
    """
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        scratch = Path(tmp)
        writer = store.RunWriter(scratch, context.run_id, earlier_rows)
        said = io.StringIO()
        here = dataclasses.replace(context, log_dir=scratch / "logs", worker_command=process.WORKER_COMMAND,
                                   watch=runner.contention_sampler(context.usable_cpus))
        started = time.time()
        outcome = runner.execute([cell], writer, here, Reporter(said))
        ended = time.time()
        notes = [line for line in said.getvalue().splitlines() if line.startswith("warning:")]
        if outcome.write_error:
            notes.append(f"warning: {outcome.write_error}")
        logs = {path.name: _tail(path) for path in sorted((scratch / "logs").glob("*.log"))}
        return CellDone(writer.rows[len(earlier_rows):], writer.steps, logs, notes, started, ended)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - MAX_LOG_BYTES))
        return f.read().decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- on the driver

@dataclass
class _MachineRun:
    """The driver's side of one machine: its run directory and the cells still to run."""

    machine: Machine
    facts: MachineFacts
    writer: store.RunWriter
    env: dict
    todo: deque
    planned: int = 0                       # its cells, kept ones included
    lost: str = ""

    def context(self, config: RunConfig) -> runner.RunContext:
        """What its cells share: its yardsticks, and the run-wide values of its rows (each row
        keeps the git commit of the node that ran it). The node fills in its own log directory,
        worker command and contention sampler (:func:`run_cell`)."""
        return runner.RunContext(
            config=config, run_id=self.writer.run_id, log_dir=Path("logs"), system=self.env["system"],
            git_commit=(self.facts.env.get("git") or {}).get("commit"), machine_label=self.machine.label,
            measured_peaks=self.facts.peaks, theoretical=self.facts.theoretical, gpu_count=self.facts.gpu_count,
            usable_cpus=(self.facts.env.get("cpu") or {}).get("usable_cpus"))


def lost_reason(machine: Machine, why: str) -> str:
    return f"node {machine.node_id[:12]} ({machine.label}) lost: {why}"


def run_fleet(request: FleetRequest, say: Callable[[str], None]) -> FleetOutcome:
    """Run the request's matrix on every selected machine; see the module's docstring.

    Raises FleetError (exit status 2) for bad input found before any cell runs; nothing is
    written before the cluster is reached and the selector has picked its machines.
    """
    ray = _ray()
    fleet = _read_fleet(request)
    connect(request.address)
    machines = select_machines(fleet["selector"], fleet["config"].machine_label or "")
    _claim(fleet, request)
    outcome = FleetOutcome(out=fleet["out"])
    runs: list[_MachineRun] = []
    running: dict = {}          # the task of each machine's running cell
    with _noting_stops() as stop:
        runs = _describe(ray, machines, fleet, request, stop, outcome, say)
        _save_fleet(fleet, runs)
        for run in runs:
            _submit(ray, run, fleet["config"], running, say)
        while running and stop.signum is None:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                run, cell, submitted = running.pop(ref)
                _collect(ray, ref, run, cell, submitted, fleet["config"], fleet["timeline"], outcome, say)
                _save_fleet(fleet, runs)
                _submit(ray, run, fleet["config"], running, say)
        if stop.signum is not None:
            outcome.stopped_by = stop.signum
            _cancel(ray, list(running), say)
        _finish(fleet, runs, outcome, say)
    if outcome.stopped_by is not None:
        say(f"finish it with: python -m bench run --ray {request.address} --resume {fleet['out']}")
    return outcome


class _StopSignal:
    """The first stop signal the driver got (None: none). Noted, never raised: an exception
    raised inside Ray's blocking calls comes out as a SystemError, and the loop polls anyway."""

    def __init__(self):
        self.signum: int | None = None

    def handler(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def _noting_stops():
    """SIGINT, SIGTERM and SIGHUP (runner.STOP_SIGNALS) noted while the fleet runs."""
    stop = _StopSignal()
    previous = {s: signal.signal(s, stop.handler) for s in runner.STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _read_fleet(request: FleetRequest) -> dict:
    """What the fleet runs: the request's, or (resuming) what the fleet directory recorded."""
    if not request.resume:
        if request.config is None:
            raise FleetError("a new fleet run needs its config")
        return {"out": request.out, "config": request.config, "selector": request.selector, "machines": {},
                "timeline": [], "command": request.command}
    out = Path(request.out) if request.out is not None else None
    if out is None or not (out / FLEET_JSON).is_file():
        raise FleetError(f"--resume {out}: not a fleet directory (no {FLEET_JSON}); give the directory "
                         "a bench run --ray wrote")
    try:
        raw = read_json_object(out / FLEET_JSON)
        machines = dict(raw["machines"])
        for label, known in machines.items():
            name = known["directory"]
            if name is not None and (not isinstance(name, str) or Path(name).name != name or name.startswith(".")):
                raise ValueError(f"machine {label!r}: directory {name!r} is not a name inside the fleet directory")
        return {"out": out, "config": RunConfig.from_dict(raw["config"]),
                "selector": parse_node_selector(raw["selector"]), "machines": machines,
                "timeline": list(raw.get("timeline", [])), "command": str(raw.get("command", ""))}
    except (KeyError, TypeError, ValueError, OSError, store.ResultsError) as exc:
        raise FleetError(f"--resume {out}: {FLEET_JSON} cannot be used ({exc}); start a new run") from None


def _claim(fleet: dict, request: FleetRequest) -> None:
    """Create (or, resuming, reopen) the fleet directory and hold its lock until the run ends."""
    if not request.resume:
        try:
            fleet["out"] = store.claim_run_dir(fleet["out"], request.results_root)
        except OSError as exc:
            raise FleetError(f"{fleet['out'] or store.runs_dir(request.results_root)}: cannot create the fleet "
                             f"directory ({exc.strerror or exc}); choose a new, writable one") from None
    try:
        fleet["lock"] = store.lock_run_dir(fleet["out"])
    except store.ResultsError as exc:
        raise FleetError(str(exc)) from None


def _save_fleet(fleet: dict, runs: list[_MachineRun]) -> None:
    """fleet.json: what the fleet runs (for --resume) and when each cell ran where."""
    for run in runs:
        fleet["machines"][run.machine.label] = {"directory": run.writer.directory.name,
                                                "node_id": run.machine.node_id, "address": run.machine.address}
    write_atomically(fleet["out"] / FLEET_JSON, json.dumps({
        "command": fleet["command"], "config": fleet["config"].to_dict(), "selector": str(fleet["selector"]),
        "machines": fleet["machines"], "timeline": fleet["timeline"]}, indent=2) + "\n")


def _describe(ray, machines: list[Machine], fleet: dict, request: FleetRequest, stop: _StopSignal,
              outcome: FleetOutcome, say) -> list[_MachineRun]:
    """Describe every machine on itself (in parallel) and open its run directory.

    Resuming, only the fleet's own machines take part: a node new to the cluster is not one.
    """
    if request.resume:
        for label in sorted(set(fleet["machines"]) - {m.label for m in machines}):
            say(f"{label}: not in the cluster now; its missing cells stay missing")
        for machine in [m for m in machines if m.label not in fleet["machines"]]:
            say(f"{machine.label}: not a machine of this fleet; not used")
        machines = [m for m in machines if m.label in fleet["machines"]]
    remote = ray.remote(describe_machine)
    pending = {remote.options(**_on(m)).remote(fleet["config"]): m for m in machines}
    described: dict[str, _MachineRun] = {}
    while pending and stop.signum is None:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            machine = pending.pop(ref)
            try:
                facts = ray.get(ref)
            except ray.exceptions.RayError as exc:   # lost before it was described: all its cells missing
                outcome.lost.append(machine.label)
                fleet["machines"].setdefault(machine.label, {"directory": None, "node_id": machine.node_id,
                                                             "address": machine.address})
                say(f"{lost_reason(machine, _one_line(exc))}; it has no run directory yet")
                continue
            for line in facts.said:
                say(f"{machine.label}: {line}")
            run = _open_machine(machine, facts, request, fleet, say)
            if run is not None:
                described[machine.label] = run
                outcome.run_dirs[machine.label] = run.writer.directory
    if pending:
        _cancel(ray, list(pending), say)
    return [described[m.label] for m in machines if m.label in described]


def _open_machine(machine: Machine, facts: MachineFacts, request: FleetRequest, fleet: dict,
                  say) -> _MachineRun | None:
    """The machine's run directory: new, or (resuming) reopened with only its missing cells to run."""
    from bench import regression

    config = fleet["config"]
    planned = runner.plan_cells(config, facts.requested)
    known = fleet["machines"].get(machine.label) or {}
    if request.resume and known.get("directory"):
        directory = fleet["out"] / known["directory"]
        try:
            previous = store.read_run(directory, started=True)
        except store.ResultsError as exc:
            say(f"{machine.label}: {exc}; not resumed")
            return None
        differences = regression.environment_differences(previous.env, facts.env)
        if environment.machine_id(previous.env) != environment.machine_id(facts.env) or differences:
            say(f"{machine.label}: not the machine or software its run started on "
                f"({'; '.join(differences) or 'another machine'}); not resumed")
            return None
        rows = store.records(previous.runs)
        done = {row["cell_id"] for row in rows if row["status"] in ("ok", "skipped")
                or (row["status"] == "failed" and not request.rerun_failed
                    and not LOST_REASON.match(str(row["reason"] or "")))}
        writer = store.RunWriter(directory, previous.run_id, rows, store.records(previous.steps))
        todo = [c for c in planned if c.cell_id not in done]
        writer.replace_cells({c.cell_id for c in todo})
        if not todo:
            say(f"{machine.label}: {directory}: nothing to run, all {len(planned)} cell(s) are done")
            return _MachineRun(machine, facts, writer, previous.env, deque(), len(planned))
        env = {**previous.env, "resumed": [*previous.env.get("resumed", []), {
            "command": request.command, "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": facts.env.get("git"), "cells": len(todo)}]}
        say(f"{machine.label}: resuming {directory}: {len(planned) - len(todo)} of {len(planned)} cell(s) kept, "
            f"{len(todo)} to run")
    else:
        directory = fleet["out"] / machine.directory_name
        directory.mkdir()
        writer = store.RunWriter(directory, f"{fleet['out'].name}-{machine.directory_name}")
        env = {**facts.env, "command": fleet["command"], "config": config.to_dict(),
               "devices_requested": config.device_ids, "machine_label": machine.label}
        todo = planned
        say(f"{machine.label}: {len(todo)} cell(s) -> {directory}")
    writer.write_env(env)
    return _MachineRun(machine, facts, writer, env, deque(todo), len(planned))


def _submit(ray, run: _MachineRun, config, running: dict, say) -> None:
    """Start the machine's next cell, if it has one and is not lost (one at a time per machine)."""
    if run.lost or not run.todo:
        return
    cell = run.todo.popleft()
    say(f"{run.machine.label}: {cell.cell_id}: starting")
    ref = ray.remote(run_cell).options(**_on(run.machine)).remote(run.context(config), cell, run.writer.rows)
    running[ref] = (run, cell, time.time())


def _collect(ray, ref, run: _MachineRun, cell: matrix.Cell, submitted: float, config: RunConfig,
             timeline: list, outcome: FleetOutcome, say) -> None:
    """Write a finished cell's rows; a failed task becomes a failed row, a lost node fails the rest."""
    from bench import record

    try:
        done: CellDone = ray.get(ref)
    except ray.exceptions.RayError as exc:
        why = _one_line(exc)
        lost = not isinstance(exc, ray.exceptions.RayTaskError) and _confirmed_dead(ray, run.machine.node_id)
        if lost:
            run.lost = lost_reason(run.machine, why)
            outcome.lost.append(run.machine.label)
            say(f"{run.machine.label}: {run.lost}")
            cells = [cell, *run.todo]
            run.todo.clear()
        else:
            cells = [cell]
        for failed in cells:
            planned = run.context(config).planned(failed)
            _add(run, record.failed_row(planned, run.lost or f"the Ray task running the cell failed: {why}"),
                 [], outcome)
        return
    for line in done.said:
        say(f"{run.machine.label}: {line}")
    logs = run.writer.directory / "logs"
    try:
        logs.mkdir(exist_ok=True)
        for name, text in done.logs.items():
            write_atomically(logs / Path(name).name, text)
    except OSError as exc:
        say(f"{run.machine.label}: warning: logs of {cell.cell_id} not written ({exc.strerror or exc})")
    for row in done.rows:
        _add(run, row, [s for s in done.steps if s["cell_id"] == row["cell_id"]], outcome)
        say(f"{run.machine.label}: {cell.cell_id}: {finished_text(cell, row)}")
    timeline.append({"machine": run.machine.label, "cell_id": cell.cell_id, "started": done.started,
                     "ended": done.ended, "submitted": submitted, "returned": time.time()})


def _add(run: _MachineRun, row, steps: list[dict], outcome: FleetOutcome) -> None:
    try:
        run.writer.add(row, steps)
    except OSError as exc:
        outcome.write_error = outcome.write_error or f"{run.writer.directory}: {exc.strerror or exc}"


def _confirmed_dead(ray, node_id: str) -> bool:
    """Whether the node is (or within LOSS_CONFIRM_S becomes) dead in the cluster's view."""
    deadline = time.monotonic() + LOSS_CONFIRM_S
    while _alive(ray, node_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _cancel(ray, refs: list, say) -> None:
    """Cancel running cells: Ray kills their processes, and each worker exits with its parent."""
    if not refs:
        return
    say(f"stopping: cancelling {len(refs)} running cell(s)")
    for ref in refs:
        ray.cancel(ref, force=True)
    ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _finish(fleet: dict, runs: list[_MachineRun], outcome: FleetOutcome, say) -> None:
    """Each machine's summary and plots, the combined table, fleet.json; then release the lock.

    Made from the rows on the driver: what reached it is kept whatever stopped the run.
    """
    from bench import plots, session, tables

    outcome.planned = sum(run.planned for run in runs)
    outcome.finished = sum(len(run.writer.rows) for run in runs)
    try:
        for run in runs:
            run.writer.flush()
            rows = run.writer.frame()
            if len(rows):
                write_atomically(run.writer.directory / store.SUMMARY_MD,
                                 tables.markdown([tables.in_memory(rows, run.env, run.writer.directory)]))
                plots.write_plots(rows, session.steps_frame(run.writer.steps), run.writer.directory)
            outcome.failed += [f"{run.machine.label}: {r['cell_id']}: {r['reason']}"
                               for r in run.writer.rows if r["status"] == "failed"]
        finished = [store.read_run(fleet["out"] / m["directory"]) for m in fleet["machines"].values()
                    if m["directory"] and (fleet["out"] / m["directory"] / store.RUNS_CSV).is_file()]
        if finished:
            outcome.summary = tables.markdown(finished)
            write_atomically(fleet["out"] / SUMMARY_MD, outcome.summary)
        _save_fleet(fleet, runs)
    except (OSError, store.ResultsError) as exc:
        outcome.write_error = outcome.write_error or f"{fleet['out']}: {getattr(exc, 'strerror', None) or exc}"
    finally:
        fleet["lock"].release()
    if outcome.stopped_by is None:
        say(f"results: {fleet['out']}")
