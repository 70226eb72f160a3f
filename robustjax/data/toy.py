"""Paper B's noisy XOR: four Gaussian blobs at (+-1, +-1).

Class 0 sits at (1, 1) and (-1, -1), class 1 at (-1, 1) and (1, -1) (the
authors' ``load_xor_noisy``), ``n_per_blob`` points each with isotropic noise
``noise_std``: 20 points and 0.2 give the paper's 80-point training set.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CENTERS = jnp.array([[1.0, 1.0], [-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]])
LABELS = jnp.array([0, 0, 1, 1], jnp.int32)


def noisy_xor(key: jax.Array, n_per_blob: int = 20, noise_std: float = 0.2
              ) -> tuple[jax.Array, jax.Array]:
  """(x (4 n, 2) float32, y (4 n,) int32), blob by blob in the order of CENTERS."""
  noise = noise_std * jax.random.normal(key, (4, n_per_blob, 2))
  x = (CENTERS[:, None, :] + noise).reshape(-1, 2)
  y = jnp.repeat(LABELS, n_per_blob)
  return x, y
