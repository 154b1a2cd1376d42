"""Data parallelism: replicas and workers in the plan, their rows and columns, and real
runs of MirroredStrategy (logical CPU devices) and MultiWorkerMirroredStrategy (loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import matrix, record, runner, tables
from bench.config import RunConfig
from bench.devices import Device, Requested
from bench.protocol import DataSpec

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from cpu_share import on_worker_share  # noqa: E402
from sockets import is_loopback, run_watching_sockets  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU", 2, 2, 2**34))
GPU0 = Requested("gpu:0", Device("gpu:0", "GPU", "A100", memory_bytes=80 * 2**30))
TINY = ("--devices", "cpu", "--data", "synthetic", "--synthetic-images", "256", "--batch-sizes", "16",
        "--steps", "4", "--warmup", "1", "--no-peak", "--no-eval", "--precision", "fp32")
RUN_LIMIT_S = 240     # a run of three tiny cells takes ~60 s on 2 shared cores


def bench_command(*args) -> tuple[list[str], dict]:
    """The command line and environment of this checkout's CLI (PYTHONPATH: the workers it
    starts import it too)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return [sys.executable, "-m", "bench", *map(str, args)], env


def bench(*args, cwd: Path, timeout: float = RUN_LIMIT_S) -> subprocess.CompletedProcess:
    command, env = bench_command(*args)
    return subprocess.run(command, cwd=cwd, text=True, capture_output=True, timeout=timeout, env=env)


def config(**kwargs) -> RunConfig:
    return RunConfig(plan=matrix.Plan({"batch_size": (16,), **kwargs.pop("plan", {})}),
                     epochs=1, max_steps_per_epoch=4, warmup_steps=1, **kwargs)


# --------------------------------------------------------------------------- planning

def test_replicas_bring_their_one_replica_cell_first():
    cells = matrix.plan(matrix.Plan({"batch_size": (64,), "replicas": (2, 4)}), [CPU], 1, 50_000)
    assert [(c["replicas"], c["workers"]) for c in cells] == [(1, 1), (2, 1), (4, 1)]
    assert "_rep" not in cells[0].cell_id and "_wk" not in cells[0].cell_id   # ids of old runs kept
    assert cells[1].cell_id.endswith("_rep2_r0")


def test_workers_bring_the_one_worker_cell_once_per_setting():
    cells = matrix.plan(matrix.Plan({"batch_size": (32, 64), "replicas": (2,), "workers": (2,)}),
                        [CPU], 2, 50_000)
    keys = [(c.repeat, c["batch_size"], c["replicas"], c["workers"]) for c in cells]
    assert keys == [(r, b, *rw) for r in (0, 1) for b in (32, 64) for rw in ((1, 1), (2, 2))]


def test_settings_say_per_replica_and_global_batch():
    cell = matrix.plan(matrix.Plan({"batch_size": (64,), "replicas": (2,), "workers": (3,)}), [GPU0], 1,
                       50_000)[-1]
    settings = runner.cell_spec(cell, config(), ("h:1", "h:2", "h:3"), 2).settings
    assert (settings.batch_size, settings.global_batch_size, settings.total_replicas) == (64, 384, 6)
    assert settings.strategy == "multi_worker_mirrored" and settings.task_index == 2
    assert runner.worker_environment(GPU0, replicas=2, base={})["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize("backend, replicas, workers, engine", [
    ("tensorflow", 1, 1, "none"), ("tensorflow", 2, 1, "mirrored"),
    ("tensorflow", 1, 2, "multi_worker_mirrored"), ("tensorflow", 2, 2, "multi_worker_mirrored"),
    ("jax", 1, 1, "none"), ("jax", 2, 1, "keras_data_parallel"), ("jax", 1, 2, "keras_data_parallel"),
    ("torch", 1, 1, "none"),
])
def test_each_backend_plugs_in_its_own_engine(backend, replicas, workers, engine):
    from cifar_model import TrainSettings
    from cifar_model.settings import STRATEGY_DOCS

    assert TrainSettings(backend=backend, replicas=replicas, workers=workers).strategy == engine
    assert engine in STRATEGY_DOCS


def test_a_jax_cpu_cell_of_n_replicas_starts_jax_with_n_cpu_devices():
    flag = "--xla_force_host_platform_device_count=2"
    env = runner.worker_environment(CPU, "jax", replicas=2, base={"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", flag]      # the user's flags kept
    assert "XLA_FLAGS" not in runner.worker_environment(CPU, "jax", replicas=1, base={})
    assert "XLA_FLAGS" not in runner.worker_environment(CPU, "tensorflow", replicas=2, base={})
    assert "XLA_FLAGS" not in runner.worker_environment(GPU0, "jax", replicas=2, base={})


def test_sharded_predictions_pad_every_batch_to_the_replicas_and_drop_the_padding():
    np = pytest.importorskip("numpy")
    from cifar_model import distribution

    class Model:   # stands in for a Keras model under DataParallel: refuses what would not shard
        def predict(self, images, batch_size, verbose=0):
            assert batch_size % 2 == 0 and len(images) % 2 == 0
            assert all(len(images[i:i + batch_size]) % 2 == 0 for i in range(0, len(images), batch_size))
            return images.reshape(len(images), -1)[:, :1] * 1.0

    images = np.arange(1, 8, dtype=np.float32).reshape(7, 1)
    logits = distribution.sharded_logits(2)(Model(), images, 3)
    assert logits[:, 0].tolist() == list(range(1, 8))        # 7 images in, 7 logits out, in order


def test_torch_with_several_steps_per_execution_is_a_skipped_row_not_a_failure():
    """Keras's torch backend refuses steps_per_execution > 1 inside fit; on the H100 that
    surfaced as a failed cell (and, with jit on, as a misleading "torch.compile failed")."""
    cells = matrix.plan(matrix.Plan({"batch_size": (16,), "backend": ("torch", "jax"),
                                     "steps_per_execution": (1, 8)}), [CPU], 1, 50_000)
    reasons = {(c["backend"], c["steps_per_execution"]): runner.skip_reason(c, config()) for c in cells}
    assert "one step per call" in reasons[("torch", 8)]
    assert reasons[("torch", 1)] is None and reasons[("jax", 8)] is None


def test_auto_data_placement_feeds_several_replicas_from_the_host():
    """On a GPU, auto keeps a one-replica cell's training set in GPU memory; a cell of several
    replicas runs (it is fed from the host) instead of being skipped for the resident path."""
    cells = matrix.plan(matrix.Plan({"batch_size": (64,), "replicas": (2,), "backend": ("jax",)}),
                        [GPU0], 1, 50_000)
    placements = {c["replicas"]: c["data_placement"] for c in cells}
    assert placements == {1: "device", 2: "host"}
    assert runner.skip_reason(cells[1], config(), gpu_count=2) is None


def test_scaling_columns_are_declared():
    for name in ("replicas", "workers", "strategy", "task_index", "total_replicas", "global_batch_size",
                 "global_images_per_s", "speedup_vs_1_replica", "scaling_efficiency_pct", "scaling_note"):
        assert record.RUN_COLUMNS[name].doc, name


def test_global_batch_larger_than_the_data_is_refused_up_front():
    cfg = config(plan={"replicas": (4,)}, source=DataSpec("synthetic", synthetic_images=48))
    assert "global batch 64" in cfg.problems()[0]


@pytest.mark.parametrize("backend, replicas, workers, device, extra, fragment", [
    ("jax", 2, 2, CPU, {}, "one CPU device per worker"),
    ("torch", 2, 1, CPU, {}, "not implemented for torch"),
    ("torch", 1, 2, CPU, {}, "not implemented for torch"),
    ("jax", 4, 1, GPU0, {"gpu_count": 1}, "needs 4 GPUs"),
    ("tensorflow", 4, 1, GPU0, {"gpu_count": 1}, "needs 4 GPUs"),
    ("tensorflow", 9, 1, CPU, {}, "at most 8 logical devices"),
    ("tensorflow", 2, 2, CPU, {}, "one CPU device per worker"),
])
def test_what_cannot_run_is_a_skipped_row_with_its_reason(backend, replicas, workers, device, extra, fragment):
    cell = matrix.plan(matrix.Plan({"batch_size": (16,), "backend": (backend,), "replicas": (replicas,),
                                    "workers": (workers,), "data_placement": ("host",)}),
                       [device], 1, 50_000)[-1]
    assert fragment in runner.skip_reason(cell, config(), **extra)


@pytest.mark.parametrize("backend, cluster, allowed, runs", [
    ("tensorflow", (), False, False),                                  # local workers: 0.0.0.0 unasked
    ("tensorflow", ("127.0.0.1:7000", "localhost:7001"), False, False),  # a loopback --cluster too
    ("tensorflow", ("[::1]:7000", "[::1]:7001"), False, False),
    ("tensorflow", (), True, True),                                    # --allow-open-ports
    ("tensorflow", ("10.0.0.1:7000", "10.0.0.2:7001"), False, True),   # other hosts: the network was asked for
    ("jax", (), False, True),                                          # JAX binds its loopback address
])
def test_a_tensorflow_loopback_cluster_opens_no_port_on_every_interface_unless_allowed(backend, cluster,
                                                                                       allowed, runs):
    cell = matrix.plan(matrix.Plan({"batch_size": (16,), "backend": (backend,), "workers": (2,),
                                    "data_placement": ("host",)}), [CPU], 1, 50_000)[-1]
    reason = runner.skip_reason(cell, config(cluster=cluster, allow_open_ports=allowed))
    if runs:
        assert reason is None
    else:
        assert "0.0.0.0" in reason and "--allow-open-ports" in reason


def test_allow_open_ports_is_a_run_option_kept_in_the_config(tmp_path):
    from bench import cli, options

    parser = cli.build_parser()
    args = parser.parse_args(["run", "--allow-open-ports", "--out", str(tmp_path / "r")])
    assert options.run_config_from(args).allow_open_ports is True
    args = parser.parse_args(["run", "--out", str(tmp_path / "r")])
    assert options.run_config_from(args).allow_open_ports is False


def test_a_non_chief_host_leaves_the_single_worker_cells_to_the_chief():
    cells = matrix.plan(matrix.Plan({"batch_size": (16,), "workers": (2,)}), [CPU], 1, 50_000)
    cfg = config(cluster=("a:1", "b:1"), task_index=1)
    assert "chief" in runner.skip_reason(cells[0], cfg)
    assert runner.skip_reason(cells[1], cfg) is None


def test_speedup_is_over_the_one_replica_row_of_the_same_settings():
    base = {"status": "ok", "device_id": "cpu", "repeat": 0, "device_type": "CPU",
            **{d.name: d.default[0] for d in matrix.DIMENSIONS}, "batch_size": 16, "precision": "fp32",
            "data_placement": "host"}
    earlier = [{**base, "global_images_per_s": 100.0},
               {**base, "batch_size": 32, "global_images_per_s": 999.0}]     # other settings: ignored
    row = record.RunRow(**{**base, "replicas": 2, "total_replicas": 2, "global_images_per_s": 150.0})
    scaled = record.with_scaling(row, earlier, "shared cores")
    assert scaled.speedup_vs_1_replica == pytest.approx(1.5)
    assert scaled.scaling_efficiency_pct == pytest.approx(75.0)
    assert scaled.scaling_note == "shared cores"


# --------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory):
    """One CLI run: 1 replica, 2 logical CPU replicas (MirroredStrategy), 2 loopback
    workers (MultiWorkerMirroredStrategy); 2 x 2 is planned and skipped on a CPU."""
    root = tmp_path_factory.mktemp("scale")
    started = time.monotonic()
    done = bench("run", *TINY, "--replicas", "1,2", "--workers", "1,2", "--allow-open-ports",
                 "--out", root / "run", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = pd.read_csv(root / "run" / "runs.csv")
    return root / "run", runs.set_index(["replicas", "workers"]), time.monotonic() - started


def test_replicas_run_end_to_end_on_logical_cpu_devices(parallel_run):
    out, runs, seconds = parallel_run
    one, two = runs.loc[(1, 1)], runs.loc[(2, 1)]
    assert (one["status"], two["status"]) == ("ok", "ok")
    assert (one["strategy"], two["strategy"]) == ("none", "mirrored")
    assert (two["batch_size"], two["global_batch_size"], two["total_replicas"]) == (16, 32, 2)
    assert two["global_images_per_s"] == pytest.approx(32 / two["step_median_s"])
    assert two["speedup_vs_1_replica"] == pytest.approx(
        two["global_images_per_s"] / one["global_images_per_s"])
    assert "logical devices sharing" in two["scaling_note"] and "MirroredStrategy" in two["compile_note"]
    assert pd.isna(one["speedup_vs_1_replica"])
    text = (out / "summary.md").read_text()
    assert "Batch size (per replica)" in text and "Speed-up vs 1 replica" in text
    assert "**Not a scaling result**" in text
    assert (out / "scaling.png").stat().st_size > 0
    assert seconds < RUN_LIMIT_S


def test_two_loopback_workers_run_end_to_end(parallel_run):
    out, runs, _ = parallel_run
    row = runs.loc[(1, 2)]
    assert row["status"] == "ok" and row["strategy"] == "multi_worker_mirrored" and row["task_index"] == 0
    assert row["global_batch_size"] == 32 and row["peer_step_median_s"] > 0
    assert "custom loop" in row["compile_note"] and "worker processes" in row["scaling_note"]
    peer_log = out / "logs" / f"{row['cell_id']}.task1.log"
    assert '"event": "result"' in peer_log.read_text()          # the other worker's steps are kept
    assert runs.loc[(2, 2), "status"] == "skipped"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_peer_that_never_joins_fails_the_cell_within_the_connect_timeout(tmp_path, backend):
    """Task 1 of a two-host cluster whose chief never starts: the single-worker cell is the
    chief's (skipped here); the two-worker cell fails after --connect-timeout, not a hang,
    whichever distributed runtime waits for it."""
    pytest.importorskip(backend)
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    started = time.monotonic()
    done = bench("run", *TINY, "--backend", backend, "--cluster", ",".join(f"127.0.0.1:{p}" for p in ports),
                 "--task-index", "1", "--connect-timeout", "5", "--allow-open-ports",   # TF: 0.0.0.0
                 "--out", tmp_path / "run", cwd=tmp_path,
                 timeout=150)
    assert time.monotonic() - started < 150
    runs = pd.read_csv(tmp_path / "run" / "runs.csv").set_index("workers")
    assert runs.loc[1, "status"] == "skipped" and "chief" in runs.loc[1, "reason"]
    assert runs.loc[2, "status"] == "failed" and "join" in runs.loc[2, "reason"]
    assert done.returncode == 4                                  # EXIT_CELL_FAILED


def test_the_multi_worker_loop_trains_as_keras_fit_does():
    """Same seed, data and global batch: one worker's custom loop vs ``fit``, step by step."""
    helper = REPO_ROOT / "tests" / "helpers" / "custom_loop_vs_fit.py"
    done = subprocess.run(on_worker_share([sys.executable, str(helper)]),
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(losses["custom"]) == len(losses["fit"]) == 6
    assert losses["custom"] == pytest.approx(losses["fit"], rel=1e-4)


def test_jax_data_parallel_trains_as_one_device_does():
    """Same seed, data and global batch: Keras DataParallel over 2 JAX CPU devices vs one
    device, step by step."""
    helper = REPO_ROOT / "tests" / "helpers" / "jax_data_parallel_vs_one.py"
    done = subprocess.run(on_worker_share([sys.executable, str(helper)]),
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = runs["1"], runs["2"]
    assert (one["strategy"], two["strategy"]) == ("none", "keras_data_parallel")
    assert one["global_batch"] == two["global_batch"] == 32 and "DataParallel" in two["note"]
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    plain, sharded = runs["logits"]["plain"], runs["logits"]["sharded"]
    assert len(plain) == len(sharded) == 7
    assert [v for row in sharded for v in row] == pytest.approx([v for row in plain for v in row], rel=1e-4)


def test_jax_replicas_and_workers_run_end_to_end_and_train_alike(tmp_path, python_layout):
    """One run on a tiny CIFAR-10 copy (so every cell is evaluated): 1 JAX device, 2 JAX CPU
    devices in one process, 2 processes joined by jax.distributed; 2 x 2 is skipped on a CPU.
    The two parallel cells train the same global batch on the same seed: same losses. While
    it runs, every socket its processes listen on is on loopback, and the run says where."""
    pytest.importorskip("jax")
    command, env = bench_command("run", "--devices", "cpu", "--backend", "jax", "--precision", "fp32",
                                 "--data-dir", python_layout, "--no-download", "--batch-sizes", "16", "--steps", "3",
                                 "--warmup", "1", "--no-peak", "--replicas", "1,2", "--workers", "1,2",
                                 "--out", tmp_path / "run")
    done, listened = run_watching_sockets(command, cwd=tmp_path, env=env, timeout=RUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert listened, "no listening socket seen: the two-worker cell did not run"
    assert not sorted(a for a in listened if not is_loopback(a[0])), f"listening beyond loopback: {listened}"
    assert "worker 0 listening on loopback only: 127.0.0.1:" in done.stderr, done.stderr[-2000:]
    runs = pd.read_csv(tmp_path / "run" / "runs.csv").set_index(["replicas", "workers"])
    one, devices, processes = runs.loc[(1, 1)], runs.loc[(2, 1)], runs.loc[(1, 2)]
    assert [r["status"] for r in (one, devices, processes)] == ["ok"] * 3
    assert runs.loc[(2, 2), "status"] == "skipped" and "one CPU device per worker" in runs.loc[(2, 2), "reason"]
    assert (one["strategy"], devices["strategy"], processes["strategy"]) == (
        "none", "keras_data_parallel", "keras_data_parallel")
    assert devices["global_batch_size"] == processes["global_batch_size"] == 32
    assert "across 2 processes" in processes["compile_note"] and processes["peer_step_median_s"] > 0
    assert processes["train_loss"] == pytest.approx(devices["train_loss"], rel=1e-4)
    assert processes["heldout_loss"] == pytest.approx(devices["heldout_loss"], rel=1e-4)
    assert processes["heldout_images"] == devices["heldout_images"] == 20
    assert devices["speedup_vs_1_replica"] > 0 and "logical devices sharing" in devices["scaling_note"]
    assert "worker processes" in processes["scaling_note"]
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "keras.distribution.DataParallel" in text and "**Not a scaling result**" in text


def test_summary_names_the_strategy(parallel_run):
    out, runs, _ = parallel_run
    notes = tables.notes(tables.build([tables.in_memory(runs.reset_index(), {})]))
    assert any("MultiWorkerMirroredStrategy" in n and "keras#20585" in n for n in notes)


def test_scaling_plot_draws_each_engine_and_jax_in_and_across_processes_apart(tmp_path, monkeypatch):
    """The plot's lines, read from the figure before it is closed: an ideal line per
    setting, and JAX in one process and across processes as two lines (their points are
    not averaged into one)."""
    from bench import plots

    pyplot = plots.pyplot()
    drawn = {}
    monkeypatch.setattr(pyplot, "close", lambda fig: drawn.update(
        {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}))
    base = {"status": "ok", "run_id": "r", "device_id": "cpu", "device_name": "Test CPU", "device_type": "CPU",
            "batch_size": 16, "precision": "fp32", "jit_compile": "auto", "cpu_threads": 0,
            "steps_per_execution": 1, "data_placement": "host", "scaling_note": ""}
    rows = [{**base, "backend": backend, "replicas": r, "workers": w, "total_replicas": r * w,
             "strategy": strategy, "global_images_per_s": ips}
            for backend, r, w, strategy, ips in (
                ("tensorflow", 1, 1, "none", 100.0), ("tensorflow", 2, 1, "mirrored", 150.0),
                ("jax", 1, 1, "none", 50.0), ("jax", 2, 1, "keras_data_parallel", 80.0),
                ("jax", 1, 2, "keras_data_parallel", 60.0))]
    assert plots.scaling_plot(pd.DataFrame(rows), tmp_path / "scaling.png").stat().st_size > 0
    jax_lines = {label: ys for label, ys in drawn.items() if "jax" in label and "ideal" not in label}
    assert sorted(ys[-1] for ys in jax_lines.values()) == [60.0, 80.0]
    assert any(label.endswith("keras DataParallel across processes") for label in jax_lines)
    assert any("MirroredStrategy" in label and ys == [100.0, 150.0] for label, ys in drawn.items())
    assert sum("ideal" in label for label in drawn) == 2
