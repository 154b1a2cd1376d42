"""cifar_model.data against hostile files: small files that declare huge sizes, bad labels.

Every case must end in a one-line DataError naming the file, without a big allocation:
each runs under a memory guard (tracemalloc's peak, and an address-space limit so that a
regression fails with MemoryError instead of eating the shared machine).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import struct
import tarfile
import tracemalloc

import numpy as np
import pytest
from conftest import write_archive

from cifar_model import data as cdata
from cifar_model.data import DataError, read_cifar10

PEAK_LIMIT = 32 * 2**20  # far above these tiny files, far below what the attacks declare
ADDRESS_SPACE_HEADROOM = 1 * 2**30

resource = pytest.importorskip("resource")


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def bounded_memory():
    """Fail (MemoryError) past 1 GiB more address space; report tracemalloc's peak."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    tracemalloc.start()
    peak = {}
    try:
        yield peak
    finally:
        peak["bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(path, *expected: str) -> str:
    """read_cifar10(path) raises a one-line DataError containing ``expected``, cheaply."""
    with bounded_memory() as peak, pytest.raises(DataError) as caught:
        read_cifar10(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    for part in expected:
        assert part in message, message
    assert peak["bytes"] < PEAK_LIMIT, f"peak {peak['bytes']:,} bytes for: {message}"
    return message


# ---------------------------------------------------------------- hand-written pickle opcodes

def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_int(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8 or 1, "little", signed=True)
    size = bytes([len(raw)]) if len(raw) < 256 else None
    return (b"\x8a" + size if size else b"\x8b" + struct.pack("<i", len(raw))) + raw


def op_bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


NONE, FALSE, TRUE = b"N", b"\x89", b"\x88"


def op_dtype(code: str = "u1") -> bytes:
    state = op_tuple(op_int(3), op_str("|"), NONE, NONE, NONE, op_int(-1), op_int(-1), op_int(0))
    return op_global("numpy", "dtype") + op_tuple(op_str(code), FALSE, TRUE) + b"R" + state + b"b"


def op_array(shape: tuple[int, ...], raw: bytes, code: str = "u1",
             placeholder: tuple[int, ...] = (0,)) -> bytes:
    """What numpy's ndarray.__reduce__ writes: _reconstruct(ndarray, (0,), 'b') + BUILD(state)."""
    empty = op_global("numpy.core.multiarray", "_reconstruct") + op_tuple(
        op_global("numpy", "ndarray"), op_tuple(*map(op_int, placeholder)), op_bytes(b"b")) + b"R"
    state = op_tuple(op_int(1), op_tuple(*map(op_int, shape)), op_dtype(code), FALSE, op_bytes(raw))
    return empty + state + b"b"


def op_batch(data: bytes, labels: bytes) -> bytes:
    """A pickled {'data': ..., 'labels': ...}: the fields a CIFAR-10 batch needs."""
    return b"\x80\x03}(" + op_str("data") + data + op_str("labels") + labels + b"u."


def labels_list(n: int) -> bytes:
    return b"(" + b"".join(op_int(i % 10) for i in range(n)) + b"l"


def test_the_hand_written_opcodes_make_a_real_batch():
    # The attacks below differ from this in one declared size each.
    raw = bytes(range(256)) * 24  # 2 x 3072
    x, y = cdata._parse_python_batch(op_batch(op_array((2, 3072), raw), labels_list(2)), "b")
    assert x.shape == (2, 32, 32, 3) and list(y) == [0, 1]
    assert x[1, 0, 0, 0] == raw[3072] and type(x) is np.ndarray


# ---------------------------------------------------------------- pickles declaring huge sizes

HUGE = 10**12

HOSTILE_PICKLES = {
    # numpy's placeholder is (0,); a 10^12-element one would be allocated by _reconstruct
    "reconstruct_shape": (op_batch(op_array((2, 3072), b"", placeholder=(HUGE,)), labels_list(2)),
                          "refusing _reconstruct with shape"),
    # the state declares 10^12 elements and carries 3 bytes
    "state_shape": (op_batch(op_array((HUGE,), b"abc"), labels_list(2)), "declares shape"),
    "state_shape_2d": (op_batch(op_array((10**8, 3072), b"abc"), labels_list(2)),
                       "declares shape"),
    # an object array of 10^9 pointers is zero-filled: gigabytes touched
    "object_dtype": (op_batch(op_array((10**9,), b"", code="O"), labels_list(2)),
                     "refusing array dtype"),
    # 'numpy.ndarray' called directly with a shape allocates it
    "ndarray_called": (op_batch(op_global("numpy", "ndarray") + op_tuple(op_tuple(op_int(10**9)))
                                + b"R", labels_list(2)), "data_batch_1"),
    # BINBYTES8 declaring 10^12 bytes: the unpickler allocates before reading
    "binbytes8": (b"\x80\x04\x8e" + struct.pack("<Q", HUGE) + b"abc.", "expected"),
    # a memo slot 2^31: the unpickler grows (and zeroes) its memo table to it
    "memo_index": (b"\x80\x02N" + b"r" + struct.pack("<I", 2**31) + b".", "memo index"),
    # a million empty lists from a 1 MB file: ~80 MB of objects
    "many_objects": (op_batch(op_array((2, 3072), bytes(6144)), b"(" + b"]" * 10**6 + b"l"),
                     "pickle opcodes"),
    # a dict of 200,000 keys
    "many_keys": (b"\x80\x02}(" + b"".join(b"J" + struct.pack("<i", i) + b"N"
                                           for i in range(200_000)) + b"u.", "pickle opcodes"),
    "frame": (b"\x80\x04\x95" + struct.pack("<Q", HUGE) + b"N.", "frame"),
}


@pytest.mark.parametrize("payload, expected", HOSTILE_PICKLES.values(), ids=HOSTILE_PICKLES.keys())
def test_pickles_declaring_huge_sizes_are_refused_before_allocating(python_layout, payload,
                                                                    expected):
    assert len(payload) < 2 * 2**20
    (python_layout / "data_batch_1").write_bytes(payload)
    refused(python_layout, "data_batch_1", expected)


def test_a_deeply_nested_label_list_is_refused(python_layout):
    depth = 50_000  # within the opcode bound: it must be stopped by the label check
    nested = b"]" * depth + b"a" * (depth - 1)
    (python_layout / "data_batch_1").write_bytes(op_batch(op_array((2, 3072), bytes(6144)), nested))
    refused(python_layout, "data_batch_1", "must be integers 0-9, found a list")


def test_a_pickled_dtype_is_always_a_copy():
    # numpy.dtype('i4', False, False) is numpy's shared int32: BUILD would set *its* state.
    assert cdata._dtype_from_pickle("i4", False, False) is not np.dtype("i4")


# ---------------------------------------------------------------- files too big, or wrong length

@pytest.mark.parametrize("layout, filename, size", [
    ("python", "data_batch_1", 100 * 2**20),
    ("binary", "data_batch_1.bin", cdata.MAX_BINARY_BATCH_BYTES + cdata.BINARY_RECORD),
    ("python", "batches.meta", 2**20),
])
def test_files_larger_than_the_format_allows_are_refused_unread(python_layout, binary_layout,
                                                                layout, filename, size):
    folder = python_layout if layout == "python" else binary_layout
    with open(folder / filename, "r+b") as f:
        f.truncate(size)  # sparse: costs no disk
    refused(folder, filename, f"{size:,} bytes", "refusing to read it")


def test_binary_file_of_the_wrong_length(binary_layout):
    (binary_layout / "data_batch_2.bin").write_bytes(bytes(2 * cdata.BINARY_RECORD + 5))
    refused(binary_layout, "data_batch_2.bin", "truncated", "not a whole number")


def test_more_images_than_a_batch_holds():
    too_many = np.broadcast_to(np.zeros(3072, np.uint8), (10_001, 3072))  # no memory
    with pytest.raises(DataError, match="b: 10,001 images; .* at most 10,000"):
        cdata._checked(too_many, [0] * 10_001, "b")


# ---------------------------------------------------------------- archives

def tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def write_gz(path, *parts: bytes):
    path.write_bytes(gzip.compress(b"".join(parts)))
    return path


def test_archive_member_claiming_a_huge_size_is_refused_unread(tmp_path):
    archive = write_gz(tmp_path / "cifar-10-python.tar.gz",
                       tar_header("cifar-10-batches-py/data_batch_1", 10**11), b"\0" * 1024)
    refused(archive, "data_batch_1", "the archive says it is 100,000,000,000 bytes")


def test_archive_skipping_a_huge_unwanted_member_is_bounded(tmp_path):
    archive = write_gz(tmp_path / "cifar-10-python.tar.gz",
                       tar_header("cifar-10-batches-py/readme.html", 10**12), b"\0" * 1024)
    refused(archive, "more than 536,870,912 bytes decompressed")


def test_archive_with_a_huge_gnu_long_name_is_refused_unread(tmp_path):
    # tarfile reads a long-name record whole: 64 MiB of zeros gzip to 64 KB.
    size = 64 * 2**20
    archive = write_gz(tmp_path / "cifar-10-python.tar.gz",
                       tar_header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME),
                       bytes(size), tar_header("x", 0))
    assert archive.stat().st_size < 2**20
    refused(archive, "archive record of 67,108,864 bytes")


def test_archive_with_too_many_members(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(cdata.MAX_ARCHIVE_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"junk/{i}"), io.BytesIO())
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buffer.getvalue())
    refused(archive, "more than 64 members")


def test_archive_with_a_hostile_pickle_names_the_member(tmp_path, python_layout):
    (python_layout / "test_batch").write_bytes(HOSTILE_PICKLES["state_shape"][0])
    archive = write_archive(python_layout, tmp_path / "cifar-10-python.tar.gz")
    refused(archive, "cifar-10-python.tar.gz:test_batch", "declares shape")


# ---------------------------------------------------------------- labels, empty batches

@pytest.mark.parametrize("labels, expected", [
    ([0, 10**9], "labels must be 0-9, found 1 outside (e.g. 1000000000)"),
    ([-1, 0], "labels must be 0-9, found 1 outside (e.g. -1)"),
    ([0, 10**5000], "e.g. a 16610-bit integer"),
    ([0, 1.0], "must be integers 0-9, found a float"),
    ([0, "3"], "found a str"),
    ([True, False], "found a bool"),
    ([0, None], "found a NoneType"),
    ([[0], [1]], "found a list"),
    ({0: 1, 1: 2}, "found a dict"),
    (np.array([0.0, 1.0]), "found a float64 array"),
    (np.array([[0, 1]]), "of shape (1, 2)"),
    (np.array([0, 10**9]), "found 1 outside"),
])
def test_bad_labels_are_one_line_errors_naming_the_file(python_layout, labels, expected):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
    (python_layout / "data_batch_5").write_bytes(pickle.dumps(batch, protocol=2))
    refused(python_layout, "data_batch_5", expected)


def test_integer_label_arrays_and_tuples_are_accepted():
    data = np.zeros((2, 3072), np.uint8)
    for labels in (np.array([3, 9], np.uint8), (3, 9)):
        assert list(cdata._checked(data, labels, "b")[1]) == [3, 9]


def test_binary_labels_out_of_range(binary_layout):
    target = binary_layout / "test_batch.bin"
    records = bytearray(target.read_bytes())
    records[cdata.BINARY_RECORD] = 200  # the second record's label byte
    target.write_bytes(bytes(records))
    refused(binary_layout, "test_batch.bin", "found 1 outside (e.g. 200)")


def test_empty_batch_is_refused(python_layout):
    batch = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (python_layout / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=4))
    refused(python_layout, "data_batch_2", "no images")


@pytest.mark.parametrize("protocol", [2, 4])
def test_an_empty_batch_is_empty_not_unsafe(python_layout, protocol):
    # protocol 2 (the format's own) writes an empty array's data as a call of bytes()
    batch = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (python_layout / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    message = refused(python_layout, "data_batch_2", "no images")
    assert "unsafe" not in message


def test_bytes_with_an_argument_is_still_refused():
    crafted = b"\x80\x02c__builtin__\nbytes\n]q\x00(K\x01e\x85R."  # bytes([1]): not an empty array's data
    with pytest.raises(DataError, match="unsafe pickle, bytes"):
        cdata.safe_unpickle(crafted, "x")


def test_class_names_must_be_strings(python_layout):
    (python_layout / "batches.meta").write_bytes(pickle.dumps({b"label_names": list(range(10))}))
    refused(python_layout, "batches.meta", "must be a list of strings")


def test_a_layout_symlink_to_its_parent_does_not_loop(tmp_path):
    (tmp_path / "cifar-10-batches-py").symlink_to(".")
    message = refused(tmp_path, "no CIFAR-10 files here")
    assert message.count("cifar-10-batches-py") == 1
