"""bench.matrix: one table of dimensions drives planning, ids, columns, CLI, matching and labels."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from bench import cli, matrix, plots, record, tables
from bench.devices import Device, Requested
from cifar_model.settings import TrainSettings

CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU", 2, 2, 2**34))
BF16_CPU = Requested("cpu", Device("cpu", "CPU", "BF16 CPU", features=("avx512f", "avx512_bf16")))
AMPERE = Requested("gpu:0", Device("gpu:0", "GPU", "A100", compute_capability="8.0"))
MAXWELL = Requested("gpu:1", Device("gpu:1", "GPU", "GTX 960M", compute_capability="5.0"))
NO_GPU = Requested("gpu:0", None, "no GPU detected on this machine")


def two_values(d: matrix.Dimension) -> tuple:
    """Two distinct, concrete (non-auto) values of a dimension."""
    candidates = {"batch_size": (32, 64), "backend": ("tensorflow", "jax"), "precision": ("fp32", "mixed_bfloat16"),
                  "jit_compile": ("on", "off"), "cpu_threads": (0, 1), "steps_per_execution": (1, 4),
                  "data_placement": ("host", "device"), "replicas": (1, 2), "workers": (1, 2),
                  "engine": ("keras", "native")}
    return candidates[d.name]


@pytest.mark.parametrize("dimension", matrix.DIMENSIONS, ids=lambda d: d.name)
def test_every_dimension_reaches_every_place_a_cell_is_described(dimension):
    a, b = two_values(dimension)
    cells = matrix.plan(matrix.Plan({"batch_size": (64,), dimension.name: (a, b)}), [CPU], 1, 50_000)
    assert [c[dimension.name] for c in cells] == [a, b]                     # planning
    assert cells[0].cell_id != cells[1].cell_id                              # cell ids
    assert dimension.name in record.RUN_COLUMNS                              # runs.csv
    assert record.RUN_COLUMNS[dimension.name].doc                            # ... documented
    assert dimension.name in matrix.MATCH_KEYS                               # baseline matching
    settings = [c.settings(epochs=1) for c in cells]                         # the worker's settings
    assert getattr(settings[0], dimension.setting) == a and getattr(settings[1], dimension.setting) == b
    args = cli.build_parser().parse_args(["run", dimension.flag, f"{a},{b}"])   # the CLI option
    assert getattr(args, dimension.name) == (a, b)
    frame = pd.DataFrame([{**c.columns(), "run_id": "r", "cell_id": c.cell_id} for c in cells])
    labels = {c.label(matrix.varying_dimensions([frame])) for c in cells}    # check's labels
    assert len(labels) == 2
    legends = {plots.series_label(row, matrix.varying_dimensions([frame])) for _, row in frame.iterrows()}
    assert len(legends) == 2 or dimension.name == "batch_size"               # plot legends (batch: x axis)
    if dimension.name != "batch_size":                                       # summary columns
        assert tables.shown_dimensions(frame.assign(status="ok")) == [dimension.name]


def test_settings_fields_are_all_declared():
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    assert {d.setting for d in matrix.DIMENSIONS} <= fields


def test_plan_is_devices_by_every_dimension_with_repeats_outermost():
    cells = matrix.plan(matrix.Plan({"batch_size": (64, 128), "precision": ("fp32", "mixed_bfloat16")}),
                        [CPU, NO_GPU], 2, 50_000)
    assert len(cells) == 2 * 2 * 2 * 2
    assert [c.repeat for c in cells] == [0] * 8 + [1] * 8
    assert [(c.device.id, c["batch_size"], c["precision"]) for c in cells[:4]] == [
        ("cpu", 64, "fp32"), ("cpu", 64, "mixed_bfloat16"), ("cpu", 128, "fp32"),
        ("cpu", 128, "mixed_bfloat16")]
    assert len({c.cell_id for c in cells}) == len(cells)


def test_auto_precision_is_resolved_per_device_and_deduplicated():
    plan = matrix.Plan({"batch_size": (64,), "precision": ("auto", "mixed_bfloat16", "fp32")})
    planned = {(c.device.id, c["precision"]) for c in matrix.plan(plan, [BF16_CPU, CPU, AMPERE, MAXWELL], 1, 50_000)}
    assert planned == {("cpu", "mixed_bfloat16"), ("cpu", "fp32"), ("gpu:0", "mixed_bfloat16"),
                       ("gpu:0", "fp32"), ("gpu:1", "fp32"), ("gpu:1", "mixed_bfloat16")}
    cells = matrix.plan(matrix.Plan({"batch_size": (64,)}), [BF16_CPU, CPU, NO_GPU], 1, 50_000)
    assert [(c.device.found.name if c.device.found else None, c["precision"]) for c in cells] == [
        ("BF16 CPU", "mixed_bfloat16"), ("Test CPU", "fp32"), (None, "auto")]
    assert cells[0].columns()["precision_requested"] == "auto"


def test_data_placement_is_resolved_per_device():
    big = Requested("gpu:0", Device("gpu:0", "GPU", "H100", memory_bytes=80 * 2**30))
    small = Requested("gpu:1", Device("gpu:1", "GPU", "GTX 960M", memory_bytes=2 * 2**30))
    cells = matrix.plan(matrix.Plan({"batch_size": (64,)}), [CPU, big, small, NO_GPU], 1, 50_000)
    assert [(c.device.id, c["data_placement"]) for c in cells] == [
        ("cpu", "host"), ("gpu:0", "device"), ("gpu:1", "host"), ("gpu:0", "auto")]
    assert {c.columns()["data_placement_requested"] for c in cells} == {"auto"}
    both = matrix.plan(matrix.Plan({"batch_size": (64,), "data_placement": ("auto", "host", "device")}),
                       [CPU], 1, 50_000)
    assert [c["data_placement"] for c in both] == ["host", "device"]


def test_labels_name_values_that_print_like_defaults():
    # cpu threads 0 and 1 once both read "CPU bs64" in check's table
    key = {"device_type": "CPU", "device_name": "EPYC", "batch_size": 64, "cpu_threads": 0}
    assert matrix.describe(key, ["cpu_threads"]) == "CPU EPYC, bs64, cpu threads default"
    assert matrix.describe({**key, "cpu_threads": 1}, ["cpu_threads"]) == "CPU EPYC, bs64, cpu threads 1"


@pytest.mark.parametrize("text", ["", "0", "-1", "x", "fp33"])
def test_bad_values_are_refused_by_the_parser(text):
    with pytest.raises(cli.UsageError):
        cli.build_parser().parse_args(["run", "--batch-sizes" if text in ("", "0", "-1", "x") else "--precision", text])


def test_float16_on_a_cpu_without_it_is_warned_about():
    assert "emulated" in matrix.precision_warning("mixed_float16", CPU.found)
    assert matrix.precision_warning("mixed_float16", Device("cpu", "CPU", "SPR", features=("avx512_fp16",))) is None
    assert matrix.precision_warning("fp32", CPU.found) is None
