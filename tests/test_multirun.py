"""Several runs, one table; compare any two runs; list past runs; the comparison plot.

Run directories come from tests/helpers/runs.py (the real writer, fake step times).
Commands run in-process through cli.main: the exit status and the one-line errors are
what a user sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from runs import ENV, write_run  # noqa: E402

from bench import cli, plots, store, tables  # noqa: E402
from bench.devices import Device, Requested  # noqa: E402

LAPTOP_GPU = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA GeForce GTX 960M", memory_bytes=2**32))
EPYC_CPU = Requested("cpu", Device("cpu", "CPU", "AMD EPYC 9R14", 2, 2, 2**34))
LAPTOP_ENV = {**ENV, "machine_label": "laptop", "system": "Ubuntu 22.04.4 LTS",
              "command": "python -m bench run --machine-label laptop --out results/runs/a",
              "cpu": {"model": "Intel(R) Core(TM) i7-6700HQ CPU @ 2.60GHz", "logical_cpus": 8}}
SERVER_ENV = {**ENV, "system": "Debian GNU/Linux 12 (bookworm)",
              "command": "python -m bench run --data cifar10 --out results/runs/b",
              "cpu": {"model": "AMD EPYC 9R14 96-Core Processor", "logical_cpus": 2}}
CIFAR = {"data": "cifar10", "heldout_accuracy": 0.31, "heldout_images": 10_000,
         "accuracy_note": "whole held-out split"}


def steps(median: float, n: int = 30, seed: int = 0) -> np.ndarray:
    return median * (1 + 0.01 * np.random.default_rng(seed).standard_normal(n))


@pytest.fixture
def two_machines(tmp_path):
    """A labelled laptop (CPU + GPU, synthetic, 30 steps) and an unlabelled server (CPU only,
    CIFAR-10 with accuracy, 40 steps)."""
    gpu = (("device", LAPTOP_GPU),)
    laptop = write_run(tmp_path / "runs" / "20260101-100000",
                       {128: steps(0.4), 64: steps(0.2), (64, gpu): steps(0.01), (128, gpu): steps(0.02)},
                       env=LAPTOP_ENV)
    server = write_run(tmp_path / "runs" / "20260102-100000", {64: steps(0.1, 40), 128: steps(0.2, 40)},
                       env=SERVER_ENV, device=EPYC_CPU, train=CIFAR)
    return tmp_path, laptop, server


CPU_REFERENCE = tables.Reference()


def table_of(runs, reference=CPU_REFERENCE) -> pd.DataFrame:
    return tables.frame_of(tables.build(runs, reference))


def notes_of(runs, reference=CPU_REFERENCE) -> list[str]:
    return tables.notes(tables.build(runs, reference))


def main(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_usage_error(status: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- one table

def test_one_table_orders_rows_by_machine_device_type_and_batch_size(two_machines):
    _, laptop, server = two_machines
    table = table_of([store.read_run(laptop), store.read_run(server)])
    assert list(zip(table["Machine"], table["Device Type"], table["Batch size"])) == [
        ("laptop", "CPU", 64), ("laptop", "CPU", 128), ("laptop", "GPU", 64), ("laptop", "GPU", 128),
        ("AMD EPYC 9R14 (Debian 12)", "CPU", 64), ("AMD EPYC 9R14 (Debian 12)", "CPU", 128)]
    # settings that differ between the runs are columns, not averaged away
    assert list(table["Data"]) == ["synthetic"] * 4 + ["cifar10"] * 2
    assert list(table["Steps"]) == ["1 × 33"] * 4 + ["1 × 43"] * 2
    assert list(table["Accuracy"]) == ["not measured"] * 4 + ["31.00 %"] * 2
    # each machine's own CPU is the default reference
    assert list(table["Speed-up vs CPU"]) == ["1.00×", "1.00×", "20.00×", "20.00×", "1.00×", "1.00×"]
    assert not table.apply(lambda column: column.astype(str).str.contains("bookworm")).any().any()


def test_the_notes_state_what_cannot_be_read_across_rows(two_machines):
    _, laptop, server = two_machines
    notes = " ".join(notes_of([store.read_run(laptop), store.read_run(server)]))
    assert "Data differs between rows" in notes
    assert "Time covers different numbers of training steps" in notes
    assert "Debian GNU/Linux 12 (bookworm)" in notes       # the long OS name, once, in the notes


def test_the_notes_say_which_machines_fp32_gpu_rows_ran_tf32(two_machines, tmp_path):
    _, laptop, _ = two_machines
    h100 = Requested("gpu:0", Device("gpu:0", "GPU", "NVIDIA H100 80GB HBM3", memory_bytes=2**36,
                                     compute_capability="9.0"))
    setting = "jax_default_matmul_precision=None (matmuls and convolutions)"
    server = write_run(tmp_path / "runs" / "20260103-100000", {(64, (("device", h100),)): steps(0.001)},
                       env=SERVER_ENV, train={"math": "tf32", "math_note": setting})
    notes = notes_of([store.read_run(laptop), store.read_run(server)])
    [note] = [n for n in notes if n.startswith("**fp32 on GPU**")]
    assert f"gpu:0 (NVIDIA H100 80GB HBM3) tensorflow: TF32 ({setting})" in note
    assert "gpu:0 (NVIDIA GeForce GTX 960M) tensorflow: IEEE fp32" in note


def test_a_named_reference_divides_by_that_machines_device(two_machines):
    _, laptop, server = two_machines
    runs = [store.read_run(laptop), store.read_run(server)]
    table = table_of(runs, tables.Reference.parse("laptop:gpu"))
    column = "Speed-up vs laptop gpu:0"
    assert list(table[column]) == ["0.05×", "0.05×", "1.00×", "1.00×", "0.10×", "0.10×"]
    assert "Speed-up vs laptop gpu:0**: the median step of gpu:0 on laptop" in " ".join(
        notes_of(runs, tables.Reference.parse("laptop:gpu:0")))


def test_a_named_reference_works_across_machines_and_backends_and_names_its_row(tmp_path):
    """The server's CPU ran torch only: the laptop's TensorFlow GPU rows divide by it, with
    --reference naming the backend, and the notes name the row they divide by."""
    gpu = (("device", LAPTOP_GPU),)
    laptop = store.read_run(write_run(tmp_path / "laptop", {(64, gpu): steps(0.01), (128, gpu): steps(0.02)},
                                      env=LAPTOP_ENV))
    server = store.read_run(write_run(tmp_path / "server", {
        (64, (("backend", "torch"), ("precision", "mixed_bfloat16"))): steps(0.05),
        (64, (("backend", "tensorflow"),)): steps(0.01)}, env=SERVER_ENV, device=EPYC_CPU))
    reference = tables.Reference.parse("AMD EPYC 9R14 (Debian 12):cpu:torch")
    assert reference.column == "Speed-up vs AMD EPYC 9R14 (Debian 12) cpu torch"
    table = table_of([laptop, server], reference)
    # the server's own TensorFlow row is not the reference: the backend was named
    assert list(table[reference.column]) == ["5.00×", "–", "1.00×", "5.00×"]
    notes = notes_of([laptop, server], reference)
    [named] = [n for n in notes if "(no reference row of the same settings)" in n]
    assert ("2 rows (laptop gpu:0 tensorflow fp32 batch 64; AMD EPYC 9R14 (Debian 12) cpu tensorflow fp32 "
            "batch 64)") in named
    assert named.endswith("median step of AMD EPYC 9R14 (Debian 12) CPU torch mixed_bfloat16 batch 64 ÷ this row's.")
    assert any("laptop gpu:0 tensorflow fp32 batch 128: no cpu torch row on AMD EPYC 9R14 (Debian 12) at "
               "batch 128" in n for n in notes)
    # each machine's own CPU by default: the laptop ran none, and says so
    assert "no CPU row on laptop at batch 64 or 128" in " ".join(notes_of([laptop, server]))


def test_own_run_cpu_row_is_preferred_to_another_runs(tmp_path):
    gpu = (("device", LAPTOP_GPU),)
    old = store.read_run(write_run(tmp_path / "old", {64: steps(0.1)}, env=LAPTOP_ENV))
    new = store.read_run(write_run(tmp_path / "new", {64: steps(0.4), (64, gpu): steps(0.01)}, env=LAPTOP_ENV))
    table = table_of([old, new])
    assert list(zip(table["Run"], table["Speed-up vs CPU"])) == [
        ("old", "1.00×"), ("new", "1.00×"), ("new", "40.00×")]


def test_unlabelled_machines_with_the_same_cpu_and_os_get_distinct_names(tmp_path):
    other_env = {**SERVER_ENV, "memory_bytes": 2**35}      # another machine of the same model
    a = store.read_run(write_run(tmp_path / "a", {64: steps(0.1)}, env=SERVER_ENV))
    b = store.read_run(write_run(tmp_path / "b", {64: steps(0.1)}, env=other_env))
    first, second = tables.machine_names([a, b])
    assert first == "AMD EPYC 9R14 (Debian 12)" and second.startswith(first + " #") and first != second


def test_summary_with_several_runs_prints_one_table_and_json(two_machines, capsys):
    root, laptop, server = two_machines
    status, out, _ = main(capsys, "summary", "--results-dir", root, "--run", laptop, "--run", server)
    assert status == 0 and out.startswith("2 runs on 2 machines")
    assert out.count("| laptop ") == 4
    status, out, _ = main(capsys, "summary", "--results-dir", root, "--run", laptop, "--run", server, "--json")
    data = json.loads(out)
    assert status == 0 and [r["run"] for r in data["runs"]] == [str(laptop), str(server)]
    assert sum(len(r["cells"]) for r in data["runs"]) == 6
    status, _, err = main(capsys, "summary", "--results-dir", root, "--run", laptop, "--run", server, "--json",
                          "--reference", "laptop:cpu")             # JSON has no Speed-up column to pick for
    assert_usage_error(status, err, "--reference")


def test_one_run_still_gives_the_single_run_summary(two_machines, capsys):
    root, laptop, _ = two_machines
    status, out, _ = main(capsys, "summary", "--results-dir", root, "--run", laptop)
    assert status == 0 and out.startswith("Run `20260101-100000`") and "| Machine" not in out


def test_readme_from_several_runs_is_idempotent_with_one_produced_by_line_per_run(two_machines, capsys):
    root, laptop, server = two_machines
    readme = root / "README.md"
    readme.write_text("# Title\n\n<!-- bench:table:start -->\nold\n<!-- bench:table:end -->\n\nTail.\n")
    argv = ["readme", "--results-dir", root, "--readme", readme, "--run", laptop, "--run", server]
    status, out, _ = main(capsys, *argv)
    first = readme.read_text()
    assert status == 0 and "table updated" in out
    assert first.count("Produced by `") == 2 and "(laptop)." in first and first.endswith("\n\nTail.\n")
    status, out, _ = main(capsys, *argv)
    assert status == 0 and "already up to date" in out and readme.read_text() == first


@pytest.mark.parametrize("argv, fragment", [
    (["--reference", "nowhere:gpu:0"], "no measured cell of that machine and device; choose from laptop:cpu"),
    (["--reference", "gpu"], "write 'cpu' (each machine's own CPU) or MACHINE:DEVICE"),
    (["--run", "no/such/run"], "no/such/run: no such run directory"),
    (["--run", "nosuchbaseline"], "baseline 'nosuchbaseline' not found"),
])
def test_bad_summary_input_is_one_line_and_exit_2(two_machines, capsys, argv, fragment):
    root, laptop, server = two_machines
    status, _, err = main(capsys, "summary", "--results-dir", root, "--run", laptop, "--run", server, *argv)
    assert_usage_error(status, err, fragment)


# --------------------------------------------------------------------------- compare

def test_compare_two_machines_by_settings_says_the_devices_differ(two_machines, capsys):
    root, laptop, server = two_machines
    status, _, err = main(capsys, "compare", "--results-dir", root, laptop, server)
    assert_usage_error(status, err, "pass --match settings")       # device names differ
    status, out, _ = main(capsys, "compare", "--results-dir", root, laptop, server, "--match", "settings")
    assert status == 0                      # informational: 0 although the server is faster
    assert "cpu: Test CPU vs AMD EPYC 9R14" in out and "The devices differ" in out
    assert "| CPU cpu, bs64" in out and "faster" in out
    assert "Cells only in the baseline (not compared): GPU gpu:0, bs64" in out
    assert "WARNING: the environments differ: OS: Ubuntu 22.04.4 LTS -> Debian" in out


def test_compare_a_run_with_a_saved_baseline_by_name(two_machines, capsys):
    root, laptop, _ = two_machines
    later = write_run(root / "runs" / "later", {64: steps(0.3, seed=1), 128: steps(0.4, seed=1)},
                      env=LAPTOP_ENV)
    store.save_baseline(store.read_run(laptop), "laptop-base", root)
    status, out, _ = main(capsys, "compare", "--results-dir", root, "laptop-base", later, "--json")
    verdicts = {c["cell"]: c["verdict"] for c in json.loads(out)["cells"]}
    assert status == 0 and verdicts == {"CPU Test CPU, bs64, data placement host": "regression",
                                        "CPU Test CPU, bs128, data placement host": "within noise"}


def test_compare_refuses_a_baseline_of_another_schema(two_machines, capsys):
    root, laptop, _ = two_machines
    foreign = store.save_baseline(store.read_run(laptop), "foreign", root)
    (foreign / store.BASELINE_JSON).write_text(json.dumps({"schema": "other-tool/3"}))
    status, _, err = main(capsys, "compare", "--results-dir", root, "foreign", laptop)
    assert_usage_error(status, err, "not a cifar-bench baseline (schema 'other-tool/3'")


# --------------------------------------------------------------------------- runs

def test_runs_lists_newest_first_with_counts_and_a_damaged_run_with_its_error(two_machines, capsys):
    root, laptop, server = two_machines
    damaged = root / "runs" / "20260103-000000"
    damaged.mkdir()
    (damaged / "runs.csv").write_text("not,a,results,file\n")
    store.save_baseline(store.read_run(server), "server", root)
    status, out, _ = main(capsys, "runs", "--results-dir", root, "--json")
    listed = json.loads(out)
    assert status == 0
    by_id = {(r["kind"], r["id"]): r for r in listed}
    assert by_id[("run", "20260101-100000")]["machine"] == "laptop"
    assert (by_id[("run", "20260101-100000")]["ok"], by_id[("run", "20260101-100000")]["data"]) == (4, "synthetic")
    assert by_id[("run", "20260102-100000")]["machine"].startswith("amd-epyc-9r14")
    assert "missing column(s)" in by_id[("run", "20260103-000000")]["error"]
    assert ("baseline", "server") in by_id
    status, out, _ = main(capsys, "runs", "--results-dir", root, "--no-baselines")
    assert status == 0 and "server" not in out.replace("20260102", "") and "missing column(s)" in out


def test_runs_newest_first_by_start_time(tmp_path, capsys):
    for name, started in (("b-older", "2025-01-01T00:00:00+00:00"), ("a-newer", "2026-06-01T00:00:00+00:00")):
        write_run(tmp_path / "runs" / name, {64: steps(0.1)})
        path = tmp_path / "runs" / name / "runs.csv"
        frame = pd.read_csv(path)
        frame["started_at"] = started
        frame.to_csv(path, index=False)
    assert [r.id for r in store.list_runs(tmp_path)] == ["a-newer", "b-older"]


# --------------------------------------------------------------------------- the plot

def test_the_comparison_plot_uses_a_log_scale_only_for_a_wide_spread(two_machines, capsys):
    root, laptop, server = two_machines
    plot = root / "compare.png"
    status, _, err = main(capsys, "summary", "--results-dir", root, "--run", laptop, "--run", server,
                          "--plot", plot)
    assert status == 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {plot}" in err
    assert plots.y_scale(pd.Series([320.0, 6400.0])) == "log"         # CPU next to GPU: 20x
    assert plots.y_scale(pd.Series([214.0, 320.0])) == "linear"
