"""Paper A's two-layer network f(Z) = sum_j a_j sigma_b(w_j^T Z)."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


def soft_threshold(u: jax.Array, b: jax.Array) -> jax.Array:
  """Symmetric thresholded ReLU sigma_b(u) = relu(u - b) - relu(-u - b)."""
  return jax.nn.relu(u - b) - jax.nn.relu(-u - b)


class TwoLayer(nn.Module):
  """Width-m two-layer net with soft-threshold units and a scalar output.

  Parameters: ``w`` (d, m) holds the units w_j as columns, ``b`` (m,) the
  thresholds b_j, ``a`` (m,) the output weights a_j. ``features_only=True``
  returns the representation h(Z) = sigma_b(W^T Z) alone, which the downstream
  stage freezes (it needs only ``w`` and ``b``). A threshold that is not trained
  is still a parameter, so checkpoints carry it; the stage decides what the
  optimizer touches.
  """
  width: int
  bias_init: float = 0.0
  init_scale: float = 1.0          # w_ij ~ N(0, init_scale^2 / d)
  readout_init_scale: float = 1.0  # a_j ~ N(0, readout_init_scale^2 / m)

  @nn.compact
  def __call__(self, z: jax.Array, features_only: bool = False) -> jax.Array:
    w = self.param('w', _scaled_normal(self.init_scale), (z.shape[-1], self.width))
    b = self.param('b', nn.initializers.constant(self.bias_init), (self.width,))
    h = soft_threshold(z @ w, b)
    if features_only:
      return h
    a = self.param('a', _scaled_normal(self.readout_init_scale), (self.width,))
    return h @ a


def _scaled_normal(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return scale * jax.random.normal(key, shape, dtype) / jnp.sqrt(shape[0])
  return init


def purified_units(key: chex.PRNGKey, dictionary: jax.Array, width: int,
                   alpha: float) -> jax.Array:
  """Units of controlled purification level alpha (Paper A, Fig. 4).

  Unit j is ``normalize((1 - alpha) * M e_{i_j} + alpha * mixture_j)`` with
  ``i_j = j mod D`` (pure part: one dictionary atom) and ``mixture_j = M g_j /
  ||M g_j||``, g_j ~ N(0, I_D) (dense part: all features). alpha = 0 gives
  pure units, alpha = 1 dense random mixtures. Returns (d, width), unit-norm
  columns, in the layout of ``TwoLayer``'s ``w``.
  """
  d, D = dictionary.shape
  pure = dictionary[:, jnp.arange(width) % D]
  mix = dictionary @ jax.random.normal(key, (D, width))
  mix = mix / jnp.linalg.norm(mix, axis=0, keepdims=True)
  units = (1.0 - alpha) * pure + alpha * mix
  return units / jnp.linalg.norm(units, axis=0, keepdims=True)
