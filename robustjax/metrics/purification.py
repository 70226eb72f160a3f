"""How many latent features each hidden unit mixes (Paper A's purification).

A unit w_j (a column of the first-layer kernel) is read through the dictionary
as its loadings c_j = M^T w_j (D,). Both metrics are scale-free:

- purity: max_i |c_ji| / ||c_j||_2, in [1/sqrt(D), 1]; 1 means one feature.
- participation ratio: (sum_i c_ji^2)^2 / sum_i c_ji^4, in [1, D]; 1 means one
  feature, D an even spread over all of them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def loadings(w: jax.Array, dictionary: jax.Array) -> jax.Array:
  """Unit-by-feature loadings c = (M^T W)^T, (m, D), from units w (d, m)."""
  return (dictionary.T @ w).T


def purity(c: jax.Array) -> jax.Array:
  """max |c_i| / ||c||_2 over the last axis."""
  return jnp.max(jnp.abs(c), axis=-1) / jnp.maximum(jnp.linalg.norm(c, axis=-1), 1e-30)


def participation_ratio(c: jax.Array) -> jax.Array:
  """(sum c^2)^2 / sum c^4 over the last axis."""
  c2 = c * c
  return jnp.sum(c2, axis=-1) ** 2 / jnp.maximum(jnp.sum(c2 * c2, axis=-1), 1e-30)


def unit_report(w: jax.Array, dictionary: jax.Array) -> dict[str, jax.Array]:
  """Per-unit purity, participation ratio and norm of the loadings."""
  c = loadings(w, dictionary)
  return {'purity': purity(c), 'participation_ratio': participation_ratio(c),
          'norm': jnp.linalg.norm(c, axis=-1)}
