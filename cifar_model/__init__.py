"""The seed CIFAR-10 network, its data and one timed training run.

Usable on its own, without the ``bench`` harness::

    from cifar_model import build_model, load_dataset, train
    result = train(load_dataset(), batch_size=128, epochs=1, max_steps_per_epoch=50)
"""

from cifar_model.data import (
    CLASS_NAMES,
    SPLITS,
    DataError,
    Dataset,
    DatasetNotFound,
    load_cifar10,
    load_dataset,
    read_cifar10,
    synthetic_dataset,
)
from cifar_model.model import (
    JIT_COMPILE,
    PRECISIONS,
    build_model,
    forward_flops_per_image,
    training_flops_per_image,
)
from cifar_model.training import StepRecord, StepTimer, TrainResult, train

__all__ = [
    "CLASS_NAMES", "SPLITS", "DataError", "Dataset", "DatasetNotFound", "load_cifar10",
    "load_dataset", "read_cifar10", "synthetic_dataset", "JIT_COMPILE", "PRECISIONS",
    "build_model", "forward_flops_per_image", "training_flops_per_image", "StepRecord",
    "StepTimer", "TrainResult", "train",
]
