"""What one training run is asked to do, and the small vocabularies and pure helpers around it.

Importable without Keras, TensorFlow, JAX or PyTorch: the ``bench`` harness plans its
matrix, validates its arguments and sizes its cells from here without starting a
framework. :class:`TrainSettings` is the one typed object that crosses from the harness
into :func:`cifar_model.train`; it validates itself, so a bad value fails where it is
made, not minutes later inside a worker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal, overload


@dataclass(frozen=True)
class Precision:
    """A precision a cell may ask for: the Keras dtype policy it sets, the dtype its layers
    compute in (what its matmul peak is measured in), and the arithmetic its convolutions
    and matmuls run in, one of :data:`MATHS`. A float32 compute dtype's math is ``ieee``
    unless the device and the backend's setting allow TF32
    (:func:`cifar_model.backends.fp32_math` decides, inside the worker)."""

    name: str
    policy: str
    compute_dtype: str
    math: str


#: What a cell's convolutions and matmuls computed in: IEEE fp32, TF32 tensor cores (an fp32
#: cell on a GPU that allows them), bfloat16, float16. One word each, in runs.csv and yardsticks.
MATHS = ("ieee", "tf32", "bf16", "fp16")
#: The precisions, by their user-facing name (``--precision``, runs.csv).
PRECISIONS = {p.name: p for p in (
    Precision("fp32", policy="float32", compute_dtype="float32", math="ieee"),
    Precision("mixed_bfloat16", policy="mixed_bfloat16", compute_dtype="bfloat16", math="bf16"),
    Precision("mixed_float16", policy="mixed_float16", compute_dtype="float16", math="fp16"),
)}
#: User-facing XLA settings -> the value ``Model.compile(jit_compile=...)`` takes.
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


@dataclass(frozen=True)
class SeedRun:
    """The original notebook's training run, which this project measures honestly: its settings
    (what ``--profile seed`` repeats and what "Est. notebook run" projects) and what its README
    reported. One home for these facts; everything else reads them from :data:`SEED_RUN`."""

    epochs: int = 26
    train_images: int = 40_000          # the seed split: the first 40,000 training images ...
    heldout_images: int = 10_000        # ... and the last 10,000 held out
    batch_size: int = 128
    learning_rate: float = 1e-4         # Adam
    precision: str = "fp32"
    split: str = "seed"
    reported_device: str = "GTX 960M"   # the laptop GPU of the notebook's README
    reported_time_s: float = 21 * 60 + 12
    #: the best 256-image sample of its own training data, not a held-out accuracy
    reported_accuracy: str = "96.08 %"

    def projected_seconds(self, global_batch: int, seconds_per_step: float) -> float:
        """The notebook's training (every full batch of its split, every epoch) at one step time."""
        return self.epochs * (self.train_images // global_batch) * seconds_per_step


SEED_RUN = SeedRun()

#: Held-out splits: standard (50,000 train / 10,000 official test) and the notebook's seed
#: split (:data:`SEED_RUN`: the first 40,000 training images / the last 10,000).
SPLITS = ("standard", "seed")
SPLIT_SIZES = {"standard": (50_000, 10_000), "seed": (SEED_RUN.train_images, SEED_RUN.heldout_images)}
#: Where the training images live while training: ``host`` (the input pipeline gathers each
#: batch in host memory) or ``device`` (the whole training set in the training device's
#: memory, each batch gathered there); ``auto`` picks per device.
DATA_PLACEMENTS = ("auto", "host", "device")
#: ``auto`` keeps the training set on a GPU when it takes at most this share of its memory.
RESIDENT_MAX_FRACTION = 0.25
#: How the network is written and trained: ``keras`` (the seed network in Keras 3, trained by
#: ``model.fit``: the reference) or ``native`` (the same network, from the same initial
#: weights, written in the backend's own framework with its fastest training step:
#: :mod:`cifar_model.engines`). TensorFlow has no native engine: Keras's TensorFlow path is
#: already one compiled ``tf.function`` step (docs/method.md, "Engines").
ENGINE_KINDS = ("keras", "native")
DEFAULT_ENGINE = "keras"
#: The backends that have a ``native`` engine.
NATIVE_ENGINE_BACKENDS = ("jax", "torch")


@dataclass(frozen=True)
class BackendInfo:
    """What the harness says about a Keras backend without importing it: its name as people
    write it, the distributions whose versions describe it, and how to install it."""

    name: str                   # the KERAS_BACKEND value
    display_name: str           # "PyTorch"
    package: str                # the distribution that carries its version
    extra_packages: tuple[str, ...]  # other distributions a fingerprint records with it
    install: str                # how to install it when it is missing (pip extras of this project)


#: Keras 3 backends the network trains on, in the order tables list them; TensorFlow is the
#: reference. One row per backend: every name, package list and install hint is read from here.
BACKEND_INFO = {info.name: info for info in (
    BackendInfo("tensorflow", "TensorFlow", "tensorflow", ("tensorflow-cpu", "keras"), "pip install tensorflow"),
    BackendInfo("jax", "JAX", "jax", ("jaxlib",), "pip install 'cifar-bench[jax]'"),
    BackendInfo("torch", "PyTorch", "torch", (), "pip install 'cifar-bench[torch]'"),
)}
BACKENDS = tuple(BACKEND_INFO)
DEFAULT_BACKEND = "tensorflow"
BACKEND_INSTALL = {name: info.install for name, info in BACKEND_INFO.items()}
#: Every distribution a fingerprint records for the backends, each once.
BACKEND_PACKAGES = tuple(dict.fromkeys(package for info in BACKEND_INFO.values()
                                       for package in (info.package, *info.extra_packages)))


@overload
def backend_entry(name: str, strict: Literal[True] = True) -> BackendInfo: ...
@overload
def backend_entry(name: str, strict: bool) -> BackendInfo | None: ...
def backend_entry(name: str, strict: bool = True) -> BackendInfo | None:
    """The registry row of backend ``name``; an unknown name is a ValueError that lists the known
    ones (None instead with ``strict=False``, for names read back from old files)."""
    if name in BACKEND_INFO:
        return BACKEND_INFO[name]
    if strict:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return None

#: The data-parallel strategy of a cell, by what it asked for and its backend (see
#: :func:`strategy_name`): its short name and what it is, in words (tables, notes, plots).
#: ("Engine" is another dimension: the Keras or the native training loop.)
STRATEGY_DOCS = {
    "none": ("one device", "one device, Keras fit"),
    "mirrored": ("MirroredStrategy",
                 "tf.distribute.MirroredStrategy over the devices of one process, Keras fit"),
    "multi_worker_mirrored": ("MultiWorkerMirrored",
                              "tf.distribute.MultiWorkerMirroredStrategy across processes (TensorFlow's "
                              "coordination service and gRPC collectives), Keras's train_step in a "
                              "custom loop (Keras fit fails under it, keras#20585)"),
    "keras_data_parallel": ("keras DataParallel",
                            "keras.distribution.DataParallel on JAX: the batch sharded over a device "
                            "mesh, XLA's SPMD partitioner inserting the gradient all-reduce, Keras fit; "
                            "across processes, the mesh spans every worker's devices, joined by "
                            "keras.distribution.initialize (JAX's distributed runtime; gloo "
                            "collectives between CPUs)"),
}
STRATEGIES = tuple(STRATEGY_DOCS)
#: Logical CPU devices a CPU cell may split into for ``replicas`` > 1: a functional check of
#: the data-parallel code path (they share the machine's cores), not a scaling result.
MAX_LOGICAL_CPU_REPLICAS = 8
#: How long a multi-worker cell waits for every peer to join before it fails (seconds).
DEFAULT_CONNECT_TIMEOUT_S = 120

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
MAX_SEED = 2**32 - 1


def split_sizes(split: str) -> tuple[int, int]:
    """(training images, held-out images) of ``split`` on the full dataset."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLIT_SIZES[split]


def training_set_bytes(n_images: int) -> int:
    """Bytes of ``n_images`` float32 training images and their one-hot labels."""
    return n_images * (IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2] + NUM_CLASSES) * 4


def resolve_data_placement(requested: str, device_type: str, memory_bytes: int | None,
                           data_bytes: int, total_replicas: int = 1) -> str:
    """``host`` or ``device`` for ``requested``, one of :data:`DATA_PLACEMENTS`.

    ``auto`` keeps the training set in GPU memory when it fits with room to spare (at most
    :data:`RESIDENT_MAX_FRACTION` of the GPU's memory, which must be known), and on the host
    otherwise. On a CPU, host memory *is* the device's, so ``auto`` is ``host``: the input
    pipeline gathers the next batch on its own threads while the current step runs. A cell
    of several replicas (``total_replicas`` > 1) is fed from the host: the device-resident
    path holds the set on one device only.
    """
    if requested not in DATA_PLACEMENTS:
        raise ValueError(f"unknown data placement {requested!r}; choose one of {', '.join(DATA_PLACEMENTS)}")
    if requested != "auto":
        return requested
    fits = bool(memory_bytes and data_bytes <= RESIDENT_MAX_FRACTION * memory_bytes)
    return "device" if device_type == "GPU" and fits and total_replicas == 1 else "host"


def steps_per_epoch(n_train: int, batch_size: int, max_steps_per_epoch: int | None) -> int:
    """Steps per epoch: full batches in the training set, optionally capped.

    The last partial batch of an epoch is dropped, as the notebook did (40,000 images at
    batch 128: 312 steps), so every step has the same shape.
    """
    full = n_train // batch_size
    if full == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n_train} training images")
    return min(full, max_steps_per_epoch) if max_steps_per_epoch else full


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run is asked to do. Validated when made.

    ``max_steps_per_epoch`` None trains full epochs. ``warmup_steps`` first steps are
    reported apart from the steady state. ``cpu_threads`` 0 leaves the backend's own
    thread pools alone. ``eval_images`` None evaluates on the whole held-out split, 0 skips
    evaluation, N evaluates on its first N images (and says so). ``unsynced_steps`` > 0 adds
    a block of steps timed with a single sync at the end.
    """

    batch_size: int = 128
    epochs: int = 1
    max_steps_per_epoch: int | None = None
    warmup_steps: int = 5
    precision: str = "fp32"
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    data_placement: str = "host"
    cpu_threads: int = 0
    seed: int | None = None
    unsynced_steps: int = 0
    eval_images: int | None = None
    backend: str = DEFAULT_BACKEND
    replicas: int = 1
    workers: int = 1
    cluster: tuple[str, ...] = ()
    task_index: int = 0
    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S
    eval_every: float | None = None          # epochs between held-out evaluations (None: at the end only)
    target_accuracy: float | None = None     # stop at the first evaluation at or above it
    engine: str = DEFAULT_ENGINE

    def __post_init__(self):
        problems = []
        object.__setattr__(self, "cluster", tuple(self.cluster))  # JSON gives a list
        for name in ("batch_size", "epochs", "steps_per_execution", "replicas", "workers",
                     "connect_timeout_s"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1 (got {getattr(self, name)!r})")
        for name in ("warmup_steps", "cpu_threads", "unsynced_steps", "task_index"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{name} must be an integer >= 0 (got {getattr(self, name)!r})")
        for name in ("max_steps_per_epoch", "eval_images"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < (1 if name == "max_steps_per_epoch" else 0)):
                problems.append(f"{name} must be None or a non-negative integer (got {value!r})")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed must be None or an integer from 0 to {MAX_SEED} (got {self.seed!r})")
        for name, allowed in (("precision", PRECISIONS), ("jit_compile", JIT_COMPILE),
                              ("data_placement", DATA_PLACEMENTS), ("backend", BACKENDS),
                              ("engine", ENGINE_KINDS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.cluster and _is_int(self.workers) and len(self.cluster) != self.workers:
            problems.append(f"workers {self.workers} needs a cluster of {self.workers} host:port "
                            f"addresses (got {len(self.cluster)})")
        if _is_int(self.task_index) and self.task_index >= max(1, len(self.cluster)):
            problems.append(f"task_index {self.task_index} is outside the cluster of "
                            f"{len(self.cluster)} worker(s)")
        if (self.max_steps_per_epoch is not None and _is_int(self.warmup_steps)
                and _is_int(self.epochs) and not problems
                and self.warmup_steps >= self.epochs * self.max_steps_per_epoch):
            problems.append(f"warmup_steps {self.warmup_steps} leaves no steady step out of "
                            f"{self.epochs * self.max_steps_per_epoch}")
        if self.eval_every is not None and (isinstance(self.eval_every, bool)
                                            or not isinstance(self.eval_every, int | float)
                                            or not 0 < self.eval_every < float("inf")):
            problems.append(f"eval_every must be a positive number of epochs (got {self.eval_every!r})")
        if self.target_accuracy is not None:
            if (isinstance(self.target_accuracy, bool) or not isinstance(self.target_accuracy, int | float)
                    or not 0 < self.target_accuracy <= 1):
                problems.append("target_accuracy must be a fraction above 0 and at most 1 "
                                f"(got {self.target_accuracy!r}; 0.65 means 65 %)")
            if self.eval_every is None:
                problems.append("target_accuracy needs eval_every: the target is checked at each evaluation")
        if self.eval_every is not None and _is_int(self.workers) and self.workers > 1:
            problems.append("eval_every is not supported across worker processes (workers > 1): "
                            "each process would evaluate apart")
        if self.eval_every is not None and self.eval_images == 0:
            problems.append("eval_every needs held-out evaluation; drop eval_images 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def total_replicas(self) -> int:
        """Replicas training in sync across every worker."""
        return self.replicas * self.workers

    @property
    def global_batch_size(self) -> int:
        """Images per step across every replica: what one optimizer update averages over."""
        return self.batch_size * self.total_replicas

    @property
    def strategy(self) -> str:
        return strategy_name(self.replicas, self.workers, self.backend)

    @property
    def spans_processes(self) -> bool:
        """Whether the run trains across several processes (``workers`` > 1), which must join
        before the framework starts."""
        return self.workers > 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        """From JSON; unknown keys are an error (a typo must not silently become a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)


def strategy_name(replicas: int, workers: int, backend: str = DEFAULT_BACKEND) -> str:
    """The data-parallel engine for ``replicas`` per worker and ``workers`` on ``backend``, one
    of :data:`STRATEGIES`: on TensorFlow its MirroredStrategy in one process and its
    MultiWorkerMirroredStrategy across processes; on JAX Keras's DataParallel distribution,
    in one process or across several; none for a single device. Each backend plugs in its own engine here;
    :func:`backend_limitation` says which combinations have none."""
    if replicas * workers == 1:
        return "none"
    if backend == "jax":
        return "keras_data_parallel"
    if workers > 1:
        return "multi_worker_mirrored"
    return "mirrored"


def backend_limitation(backend: str, jit_compile: str, cpu_threads: int, replicas: int = 1,
                       workers: int = 1, steps_per_execution: int = 1,
                       engine: str = DEFAULT_ENGINE) -> str | None:
    """Why a combination cannot run on ``backend`` (so the harness skips it), or None."""
    if engine == "native":
        why = native_engine_limitation(backend, replicas, workers)
        if why:
            return why
    elif backend == "torch" and steps_per_execution > 1:
        return ("Keras's torch backend runs one step per call (it refuses steps_per_execution > 1); "
                "use --steps-per-execution 1 with --backend torch, or --engine native")
    if backend == "torch" and replicas * workers > 1:
        return ("data parallelism is not implemented for torch: Keras's torch backend has no "
                "keras.distribution engine and torch DDP is not wired in; use --backend "
                "tensorflow or jax for --replicas/--workers > 1")
    if backend == "jax" and jit_compile == "off":
        return "JAX always compiles the step with XLA; --jit-compile off cannot apply (use auto or on)"
    if backend == "jax" and cpu_threads:
        return ("JAX's CPU thread count can only be set with XLA_FLAGS before it starts; "
                "use --cpu-threads 0 with --backend jax")
    return None


def native_engine_limitation(backend: str, replicas: int = 1, workers: int = 1) -> str | None:
    """Why ``--engine native`` cannot run on ``backend`` with this many devices, or None."""
    if backend not in NATIVE_ENGINE_BACKENDS:
        return (f"no native engine for {backend}: Keras's {backend} step is already one compiled "
                f"tf.function (docs/method.md, Engines); use --engine keras, or --backend "
                f"{' or '.join(NATIVE_ENGINE_BACKENDS)} for native")
    if replicas * workers > 1:
        return "the native engines train on one device; use --engine keras for --replicas/--workers > 1"
    return None


def parallel_limitation(device_type: str, replicas: int, workers: int, data_placement: str,
                        steps_per_execution: int = 1, unsynced_steps: int = 0,
                        gpu_count: int | None = None) -> str | None:
    """Why a data-parallel combination cannot run (so the harness skips it), or None.

    ``gpu_count`` is how many GPUs the machine has from the cell's first one on (None: not
    known, not checked). A CPU splits into at most :data:`MAX_LOGICAL_CPU_REPLICAS` logical
    devices; under MultiWorkerMirroredStrategy each worker's CPU is one device.
    """
    if replicas == 1 and workers == 1:
        return None
    if data_placement == "device":
        return "--data-placement device is implemented for one replica only; use host"
    if device_type == "GPU" and gpu_count is not None and replicas > gpu_count:
        return f"--replicas {replicas} needs {replicas} GPUs from the cell's first GPU on; this machine has {gpu_count}"
    if device_type == "CPU" and replicas > MAX_LOGICAL_CPU_REPLICAS:
        return (f"--replicas {replicas}: a CPU splits into at most {MAX_LOGICAL_CPU_REPLICAS} "
                "logical devices")
    if workers > 1:
        if device_type == "CPU" and replicas > 1:
            return ("a multi-worker cell uses one CPU device per worker; use --replicas 1 "
                    "with --workers on a CPU")
        if steps_per_execution > 1:
            return "--steps-per-execution > 1 is not implemented for multi-worker cells; use 1"
        if unsynced_steps:
            return "--unsynced-steps is not implemented for multi-worker cells; use 0"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- cluster addresses

def cluster_host(address: str) -> str:
    """``host`` of ``host:port``, ``[v6]:port`` or ``v6`` without brackets."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def is_loopback_cluster(cluster) -> bool:
    """Whether every address of ``cluster`` is this machine's loopback (``localhost`` included)."""
    def loopback(host: str) -> bool:
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return bool(cluster) and all(loopback(cluster_host(address)) for address in cluster)


def listening_note(cluster: Sequence[str], task_index: int, backend: str) -> str:
    """Where the worker ``task_index`` of ``cluster`` will listen, and who can reach it: for
    its log, and for the run's own output when the cell starts."""
    port = cluster[task_index].rsplit(":", 1)[-1]
    if backend == "jax":
        if is_loopback_cluster(cluster):
            return (f"listening on loopback only: {cluster[0]} (JAX coordination service, task 0) "
                    f"and gloo collectives on {cluster_host(cluster[0])}")
        return (f"listening on every interface: [::]:{cluster[0].rsplit(':', 1)[-1]} (JAX coordination "
                "service, task 0) and gloo collectives; these ports are unauthenticated: firewall them to "
                "the cluster's hosts")
    return (f"listening on every interface: 0.0.0.0:{port} (TensorFlow's gRPC server cannot be bound to "
            f"one address{', even for this loopback cluster' if is_loopback_cluster(cluster) else ''}); "
            "the port is unauthenticated and runs what it is sent: firewall it to the cluster's hosts")
