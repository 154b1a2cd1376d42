"""``bench run --ray``: one matrix on every machine of a Ray cluster (bench/fleet.py).

The cluster tests start a small local Ray cluster whose nodes pose as machines (node labels
``bench-machine=alpha`` ...), bound to 127.0.0.1 only, and run the fake worker
(tests/helpers/fake_worker.py) so a cell takes well under a second, except the fake's slow
cell (batch 19), which trains for FAKE_SLOW_SECONDS.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from bench import fleet, matrix, store
from bench.config import RunConfig
from bench.files import read_json_object
from bench.protocol import DataSpec

REPO = Path(__file__).resolve().parents[1]
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py")]
SLOW_BATCH = 19
SLOW_SECONDS = 20
#: Ray resolves 127.0.0.1 to the host's outward address unless told it runs no real cluster:
#: with this, every node, driver and worker stays on loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# read when Ray is imported, so set before any test imports it; it changes nothing but Ray
os.environ.update(LOOPBACK_ONLY)
SMALL_NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20}


def config(*batch_sizes: int, no_peak: bool = True, machine_label: str | None = None) -> RunConfig:
    return RunConfig(plan=matrix.Plan({"batch_size": batch_sizes, "precision": ("fp32",)}), epochs=1,
                     max_steps_per_epoch=4, warmup_steps=1, data="synthetic", devices=("cpu",),
                     source=DataSpec("synthetic", synthetic_images=2048), synthetic_images=2048, cell_timeout=120,
                     no_peak=no_peak, machine_label=machine_label)


def request(tmp_path: Path, address: str, cfg: RunConfig | None, **kwargs) -> fleet.FleetRequest:
    return fleet.FleetRequest(address=address, config=cfg, out=kwargs.pop("out", tmp_path / "fleet"),
                              results_root=tmp_path / "results", command="python -m bench run --ray test", **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- no cluster needed

def test_node_selector_reads_all_and_label_pairs():
    assert fleet.parse_node_selector("all") == fleet.NodeSelector()
    selector = fleet.parse_node_selector("bench-machine=gpu-box, zone=lab")
    assert selector.labels == (("bench-machine", "gpu-box"), ("zone", "lab"))
    assert selector.matches({"bench-machine": "gpu-box", "zone": "lab", "other": "x"})
    assert not selector.matches({"bench-machine": "gpu-box"})
    assert str(selector) == "bench-machine=gpu-box,zone=lab"


@pytest.mark.parametrize("text", ["gpu-box", "zone=", "=lab", "a=b,,c=d"])
def test_a_bad_node_selector_is_one_line_naming_the_fix(text):
    with pytest.raises(fleet.FleetError) as caught:
        fleet.parse_node_selector(text)
    assert "\n" not in str(caught.value) and "LABEL=VALUE" in str(caught.value)
    assert isinstance(caught.value, ValueError)       # the CLI's usage errors: exit status 2


def test_without_ray_installed_a_fleet_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray now raises ImportError
    with pytest.raises(fleet.FleetError) as caught:
        fleet.connect("127.0.0.1:6379")
    assert str(caught.value) == ("--ray needs Ray, which is not installed; "
                                 "install it with pip install 'cifar-bench[ray]'")


def test_an_unreachable_address_is_one_line_not_minutes_of_retries():
    pytest.importorskip("ray")
    with pytest.raises(fleet.FleetError) as caught:
        fleet.connect(f"127.0.0.1:{free_port()}")
    assert "no Ray cluster answers there" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(fleet.FleetError, match="HOST:PORT"):
        fleet.connect("just-a-host")


def test_auto_joins_the_cluster_this_host_started_or_says_there_is_none(monkeypatch):
    """``--ray auto`` is Ray's own ``address="auto"`` (the cluster ``ray start`` left on this
    host); without one it is one line naming both ways out."""
    from types import SimpleNamespace

    joined = []

    def init(address, **_):
        joined.append(address)
        if len(joined) == 1:
            raise ConnectionError("Could not find any running Ray instance.\nPlease start one")

    fake = SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(fleet.FleetError) as caught:
        fleet.connect("auto")
    assert str(caught.value) == ("--ray auto: no Ray cluster started on this host (Could not find any running "
                                 "Ray instance.); run ray start (docs/fleet.md) or give the head's HOST:PORT")
    fleet.connect("auto")
    assert joined == ["auto", "auto"]


def test_an_unreachable_cluster_leaves_no_fleet_directory(tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(fleet.FleetError, match="no Ray cluster answers there"):
        fleet.run_fleet(request(tmp_path, f"127.0.0.1:{free_port()}", config(32)), print)
    assert not (tmp_path / "fleet").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("directory", ["../elsewhere", "/etc", ".hidden", 7])
def test_resume_refuses_a_fleet_json_pointing_outside_its_directory(tmp_path, directory):
    pytest.importorskip("ray")
    out = tmp_path / "fleet"
    out.mkdir()
    (out / fleet.FLEET_JSON).write_text(json.dumps({
        "config": config(32).to_dict(), "selector": "all",
        "machines": {"alpha": {"directory": directory, "node_id": "x", "address": "127.0.0.1"}}}))
    with pytest.raises(fleet.FleetError) as caught:
        fleet.run_fleet(request(tmp_path, "127.0.0.1:1", None, resume=True), print)
    assert "is not a name inside the fleet directory" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bench_run_ray_with_nothing_listening_is_one_line_exit_2_and_writes_nothing(tmp_path):
    pytest.importorskip("ray")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--ray", "127.0.0.1:1", "--data", "synthetic",
                           "--devices", "cpu", "--out", "fleet"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_RESULTS_DIR": "results"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("bench: error: --ray 127.0.0.1:1: no Ray cluster answers there")
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, refused", [(["--check-against", "main"], "--check-against"),
                                            (["--retry", "2"], "--retry"), (["--dry-run"], "--dry-run")])
def test_bench_run_ray_refuses_what_a_fleet_cannot_do(tmp_path, capsys, extra, refused):
    from bench import cli

    status = cli.main(["run", "--ray", "127.0.0.1:1", "--data", "synthetic", "--results-dir", str(tmp_path), *extra])
    assert status == 2
    error = capsys.readouterr().err
    assert error == f"bench: error: {refused} is not available with --ray (each node is a machine of its own); " \
                    f"drop {refused} or --ray\n"
    assert list(tmp_path.iterdir()) == []


def test_ray_nodes_needs_ray_and_a_resume_keeps_the_fleet_s_selector(tmp_path, capsys):
    from bench import cli

    assert cli.main(["run", "--ray-nodes", "zone=lab", "--results-dir", str(tmp_path)]) == 2
    assert "add --ray HOST:PORT" in capsys.readouterr().err
    assert cli.main(["run", "--ray", "127.0.0.1:1", "--resume", str(tmp_path), "--ray-nodes", "zone=lab"]) == 2
    assert "--resume takes its settings from the run; drop --ray-nodes" in capsys.readouterr().err
    assert cli.main(["run", "--ray", "127.0.0.1:1", "--ray-nodes", "zone"]) == 2
    assert "LABEL=VALUE" in capsys.readouterr().err


def test_no_bench_module_imports_ray():
    modules = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__main__")
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module('bench.' + m)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- a local cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes posing as machines alpha (the head) and beta; loopback only, kept small."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    pids = tmp_path_factory.mktemp("workers") / "pids"
    saved = dict(os.environ)
    # the nodes' workers inherit this environment: this checkout's bench and the fake worker
    os.environ.update(PYTHONPATH=str(REPO), BENCH_WORKER_COMMAND=shlex.join(FAKE_WORKER),
                      FAKE_WORKER_PIDS=str(pids), FAKE_SLOW_SECONDS=str(SLOW_SECONDS))
    local = Cluster(initialize_head=True, head_node_args={
        **SMALL_NODE, "include_dashboard": False, "labels": {fleet.MACHINE_LABEL_KEY: "alpha"}})
    local.add_node(**SMALL_NODE, labels={fleet.MACHINE_LABEL_KEY: "beta"})
    local.wait_for_nodes()
    local.pids = pids
    try:
        yield local
    finally:
        ray.shutdown()
        local.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def said() -> tuple[list[str], callable]:
    lines: list[str] = []
    return lines, lines.append


@pytest.mark.slow
def test_each_machine_gets_its_run_dir_one_cell_at_a_time_and_one_table(cluster, tmp_path):
    lines, say = said()
    outcome = fleet.run_fleet(request(tmp_path, cluster.address, config(32, 64, 128, no_peak=False)), say)

    assert outcome.stopped_by is None and not outcome.failed and not outcome.lost, lines
    assert sorted(outcome.run_dirs) == ["alpha", "beta"]
    for label, directory in outcome.run_dirs.items():
        run = store.read_run(directory)          # what `bench run --machine-label` writes, readable as one
        assert run.env["machine_label"] == label
        assert run.env["command"] == "python -m bench run --ray test"
        assert sorted(run.runs["batch_size"]) == [32, 64, 128]
        assert set(run.runs["status"]) == {"ok"} and set(run.runs["machine_label"]) == {label}
        # the peak was measured on the node, by its worker: a yardstick, or (a busy machine) said why not
        busy_peak = run.runs["peak_note"].fillna("").str.contains("the peak was measured while")
        assert (run.runs["peak_tflops"].notna() | busy_peak).all(), run.runs["peak_note"].tolist()
        assert run.runs["contention_note"].notna().all()         # contention sampled there
        assert run.runs["usable_cpus"].notna().all()
        assert (directory / "summary.md").is_file() and (directory / "logs").is_dir()
        assert len(list((directory / "logs").glob("*.log"))) == 3
    combined = (tmp_path / "fleet" / "summary.md").read_text()
    assert combined == outcome.summary and "2 machines" in combined
    assert "| alpha" in combined and "| beta" in combined

    timeline = read_json_object(tmp_path / "fleet" / fleet.FLEET_JSON)["timeline"]
    assert len(timeline) == 6
    for label in ("alpha", "beta"):
        spans = sorted((c["started"], c["ended"]) for c in timeline if c["machine"] == label)
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans


@pytest.mark.slow
def test_a_selector_matching_no_node_is_a_one_line_error(cluster, tmp_path):
    fleet.connect(cluster.address)
    with pytest.raises(fleet.FleetError) as caught:
        fleet.select_machines(fleet.parse_node_selector("bench-machine=gamma"))
    message = str(caught.value)
    assert "matches none of the 2 live node(s)" in message and "bench-machine=alpha" in message
    assert "\n" not in message
    machines = fleet.select_machines(fleet.parse_node_selector("bench-machine=beta"), label_prefix="lab-")
    assert [m.label for m in machines] == ["lab-beta"]


@pytest.mark.slow
def test_bench_run_ray_through_the_command_line_writes_the_fleet_and_prints_its_table(cluster, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--ray", cluster.address, "--ray-nodes", "bench-machine=beta",
         "--machine-label", "lab-", "--data", "synthetic", "--devices", "cpu", "--batch-sizes", "32,64",
         "--precision", "fp32", "--epochs", "1", "--steps", "4", "--warmup", "1", "--no-peak", "--out", "fleet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_RESULTS_DIR": "results"})
    assert done.returncode == 0, done.stderr
    # one machine ran: its label heads the table (a one-machine table has no System column)
    assert "on lab-beta:" in done.stdout and f"results: {Path('fleet')}" in done.stderr
    run = store.read_run(tmp_path / "fleet" / "lab-beta")
    assert sorted(run.runs["batch_size"]) == [32, 64] and set(run.runs["status"]) == {"ok"}
    assert run.env["command"].startswith("python -m bench run --ray ")
    written = sorted(p.name for p in (tmp_path / "fleet").iterdir() if not p.name.startswith("."))
    assert written == ["fleet.json", "lab-beta", "summary.md"]         # only the selected node ran


def started_batches(pids: Path) -> list[tuple[int, int]]:
    try:
        return [tuple(map(int, line.split())) for line in pids.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def wait_for(condition, what: str, limit_s: float = 300) -> None:
    """Poll until ``condition()``; the limit only keeps a broken test from hanging CI."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_lost_machine_fails_its_unfinished_cells_keeps_the_rest_and_resume_finishes(cluster, tmp_path):
    gamma = cluster.add_node(**SMALL_NODE, labels={fleet.MACHINE_LABEL_KEY: "gamma"})
    cluster.wait_for_nodes()
    cluster.pids.write_text("")

    def lose_gamma_once_its_slow_cell_runs():
        wait_for(lambda: any(batch == SLOW_BATCH for _, batch in started_batches(cluster.pids)), "the slow cell")
        cluster.remove_node(gamma)

    remover = threading.Thread(target=lose_gamma_once_its_slow_cell_runs, daemon=True)
    remover.start()
    lines, say = said()
    first = fleet.run_fleet(request(tmp_path, cluster.address, config(32, SLOW_BATCH, 64),
                                    selector=fleet.parse_node_selector("bench-machine=gamma")), say)
    remover.join()

    assert first.lost == ["gamma"], lines
    runs = store.read_run(first.run_dirs["gamma"]).runs.set_index("batch_size")
    assert runs.loc[32, "status"] == "ok"                     # finished before the loss: kept
    for batch in (SLOW_BATCH, 64):
        assert runs.loc[batch, "status"] == "failed"
        assert runs.loc[batch, "reason"].startswith(f"node {gamma.node_id[:12]} (gamma) lost: ")

    back = cluster.add_node(**SMALL_NODE, labels={fleet.MACHINE_LABEL_KEY: "gamma"})
    cluster.wait_for_nodes()
    try:
        lines, say = said()
        second = fleet.run_fleet(request(tmp_path, cluster.address, None, resume=True,
                                         selector=fleet.parse_node_selector("bench-machine=gamma")), say)
        assert not second.lost and not second.failed, lines
        assert any("1 of 3 cell(s) kept, 2 to run" in line for line in lines), lines
        runs = store.read_run(second.run_dirs["gamma"]).runs
        assert sorted(runs["batch_size"]) == sorted([32, SLOW_BATCH, 64]) and set(runs["status"]) == {"ok"}
        ran = [c["cell_id"] for c in read_json_object(tmp_path / "fleet" / fleet.FLEET_JSON)["timeline"]]
        assert len(ran) == 3 and len(set(ran)) == 3                # the kept cell was not run again
        lines, say = said()
        fleet.run_fleet(request(tmp_path, cluster.address, None, resume=True,
                                selector=fleet.parse_node_selector("bench-machine=gamma")), say)
        assert any("nothing to run, all 3 cell(s) are done" in line for line in lines), lines
    finally:
        cluster.remove_node(back)


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_fleet import config, request
    from bench import fleet
    outcome = fleet.run_fleet(request(Path({tmp!r}), {address!r}, config({slow}, 32)), print)
    sys.exit(128 + outcome.stopped_by if outcome.stopped_by else 0)
""")


@pytest.mark.slow
def test_sigterm_on_the_driver_cancels_every_cell_and_leaves_no_worker(cluster, tmp_path):
    cluster.pids.write_text("")
    code = DRIVER.format(tests=str(REPO / "tests"), tmp=str(tmp_path), address=cluster.address, slow=SLOW_BATCH)
    driver = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(started_batches(cluster.pids)) == 2 or driver.poll() is not None,
                 "both machines' slow cells (each machine's first)")
        workers = [pid for pid, batch in started_batches(cluster.pids) if batch == SLOW_BATCH]
        assert len(workers) == 2, driver.communicate()[0]
        driver.send_signal(signal.SIGTERM)
        output = driver.communicate(timeout=300)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, output
    assert "cancelling 2 running cell(s)" in output

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in workers), "the cancelled workers to exit", limit_s=60)
    # nothing else was started, and what finished is kept, resumable
    assert len(started_batches(cluster.pids)) == 2
    assert (tmp_path / "fleet" / fleet.FLEET_JSON).is_file()
