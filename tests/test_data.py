"""cifar_model.data: both layouts, the archive, safe unpickling, search order, splits, statistics."""

from __future__ import annotations

import os
import pickle
import socket

import numpy as np
import pytest
from conftest import fake_batch, write_archive, write_binary_layout, write_python_layout

from cifar_model import data as cdata
from cifar_model.data import DataError, DatasetNotFound, load_dataset, read_cifar10


def expected_images(name: str, n: int = 20) -> np.ndarray:
    raw, _ = fake_batch(name, n)
    return raw.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("key_style", ["bytes", "str"])
def test_python_layout_both_key_styles(tmp_path, key_style):
    raw = read_cifar10(write_python_layout(tmp_path / "py", key_style=key_style))
    assert raw.x_train.shape == (100, 32, 32, 3) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (20, 32, 32, 3)
    # Channel planes R, G, B (each 32x32 row-major) must land in HWC order.
    np.testing.assert_array_equal(raw.x_train[:20], expected_images("data_batch_1"))
    np.testing.assert_array_equal(raw.x_test, expected_images("test_batch"))
    assert list(raw.y_train[:3]) == [0, 1, 2] and list(raw.y_test[:3]) == [5, 6, 7]
    assert raw.class_names[0] == "airplane" and raw.class_names[-1] == "truck"


def test_binary_layout_matches_python_layout(tmp_path):
    from_python = read_cifar10(write_python_layout(tmp_path / "py"))
    from_binary = read_cifar10(write_binary_layout(tmp_path / "bin"))
    np.testing.assert_array_equal(from_python.x_train, from_binary.x_train)
    np.testing.assert_array_equal(from_python.y_test, from_binary.y_test)
    assert from_binary.class_names == from_python.class_names


@pytest.mark.parametrize("writer", [write_python_layout, write_binary_layout])
def test_reads_the_official_archive_without_extracting(tmp_path, writer):
    folder = writer(tmp_path / "cifar-10-batches-x")
    archive = write_archive(folder, tmp_path / "cifar-10-python.tar.gz")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    raw = read_cifar10(archive)
    np.testing.assert_array_equal(raw.x_train[20:40], expected_images("data_batch_2"))


def test_parent_directory_is_searched_for_the_layout(tmp_path):
    write_python_layout(tmp_path / "cifar-10-batches-py")
    assert read_cifar10(tmp_path).x_train.shape[0] == 100


def test_pickle_with_forbidden_global_is_refused_and_never_runs(tmp_path, python_layout):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (python_layout / "data_batch_3").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(DataError) as caught:
        read_cifar10(python_layout)
    message = str(caught.value)
    assert "data_batch_3" in message and "system" in message and "unsafe" in message
    assert not marker.exists()


def test_truncated_pickle_names_the_file(python_layout):
    target = python_layout / "data_batch_2"
    target.write_bytes(target.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"data_batch_2: .*(truncated|corrupt)"):
        read_cifar10(python_layout)


def test_truncated_binary_file_names_the_file(binary_layout):
    target = binary_layout / "test_batch.bin"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"test_batch.bin: truncated"):
        read_cifar10(binary_layout)


def test_missing_batch_names_the_file(python_layout):
    (python_layout / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"data_batch_4: missing"):
        read_cifar10(python_layout)


@pytest.mark.parametrize("batch, problem", [
    ({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, "shape"),
    ({"data": np.zeros((4, 3072), np.float32), "labels": [0, 1, 2, 3]}, "uint8"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, "4 images but 3 labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, "labels must be 0-9"),
    ({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}, "CIFAR-100"),
    ([1, 2, 3], "expected a dict"),
])
def test_malformed_batches_are_named(python_layout, batch, problem):
    (python_layout / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="data_batch_1") as caught:
        read_cifar10(python_layout)
    assert problem in str(caught.value)


def test_directory_without_cifar_files(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 files"):
        read_cifar10(tmp_path)


def test_standard_and_seed_splits(python_layout):
    standard = load_dataset(python_layout, split="standard")
    assert (len(standard.x_train), len(standard.x_test)) == (100, 20)
    seed = load_dataset(python_layout, split="seed")
    # The notebook's split: the first four fifths of the training images, the last fifth
    # (data_batch_5; 10,000 of 50,000 on the real data) held out.
    assert (len(seed.x_train), len(seed.x_test)) == (80, 20)
    raw = read_cifar10(python_layout)
    np.testing.assert_array_equal(seed.y_test, raw.y_train[80:])
    # the first red pixel encodes the source batch: held out = data_batch_5 only
    assert set(np.round(seed.x_test[:, 0, 0, 0] * seed.std[0] + seed.mean[0]).astype(int)) == {4}


def test_standardisation_uses_training_statistics_only(python_layout):
    dataset = load_dataset(python_layout, split="seed")
    raw = read_cifar10(python_layout)
    train = raw.x_train[:80].reshape(80, -1).astype(np.float64)
    np.testing.assert_allclose(dataset.mean, train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(dataset.std, train.std(axis=0), rtol=1e-4)
    flat = dataset.x_train.reshape(80, -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0)[1:], 1, rtol=1e-3)  # feature 0 is constant per batch
    # Held-out images are transformed with the *training* statistics, not their own.
    held_out = raw.x_train[80:].reshape(20, -1).astype(np.float64)
    np.testing.assert_allclose(dataset.x_test.reshape(20, -1),
                               (held_out - train.mean(axis=0)) / dataset.std, rtol=1e-4, atol=1e-4)
    assert dataset.x_train.dtype == np.float32 and not dataset.synthetic


def test_constant_feature_does_not_divide_by_zero():
    x = np.full((4, 32, 32, 3), 7, np.uint8)
    train, test, _, std = cdata.standardise(x, x[:1])
    assert np.all(std == 1) and np.all(np.isfinite(train)) and np.all(test == 0)


def test_search_order_explicit_then_env_then_keras_cache_then_local(tmp_path, no_dataset_anywhere,
                                                                    monkeypatch):
    local = write_python_layout(tmp_path / "cwd" / "data" / "cifar-10-batches-py")
    assert cdata.locate_cifar10(download=False).resolve() == local.resolve()
    cache = write_python_layout(tmp_path / "keras-home" / "datasets" / "cifar-10-batches-py")
    assert cdata.locate_cifar10(download=False) == cache
    from_env = write_python_layout(tmp_path / "env")
    monkeypatch.setenv("CIFAR10_DIR", str(from_env))
    assert cdata.locate_cifar10(download=False) == from_env
    explicit = write_python_layout(tmp_path / "explicit")
    assert cdata.locate_cifar10(explicit, download=False) == explicit


def test_explicit_directory_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_env_directory_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="CIFAR10_DIR"):
        load_dataset()


def test_offline_download_fails_fast_and_falls_back_to_labelled_synthetic(no_dataset_anywhere,
                                                                          monkeypatch):
    attempts = []

    def unreachable(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(DatasetNotFound, match="cannot reach"):
        cdata.locate_cifar10()
    assert attempts and attempts[0][1] <= cdata.DOWNLOAD_TIMEOUT_S

    dataset = load_dataset(split="seed", synthetic_size=(64, 16))
    assert dataset.synthetic and dataset.label == "synthetic" and dataset.source == "synthetic"
    assert "synthetic fallback" in dataset.note and "cannot reach" in dataset.note
    assert dataset.x_train.shape == (64, 32, 32, 3) and dataset.y_test.shape == (16,)


def test_synthetic_data_has_the_real_shapes():
    dataset = cdata.synthetic_dataset("seed", n_train=None, n_test=8)
    assert dataset.x_train.shape == (40_000, 32, 32, 3) and dataset.x_train.dtype == np.float32
    assert dataset.y_train.min() >= 0 and dataset.y_train.max() <= 9
    assert "accuracy is meaningless" in dataset.note


def test_every_batch_name_is_read(python_layout):
    # A damaged file is noticed wherever it is, the test batch too.
    (python_layout / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch"):
        read_cifar10(python_layout)


@pytest.mark.parametrize("requested, device_type, memory, expected", [
    ("auto", "CPU", 2**35, "host"),          # host memory is the CPU's own: tf.data feeds it
    ("auto", "GPU", 16 * 2**30, "device"),   # 614 MB of CIFAR-10 in 16 GiB: kept on the GPU
    ("auto", "GPU", 2 * 2**30, "host"),      # more than a quarter of 2 GiB: stays on the host
    ("auto", "GPU", None, "host"),           # memory unknown: no gamble
    ("device", "CPU", None, "device"),       # explicit choices are kept
    ("host", "GPU", 16 * 2**30, "host"),
])
def test_data_placement_resolves_per_device(requested, device_type, memory, expected):
    cifar_train = cdata.training_set_bytes(50_000)
    assert 600e6 < cifar_train < 620e6
    assert cdata.resolve_data_placement(requested, device_type, memory, cifar_train) == expected


def test_an_unknown_data_placement_is_refused():
    with pytest.raises(ValueError, match="unknown data placement 'gpu'"):
        cdata.resolve_data_placement("gpu", "GPU", 2**34, 1)
