"""Run directories made from given step times, through the real writer and row builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fake_results import fake_result

from bench import matrix, record, store
from bench.devices import Device, Requested

ENV = {"system": "Test OS", "python": "3.11.7", "cpu": {"model": "Test CPU", "logical_cpus": 2,
                                                        "usable_cpus": 2},
       "memory_bytes": 2**34, "gpus": [], "machine": "x86_64",
       "tensorflow": {"version": "2.21.0", "keras": "3.15.1", "onednn_enabled": True}}
TEST_CPU = Requested("cpu", Device("cpu", "CPU", "Test CPU", 2, 2, 2**34))


def cell(batch: int, repeat: int = 0, device: Requested = TEST_CPU, **values) -> matrix.Cell:
    """A planned cell with the given dimension values (others at their defaults, auto resolved)."""
    axes = matrix.Plan({"batch_size": (batch,), "precision": ("fp32",),
                        **{k: (v,) for k, v in values.items()}})
    return matrix.plan(axes, [device], repeat + 1, 50_000)[-1]


def write_run(directory: Path, cells: dict, env: dict = ENV, warmup: int = 3,
              device: Requested = TEST_CPU, contention: dict | None = None,
              train: dict | None = None) -> Path:
    """A run directory whose cells (batch size, or (batch size, {dimension: value}) -> steady
    step times, or a list of them, one per repeat) are as given.

    A cell's values may name its ``device`` (a Requested; default ``device``); ``train``
    overrides what the fake worker reports (``data``, ``heldout_accuracy``, ...)."""
    directory.mkdir(parents=True)
    writer = store.RunWriter(directory, directory.name)
    writer.write_env(env)
    context = {"run_id": directory.name, "system": env["system"], "git_commit": None,
               "machine_label": env.get("machine_label")}
    for key, repeats in cells.items():
        batch, values = key if isinstance(key, tuple) else (key, {})
        values = dict(values)
        cell_device = values.pop("device", device)
        per_repeat = isinstance(repeats, list) and len(repeats) and np.ndim(repeats[0]) == 1
        for repeat, steady in enumerate(repeats if per_repeat else [repeats]):
            planned_cell = cell(batch, repeat, cell_device, **values)
            result = fake_result(batch, [1.0] * warmup + list(np.asarray(steady)), warmup, **(train or {}))
            planned = record.planned(planned_cell, {"data": "synthetic", "split": "standard",
                                                    "epochs": 1, "warmup_steps": warmup}, context)
            writer.add(record.ok_row(planned, result, contention=contention),
                       record.step_rows(directory.name, planned_cell.cell_id, result.train.records))
    return directory
