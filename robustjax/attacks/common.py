"""Shared pieces of the attacks: label handling, norms, per-example keys.

Every attack here works on multi-class logits (n, C) with integer labels.
Binary models (scalar logits (n,), labels in {-1, +1}, as ``losses.margin``)
are lifted to two classes with logits ``[0, f]`` and labels ``(y + 1) / 2``:
the margin is then exactly ``y f`` and the cross-entropy exactly the logistic
loss, so decision boundaries and losses are unchanged.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from robustjax import checks
from robustjax.checks import NORMS  # noqa: F401  (re-exported for the attacks)


def as_partial(fn: Callable) -> jax.tree_util.Partial:
  """Attacks take functions as pytrees so arrays they close over are traced."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def _lifted(predict_fn, x):
  z = predict_fn(x)
  if z.ndim == 1:
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)
  return z


def multiclass(predict_fn: Callable) -> jax.tree_util.Partial:
  """A logits function giving (n, C) with C >= 2 (scalar logits lifted)."""
  return jax.tree_util.Partial(_lifted, as_partial(predict_fn))


def is_binary(predict_fn: Callable, x: jax.Array) -> bool:
  """True when the model returns scalar logits (shape check on one example)."""
  return output_kind(predict_fn, x)[0]


def output_kind(predict_fn: Callable, x: jax.Array) -> tuple[bool, int]:
  """(binary: scalar logits (n,)?, number of classes: 2 when binary, else C)."""
  out = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
  if out.ndim not in (1, 2):
    raise ValueError(f'predict_fn: must return scalar logits (n,) or logits (n, C), got shape '
                     f'{out.shape} for a batch of one')
  return out.ndim == 1, 2 if out.ndim == 1 else int(out.shape[-1])


def int_labels(y: jax.Array, binary: bool) -> jax.Array:
  """Integer labels for the lifted logits: {-1, +1} -> {0, 1} when binary."""
  y = jnp.asarray(y)
  if binary:
    return ((y > 0)).astype(jnp.int32)
  return y.astype(jnp.int32)


def lift(predict_fn: Callable, x: jax.Array, y: jax.Array):
  """(multi-class logits_fn, integer labels, number of classes, binary?)."""
  binary, num_classes = output_kind(predict_fn, x)
  return multiclass(predict_fn), int_labels(y, binary), num_classes, binary


def checked_lift(predict_fn: Callable, x: jax.Array, y, bounds=None):
  """The entry checks of an attack on a model with labels, then :func:`lift`.

  x floating, finite and inside ``bounds``; y one label per example, in the
  library's convention for the model's output (see ``checks.labels``).
  """
  checks.inputs(x)
  checks.bounds(bounds)
  checks.inside(x, bounds)
  y = checks.batch(x, jnp.asarray(y))
  lifted = lift(predict_fn, x, y)
  checks.labels(y, binary=lifted[3], num_classes=lifted[2])
  return lifted


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """z_y - max_{k != y} z_k: positive iff correctly classified."""
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return z_y - jnp.max(others, axis=-1)


def bview(v: jax.Array, x: jax.Array) -> jax.Array:
  """A per-example (n,) value shaped to broadcast against x (n, ...)."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def norm(v: jax.Array, p: str) -> jax.Array:
  """Per-example l2 or linf norm, shape (n,)."""
  flat = v.reshape(v.shape[0], -1)
  if p == 'linf':
    return jnp.max(jnp.abs(flat), axis=-1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=-1))


def dual_norm(v: jax.Array, p: str) -> jax.Array:
  """Norm dual to p (l1 for linf): the gradient norm in first-order distances."""
  flat = v.reshape(v.shape[0], -1)
  if p == 'linf':
    return jnp.sum(jnp.abs(flat), axis=-1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=-1))


def clip_to_bounds(x_adv: jax.Array, bounds) -> jax.Array:
  if bounds is None:
    return x_adv
  return jnp.clip(x_adv, bounds[0], bounds[1])


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """One key per example from its position in the full data set.

  Random draws made from these keys do not depend on which other points share
  the batch, so an attack gives the same answer on a point whether it runs on
  all points or only on the ones a previous attack left robust.
  """
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def pad_to_bucket(n: int, minimum: int = 64) -> int:
  """Next power of two >= max(n, minimum): shrinking sub-batches share few compiles
  (a batch of 1000 points compiles for at most 1024, 512, 256, 128 and 64)."""
  size = minimum
  while size < n:
    size *= 2
  return size


def take_padded(arrays, idx, size):
  """Rows ``idx`` of each array, padded to ``size`` by repeating the first row."""
  idx = jnp.asarray(idx)
  pad = jnp.full((size - idx.shape[0],), idx[0] if idx.shape[0] else 0, idx.dtype)
  full = jnp.concatenate([idx, pad])
  return [a[full] for a in arrays]


# Random draws of a flat shape, reshaped: XLA on CPU compiles threefry draws of
# multi-dimensional shapes many times slower (seconds per draw) than flat ones.

def normal(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
  return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def signs(key, shape, dtype=jnp.float32):
  """Uniform +-1 draws."""
  return jnp.where(jax.random.bernoulli(key, 0.5, (math.prod(shape),)), 1.0, -1.0).astype(
      dtype).reshape(shape)


def per_example(draw, keys):
  """Stacks ``draw(key)`` over per-example keys.

  ``lax.map`` (a loop) rather than ``vmap``: vmapped threefry draws are again
  multi-dimensional and compile slowly, and the loop costs little next to an
  attack's model evaluations.
  """
  return jax.lax.map(draw, keys)
