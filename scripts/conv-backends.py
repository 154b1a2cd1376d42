"""Why Keras on JAX trains 3-4x slower than Keras on TensorFlow on a CPU: one of the seed
network's convolutions, its forward pass and its two gradients, timed in each framework.

    python scripts/conv-backends.py [BATCH]

The layer is conv4 (16x16x128 -> 128 channels, 3x3, same padding: the network's costliest), in
fp32, NHWC where the framework allows it (PyTorch: channels-last NCHW), each call synced to the
host; the median of 10 calls after 3 of warm-up, on the CPUs this process may use. Each
gradient is taken of sum(y**2), so its call runs the forward convolution and one gradient
convolution. Prints one line per framework and part: milliseconds, and GFLOP/s counting 2 x the
multiply-adds of each convolution the call runs (one for the forward, two for a gradient).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

BATCH = int(sys.argv[1]) if len(sys.argv) > 1 else 128
H, W, CIN, COUT, K = 16, 16, 128, 128, 3
FLOP = 2 * BATCH * H * W * CIN * COUT * K * K
rng = np.random.default_rng(0)
X = rng.standard_normal((BATCH, H, W, CIN), dtype=np.float32)
KERNEL = rng.standard_normal((K, K, CIN, COUT), dtype=np.float32) * 0.05


def timed(call) -> float:
    for _ in range(3):
        call()
    seconds = []
    for _ in range(10):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def jax_parts():
    import jax
    import jax.numpy as jnp
    from jax import lax

    x, w = jnp.asarray(X), jnp.asarray(KERNEL)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(x, w):
        return jnp.sum(conv(x, w) ** 2)

    forward = jax.jit(conv)
    weight_grad = jax.jit(jax.grad(loss, argnums=1))
    input_grad = jax.jit(jax.grad(loss, argnums=0))
    return {"forward": lambda: forward(x, w).block_until_ready(),
            "weight gradient": lambda: weight_grad(x, w).block_until_ready(),
            "input gradient": lambda: input_grad(x, w).block_until_ready()}


def tensorflow_parts():
    import tensorflow as tf

    x, w = tf.constant(X), tf.Variable(KERNEL)

    def grads(wrt_input: bool):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, w, 1, "SAME")
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, x if wrt_input else w)

    forward = tf.function(lambda: tf.nn.conv2d(x, w, 1, "SAME"))
    weight_grad = tf.function(lambda: grads(False))
    input_grad = tf.function(lambda: grads(True))
    return {"forward": lambda: forward().numpy(),
            "weight gradient": lambda: weight_grad().numpy(),
            "input gradient": lambda: input_grad().numpy()}


def torch_parts():
    import torch

    x = torch.from_numpy(X).permute(0, 3, 1, 2).requires_grad_(True)            # channels-last NCHW
    w = torch.from_numpy(KERNEL.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=torch.channels_last)
    w.requires_grad_(True)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, padding=1).sum().item()

    def grad(wrt):
        y = torch.nn.functional.conv2d(x, w, padding=1)
        return torch.autograd.grad((y * y).sum(), wrt)[0].sum().item()

    return {"forward": forward, "weight gradient": lambda: grad(w), "input gradient": lambda: grad(x)}


def main() -> None:
    print(f"conv4: {BATCH}x{H}x{W}x{CIN} -> {COUT} channels, {K}x{K}, fp32; "
          f"{len(os.sched_getaffinity(0))} CPU(s); median of 10 synced calls")
    for name, parts in (("jax", jax_parts), ("tensorflow", tensorflow_parts), ("torch", torch_parts)):
        try:
            calls = parts()
        except ImportError as error:
            print(f"{name:<11} not installed ({error})")
            continue
        for part, call in calls.items():
            seconds = timed(call)
            flop = FLOP if part == "forward" else 2 * FLOP
            print(f"{name:<11} {part:<16} {1000 * seconds:8.1f} ms  {flop / seconds / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
