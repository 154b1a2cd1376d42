"""bench.tables, one run: the table and its notes, from rows in memory or read back."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import record, tables
from bench.config import RunConfig


def table_of(runs: pd.DataFrame, env: dict | None = None) -> pd.DataFrame:
    return tables.frame_of(tables.build([tables.in_memory(runs, env or {})]))


def notes_of(runs: pd.DataFrame, env: dict | None = None) -> list[str]:
    return tables.notes(tables.build([tables.in_memory(runs, env or {})]))


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
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, 0.4), row("GPU", 64, 0.02), row("GPU", 128, 0.01)])
    table = table_of(runs)
    assert list(table["Speed-up vs CPU"]) == ["1.00×", "1.00×", "10.00×", "40.00×"]
    assert list(table["Images/s"])[:2] == ["320", "320"]
    assert list(table["Accuracy"])[0] == "25.00 %"
    assert not any("no reference row" in n or "is –" in n for n in notes_of(runs))  # nothing to name


def test_a_gpu_row_without_a_cpu_row_of_its_settings_divides_by_the_fastest_cpu_row_and_names_it():
    runs = pd.DataFrame([row("CPU", 128, 0.4), row("CPU", 128, 0.2, precision="mixed_bfloat16"),
                         row("GPU", 128, 0.01, backend="jax"),
                         row("GPU", 128, 0.005, precision="mixed_float16")])
    table = table_of(runs)
    assert "Precision" in table.columns and "Backend" in table.columns       # they vary: shown
    assert list(table["Speed-up vs CPU"]) == ["1.00×", "1.00×", "20.00×", "40.00×"]
    [note] = [n for n in notes_of(runs) if "no reference row of the same settings" in n]
    assert "2 rows (gpu:0 jax fp32 batch 128; gpu:0 tensorflow mixed_float16 batch 128)" in note
    assert "median step of unknown CPU (Test OS) CPU tensorflow mixed_bfloat16 batch 128 ÷ this row's" in note


def test_a_row_with_no_cpu_row_at_its_batch_size_says_why():
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("GPU", 512, 0.01), row("GPU", 256, 0.01)])
    assert list(table_of(runs)["Speed-up vs CPU"]) == ["1.00×", "–", "–"]
    [note] = [n for n in notes_of(runs) if " is – " in n]
    assert note == ("**Speed-up vs CPU** is – for 2 rows (gpu:0 tensorflow fp32 batch 512; gpu:0 tensorflow "
                    "fp32 batch 256): no CPU row on unknown CPU (Test OS) at batch 512 or 256.")
    gpu_only = pd.DataFrame([row("GPU", 128, 0.01)])
    assert "no CPU row on unknown CPU (Test OS) at batch 128" in " ".join(notes_of(gpu_only))


def test_with_auto_precision_each_device_is_compared_at_its_own_default():
    runs = pd.DataFrame([row("CPU", 64, 0.2, precision="mixed_bfloat16", precision_requested="auto"),
                         row("GPU", 64, 0.02, precision="fp32", precision_requested="auto"),
                         row("GPU", 64, 0.01, precision="mixed_bfloat16",
                             precision_requested="mixed_bfloat16")])
    assert list(table_of(runs)["Speed-up vs CPU"]) == ["1.00×", "10.00×", "20.00×"]
    notes = " ".join(notes_of(runs))
    assert "of gpu:0 tensorflow mixed_bfloat16 batch 64 (no reference row" in notes   # only the fallback is named


def test_skipped_cells_are_one_note_not_rows_and_failed_rows_say_why():
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, None, status="failed", reason="worker killed"),
                         row("GPU", 64, None, status="skipped", reason="no GPU detected"),
                         row("GPU", 128, None, status="skipped", reason="no GPU detected")])
    table = table_of(runs)
    assert list(table["Device Type"]) == ["CPU", "CPU"]           # no skipped rows in the table
    assert table["Time"].iloc[1] == "failed: worker killed"
    notes = " ".join(notes_of(runs))
    assert "Not measured** (2 cell(s) on gpu:0): no GPU detected" in notes
    assert "No GPU was measured" in notes
    cpu_only = runs[runs["device_type"] == "CPU"]
    assert "this machine has no GPU" in " ".join(notes_of(cpu_only, {"gpus": []}))
    assert "no GPU was requested" in " ".join(
        notes_of(cpu_only, {"gpus": [{"name": "A100"}]}))


def test_repeats_are_aggregated_by_their_median():
    runs = pd.DataFrame([row("CPU", 64, 0.2, repeat=0, heldout_accuracy=0.40),
                         row("CPU", 64, 0.4, repeat=1, heldout_accuracy=0.42),
                         row("CPU", 64, 0.3, repeat=2, heldout_accuracy=0.44)])
    table = table_of(runs)
    assert len(table) == 1 and table["Median step"].iloc[0] == "300.0 ms"
    assert table["Repeats"].iloc[0] == "3/3"
    assert table["Accuracy"].iloc[0] == "42.00 % ± 2.00"   # the spread across seeds is shown
    assert "mean ± standard deviation" in " ".join(notes_of(runs))


def test_accuracy_on_part_of_the_split_says_so_and_no_eval_says_not_measured():
    part = pd.DataFrame([row("CPU", 64, 0.2, heldout_images=2000)])
    assert table_of(part)["Accuracy"].iloc[0] == "25.00 % (first 2,000 images)"
    assert "first 2,000 of the 10,000 held-out images" in " ".join(notes_of(part))
    none = pd.DataFrame([row("CPU", 64, 0.2, heldout_images=0, heldout_accuracy=None,
                             accuracy_note="not measured: evaluation skipped (--no-eval)")])
    assert table_of(none)["Accuracy"].iloc[0] == "not measured"
    assert "evaluation skipped" in " ".join(notes_of(none))


def test_a_run_with_restricted_cpus_says_so():
    runs = pd.DataFrame([row("CPU", 64, 0.2)])
    env = {"cpu": {"usable_cpus": 1, "logical_cpus": 2, "usable_cpus_reason": "affinity"}}
    assert "could use 1 of the machine's 2 logical CPUs (affinity)" in " ".join(notes_of(runs, env))
    assert "Restricted" not in " ".join(notes_of(runs, {"cpu": {"usable_cpus": 2, "logical_cpus": 2}}))


def test_contention_is_shown_when_it_is_not_negligible():
    quiet = pd.DataFrame([row("CPU", 64, 0.2, other_cpu_pct=2.0, steal_pct=0.0)])
    assert "negligible" in " ".join(notes_of(quiet))
    busy = pd.DataFrame([row("CPU", 64, 0.2, other_cpu_pct=48.0, steal_pct=0.0,
                             contention_note="python (pid 7) used 96 %")])
    text = " ".join(notes_of(busy))
    assert "Machine busy" in text and "48 %" in text and "pid 7" in text


def test_the_machine_label_names_the_system():
    runs = pd.DataFrame([row("CPU", 64, 0.2, machine_label="lab box")])
    assert table_of(runs)["System"].iloc[0] == "lab box (Test OS)"


@pytest.mark.parametrize("seconds, text", [(8.61, "8.6 s"), (1272, "21 m 12 s"),
                                           (3725, "1 h 2 m 5 s"), (float("nan"), "–")])
def test_format_duration(seconds, text):
    assert tables.format_duration(seconds) == text


def test_float16_rows_on_a_cpu_without_float16_say_why_they_are_slow():
    runs = pd.DataFrame([row("CPU", 64, 0.2, precision="mixed_float16")])
    assert "emulated" in " ".join(notes_of(runs, {"cpu": {"flags": ["avx512f"]}}))
    assert "emulated" not in " ".join(notes_of(runs, {"cpu": {"flags": ["avx512_fp16"]}}))


# --------------------------------------------------------------------------- true efficiency

def test_a_pinned_runs_cached_peak_never_gives_more_than_100_percent(tmp_path, monkeypatch):
    """The 155-172 % bug: a 1-CPU peak cached by a `taskset -c 0` run was the yardstick of a
    2-CPU run. Peaks are keyed by usable CPUs, so the 2-CPU run measures its own."""
    import sys
    from pathlib import Path

    from bench import runner
    from bench import yardsticks as peak
    from bench.devices import Device, Requested
    from bench.protocol import DataSpec

    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    from fake_results import fake_result

    env = {"cpu": {"model": "Test CPU", "logical_cpus": 2, "usable_cpus": 2}, "memory_bytes": 2**34,
           "gpus": [], "machine": "x86_64", "system": "Test OS"}
    cpu = Requested("cpu", Device("cpu", "CPU", "Test CPU"))
    usable_now = {}

    def measure(device, precisions, threads, backend, log_path, timeout_s=0, command=None):
        # the matmul reaches 0.2 TFLOP/s per usable CPU
        return {p: peak.MeasuredPeak(p, "float32", 2048, repeats=3, tflops=0.2 * usable_now["cpus"],
                                     median_tflops=0.1, math="ieee") for p in precisions}

    monkeypatch.setattr(peak, "measure", measure)
    combo = [(cpu, "fp32", 0, "tensorflow")]
    for cpus in (1, 2):                       # the pinned run first: its peak is cached
        usable_now["cpus"] = cpus
        found = peak.peaks_for(combo, {**env, "cpu": {**env["cpu"], "usable_cpus": cpus}},
                               {"tensorflow": "2.21.0"}, tmp_path, tmp_path / "logs", say=lambda t: None)
    measured = found[("cpu", "fp32", 0, "tensorflow")]
    assert measured.tflops == pytest.approx(0.4) and not measured.cached
    # a 2-CPU training run at 0.3 TFLOP/s (150 % of the 1-CPU peak)
    step = 519544320 * 64 / 0.3e12
    result = fake_result(64, [step] * 10, 2)
    planned = {"run_id": "r", "cell_id": "cpu_bs64_r0", "status": "ok", "device_id": "cpu",
               "device_type": "CPU", "device_name": "Test CPU", "batch_size": 64, "precision": "fp32",
               "system": "Test OS"}
    cfg = RunConfig(plan=runner.matrix.Plan({"batch_size": (64,), "precision": ("fp32",)}), epochs=1,
                    max_steps_per_epoch=6, warmup_steps=2, source=DataSpec("synthetic"))
    [cell] = runner.plan_cells(cfg, [cpu])
    ok = record.as_dict(record.ok_row(planned, result, peak.for_cell(cell, result.train, found, {})))
    assert ok["efficiency_pct"] == pytest.approx(75) and ok["efficiency_pct"] <= 100
    assert not any("harness bug" in n for n in notes_of(pd.DataFrame([ok])))


def test_efficiency_above_100_percent_is_flagged_as_a_harness_bug_naming_the_cell():
    runs = pd.DataFrame([row("CPU", 64, 0.2, efficiency_pct=163.0, efficiency_theoretical_pct=40.0),
                         row("CPU", 128, 0.4, efficiency_pct=80.0, efficiency_theoretical_pct=101.0)])
    notes = [n for n in notes_of(runs) if "harness bug" in n]
    assert len(notes) == 2
    assert "CPU64fp320 reached 163 % of its measured peak" in notes[0]
    assert "CPU128fp320 reached 101 % of its theoretical peak" in notes[1]


def test_the_theoretical_peak_is_a_column_and_its_basis_a_note():
    from bench import yardsticks

    theoretical = yardsticks.cpu_peak("fp32", flags={"avx2", "fma"}, physical_cores=1, logical_cpus=2,
                                    clock_hz=3e9, usable_cpus=2)
    runs = pd.DataFrame([row("CPU", 64, 0.2, achieved_tflops=0.0166, theoretical_tflops=theoretical.tflops,
                             efficiency_theoretical_pct=100 * 0.0166 / theoretical.tflops,
                             theoretical_basis=theoretical.basis)])
    table = table_of(runs)
    assert table["Efficiency (theoretical)"].tolist() == ["17.3 %"]     # 0.0166 of 0.096 TFLOP/s
    note = next(n for n in notes_of(runs) if "Efficiency (theoretical)" in n)
    assert "cpu fp32: 0.096 TFLOP/s, 1 cores (2 of 2 logical CPUs usable) x 3.00 GHz x 32 fp32" in note


TF_SETTING = "tf.config.experimental.tensor_float_32_execution_enabled() is True (matmuls and convolutions)"


def test_fp32_gpu_rows_say_whether_they_ran_tf32_in_the_table_and_the_notes():
    runs = pd.DataFrame([row("CPU", 64, 0.2, math="ieee", math_note="a CPU computes fp32 in IEEE fp32"),
                         row("GPU", 64, 0.02, math="tf32", math_note=TF_SETTING),
                         row("GPU", 64, 0.01, precision="mixed_bfloat16", math="bf16")])
    assert list(table_of(runs)["Precision"]) == ["fp32", "fp32 (TF32 convs)", "mixed_bfloat16"]
    [note] = [n for n in notes_of(runs) if n.startswith("**fp32 on GPU**")]
    assert f"gpu:0 (Test GPU) tensorflow: TF32 ({TF_SETTING})" in note
    assert "cpu" not in note and "bf16" not in note


def test_a_fixed_fp32_precision_says_tf32_only_when_every_row_ran_it():
    gpu = pd.DataFrame([row("GPU", 64, 0.02, math="tf32"), row("GPU", 128, 0.04, math="tf32")])
    assert "Precision fp32 (TF32 convs)" in " ".join(notes_of(gpu))
    both = pd.DataFrame([row("CPU", 64, 0.2, math="ieee"), row("GPU", 64, 0.02, math="tf32")])
    notes = " ".join(notes_of(both))
    assert "Precision fp32," in notes and "gpu:0 (Test GPU) tensorflow: TF32" in notes


def test_fp32_gpu_rows_in_ieee_or_from_older_runs_say_so():
    ieee = pd.DataFrame([row("GPU", 64, 0.02, math="ieee", backend="torch",
                             math_note="torch.backends.cudnn.allow_tf32=False (convolutions)")])
    assert table_of(ieee).get("Precision") is None                # not varying: no column
    notes = notes_of(ieee)
    assert ("**fp32 on GPU**: gpu:0 (Test GPU) torch: IEEE fp32 (torch.backends.cudnn.allow_tf32=False "
            "(convolutions))") in " ".join(notes) and "TF32 convs" not in " ".join(notes)
    older = pd.DataFrame([row("GPU", 64, 0.02)])                          # no math recorded
    assert "gpu:0 (Test GPU) tensorflow: not recorded" in " ".join(notes_of(older))
    assert not any("fp32 on GPU" in n for n in notes_of(pd.DataFrame([row("CPU", 64, 0.2)])))


def test_the_theoretical_basis_of_each_math_is_said():
    runs = pd.DataFrame([row("GPU", 64, 0.02, math="tf32", theoretical_tflops=494.7,
                             theoretical_basis="tf32 (fp32 cells run their convolutions in TF32 on this GPU: x)"),
                         row("GPU", 64, 0.03, math="ieee", backend="torch", theoretical_tflops=67.0,
                             theoretical_basis="NVIDIA H100 datasheet")])
    note = next(n for n in notes_of(runs) if "Efficiency (theoretical)" in n)
    assert ("gpu:0 fp32: 494.700 TFLOP/s, tf32 (fp32 cells run their convolutions in TF32 on this GPU: x); "
            "gpu:0 fp32: 67.000 TFLOP/s, NVIDIA H100 datasheet") in note


def test_bench_summary_of_a_pinned_run_says_its_cpus_were_restricted(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    from runs import ENV, write_run

    pinned = {**ENV, "cpu": {**ENV["cpu"], "usable_cpus": 1, "usable_cpus_reason": "affinity: CPU 0"}}
    write_run(tmp_path / "pinned", {32: [0.1] * 20}, env=pinned)
    done = subprocess.run([sys.executable, "-m", "bench", "summary", "--run", str(tmp_path / "pinned")],
                          cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("**Restricted CPUs**: this run could use 1 of the machine's 2 logical CPUs (affinity: CPU 0)"
            in done.stdout)


# --------------------------------------------------------------------------- the Markdown table

def markdown_of(runs: pd.DataFrame, env: dict | None = None) -> str:
    return tables.markdown([tables.in_memory(runs, env or {})])


def test_the_markdown_table_is_shorter_than_the_frame_and_a_failure_is_a_word_with_a_footnote():
    runs = pd.DataFrame([row("CPU", 64, 0.2, device_name="AMD EPYC"),
                         row("CPU", 128, None, status="failed", reason="worker killed by signal 9 " * 6,
                             device_name="Test CPU"),
                         row("CPU", 256, None, status="failed", reason="worker killed by signal 9 " * 6,
                             device_name="Test CPU")])
    frame, footnotes = tables.markdown_frame(tables.build([tables.in_memory(runs, {})]))
    full = table_of(runs)
    assert len(frame.columns) == len(full.columns) - 3  # Device Type, System, Speed-up 1.00×
    assert list(frame["Device"]) == ["AMD EPYC (CPU)", "Test CPU", "Test CPU"]   # the type only where the name lacks it
    assert list(frame["Time"])[1:] == ["failed [1]", "failed [1]"]                 # one footnote per reason
    assert footnotes == ["[1] failed: " + "worker killed by signal 9 " * 6]
    text = markdown_of(runs)
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert all("worker killed" not in line for line in table_lines)
    assert "- [1] failed: worker killed" in text


def test_a_cpu_only_table_leaves_out_its_speedup_column_and_note_a_gpu_row_keeps_them():
    cpu_only = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, 0.4),
                             row("GPU", 64, None, status="skipped", reason="no GPU detected")])
    text = markdown_of(cpu_only)
    assert "Speed-up" not in text and "| Images/s" in text
    with_gpu = pd.DataFrame([row("CPU", 64, 0.2), row("GPU", 64, 0.02)])
    text = markdown_of(with_gpu)
    assert "| Speed-up vs CPU" in text and "- **Speed-up vs CPU**: the median step" in text and "10.00×" in text


def test_a_hostile_label_cannot_split_the_markdown_table_or_plant_a_marker():
    runs = pd.DataFrame([row("CPU", 64, 0.2, device_name="evil | <!-- bench:table:end --> cpu\nnext")])
    text = markdown_of(runs)
    [body] = [line for line in text.splitlines() if line.startswith("| evil")]
    assert body.count(" | ") + body.count("|") - body.count("\\|") * 2 >= 2    # cells intact
    assert "\\|" in body and "<!--" not in text and "&lt;!--" in body


def blockish_word(word: str) -> bool:
    return bool(__import__("re").fullmatch(r"([-+*>#|=]+|\d+[.)])", word))


@pytest.mark.parametrize("note", [
    "a " * 80 + "end",
    "**Speed-up vs CPU** is – for 2 rows: " + "word - 1. # > + * | = " * 12,
    "x" * 150 + " short",
    "lead " * 15 + "**Not a scaling result** and `python -m bench run --devices cpu --out x` " * 3,
])
def test_a_wrapped_note_renders_as_the_one_line_it_was(note):
    wrapped = tables.wrap_note(note)
    lines = wrapped.split("\n")
    assert lines[0].startswith("- ") and all(line.startswith("  ") for line in lines[1:])
    assert " ".join([lines[0][2:]] + [line[2:] for line in lines[1:]]) == note
    for line, after in zip(lines, lines[1:] + [""]):     # a line runs over only to keep a word whole
        words = after.split()
        assert (len(line) <= tables.NOTE_WIDTH or len(line.strip().split(" ")) <= 2
                or (words and blockish_word(words[0])) or blockish_word(line.split(" ")[-1]))
    blockish = __import__("re").compile(r"^  ([-+*>#|=]+|\d+[.)])( |$)")
    assert not any(blockish.match(line) for line in lines[1:])
    if len(note) > 2 * tables.NOTE_WIDTH:
        assert len(lines) > 1
    for line in lines:                                        # spans are never broken across lines
        assert line.count("**") % 2 == 0 and line.count("`") % 2 == 0
