"""Exact answers for affine models, the known answers the attacks are tested on.

For logits z = x W + b (W: (d, C)) the minimal perturbation in norm p that
changes the label of x from y is min_{k != y} (z_y - z_k) / ||w_y - w_k||_q
with q the dual norm (l2 -> l2, linf -> l1), and x is robust at eps exactly
when that distance exceeds eps. The input domain is taken as unbounded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax import checks


def affine_min_distance(kernel: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array,
                        norm: str = 'l2') -> jax.Array:
  """(n,) exact minimal distances for the multi-class affine model x @ kernel + bias.

  Binary scalar models f(x) = x w + b with y in {-1, +1}: pass ``kernel``
  (d,) and ``bias`` scalar; the distance is y f(x) / ||w||_q. Misclassified
  points get distance 0.

  Args:
    kernel: (d, C) or (d,); bias: (C,) or scalar; x: (n, ...) flattening to
      (n, d), floating; y: (n,) integers in [0, C), or -1 / +1 when binary.
    norm: 'l2' or 'linf'.

  Raises ValueError / TypeError (one line naming the argument) on a bad norm,
  shapes that do not fit, or labels outside the convention.
  """
  checks.norm(norm)
  checks.inputs(x)
  x = x.reshape(x.shape[0], -1)
  if kernel.ndim not in (1, 2) or kernel.shape[0] != x.shape[1]:
    raise ValueError(f'kernel: must have shape ({x.shape[1]},) or ({x.shape[1]}, C) for inputs '
                     f'of {x.shape[1]} features, got {kernel.shape}')
  want = () if kernel.ndim == 1 else (kernel.shape[1],)
  if jnp.shape(bias) not in ((), want):
    raise ValueError(f'bias: must have shape {want} (or be a scalar), got {jnp.shape(bias)}')
  y = checks.batch(x, jnp.asarray(y))
  checks.labels(y, binary=kernel.ndim == 1,
                num_classes=None if kernel.ndim == 1 else kernel.shape[1])
  if kernel.ndim == 1:
    q = jnp.linalg.norm(kernel, ord=1 if norm == 'linf' else 2)
    return jnp.maximum(y * (x @ kernel + bias), 0.0) / q
  z = x @ kernel + bias
  y = y.astype(jnp.int32)
  z_y = jnp.take_along_axis(z, y[:, None], axis=-1)
  diff = kernel.T[y][:, None, :] - kernel.T[None, :, :]      # (n, C, d): w_y - w_k
  q = jnp.sum(jnp.abs(diff), -1) if norm == 'linf' else jnp.linalg.norm(diff, axis=-1)
  d = (z_y - z) / jnp.where(q > 0, q, 1.0)
  d = jnp.where(jax.nn.one_hot(y, z.shape[-1], dtype=bool) | (q == 0), jnp.inf, d)
  return jnp.maximum(jnp.min(d, axis=-1), 0.0)
