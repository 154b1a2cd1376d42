"""Adam exactly as Keras computes it, for the native engines (torch and JAX).

Keras (``keras/src/optimizers/adam.py``) adds epsilon to sqrt(v) *before* the bias correction::

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1);  v += (g*g - v) * (1 - beta_2)
    w -= alpha * m / (sqrt(v) + epsilon)

``torch.optim.Adam`` and ``optax.adam`` add it after (``m_hat / (sqrt(v_hat) + eps)``), so
Keras's epsilon weighs 1/sqrt(1 - beta_2**t) times more: 32x in the first step. This
network's smallest gradients are of that order, and from the same weights and batches the
library optimizers' losses drifted 0.5 % from Keras's within 20 steps (tests/test_engines.py
measured it); with these the engines follow Keras to float rounding.
"""

from __future__ import annotations

from typing import NamedTuple

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7   # keras.optimizers.Adam's defaults


# --------------------------------------------------------------------------- PyTorch

def torch_keras_adam(params, lr: float):
    """A ``torch.optim.Optimizer`` doing Keras's Adam update with ``torch._foreach`` ops.

    The step count is a tensor on the parameters' device, so a CUDA graph can capture
    ``step()`` (nothing is read back to the host)."""
    import torch

    class KerasAdam(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                for p in params:
                    if not self.state[p]:
                        self.state[p] = {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
                first = self.state[params[0]]
                if "t" not in first:
                    first["t"] = torch.zeros((), device=params[0].device)
                t = first["t"]
                t.add_(1)
                alpha = group["lr"] * torch.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t)
                grads = [p.grad for p in params]
                ms = [self.state[p]["m"] for p in params]
                vs = [self.state[p]["v"] for p in params]
                torch._foreach_mul_(ms, BETA_1)                        # Keras's torch backend's
                torch._foreach_add_(ms, grads, alpha=1 - BETA_1)       # op order, so the two
                torch._foreach_mul_(vs, BETA_2)                        # round alike
                torch._foreach_add_(vs, torch._foreach_mul(grads, grads), alpha=1 - BETA_2)
                denominators = torch._foreach_add(torch._foreach_sqrt(vs), EPSILON)
                torch._foreach_add_(params, torch._foreach_div(torch._foreach_mul(ms, alpha), denominators),
                                    alpha=-1)

    return KerasAdam(params, lr)


# --------------------------------------------------------------------------- JAX / optax

class KerasAdamState(NamedTuple):
    count: object   # type: ignore[assignment]  # jax int32 scalar: steps taken (shadows tuple.count, as optax's)
    m: object       # pytree like the parameters
    v: object


def optax_keras_adam(lr: float):
    """An ``optax.GradientTransformation`` whose updates are Keras's Adam steps (negated, for
    ``optax.apply_updates``)."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return KerasAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        count = state.count + 1
        t = count.astype(jnp.float32)
        alpha = lr * jnp.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t)
        m = jax.tree.map(lambda m, g: m + (g - m) * (1 - BETA_1), state.m, grads)
        v = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - BETA_2), state.v, grads)
        updates = jax.tree.map(lambda m, v: -(m * alpha) / (jnp.sqrt(v) + EPSILON), m, v)
        return updates, KerasAdamState(count, m, v)

    return optax.GradientTransformation(init, update)
