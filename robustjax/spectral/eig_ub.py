"""The activation-slope term of rep-spectral's eig-ub bound (the authors' XOR runs).

For a feature map phi(x) = act(W_L ... act(W_1 x + b_1) ...), the top
eigenvalue of the pull-back metric J^T J at x is at most
prod_l sigma_max(W_l)^2 * max_j act'(z_lj(x))^2. The authors' ``eig-ub``
regulariser (Pehlevan-Group/rep-spectral, src/model/regularizer/
feat_eig_autograd.py, ``top_eig_ub_regularizer_autograd``) penalises the sum
of the factors instead of their product: lam * (sum_l sigma_max(W_l)^2 +
sum_l mean over the batch of max_j act'(z_lj)^2). The sigma^2 terms need
power-iteration vectors carried across steps and live in the optax
transformation (``regularizers.penalize`` with kind ``rep_eig_ub``); the slope
terms depend on the batch's pre-activations, so the stage's loss adds them
(this function), over the same penalised steps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def activation_slope(activation: Callable[[jax.Array], jax.Array], z: jax.Array) -> jax.Array:
  """Elementwise act'(z) (same shape as z), differentiable in z.

  ``activation`` must act elementwise (GELU, ReLU, tanh, sigmoid), so one
  forward-mode derivative along ones gives every diagonal entry at once.
  """
  return jax.jvp(activation, (z,), (jnp.ones_like(z),))[1]


def activation_slope_penalty(preactivations: Sequence[jax.Array],
                             activation: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """sum over layers of mean_n max_j act'(z_nj)^2; a scalar (no unit: a squared slope).

  Args:
    preactivations: one (n, width_l) array per hidden layer (the MLP sows
      them: ``robustjax.models.mlp``), n examples of one batch.
    activation: the elementwise nonlinearity applied to them.

  Raises ValueError when no layer or a layer that is not (n, width) is given.
  """
  zs = list(preactivations)
  if not zs:
    raise ValueError('preactivations must hold at least one (n, width) array, got none')
  for i, z in enumerate(zs):
    if jnp.ndim(z) != 2:
      raise ValueError(f'preactivations[{i}] must be (n, width), got shape {jnp.shape(z)}')
  return sum(jnp.mean(jnp.max(activation_slope(activation, z) ** 2, axis=-1)) for z in zs)
