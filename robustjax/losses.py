"""Losses over logits and labels, per example (no reduction)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def logistic(logits: jax.Array, y: jax.Array) -> jax.Array:
  """log(1 + exp(-y f)) for scalar logits f and labels y in {-1, +1}."""
  return jax.nn.softplus(-y * logits)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Classification margin: positive iff the prediction is correct.

  Binary (logits (n,), y in {-1, +1}): y f. Multi-class (logits (n, C), y
  integer): z_y - max_{k != y} z_k.
  """
  if logits.ndim == 1:
    return y * logits
  y = y.astype(jnp.int32)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return z_y - jnp.max(others, axis=-1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy for integer labels, or logistic for binary scalar logits."""
  if logits.ndim == 1:
    return logistic(logits, y)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))


def pair_score(h: jax.Array, h2: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
  """s = scale * <h, h'> per pair: positive means "same latent features"."""
  return scale * jnp.sum(h * h2, axis=-1)


def pair_contrastive(score: jax.Array, y: jax.Array) -> jax.Array:
  """Paper A's pair loss: logistic on y * s, y = +1 similar, -1 dissimilar."""
  return logistic(score, y)
