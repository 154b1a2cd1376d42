"""CIFAR-10 from disk (or a download) to standardised float32 arrays.

Where the data comes from, in order: an explicit directory (the ``data_dir`` argument or
the ``CIFAR10_DIR`` environment variable), the Keras cache
(``~/.keras/datasets/cifar-10-batches-py``), ``./data/cifar-10-batches-py`` (where the
original notebook kept it), then a download of the official archive through Keras.

Both official layouts are read: the python version (pickled ``data_batch_1`` ...
``test_batch``) and the binary version (``data_batch_1.bin`` ... ``test_batch.bin``),
as directories or as the ``.tar.gz`` archive itself. Pickles are untrusted input: they
are read with an unpickler that admits only the numpy globals an array needs.

Files are untrusted in size too: every length a file declares is checked against what
the format allows *before* anything that size is allocated, so a small hostile file
cannot make the program reserve gigabytes. What is bounded, and where:

- a file on disk: by its layout (:func:`_size_bound`): a ``.bin`` batch is at most
  10,000 records of 3,073 bytes; a pickled batch at most 64 MiB (10,000 images of 3,072
  bytes, doubled because a protocol-2 pickle written by Python 3 stores bytes as UTF-8
  text, plus the file names); a meta file 64 KiB. Larger files are refused unread.
- an archive: each wanted member's declared size against the same bounds, unread; at
  most 64 members; at most 512 MiB decompressed in all; tarfile may read at most 1 MiB
  at once (a GNU long name or pax header declaring gigabytes is refused, not read).
- a pickle, before it is unpickled (:func:`_check_opcodes`): at most 161,000 opcodes
  (the real batches need about 30,000), so no dict of 10^8 keys or list of millions of
  lists; memo indices and frame lengths within those bounds; a length that runs past
  the end of the file (``BINBYTES8`` of 10^12) is refused. CPython's unpickler would
  allocate such declared lengths and memo indices up front.
- a pickled array, while it is unpickled: ``_reconstruct`` only with numpy's empty
  placeholder shape; ``ndarray.__setstate__`` only for a plain numeric dtype (never
  ``object``) whose shape times item size equals the bytes the pickle carries; the
  ``numpy.ndarray`` global cannot be called to allocate; ``numpy.dtype`` only for a
  short type code, always as a copy (its state cannot touch numpy's shared dtypes).
- a batch: 1 to 10,000 images; labels a list (or tuple) of Python ints, or a 1-D integer
  array, all 0-9, one per image; class names strings. ``num_cases_per_batch`` in the
  meta file is never used.

Each refusal is a :class:`DataError` of one line naming the file and the problem. An
out-of-memory while reading is *not* turned into a DataError: with these bounds it
means the machine is short of memory, not that the file is corrupt.

When no dataset can be found or fetched, :func:`load_dataset` falls back to synthetic
data of the same shape, labelled as such, so speed-only runs still work offline.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
import pickle
import pickletools
import socket
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cifar_model.settings import (  # noqa: F401 - re-exported: part of the data vocabulary
    DATA_PLACEMENTS,
    IMAGE_SHAPE,
    NUM_CLASSES,
    SPLITS,
    resolve_data_placement,
    split_sizes,
    training_set_bytes,
)

ENV_VAR = "CIFAR10_DIR"
PIXELS = 32 * 32 * 3
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")

PYTHON_DIR = "cifar-10-batches-py"
BINARY_DIR = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
DOWNLOAD_TIMEOUT_S = 10.0
SYNTHETIC_SOURCE = "synthetic"

# What the format allows; see the module docstring for why each bound is what it is.
MAX_BATCH_IMAGES = 10_000
BINARY_RECORD = 1 + PIXELS
MAX_BINARY_BATCH_BYTES = MAX_BATCH_IMAGES * BINARY_RECORD
MAX_PYTHON_BATCH_BYTES = 64 * 2**20
MAX_META_BYTES = 64 * 2**10
MAX_PICKLE_OPCODES = 16 * MAX_BATCH_IMAGES + 1_000
MAX_ARCHIVE_MEMBERS = 64
MAX_ARCHIVE_BYTES = 512 * 2**20
ARCHIVE_READ_CHUNK = 2**20


class DataError(Exception):
    """A dataset file or directory is missing, truncated, malformed or unsafe.

    The message names the file and what is wrong with it.
    """


class DatasetNotFound(DataError):
    """No CIFAR-10 copy was found in any of the searched places, and none could be fetched."""


@dataclass(frozen=True)
class RawCifar10:
    """CIFAR-10 as stored: uint8 images (N, 32, 32, 3) and int labels, official split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Dataset:
    """Arrays ready for training: standardised float32 images and int32 labels.

    ``x_test``/``y_test`` are the held-out part of ``split``: the official test batch for
    ``standard``, the last 10,000 training images for ``seed``. ``mean``/``std`` are the
    per-feature statistics, computed on the training part only.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    split: str
    source: str
    synthetic: bool
    mean: np.ndarray
    std: np.ndarray
    load_seconds: float
    class_names: tuple[str, ...] = CLASS_NAMES
    note: str = ""

    @property
    def label(self) -> str:
        """``cifar10`` or ``synthetic``: what the numbers were measured on."""
        return SYNTHETIC_SOURCE if self.synthetic else "cifar10"


# --------------------------------------------------------------------------- safe unpickling

class _Unsafe(pickle.UnpicklingError):
    """A pickle asks for something a CIFAR-10 file never needs: a global, or a size."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _short(value: object) -> str:
    """``value`` for a message: a huge number (or a shape of them) stays one short line."""
    if isinstance(value, tuple):
        text = "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, int) and abs(value) >= 10**18:
        text = f"a {value.bit_length()}-bit integer"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _plain_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` if it is a plain number type (no fields, sub-arrays or Python objects)."""
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Unsafe(f"refusing array dtype {dtype.str!r}; CIFAR-10 arrays are plain numbers")
    return dtype


def _dtype_from_pickle(spec, align=False, copy=True) -> np.dtype:
    # Always a copy: the pickle's BUILD then sets the state of this copy, never of
    # numpy's shared builtin dtype (which ``copy=False`` would return).
    if not isinstance(spec, (str, bytes)) or len(spec) > 8:
        raise _Unsafe(f"refusing dtype spec of type {type(spec).__name__}; expected a type code")
    # numpy takes a bytes type code too; its stubs say str only
    return _plain_dtype(np.dtype(spec, align=bool(align), copy=True))  # type: ignore[arg-type]


def _declared_bytes(shape, dtype: np.dtype) -> int:
    if not isinstance(shape, tuple) or len(shape) > 32 \
            or not all(type(n) is int and n >= 0 for n in shape):
        raise _Unsafe("refusing array shape that is not a tuple of non-negative ints")
    return math.prod(shape) * dtype.itemsize


class _CheckedArray(np.ndarray):
    """What a pickled array is built as: its state is checked before numpy allocates it."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Unsafe("refusing array state that is not numpy's 4- or 5-tuple")
        shape, dtype, _, payload = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise _Unsafe("refusing array state without a dtype")
        declared = _declared_bytes(shape, _plain_dtype(dtype))
        if not isinstance(payload, bytes) or declared != len(payload):
            carried = len(payload) if isinstance(payload, bytes) else type(payload).__name__
            raise _Unsafe(f"an array declares shape {_short(shape)} ({declared:,} bytes) "
                          f"but carries {carried} bytes")
        super().__setstate__(state)


_NDARRAY_PLACEHOLDER = object()  # the pickle's 'numpy.ndarray': only _reconstruct's first argument


def _checked_reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for its empty placeholder only; ``__setstate__`` fills it."""
    if subtype is not _NDARRAY_PLACEHOLDER:
        raise _Unsafe("refusing _reconstruct of anything but numpy.ndarray")
    dtype = _dtype_from_pickle(dtype)
    if _declared_bytes(shape, dtype):
        raise _Unsafe(f"refusing _reconstruct with shape {_short(shape)}; numpy pickles an "
                      "empty placeholder")
    return _numpy_reconstruct()(_CheckedArray, shape, dtype)


def _codecs_encode(text, encoding="latin1"):
    # Python 3 writes ``bytes`` into protocol-2 pickles as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Unsafe("_codecs.encode is allowed only to rebuild latin-1 bytes")
    return text.encode("latin1")


def _empty_bytes(*args):
    # Python 3 writes an empty ``bytes`` (a zero-length array's data) into protocol-2 pickles
    # as a call of bytes() with no argument; any argument is something else.
    if args:
        raise _Unsafe("bytes() is allowed only without arguments (an empty array's data)")
    return b""


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): _NDARRAY_PLACEHOLDER,
    ("numpy", "dtype"): _dtype_from_pickle,
    ("_codecs", "encode"): _codecs_encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other global.

    A CIFAR-10 batch needs nothing else, and refusing everything else means a crafted
    file cannot make ``pickle`` import or call arbitrary code. The numpy globals it admits
    are checking stand-ins (see the module docstring), none a type ``NEWOBJ`` could build.
    """

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Unsafe(f"refusing to load global '{module}.{name}'; only numpy arrays are "
                          "allowed in a CIFAR-10 file")
        return allowed


_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _check_opcodes(payload: bytes) -> None:
    """Walk the pickle's opcodes without building anything, bounding what they declare.

    CPython's unpickler allocates a ``BINBYTES8``/``BYTEARRAY8`` length and a memo index
    before it reads what follows; ``pickletools.genops`` reads lengths against the bytes
    actually there. The opcode count bounds how many objects the pickle can make.
    """
    for count, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(payload)), 1):
        if count > MAX_PICKLE_OPCODES:
            raise _Unsafe(f"more than {MAX_PICKLE_OPCODES:,} pickle opcodes; a CIFAR-10 batch "
                          "needs about 3 per image")
        if opcode.name in _MEMO_OPCODES and isinstance(arg, int) and arg > MAX_PICKLE_OPCODES:
            raise _Unsafe(f"memo index {_short(arg)} is beyond any CIFAR-10 batch")
        if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(payload):
            raise _Unsafe(f"a frame declares {_short(arg)} bytes in a {len(payload):,}-byte file")


def safe_unpickle(payload: bytes, name: str) -> object:
    """Unpickle ``payload`` (from file ``name``) admitting only numpy array globals."""
    try:
        _check_opcodes(payload)
        return _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except _Unsafe as exc:
        raise DataError(f"{name}: unsafe pickle, {_one_line(exc)}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError) as exc:
        raise DataError(f"{name}: not a readable pickle ({type(exc).__name__}: "
                        f"{_one_line(exc)}); the file is corrupt or truncated, download it "
                        "again") from None


# --------------------------------------------------------------------------- the two layouts

def _text_keys(obj: object, name: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict of CIFAR-10 fields, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _parse_python_batch(payload: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _text_keys(safe_unpickle(payload, name), name)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        hint = " (this looks like CIFAR-100)" if "fine_labels" in batch else ""
        raise DataError(f"{name}: missing field(s) {', '.join(missing)}{hint}; "
                        "expected a CIFAR-10 batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{name}: 'data' must be a uint8 array of shape (N, {PIXELS}), "
                        f"found {dtype} {shape}")
    return _checked(np.asarray(data), batch["labels"], name)


def _parse_binary_batch(payload: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not payload:
        raise DataError(f"{name}: empty file; download it again")
    if len(payload) % BINARY_RECORD:
        raise DataError(f"{name}: truncated, {len(payload)} bytes is not a whole number of "
                        f"{BINARY_RECORD}-byte records; download it again")
    records = np.frombuffer(payload, dtype=np.uint8).reshape(-1, BINARY_RECORD)
    return _checked(records[:, 1:], records[:, 0], name)


def _checked_labels(labels: object, name: str) -> np.ndarray:
    """``labels`` as int32 if they are integers 0-9 (Python ints, or an integer array)."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{name}: 'labels' must be integers 0-9, found a {labels.dtype} "
                            f"array of shape {labels.shape}")
        out_of_range = labels[(labels < 0) | (labels >= NUM_CLASSES)].tolist()
    elif isinstance(labels, (list, tuple)):
        # type() rather than isinstance(): True is an int, and 1.0 or '1' would convert.
        odd = next((v for v in labels if type(v) is not int), _NO_LABEL)
        if odd is not _NO_LABEL:
            raise DataError(f"{name}: 'labels' must be integers 0-9, found a "
                            f"{type(odd).__name__}")
        out_of_range = [v for v in labels if not 0 <= v < NUM_CLASSES]
    else:
        raise DataError(f"{name}: 'labels' must be a list of integers 0-9, found a "
                        f"{type(labels).__name__}")
    if out_of_range:
        raise DataError(f"{name}: labels must be 0-9, found {len(out_of_range):,} outside "
                        f"(e.g. {_short(out_of_range[0])})")
    return np.asarray(labels, dtype=np.int32)


_NO_LABEL = object()


def _checked(data: np.ndarray, labels: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not len(data):
        raise DataError(f"{name}: no images; a CIFAR-10 batch holds {MAX_BATCH_IMAGES:,}")
    if len(data) > MAX_BATCH_IMAGES:
        raise DataError(f"{name}: {len(data):,} images; a CIFAR-10 batch holds at most "
                        f"{MAX_BATCH_IMAGES:,}")
    checked = _checked_labels(labels, name)
    if len(checked) != len(data):
        raise DataError(f"{name}: {len(data)} images but {len(checked)} labels")
    # Channel planes (R, G, B), each 32x32 row-major -> NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), checked


def _parse_meta(payload: bytes, name: str, binary: bool) -> tuple[str, ...]:
    if binary:
        names = tuple(line.strip() for line in payload.decode("utf-8", "replace").splitlines()
                      if line.strip())
    else:
        meta = _text_keys(safe_unpickle(payload, name), name)
        raw = meta.get("label_names", ())
        if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw):
            raise DataError(f"{name}: 'label_names' must be a list of strings")
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in raw)
    if len(names) != NUM_CLASSES:
        raise DataError(f"{name}: expected {NUM_CLASSES} class names, found {len(names)}")
    return names


_LAYOUTS = {
    # layout: (file suffix, meta file, parser)
    "python": ("", "batches.meta", _parse_python_batch),
    "binary": (".bin", "batches.meta.txt", _parse_binary_batch),
}
_WANTED_FILES = frozenset({b + suffix for b in (*TRAIN_BATCHES, TEST_BATCH)
                           for suffix, _, _ in _LAYOUTS.values()}
                          | {meta for _, meta, _ in _LAYOUTS.values()})


def _size_bound(filename: str) -> tuple[int, str]:
    """The most bytes the CIFAR-10 file ``filename`` can hold, and what kind of file it is."""
    if filename in {meta for _, meta, _ in _LAYOUTS.values()}:
        return MAX_META_BYTES, "meta file"
    if filename.endswith(".bin"):
        return MAX_BINARY_BATCH_BYTES, "binary batch"
    return MAX_PYTHON_BATCH_BYTES, "python batch"


def _too_big(shown: str, size: int, filename: str, claimed: str = "is") -> DataError:
    bound, kind = _size_bound(filename)
    return DataError(f"{shown}: {claimed} {size:,} bytes, more than the {bound:,} a "
                     f"CIFAR-10 {kind} can hold; refusing to read it")


_DECOMPRESSORS: dict[bytes, Callable[[BinaryIO], io.BufferedIOBase]] = {
    b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


class _BoundedStream:
    """An archive's decompressed bytes as tarfile sees them, with two limits.

    tarfile reads some records (a GNU long name, a pax header) whole, at their declared
    size: no single read may exceed ARCHIVE_READ_CHUNK. And no offset past
    MAX_ARCHIVE_BYTES is read or skipped to, which bounds the time a gzip bomb can take.
    """

    def __init__(self, raw, path: Path):
        self.raw = raw
        self.path = path

    def _refuse_past(self, offset: int) -> None:
        if offset > MAX_ARCHIVE_BYTES:
            raise DataError(f"{self.path}: more than {MAX_ARCHIVE_BYTES:,} bytes decompressed; "
                            "a CIFAR-10 archive is smaller, refusing to read on")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > ARCHIVE_READ_CHUNK:
            shown = f"{size:,}" if isinstance(size, int) else repr(size)
            raise DataError(f"{self.path}: an archive record of {shown} bytes to read at once; "
                            f"a CIFAR-10 archive has none over {ARCHIVE_READ_CHUNK:,}, refusing")
        self._refuse_past(self.raw.tell() + size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._refuse_past(offset if whence == io.SEEK_SET else self.raw.tell() + offset)
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _read_archive(path: Path) -> dict[str, bytes]:
    """The CIFAR-10 members of a (compressed) tar archive, in one pass: gzip cannot seek."""
    found = {}
    try:
        with open(path, "rb") as file:
            magic = file.read(8)
            file.seek(0)
            decompress = next((d for m, d in _DECOMPRESSORS.items() if magic.startswith(m)), None)
            with (decompress(file) if decompress else file) as stream, \
                    tarfile.open(fileobj=_BoundedStream(stream, path),  # type: ignore[call-overload]
                                 mode="r:") as archive:   # read-only: "r:" never writes; stubs want write()
                for count, member in enumerate(archive, 1):
                    if count > MAX_ARCHIVE_MEMBERS:
                        raise DataError(f"{path}: more than {MAX_ARCHIVE_MEMBERS} members; not "
                                        "a CIFAR-10 archive")
                    filename = Path(member.name).name
                    if member.isfile() and filename in _WANTED_FILES:
                        found[filename] = _read_member(archive, member, path, filename)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 archive ({_one_line(exc)}); "
                        "download it again") from None
    return found


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
                 filename: str) -> bytes:
    shown = f"{path}:{filename}"
    if member.size > _size_bound(filename)[0]:
        raise _too_big(shown, member.size, filename, claimed="the archive says it is")
    payload = bytearray(member.size)
    view = memoryview(payload)
    source = archive.extractfile(member)
    if not isinstance(source, io.BufferedIOBase):   # None for a member that is not a regular file
        raise DataError(f"{shown}: not a regular file in the archive")
    done = 0
    while done < member.size:  # chunked, so tarfile's reads stay under ARCHIVE_READ_CHUNK
        got = source.readinto(view[done:done + ARCHIVE_READ_CHUNK])
        if not got:
            raise DataError(f"{shown}: truncated inside the archive; download it again")
        done += got
    return bytes(payload)


class _Files:
    """Reads named CIFAR-10 files from a directory or from inside a .tar.gz archive.

    Each file is refused unread when it is larger than its layout allows.
    """

    def __init__(self, path: Path):
        self.path = path
        self._archive = _read_archive(path) if path.is_file() else None

    def has(self, filename: str) -> bool:
        if self._archive is not None:
            return filename in self._archive
        return (self.path / filename).is_file()

    def shown(self, filename: str) -> str:
        """How to name ``filename`` in an error message."""
        return f"{self.path}:{filename}" if self._archive is not None else str(self.path / filename)

    def read(self, filename: str) -> bytes:
        if not self.has(filename):
            raise DataError(f"{self.shown(filename)}: missing; a CIFAR-10 copy needs "
                            "data_batch_1..5 and test_batch (python or .bin layout)")
        if self._archive is not None:
            return self._archive[filename]
        shown, bound = self.shown(filename), _size_bound(filename)[0]
        try:
            with open(self.path / filename, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > bound:
                    raise _too_big(shown, size, filename)
                payload = file.read(size + 1)  # one more: a file that grew is noticed
        except OSError as exc:
            raise DataError(f"{shown}: cannot be read ({exc.strerror})") from None
        if len(payload) != size:
            raise DataError(f"{shown}: changed size while being read; try again")
        return payload


def _detect_layout(files: _Files) -> str | None:
    for layout, (suffix, _, _) in _LAYOUTS.items():
        if files.has(TRAIN_BATCHES[0] + suffix) or files.has(TEST_BATCH + suffix):
            return layout
    return None


def _open_copy(path: str | os.PathLike) -> tuple[Path, _Files, str]:
    """Where a copy's files are (a layout directory, its parent, or an archive) and its layout."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / TRAIN_BATCHES[0]).exists():
        # One level down only: a 'cifar-10-batches-py -> .' symlink must not loop.
        path = next((path / inner for inner in (PYTHON_DIR, BINARY_DIR, ARCHIVE_NAME)
                     if (path / inner).exists()), path)
    files = _Files(path)
    layout = _detect_layout(files)
    if layout is None:
        raise DataError(f"{path}: no CIFAR-10 files here (expected data_batch_1..5 and "
                        "test_batch, or their .bin versions, or cifar-10-python.tar.gz)")
    return path, files, layout


def check_cifar10(path: str | os.PathLike) -> Path:
    """Check a copy without reading all of it: every file there and within its size bound,
    the first training batch and the class names parsed in full. Returns where its files are;
    raises :class:`DataError` naming the file. (Each cell's worker reads the rest, and a
    problem there is that cell's failed row.)"""
    path, files, layout = _open_copy(path)
    suffix, meta_file, parse = _LAYOUTS[layout]
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        if not files.has(name + suffix):
            raise DataError(f"{files.shown(name + suffix)}: missing; a CIFAR-10 copy needs "
                            "data_batch_1..5 and test_batch (python or .bin layout)")
    parse(files.read(TRAIN_BATCHES[0] + suffix), files.shown(TRAIN_BATCHES[0] + suffix))
    if files.has(meta_file):
        _parse_meta(files.read(meta_file), files.shown(meta_file), layout == "binary")
    return path


def read_cifar10(path: str | os.PathLike) -> RawCifar10:
    """Read CIFAR-10 from ``path``: a python/binary layout directory, its parent, or an archive.

    Raises :class:`DataError` naming the file when anything is missing or malformed.
    """
    path, files, layout = _open_copy(path)
    suffix, meta_file, parse = _LAYOUTS[layout]
    train = [parse(files.read(b + suffix), files.shown(b + suffix)) for b in TRAIN_BATCHES]
    x_test, y_test = parse(files.read(TEST_BATCH + suffix), files.shown(TEST_BATCH + suffix))
    class_names: tuple[str, ...] = CLASS_NAMES
    if files.has(meta_file):
        class_names = _parse_meta(files.read(meta_file), files.shown(meta_file), layout == "binary")
    return RawCifar10(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test, y_test=y_test, class_names=class_names, source=str(path),
    )


# --------------------------------------------------------------------------- where to look

def keras_cache_dir() -> Path:
    """Keras's dataset cache (``$KERAS_HOME/datasets`` or ``~/.keras/datasets``)."""
    home = os.environ.get("KERAS_HOME")
    return Path(home).expanduser() / "datasets" if home else Path.home() / ".keras" / "datasets"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> tuple[list[Path], bool]:
    """The places searched, in order, and whether the first one was asked for explicitly.

    An explicit directory (argument, then ``CIFAR10_DIR``) is the only candidate: a user
    who names a directory wants that one, not a silent fallback.
    """
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        return [Path(explicit).expanduser()], True
    cache = keras_cache_dir()
    return [cache / PYTHON_DIR, cache / ARCHIVE_NAME, Path("data") / PYTHON_DIR], False


def download_cifar10(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch the official archive into the Keras cache; raise DatasetNotFound when offline.

    Reachability is probed first with a short timeout so that a machine without internet
    gets an answer in seconds instead of hanging in a download.
    """
    host = ARCHIVE_ORIGIN.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as exc:
        raise DatasetNotFound(f"cannot reach {host} to download CIFAR-10 ({exc})") from None
    import keras  # imported here: it pulls in the backend, which nothing else here needs

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(max(timeout_s, 30.0))
    try:
        path = keras.utils.get_file(fname=ARCHIVE_NAME, origin=ARCHIVE_ORIGIN,
                                    file_hash=ARCHIVE_MD5, cache_subdir="datasets")
    except Exception as exc:  # noqa: BLE001 - any download failure means "not available"
        raise DatasetNotFound(f"download of {ARCHIVE_ORIGIN} failed ({exc})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return Path(path)


def locate_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return where CIFAR-10 is, searching (and downloading) in the documented order."""
    candidates, explicit = candidate_dirs(data_dir)
    if explicit:
        if not candidates[0].exists():
            origin = "--data-dir/data_dir" if data_dir is not None else ENV_VAR
            raise DataError(f"{candidates[0]}: CIFAR-10 directory does not exist (from "
                            f"{origin}); point it at a cifar-10-batches-py directory")
        return candidates[0]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    if not download:
        raise DatasetNotFound(f"no CIFAR-10 copy found (searched {searched}; download disabled)")
    try:
        return download_cifar10()
    except DatasetNotFound as exc:
        raise DatasetNotFound(f"no CIFAR-10 copy found (searched {searched}) and {exc}") from None


# --------------------------------------------------------------------------- splits and arrays

def split_arrays(raw: RawCifar10, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_held_out, y_held_out) as uint8 images and int labels.

    ``standard``: all 50,000 training images / the official 10,000 test images.
    ``seed``: the notebook's split: the first four fifths of the training images (40,000)
    to train on, the last fifth (10,000, i.e. data_batch_5) held out.
    """
    if split == "standard":
        return raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if split == "seed":
        cut = len(raw.x_train) - len(raw.x_train) // 5
        return raw.x_train[:cut], raw.y_train[:cut], raw.x_train[cut:], raw.y_train[cut:]
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def standardise(x_train: np.ndarray, x_test: np.ndarray):
    """Per-feature standardisation with statistics from the training part only.

    Returns float32 (x_train, x_test, mean, std); each of the 3,072 pixel-channel features
    gets its own mean and std. A constant feature keeps std 1 (it would divide by zero).
    The notebook computed these over all 50,000 images, leaking its held-out images into
    the statistics; here the held-out part never influences them.
    """
    train = x_train.reshape(len(x_train), -1).astype(np.float32)
    mean = train.mean(axis=0, dtype=np.float64).astype(np.float32)
    train -= mean
    # Population std from the centred data; einsum accumulates in float64 without a
    # float64 copy of the whole array (ndarray.std makes one: 10x slower here).
    squares = np.einsum("ij,ij->j", train, train, dtype=np.float64)
    std = np.sqrt(squares / len(train)).astype(np.float32)
    std[std == 0] = 1.0
    train /= std
    test = (x_test.reshape(len(x_test), -1).astype(np.float32) - mean) / std
    return (train.reshape(x_train.shape), test.reshape(x_test.shape), mean, std)


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "standard",
                 download: bool = True) -> Dataset:
    """Load real CIFAR-10, split and standardise it. Raises DataError / DatasetNotFound."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    started = time.perf_counter()
    raw = read_cifar10(locate_cifar10(data_dir, download=download))
    x_train, y_train, x_test, y_test = split_arrays(raw, split)
    x_train, x_test, mean, std = standardise(x_train, x_test)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   split=split, source=raw.source, synthetic=False, mean=mean, std=std,
                   load_seconds=time.perf_counter() - started, class_names=raw.class_names)


def synthetic_dataset(split: str = "standard", n_train: int | None = None,
                      n_test: int | None = None, seed: int = 0, note: str = "") -> Dataset:
    """Random images (already standard-normal, like standardised data) and random labels.

    Good for measuring speed only: its "accuracy" means nothing, and it says so
    (``synthetic=True``, ``source='synthetic'``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    started = time.perf_counter()
    full_train, full_test = split_sizes(split)
    n_train = full_train if n_train is None else n_train
    n_test = full_test if n_test is None else n_test
    rng = np.random.default_rng(seed)
    x_train = rng.standard_normal((n_train, *IMAGE_SHAPE), dtype=np.float32)
    x_test = rng.standard_normal((n_test, *IMAGE_SHAPE), dtype=np.float32)
    y_train = rng.integers(0, NUM_CLASSES, n_train, dtype=np.int32)
    y_test = rng.integers(0, NUM_CLASSES, n_test, dtype=np.int32)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   split=split, source=SYNTHETIC_SOURCE, synthetic=True,
                   mean=np.zeros(PIXELS, np.float32), std=np.ones(PIXELS, np.float32),
                   load_seconds=time.perf_counter() - started,
                   note=note or "synthetic data (random images and labels): speed only, "
                                "accuracy is meaningless")


@dataclass(frozen=True)
class DataSource:
    """What a run trains on, decided once: ``cifar10`` at ``path``, or ``synthetic`` with why."""

    kind: str
    path: str | None = None
    note: str = ""


def resolve_source(data_dir: str | os.PathLike | None = None, synthetic: bool = False,
                   download: bool = True, check: bool = True) -> DataSource:
    """Real CIFAR-10 when it can be had, else clearly labelled synthetic data: the one place
    the fallback is decided.

    Falls back only when *no copy exists anywhere*; a copy that exists but is broken
    (:func:`check_cifar10`, with ``check``), or an explicit directory that does not exist, is a
    :class:`DataError`: silently benchmarking on noise when the user pointed at real data
    would be a lie.
    """
    if synthetic:
        return DataSource(SYNTHETIC_SOURCE, None, "synthetic data requested: speed only")
    try:
        path = locate_cifar10(data_dir, download=download)
    except DatasetNotFound as exc:
        return DataSource(SYNTHETIC_SOURCE, None, f"synthetic fallback: {exc}")
    return DataSource("cifar10", str(check_cifar10(path) if check else path))


def load_dataset(data_dir: str | os.PathLike | None = None, split: str = "standard",
                 synthetic: bool = False, download: bool = True,
                 synthetic_size: tuple[int, int] | None = None) -> Dataset:
    """The data :func:`resolve_source` decides on, loaded: CIFAR-10 split and standardised,
    or synthetic data that says why it is."""
    n_train, n_test = synthetic_size or (None, None)
    source = resolve_source(data_dir, synthetic, download, check=False)
    if source.kind == SYNTHETIC_SOURCE:
        note = f"{source.note}; accuracy is meaningless" if not synthetic else ""
        return synthetic_dataset(split, n_train, n_test, note=note)
    return load_cifar10(source.path, split, download=False)
