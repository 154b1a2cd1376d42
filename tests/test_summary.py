"""bench.summary: the table and its notes, from rows in memory or read back."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import record, summary


def row(device_type, batch, median, status="ok", precision="fp32", **extra):
    base = dict.fromkeys(record.RUN_COLUMNS)
    base.update(run_id="r", cell_id=f"{device_type}{batch}{precision}{extra.get('repeat', 0)}", status=status,
                reason="", system="Test OS", device_id="cpu" if device_type == "CPU" else "gpu:0",
                device_name=f"Test {device_type}", device_type=device_type, batch_size=batch,
                backend="tensorflow", precision=precision, precision_requested=precision,
                jit_compile="auto", cpu_threads=0, steps_per_execution=1, repeat=0,
                data_placement="host", data_placement_requested="auto", data="cifar10",
                split="standard", epochs=1, steps_per_epoch=50, warmup_steps=5,
                step_median_s=median, images_per_s=batch / median if median else None,
                train_s=median * 50 if median else None, heldout_accuracy=0.25,
                heldout_images=10000, projected_seed_run_s=1000.0, startup_s=3.0, data_load_s=1.5,
                accuracy_note="whole held-out split", flops_per_image=519544320)
    base.update(extra)
    return base


def test_speedup_against_the_cpu_row_of_the_same_batch_size_and_settings():
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, 0.4), row("GPU", 64, 0.02),
                         row("GPU", 128, 0.01), row("GPU", 128, 0.005, precision="mixed_bfloat16")])
    table = summary.summary_frame(runs)
    assert list(table["Speed-up vs CPU"]) == ["1.00×", "1.00×", "10.00×", "40.00×", "–"]
    assert "Precision" in table.columns                  # it varies, so it is shown
    assert list(table["Images/s"])[:2] == ["320", "320"]
    assert list(table["Accuracy"])[0] == "25.00 %"


def test_with_auto_precision_each_device_is_compared_at_its_own_default():
    runs = pd.DataFrame([row("CPU", 64, 0.2, precision="mixed_bfloat16", precision_requested="auto"),
                         row("GPU", 64, 0.02, precision="fp32", precision_requested="auto"),
                         row("GPU", 64, 0.01, precision="mixed_bfloat16",
                             precision_requested="mixed_bfloat16")])
    assert list(summary.summary_frame(runs)["Speed-up vs CPU"]) == ["1.00×", "10.00×", "–"]


def test_skipped_cells_are_one_note_not_rows_and_failed_rows_say_why():
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, None, status="failed", reason="worker killed"),
                         row("GPU", 64, None, status="skipped", reason="no GPU detected"),
                         row("GPU", 128, None, status="skipped", reason="no GPU detected")])
    table = summary.summary_frame(runs)
    assert list(table["Device Type"]) == ["CPU", "CPU"]           # no skipped rows in the table
    assert table["Time"].iloc[1] == "failed: worker killed"
    notes = " ".join(summary.describe_settings(runs))
    assert "Not measured** (2 cell(s) on gpu:0): no GPU detected" in notes
    assert "No GPU was measured" in notes
    cpu_only = runs[runs["device_type"] == "CPU"]
    assert "this machine has no GPU" in " ".join(summary.describe_settings(cpu_only, {"gpus": []}))
    assert "no GPU was requested" in " ".join(
        summary.describe_settings(cpu_only, {"gpus": [{"name": "A100"}]}))


def test_repeats_are_aggregated_by_their_median():
    runs = pd.DataFrame([row("CPU", 64, 0.2, repeat=0, heldout_accuracy=0.40),
                         row("CPU", 64, 0.4, repeat=1, heldout_accuracy=0.42),
                         row("CPU", 64, 0.3, repeat=2, heldout_accuracy=0.44)])
    table = summary.summary_frame(runs)
    assert len(table) == 1 and table["Median step"].iloc[0] == "300.0 ms"
    assert table["Repeats"].iloc[0] == "3/3"
    assert table["Accuracy"].iloc[0] == "42.00 % ± 2.00"   # the spread across seeds is shown
    assert "mean ± standard deviation" in " ".join(summary.describe_settings(runs))


def test_accuracy_on_part_of_the_split_says_so_and_no_eval_says_not_measured():
    part = pd.DataFrame([row("CPU", 64, 0.2, heldout_images=2000)])
    assert summary.summary_frame(part)["Accuracy"].iloc[0] == "25.00 % (first 2,000 images)"
    assert "first 2,000 of the 10,000 held-out images" in " ".join(summary.describe_settings(part))
    none = pd.DataFrame([row("CPU", 64, 0.2, heldout_images=0, heldout_accuracy=None,
                             accuracy_note="not measured: evaluation skipped (--no-eval)")])
    assert summary.summary_frame(none)["Accuracy"].iloc[0] == "not measured"
    assert "evaluation skipped" in " ".join(summary.describe_settings(none))


def test_a_run_with_restricted_cpus_says_so():
    runs = pd.DataFrame([row("CPU", 64, 0.2)])
    env = {"cpu": {"usable_cpus": 1, "logical_cpus": 2, "usable_cpus_reason": "affinity"}}
    assert "could use 1 of the machine's 2 logical CPUs (affinity)" in " ".join(summary.describe_settings(runs, env))
    assert "Restricted" not in " ".join(summary.describe_settings(runs, {"cpu": {"usable_cpus": 2, "logical_cpus": 2}}))


def test_contention_is_shown_when_it_is_not_negligible():
    quiet = pd.DataFrame([row("CPU", 64, 0.2, other_cpu_pct=2.0, steal_pct=0.0)])
    assert "negligible" in " ".join(summary.describe_settings(quiet))
    busy = pd.DataFrame([row("CPU", 64, 0.2, other_cpu_pct=48.0, steal_pct=0.0,
                             contention_note="python (pid 7) used 96 %")])
    text = " ".join(summary.describe_settings(busy))
    assert "Machine busy" in text and "48 %" in text and "pid 7" in text


def test_the_machine_label_names_the_system():
    runs = pd.DataFrame([row("CPU", 64, 0.2, machine_label="lab box")])
    assert summary.summary_frame(runs)["System"].iloc[0] == "lab box (Test OS)"


@pytest.mark.parametrize("seconds, text", [(8.61, "8.6 s"), (1272, "21 m 12 s"),
                                           (3725, "1 h 2 m 5 s"), (float("nan"), "–")])
def test_format_duration(seconds, text):
    assert summary.format_duration(seconds) == text


def test_float16_rows_on_a_cpu_without_float16_say_why_they_are_slow():
    runs = pd.DataFrame([row("CPU", 64, 0.2, precision="mixed_float16")])
    assert "emulated" in " ".join(summary.describe_settings(runs, {"cpu": {"flags": ["avx512f"]}}))
    assert "emulated" not in " ".join(summary.describe_settings(runs, {"cpu": {"flags": ["avx512_fp16"]}}))
