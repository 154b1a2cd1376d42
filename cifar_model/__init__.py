"""The seed CIFAR-10 network, its data and one timed training run.

Usable on its own, without the ``bench`` harness::

    from cifar_model import TrainSettings, load_dataset, train
    result = train(load_dataset(), TrainSettings(batch_size=128, max_steps_per_epoch=50))

It trains on the Keras backend the process imported (``KERAS_BACKEND``: tensorflow, jax or
torch); ``cifar_model.backends`` answers backend-specific questions (versions, GPUs, peak
memory, a matmul peak). Names are imported on first use, so the settings and their
vocabularies (``cifar_model.TrainSettings``, ``cifar_model.PRECISIONS``, ...), what a run
measured (``cifar_model.TrainResult``) and ``cifar_model.data`` (numpy only) never pull in
Keras or a framework.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "settings": ("BACKENDS", "BACKEND_INFO", "BACKEND_INSTALL", "BACKEND_PACKAGES", "BackendInfo",
                 "DATA_PLACEMENTS", "DEFAULT_BACKEND", "JIT_COMPILE", "MATHS", "MAX_SEED", "PRECISIONS",
                 "Precision", "SEED_RUN", "SPLITS", "SPLIT_SIZES", "STRATEGY_DOCS", "SeedRun", "TrainSettings",
                 "backend_entry", "backend_limitation", "parallel_limitation", "strategy_name",
                 "resolve_data_placement", "split_sizes", "steps_per_epoch", "training_set_bytes"),
    "data": ("CLASS_NAMES", "DataError", "DataSource", "Dataset", "DatasetNotFound", "check_cifar10",
             "load_cifar10", "load_dataset", "locate_cifar10", "read_cifar10", "resolve_source",
             "synthetic_dataset"),
    "model": ("build_model", "build_network", "compile_model", "forward_flops_per_image",
              "training_flops_per_image"),
    "backends": ("accelerator_name", "backend_name", "configure_threads", "framework_versions",
                 "measure_matmul_peak", "peak_device_memory_bytes", "visible_gpus"),
    "results": ("StepRecord", "TrainResult", "seconds_per_step"),
    "training": ("StepTimer", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'cifar_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cifar_model.{module}"), name)


def __dir__():
    return __all__
