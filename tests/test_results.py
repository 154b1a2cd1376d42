"""bench.results: rows, the summary table, and validation of files read back."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import results


def row(device_type, batch, median, status="ok", precision="fp32", **extra):
    base = {c: None for c in results.RUN_COLUMNS}
    base.update(run_id="r", cell_id=f"{device_type}{batch}{precision}", status=status, reason="",
                system="Test OS", device_id="cpu" if device_type == "CPU" else "gpu:0",
                device_name=f"Test {device_type}", device_type=device_type, batch_size=batch,
                precision=precision, jit_compile="auto", cpu_threads=0, steps_per_execution=1,
                data_placement="host", data_placement_requested="auto", data="cifar10", split="standard", epochs=1, steps_per_epoch=50, warmup_steps=5,
                step_median_s=median, images_per_s=batch / median if median else None,
                train_s=median * 50 if median else None, heldout_accuracy=0.25,
                heldout_images=10000, projected_seed_run_s=1000.0, startup_s=3.0, data_load_s=1.5,
                accuracy_note="whole held-out split")
    base.update(extra)
    return base


def test_speedup_against_the_cpu_row_of_the_same_batch_size_and_settings():
    runs = pd.DataFrame([row("CPU", 64, 0.2), row("CPU", 128, 0.4), row("GPU", 64, 0.02),
                         row("GPU", 128, 0.01), row("GPU", 128, 0.005, precision="mixed_bfloat16")])
    table = results.summary_frame(runs)
    assert list(table["Speed-up vs CPU"]) == ["1.00×", "1.00×", "10.00×", "40.00×", "–"]
    assert "Precision" in table.columns                  # it varies, so it is shown
    assert list(table["Images/s"])[:2] == ["320", "320"]
    assert list(table["Accuracy"])[0] == "25.00 %"


def test_with_auto_precision_each_device_is_compared_at_its_own_default():
    runs = pd.DataFrame([row("CPU", 64, 0.2, precision="mixed_bfloat16", precision_requested="auto"),
                         row("GPU", 64, 0.02, precision="fp32", precision_requested="auto"),
                         row("GPU", 64, 0.01, precision="mixed_bfloat16",
                             precision_requested="mixed_bfloat16")])
    assert list(results.summary_frame(runs)["Speed-up vs CPU"]) == ["1.00×", "10.00×", "–"]


def test_skipped_and_failed_rows_say_so_in_the_table():
    runs = pd.DataFrame([row("CPU", 64, 0.2),
                         row("GPU", 64, None, status="skipped", reason="no GPU detected")])
    table = results.summary_frame(runs)
    assert table["Time"].iloc[1] == "skipped: no GPU detected"
    notes = " ".join(results.describe_settings(runs))
    assert "No GPU was measured" in notes and "no GPU detected" in notes
    cpu_only = runs[runs["device_type"] == "CPU"]
    assert "this machine has no GPU" in " ".join(results.describe_settings(cpu_only, {"gpus": []}))
    assert "no GPU was requested" in " ".join(
        results.describe_settings(cpu_only, {"gpus": [{"name": "A100"}]}))


def test_repeats_are_aggregated_by_their_median():
    runs = pd.DataFrame([row("CPU", 64, 0.2, repeat=0, heldout_accuracy=0.40),
                         row("CPU", 64, 0.4, repeat=1, heldout_accuracy=0.42),
                         row("CPU", 64, 0.3, repeat=2, heldout_accuracy=0.44)])
    table = results.summary_frame(runs)
    assert len(table) == 1 and table["Median step"].iloc[0] == "300.0 ms"
    assert table["Repeats"].iloc[0] == "3/3"
    assert table["Accuracy"].iloc[0] == "42.00 % ± 2.00"   # the spread across seeds is shown
    assert "mean ± standard deviation" in " ".join(results.describe_settings(runs))


@pytest.mark.parametrize("seconds, text", [(8.61, "8.6 s"), (1272, "21 m 12 s"),
                                           (3725, "1 h 2 m 5 s"), (float("nan"), "–")])
def test_format_duration(seconds, text):
    assert results.format_duration(seconds) == text


def write_run(directory, runs_text=None, steps_text=None, env_text="{}"):
    directory.mkdir(exist_ok=True)
    frame = pd.DataFrame([row("CPU", 64, 0.2)], columns=list(results.RUN_COLUMNS))
    (directory / results.RUNS_CSV).write_text(runs_text or frame.to_csv(index=False))
    (directory / results.STEPS_CSV).write_text(
        steps_text or "run_id,cell_id,epoch,step,steps,seconds,warmup\nr,CPU64fp32,0,0,1,0.5,True\n"
                      "r,CPU64fp32,0,1,1,0.2,False\n")
    (directory / results.ENV_JSON).write_text(env_text)
    return directory


def test_a_valid_run_reads_back(tmp_path):
    run = results.read_run(write_run(tmp_path / "run"))
    assert run.runs["batch_size"].iloc[0] == 64 and run.steps["warmup"].tolist() == [True, False]
    assert run.steady_steps("CPU64fp32").tolist() == [0.2]


def test_runs_written_before_data_placement_existed_read_as_host(tmp_path):
    frame = pd.DataFrame([row("CPU", 64, 0.2)], columns=list(results.RUN_COLUMNS))
    old = frame.drop(columns=["data_placement", "data_placement_requested", "data_device"])
    run = results.read_run(write_run(tmp_path / "run", runs_text=old.to_csv(index=False)))
    assert run.runs["data_placement"].tolist() == ["host"]
    assert run.runs["data_placement_requested"].tolist() == ["host"]


@pytest.mark.parametrize("files, message", [
    ({"runs_text": "a,b\n1,2\n"}, "missing column"),
    ({"runs_text": "run_id,cell_id,status,device_id,device_type,batch_size,step_median_s\n"
                   "r,c,ok,cpu,CPU,__import__('os'),0.1\n"}, "non-number"),
    ({"runs_text": "run_id,cell_id,status,device_id,device_type,batch_size,step_median_s\n"
                   "r,c,exploded,cpu,CPU,64,0.1\n"}, "unknown status"),
    ({"steps_text": "run_id,cell_id,epoch,step,steps,seconds,warmup\nr,c,0,0,1,0.1,maybe\n"}, "True/False"),
    ({"env_text": "[1, 2]"}, "JSON object"),
    ({"env_text": "{not json"}, "not readable JSON"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, files, message):
    directory = write_run(tmp_path / "run", **files)
    with pytest.raises(results.ResultsError, match=message) as caught:
        results.read_run(directory)
    assert str(directory) in str(caught.value)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    writer = results.RunWriter(tmp_path, "r")
    writer.write_env({"system": "x"})
    writer.add(row("CPU", 64, 0.2), [{"run_id": "r", "cell_id": "c", "epoch": 0, "step": 0,
                                      "steps": 1, "seconds": 0.2, "warmup": False}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.json", "runs.csv", "steps.csv"]
    assert json.loads((tmp_path / "env.json").read_text()) == {"system": "x"}
    assert "64,fp32" in (tmp_path / "runs.csv").read_text()  # whole numbers stay whole


def test_latest_run_and_no_runs(tmp_path):
    with pytest.raises(results.ResultsError, match="no runs here yet"):
        results.latest_run(tmp_path)
    write_run(tmp_path / "20260101-000000")
    write_run(tmp_path / "20260102-000000")
    assert results.latest_run(tmp_path).name == "20260102-000000"
