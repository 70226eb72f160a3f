"""Certified lower bounds on the l2 adversarial distance of a linear head on a feature map.

For logits f(x) = phi(x) @ W + b with phi L-Lipschitz in l2, the margin
f_y - f_k = <phi(x), w_y - w_k> + b_y - b_k changes by at most
L ||w_y - w_k||_2 ||delta||_2 under a perturbation delta, so no delta with

    ||delta||_2 < r(x) = min_{k != y} (f_y(x) - f_k(x)) / (L ||w_y - w_k||_2)

changes the label: r(x) <= the true minimal distance <= any attack's distance
(Paper B's bound: the margin over a Lipschitz bound of feature map + readout,
with ||J_phi^T (w_y - w_k)|| <= L ||w_y - w_k||). For a composition of
layers, L <= prod_l ||A_l||_2 * s^(number of activations) where s =
sup |act'| (GELU ~1.1289, ReLU and tanh 1, sigmoid 1/4): the per-layer
operator norms are exact SVDs for dense kernels and the conv operator norm
for convs (``robustjax.spectral.sigma_max``). The input domain is not used,
so the bound also holds for unbounded inputs; with a box it stays a lower bound.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.models.mlp import ACTIVATION_SLOPES


def lipschitz_bound(layer_norms: Sequence, activation_slope: float) -> jax.Array:
  """l2 Lipschitz bound of act(A_L ... act(A_1 x)): prod_l ||A_l||_2 * slope^L (scalar).

  Args:
    layer_norms: the operator norms ||A_l||_2 of the L linear maps (each a
      scalar >= 0; fold any fixed output scaling, e.g. 1/sqrt(fan_in), into
      it). Biases do not change a Lipschitz constant.
    activation_slope: sup_z |act'(z)| > 0 (``ACTIVATION_SLOPES``).
  """
  norms = [jnp.asarray(n, jnp.float32) for n in layer_norms]
  if not norms:
    raise ValueError('layer_norms must hold at least one operator norm, got none')
  if any(n.ndim for n in norms):
    raise ValueError(f'layer_norms must be scalars, got shapes {[n.shape for n in norms]}')
  if isinstance(activation_slope, bool) or not (
      isinstance(activation_slope, (int, float)) and math.isfinite(activation_slope)
      and activation_slope > 0):
    raise ValueError(f'activation_slope must be a finite number > 0, got {activation_slope!r}')
  return jnp.prod(jnp.stack(norms)) * jnp.float32(activation_slope) ** len(norms)


def mlp_feature_lipschitz(model, params) -> jax.Array:
  """l2 Lipschitz bound of an ``robustjax.models.mlp.MLP``'s feature map (scalar).

  Exact per-layer spectral norms (SVD) of the hidden kernels, divided by
  sqrt(fan_in) for layers after the first when the model scales by width,
  times the activation's slope bound per hidden layer.
  """
  if model.activation not in ACTIVATION_SLOPES:
    raise ValueError(f'activation must be one of {tuple(ACTIVATION_SLOPES)}, '
                     f'got {model.activation!r}')
  norms = []
  for i, name in enumerate(model.feature_layers):
    w = params[name]['kernel']
    s = jnp.linalg.svd(w, compute_uv=False)[0]
    norms.append(s / jnp.sqrt(jnp.float32(w.shape[0])) if i > 0 and model.scale_by_width else s)
  return lipschitz_bound(norms, ACTIVATION_SLOPES[model.activation])


def certified_radius(logits, y, head_kernel, feature_lipschitz) -> jax.Array:
  """(n,) certified l2 radii, in input units: r = min_k (f_y - f_k) / (L ||w_y - w_k||_2).

  Args:
    logits: (n, C) head outputs f(x) = phi(x) @ head_kernel + bias (any fixed
      output scaling already applied to both).
    y: (n,) integer labels in [0, C).
    head_kernel: (F, C) the head's kernel as it acts on phi(x) (scaled the
      same way as the logits).
    feature_lipschitz: L > 0, an l2 Lipschitz bound of phi (scalar; e.g.
      :func:`mlp_feature_lipschitz`). L = 1 with phi the identity makes r the
      exact distance of the affine model (``attacks.exact.affine_min_distance``).

  Misclassified points get 0; a class k with w_k = w_y never overtakes y and
  is skipped (all skipped: inf). Raises ValueError on bad shapes, labels or L.
  """
  logits, kernel = jnp.asarray(logits), jnp.asarray(head_kernel)
  y = jnp.asarray(y)
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(f'logits must be (n, C) with C >= 2, got shape {logits.shape}')
  n, c = logits.shape
  if y.shape != (n,) or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f'y must be ({n},) integer labels, got shape {y.shape} dtype {y.dtype}')
  if n and not bool(np.all((np.asarray(y) >= 0) & (np.asarray(y) < c))):
    raise ValueError(f'y must hold labels in [0, {c}), got values in '
                     f'[{int(np.min(np.asarray(y)))}, {int(np.max(np.asarray(y)))}]')
  if kernel.ndim != 2 or kernel.shape[1] != c:
    raise ValueError(f'head_kernel must be (F, {c}), got shape {kernel.shape}')
  lip = jnp.asarray(feature_lipschitz, jnp.float32)
  if lip.ndim:
    raise ValueError(f'feature_lipschitz must be a scalar, got shape {lip.shape}')
  if not isinstance(lip, jax.core.Tracer) and not (np.isfinite(lip) and lip > 0):
    raise ValueError(f'feature_lipschitz must be finite and > 0, got {float(lip)}')
  return _radius(logits, y.astype(jnp.int32), kernel, lip)


@jax.jit
def _radius(logits, y, kernel, lip):
  gap = jnp.take_along_axis(logits, y[:, None], axis=-1) - logits          # (n, C)
  w = kernel.T                                                               # (C, F)
  # ||w_c - w_k|| for every class pair (C, C), then per point: no (n, C, F) tensor.
  dnorm = jnp.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)[y]        # (n, C)
  skip = jax.nn.one_hot(y, logits.shape[1], dtype=bool) | (dnorm == 0)
  r = jnp.where(skip, jnp.inf, gap / jnp.where(skip, 1.0, lip * dnorm))
  return jnp.maximum(jnp.min(r, axis=-1), 0.0)
