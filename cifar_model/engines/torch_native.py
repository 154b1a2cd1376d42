"""The seed network in plain PyTorch, trained by its own step: the ``native`` engine on torch.

Every trick is named, as airbench does:

- **the same network and start**: :class:`SeedNet` has exactly the Keras network's layers
  (:mod:`cifar_model.model`), its weights copied from the Keras network built with the same
  seed (conv kernels HWIO -> OIHW, dense kernels transposed; the flatten reads NHWC order, so
  fc1's rows need no permutation);
- **the same optimizer and loss**: Adam(1e-4) exactly as Keras computes it
  (:mod:`.keras_adam`: ``torch.optim.Adam`` places epsilon differently, and drifted from
  Keras within 20 steps), capturable in a CUDA graph; softmax cross-entropy from float32 logits;
- **channels-last**: the images stay NHWC in memory; ``permute(0, 3, 1, 2)`` is a free view
  that torch treats as channels-last NCHW, and the weights are converted to match, so oneDNN
  and cuDNN run their NHWC kernels with no layout copies;
- **autocast** for ``mixed_bfloat16``/``mixed_float16``: float32 weights, bf16/fp16 matmuls and
  convolutions (Keras's mixed policies), float32 logits; fp16 adds torch's dynamic loss
  scaling (``GradScaler``), as Keras adds a LossScaleOptimizer;
- **the step** (``jit_compile``): ``off`` and ``auto`` run it eagerly, ``on`` through
  ``torch.compile`` (the whole step: forward, backward and the optimizer update). On a GPU,
  eager means the whole step captured in one explicit CUDA graph (no Python, no launches
  between kernels; a second to capture), and ``on`` means ``torch.compile(mode="reduce-overhead")``,
  which captures CUDA graphs of inductor's fused kernels (a minute or more to compile: the
  GPU script measures whether that pays). On a CPU ``auto`` stays eager: the convolutions are
  oneDNN's either way and compiling costs a minute (docs/method.md, "Engines"). fp16 (its loss
  scaler reads for infinities on the host) is never graphed;
- **data on the device** (``data_placement`` device): the training set and its labels are
  one tensor each on the device and each batch is gathered there, inside the graph.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar_model.data import Dataset
from cifar_model.engines.keras_adam import torch_keras_adam
from cifar_model.model import DROPOUT_RATE, LEARNING_RATE
from cifar_model.settings import NUM_CLASSES, TrainSettings

#: Eager steps (on a side stream) before a CUDA graph is captured, as torch's docs ask.
GRAPH_WARMUP_STEPS = 3
AUTOCAST_DTYPES = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}
CONVS = (("conv1", 3, 32), ("conv2", 32, 64), ("conv3", 64, 128), ("conv4", 128, 128), ("conv5", 128, 128))
DENSES = (("fc1", 8 * 8 * 128, 128), ("fc2", 128, 128), ("fc3", 128, NUM_CLASSES))


class SeedNet(nn.Module):
    """The seed network's layers in :mod:`cifar_model.model`'s order; input NCHW (channels-last
    strides), output float32 logits."""

    # made by name in __init__ (CONVS, DENSES); declared here for the type checker
    conv1: nn.Conv2d
    conv2: nn.Conv2d
    conv3: nn.Conv2d
    conv4: nn.Conv2d
    conv5: nn.Conv2d
    fc1: nn.Linear
    fc2: nn.Linear
    fc3: nn.Linear

    def __init__(self, dropout_rate: float = DROPOUT_RATE):
        super().__init__()
        for name, cin, cout in CONVS:
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
        for name, fin, fout in DENSES:
            setattr(self, name, nn.Linear(fin, fout))
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.dropout(F.max_pool2d(self.conv2(x), 2)))   # the notebook's order:
        x = F.relu(self.conv3(x))                                    # pool, dropout, ReLU
        x = F.relu(self.dropout(F.max_pool2d(self.conv4(x), 2)))
        x = F.relu(self.conv5(x))
        x = x.permute(0, 2, 3, 1).flatten(1)                         # Keras's NHWC flatten order
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x).float()

    def load_keras_weights(self, weights: dict[str, list[np.ndarray]]) -> None:
        """Copy the Keras network's weights: conv kernels HWIO -> OIHW, dense kernels transposed."""
        with torch.no_grad():
            for name, _, _ in CONVS:
                kernel, bias = weights[name]
                getattr(self, name).weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
                getattr(self, name).bias.copy_(torch.from_numpy(bias))
            for name, _, _ in DENSES:
                kernel, bias = weights[name]
                getattr(self, name).weight.copy_(torch.from_numpy(kernel.T.copy()))
                getattr(self, name).bias.copy_(torch.from_numpy(bias))


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy, computed as Keras's torch backend does (log-softmax times the
    one-hot labels), which ``F.cross_entropy`` equals up to rounding: with this network's chaotic
    first steps, a rounding difference grows past 1e-4 within 20 steps."""
    one_hot = F.one_hot(labels, NUM_CLASSES).to(logits.dtype)
    return -(one_hot * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def nchw_view(nhwc: torch.Tensor) -> torch.Tensor:
    """NHWC images as the NCHW tensor torch's layers take: a view with channels-last strides."""
    return nhwc.permute(0, 3, 1, 2)


def torch_device(device: str) -> torch.device:
    kind, _, index = device.lower().partition(":")
    return torch.device("cpu") if kind == "cpu" else torch.device("cuda", int(index or 0))


class TorchEngine:
    """One network, its optimizer and its training step on one device (see the module doc)."""

    xla = False

    def __init__(self, weights: dict, settings: TrainSettings, device: str, device_type: str,
                 data_placement: str, dataset: Dataset, dropout_rate: float = DROPOUT_RATE):
        self.device = torch_device(device)
        on_gpu = self.device.type == "cuda"
        self.net = SeedNet(dropout_rate)
        self.net.load_keras_weights(weights)
        # Module.to takes memory_format (documented); torch's stubs leave it out
        self.net.to(self.device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
        self.autocast_dtype = AUTOCAST_DTYPES.get(settings.precision)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if settings.precision == "mixed_float16" else None)
        compiled = settings.jit_compile == "on"
        self.graphed = on_gpu and self.scaler is None and not compiled  # explicit capture
        self.optimizer = torch_keras_adam(self.net.parameters(), LEARNING_RATE)
        self.resident = data_placement == "device"
        batch = settings.batch_size
        if self.resident:   # the one host -> device copy of the training set
            self.images = torch.from_numpy(dataset.x_train).to(self.device)
            self.labels = torch.from_numpy(dataset.y_train.astype(np.int64)).to(self.device)
            self.static_indices = torch.zeros(batch, dtype=torch.int64, device=self.device)
        else:
            self.host_images, self.host_labels = dataset.x_train, dataset.y_train.astype(np.int64)
            self.static_images = torch.zeros((batch, *dataset.x_train.shape[1:]), device=self.device)
            self.static_labels = torch.zeros(batch, dtype=torch.int64, device=self.device)
            if on_gpu:
                self.pinned_images = torch.zeros(self.static_images.shape).pin_memory()
        self.data_device = "GPU:0" if on_gpu else "CPU:0"
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct_sum = torch.zeros((), dtype=torch.int64, device=self.device)
        self.steps_since_metrics = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps_left = GRAPH_WARMUP_STEPS
        self.step_fn = self._step
        graphs_by_inductor = compiled and on_gpu and self.scaler is None
        if compiled:
            self.step_fn = torch.compile(self._step, mode="reduce-overhead" if graphs_by_inductor else None)
        self.compile_note = ", ".join([
            ("torch.compile(mode='reduce-overhead'): CUDA graphs by inductor" if graphs_by_inductor
             else "torch.compile (inductor)" if compiled
             else "eager, the whole step in one explicit CUDA graph" if self.graphed
             else "eager"),
            f"autocast {self.autocast_dtype}".replace("torch.", "") if self.autocast_dtype else "float32",
            "channels-last",
            "data resident on the device" if self.resident else "batches gathered on the host",
            "Keras's Adam update",
        ])

    # ----------------------------------------------------------------- the step
    def _step(self):
        """One training step on the static input buffers; returns (loss, correct), on the device."""
        if self.resident:
            images = self.images.index_select(0, self.static_indices)
            labels = self.labels.index_select(0, self.static_indices)
        else:
            images, labels = self.static_images, self.static_labels
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            logits = self.net(nchw_view(images))
        loss = softmax_cross_entropy(logits, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        correct = (logits.argmax(1) == labels).sum()
        return loss.detach(), correct

    def _graphed_step(self):
        """The step replayed from one CUDA graph, after a few eager steps on a side stream."""
        if self.graph is None and self.eager_steps_left:
            self.eager_steps_left -= 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                out = self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_outputs = self._step()
        self.graph.replay()
        return self.graph_outputs

    def _load_batch(self, indices: np.ndarray) -> None:
        if self.resident:
            self.static_indices.copy_(torch.from_numpy(indices.astype(np.int64)), non_blocking=True)
            return
        images = torch.from_numpy(np.take(self.host_images, indices, axis=0))
        if self.device.type == "cuda":
            self.pinned_images.copy_(images)
            images = self.pinned_images
        self.static_images.copy_(images, non_blocking=True)
        self.static_labels.copy_(torch.from_numpy(np.take(self.host_labels, indices)), non_blocking=True)

    def run(self, indices: np.ndarray):
        loss = None
        for row in indices:
            self._load_batch(row)
            loss, correct = self._graphed_step() if self.graphed else self.step_fn()
            self.loss_sum += loss
            self.correct_sum += correct
            self.steps_since_metrics += 1
        return loss

    def loss_value(self, loss) -> float:
        return float(loss.item())

    def epoch_metrics(self) -> tuple[float, float]:
        steps = max(1, self.steps_since_metrics)
        mean_loss = float(self.loss_sum.item()) / steps
        accuracy = float(self.correct_sum.item()) / (steps * self.static_batch)
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        self.steps_since_metrics = 0
        return mean_loss, accuracy

    @property
    def static_batch(self) -> int:
        return len(self.static_indices) if self.resident else len(self.static_labels)

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        self.net.eval()
        try:
            out = []
            for start in range(0, len(images), batch_size):
                chunk = torch.from_numpy(images[start:start + batch_size]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    out.append(self.net(nchw_view(chunk)).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
        finally:
            self.net.train()
