"""Shared fixtures: tiny CIFAR-10 copies in each official layout, and the real local copy."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO_ROOT.parent / "shared" / "datasets" / "cifar-10-batches-py"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
# Subprocesses (python -m bench, the workers) must import this checkout, not whichever copy
# the virtual environment installed (a worktree shares its venv with the main checkout).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def fake_batch(name: str, n: int) -> tuple[np.ndarray, list[int]]:
    """Deterministic images (N, 3072) whose pixels encode the batch and image index."""
    seed = BATCHES.index(name)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = seed  # first red pixel says which batch the image came from
    labels = [(i + seed) % 10 for i in range(n)]
    return data, labels


def write_python_layout(directory: Path, n: int = 20, key_style: str = "bytes") -> Path:
    """The official python layout: pickled dicts with bytes keys (as the download) or str keys."""
    directory.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if key_style == "bytes" else (lambda k: k)
    for name in BATCHES:
        data, labels = fake_batch(name, n)
        batch = {key("batch_label"): key(name), key("labels"): labels, key("data"): data,
                 key("filenames"): [key(f"{name}_{i}.png") for i in range(n)]}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {key("label_names"): [key(c) for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                  "dog", "frog", "horse", "ship", "truck")],
            key("num_cases_per_batch"): n, key("num_vis"): 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return directory


def write_binary_layout(directory: Path, n: int = 20) -> Path:
    """The official binary layout: records of 1 label byte + 3072 pixel bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in BATCHES:
        data, labels = fake_batch(name, n)
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())
    (directory / "batches.meta.txt").write_text(
        "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]) + "\n")
    return directory


def write_archive(directory: Path, archive: Path) -> Path:
    """A .tar.gz holding ``directory`` under its own name, as the official download does."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    return archive


@pytest.fixture
def python_layout(tmp_path) -> Path:
    return write_python_layout(tmp_path / "cifar-10-batches-py")


@pytest.fixture
def binary_layout(tmp_path) -> Path:
    return write_binary_layout(tmp_path / "cifar-10-batches-bin")


@pytest.fixture(scope="session")
def real_cifar_dir() -> Path:
    """The real CIFAR-10: $CIFAR10_DIR, else ../shared/datasets beside the repo.

    Under CI (CI=true) a missing copy fails the test instead of skipping it, so the
    real-data checks can never silently stop running there.
    """
    configured = os.environ.get("CIFAR10_DIR")
    path = Path(configured) if configured else SHARED_CIFAR
    if not (path / "data_batch_1").exists() and not (path / "data_batch_1.bin").exists():
        message = f"no real CIFAR-10 at {path} (set CIFAR10_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def no_dataset_anywhere(tmp_path, monkeypatch):
    """A world with no CIFAR-10: empty Keras home, empty working directory, no env var."""
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return tmp_path


# The files that take longest on 2 cores (pytest --durations=0), longest first. tox runs two
# xdist workers that take whole files in collection order (--dist loadfile
# --no-loadscope-reorder): starting the longest first lets both finish together. Only the
# order changes; a file not named here keeps its place after these.
LONGEST_FIRST = ("test_engines.py", "test_scale.py", "test_cli.py", "test_regression.py", "test_fleet.py",
                 "test_backends.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: in-file order kept
