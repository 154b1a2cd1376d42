"""CIFAR-10 from disk (or a download) to standardised float32 arrays.

Where the data comes from, in order: an explicit directory (the ``data_dir`` argument or
the ``CIFAR10_DIR`` environment variable), the Keras cache
(``~/.keras/datasets/cifar-10-batches-py``), ``./data/cifar-10-batches-py`` (where the
original notebook kept it), then a download of the official archive through Keras.

Both official layouts are read: the python version (pickled ``data_batch_1`` ...
``test_batch``) and the binary version (``data_batch_1.bin`` ... ``test_batch.bin``),
as directories or as the ``.tar.gz`` archive itself. Pickles are untrusted input: they
are read with an unpickler that admits only the numpy globals an array needs.

When no dataset can be found or fetched, :func:`load_dataset` falls back to synthetic
data of the same shape, labelled as such, so speed-only runs still work offline.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_model.settings import (  # noqa: F401 - re-exported: part of the data vocabulary
    DATA_PLACEMENTS, IMAGE_SHAPE, NUM_CLASSES, SPLITS, resolve_data_placement, split_sizes,
    training_set_bytes)

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

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _codecs_encode(text, encoding="latin1"):
    # Python 3 writes ``bytes`` into protocol-2 pickles as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to rebuild latin-1 bytes")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _codecs_encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other global.

    A CIFAR-10 batch needs nothing else, and refusing everything else means a crafted
    file cannot make ``pickle`` import or call arbitrary code.
    """

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")
        return resolve()


def safe_unpickle(payload: bytes, name: str) -> object:
    """Unpickle ``payload`` (from file ``name``) admitting only numpy array globals."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):
            raise DataError(f"{name}: unsafe pickle, {exc}; only numpy arrays are allowed "
                            "in a CIFAR-10 file") from None
        raise DataError(f"{name}: not a readable pickle ({exc}); the file is corrupt or "
                        "truncated, download it again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise DataError(f"{name}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
                        "download it again") from None


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
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: 'labels' is not a list of integers ({exc})") from None
    return _checked(data, labels, name)


def _parse_binary_batch(payload: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + PIXELS
    if not payload:
        raise DataError(f"{name}: empty file; download it again")
    if len(payload) % record:
        raise DataError(f"{name}: truncated, {len(payload)} bytes is not a whole number of "
                        f"{record}-byte records; download it again")
    records = np.frombuffer(payload, dtype=np.uint8).reshape(-1, record)
    return _checked(records[:, 1:], records[:, 0].astype(np.int64), name)


def _checked(data: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(labels) != len(data):
        raise DataError(f"{name}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{name}: labels must be 0-9, found {labels.min()}..{labels.max()}")
    # Channel planes (R, G, B), each 32x32 row-major -> NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _parse_meta(payload: bytes, name: str, binary: bool) -> tuple[str, ...]:
    if binary:
        names = tuple(line.strip() for line in payload.decode("utf-8", "replace").splitlines()
                      if line.strip())
    else:
        meta = _text_keys(safe_unpickle(payload, name), name)
        raw = meta.get("label_names", ())
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw)
    if len(names) != NUM_CLASSES:
        raise DataError(f"{name}: expected {NUM_CLASSES} class names, found {len(names)}")
    return names


_LAYOUTS = {
    # layout: (file suffix, meta file, parser)
    "python": ("", "batches.meta", _parse_python_batch),
    "binary": (".bin", "batches.meta.txt", _parse_binary_batch),
}


class _Files:
    """Reads named CIFAR-10 files from a directory or from inside a .tar.gz archive.

    An archive is read in one pass (gzip cannot seek), keeping only the CIFAR-10 members.
    """

    def __init__(self, path: Path):
        self.path = path
        self._archive: dict[str, bytes] | None = None
        if path.is_file():
            wanted = {b + suffix for b in (*TRAIN_BATCHES, TEST_BATCH)
                      for suffix, _, _ in _LAYOUTS.values()}
            wanted |= {meta for _, meta, _ in _LAYOUTS.values()}
            try:
                with tarfile.open(path, "r:*") as archive:
                    self._archive = {Path(m.name).name: archive.extractfile(m).read()
                                     for m in archive if m.isfile() and Path(m.name).name in wanted}
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"{path}: not a readable CIFAR-10 archive ({exc}); "
                                "download it again") from None

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
        try:
            return (self.path / filename).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.shown(filename)}: cannot be read ({exc.strerror})") from None


def _detect_layout(files: _Files) -> str | None:
    for layout, (suffix, _, _) in _LAYOUTS.items():
        if files.has(TRAIN_BATCHES[0] + suffix) or files.has(TEST_BATCH + suffix):
            return layout
    return None


def read_cifar10(path: str | os.PathLike) -> RawCifar10:
    """Read CIFAR-10 from ``path``: a python/binary layout directory, its parent, or an archive.

    Raises :class:`DataError` naming the file when anything is missing or malformed.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        for inner in (PYTHON_DIR, BINARY_DIR, ARCHIVE_NAME):
            if (path / inner).exists() and not (path / TRAIN_BATCHES[0]).exists():
                return read_cifar10(path / inner)
    files = _Files(path)
    layout = _detect_layout(files)
    if layout is None:
        raise DataError(f"{path}: no CIFAR-10 files here (expected data_batch_1..5 and "
                        "test_batch, or their .bin versions, or cifar-10-python.tar.gz)")
    suffix, meta_file, parse = _LAYOUTS[layout]
    train = [parse(files.read(b + suffix), files.shown(b + suffix)) for b in TRAIN_BATCHES]
    x_test, y_test = parse(files.read(TEST_BATCH + suffix), files.shown(TEST_BATCH + suffix))
    class_names = CLASS_NAMES
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


def load_dataset(data_dir: str | os.PathLike | None = None, split: str = "standard",
                 synthetic: bool = False, download: bool = True,
                 synthetic_size: tuple[int, int] | None = None) -> Dataset:
    """Real CIFAR-10 when it can be had, else clearly labelled synthetic data.

    Falls back only when *no copy exists anywhere*; a copy that exists but is broken, or
    an explicit directory that does not exist, is a :class:`DataError`: silently
    benchmarking on noise when the user pointed at real data would be a lie.
    """
    n_train, n_test = synthetic_size or (None, None)
    if synthetic:
        return synthetic_dataset(split, n_train, n_test)
    try:
        return load_cifar10(data_dir, split, download=download)
    except DatasetNotFound as exc:
        return synthetic_dataset(split, n_train, n_test,
                                 note=f"synthetic fallback: {exc}; accuracy is meaningless")
