"""Shared pieces of the attacks: label handling, norms, per-example keys.

Every attack here works on multi-class logits (n, C) with integer labels.
Binary models (scalar logits (n,), labels in {-1, +1}, as ``losses.margin``)
are lifted to two classes with logits ``[0, f]`` and labels ``(y + 1) / 2``:
the margin is then exactly ``y f`` and the cross-entropy exactly the logistic
loss, so decision boundaries and losses are unchanged.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def _keyed_lifted(predict_fn, x, keys):
  z = jax.vmap(lambda xi, ki: predict_fn(xi[None], ki)[0])(x, keys)
  if z.ndim == 1:
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)
  return z


def keyed_multiclass(predict_fn: Callable) -> jax.tree_util.Partial:
  """For a randomised model ``predict_fn(x, key)``: ``(x (n, ...), keys (n,)) -> (n, C)``.

  Each example is its own call on a batch of one with its own key (vmapped),
  so its random draw does not depend on the rest of the batch; scalar
  logits are lifted as :func:`multiclass` does.
  """
  return jax.tree_util.Partial(_keyed_lifted, as_partial(predict_fn))


def takes_key(predict_fn: Callable, x) -> bool:
  """True for a randomised model ``predict_fn(x, key)``, False for ``predict_fn(x)``.

  Decided by tracing both calls on one example (``jax.eval_shape``: nothing
  runs or compiles); raises the one-argument call's error when neither traces.
  """
  one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
  try:
    jax.eval_shape(predict_fn, one)
    return False
  except TypeError as err:
    try:
      jax.eval_shape(lambda a: predict_fn(a, jax.random.PRNGKey(0)), one)
    except Exception:  # noqa: BLE001  (the one-argument error is the one to show)
      raise err from None
    return True


def is_binary(predict_fn: Callable, x: jax.Array) -> bool:
  """True when the model returns scalar logits (shape check on one example)."""
  return output_kind(predict_fn, x)[0]


def output_kind(predict_fn: Callable, x: jax.Array, randomized: bool = False) -> tuple[bool, int]:
  """(binary: scalar logits (n,)?, number of classes: 2 when binary, else C).

  ``randomized``: ``predict_fn(x, key)`` (traced with a key)."""
  one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
  fn = (lambda a: predict_fn(a, jax.random.PRNGKey(0))) if randomized else predict_fn
  out = jax.eval_shape(fn, one)
  if out.ndim not in (1, 2):
    raise ValueError(f'predict_fn: must return scalar logits (n,) or logits (n, C), got shape '
                     f'{out.shape} for a batch of one')
  return out.ndim == 1, 2 if out.ndim == 1 else int(out.shape[-1])


def int_labels(y, binary: bool):
  """Integer labels for the lifted logits: {-1, +1} -> {0, 1} when binary.

  Concrete labels come back as numpy (host work: no compile, no device op);
  traced ones stay jax."""
  xp = np if checks.concrete(y) else jnp
  y = xp.asarray(y)
  if binary:
    return (y > 0).astype(xp.int32)
  return y.astype(xp.int32)


def lift(predict_fn: Callable, x: jax.Array, y, randomized: bool = False):
  """(multi-class logits_fn, integer labels, number of classes, binary?).

  ``randomized``: ``predict_fn(x, key)``; logits_fn is then
  :func:`keyed_multiclass`'s ``(x, keys) -> logits``."""
  binary, num_classes = output_kind(predict_fn, x, randomized)
  fn = keyed_multiclass(predict_fn) if randomized else multiclass(predict_fn)
  return fn, int_labels(y, binary), num_classes, binary


def checked_lift(predict_fn: Callable, x: jax.Array, y, bounds=None, randomized: bool = False):
  """The entry checks of an attack on a model with labels, then :func:`lift`.

  x floating, finite and inside ``bounds``; y one label per example, in the
  library's convention for the model's output (see ``checks.labels``).
  """
  checks.inputs(x)
  checks.bounds(bounds)
  checks.inside(x, bounds)
  y = checks.batch(x, y if hasattr(y, 'shape') else np.asarray(y))
  lifted = lift(predict_fn, x, y, randomized)
  checks.labels(y, binary=lifted[3], num_classes=lifted[2])
  return lifted


def margin(logits, y):
  """z_y - max_{k != y} z_k: positive iff correctly classified.

  numpy in (logits and labels), numpy out: host work, no compile; jax otherwise."""
  xp = np if not any(isinstance(a, jax.Array) for a in (logits, y)) else jnp
  logits, y = xp.asarray(logits), xp.asarray(y)
  z_y = xp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  mine = xp.arange(logits.shape[-1]) == y[:, None]
  others = xp.where(mine, -xp.inf, logits)
  return z_y - xp.max(others, axis=-1)


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


# --- Chunks of one compiled size (AutoAttack's ``bs``) -----------------------
#
# An attack runs on a fixed number of points per call: the last chunk is
# padded with copies of its first row, and the copies' results are dropped.
# Every chunk, and every later call on any number of points, then reuses one
# compiled program, and memory is set by the chunk size, not by n.


def chunk_size(n: int, batch_size: int | None) -> int:
  """The one compiled batch size for n points: ``batch_size`` capped at n (n when None)."""
  return max(1, n if batch_size is None else min(int(batch_size), n))


def padded(idx, size: int) -> np.ndarray:
  """Host integer indices ``idx`` (0 < m <= size) padded to ``size`` with copies of idx[0]."""
  idx = np.asarray(idx)
  return np.concatenate([idx, np.full(size - idx.size, idx[0], idx.dtype)])


def per_point(value, n: int, dtype=np.float32):
  """A scalar or (n,) value (a radius) as (n,), so it is chunked with the points.

  Concrete values become numpy (no device op); traced ones stay jax."""
  if checks.concrete(value):
    return np.broadcast_to(np.asarray(value, dtype), (n,))
  return jnp.broadcast_to(jnp.asarray(value, dtype), (n,))


def run_chunked(fn: Callable, arrays, batch_size: int | None):
  """``fn(*arrays)`` computed in chunks of one compiled size.

  ``arrays``: arrays with a common leading axis n (numpy or jax). ``fn``
  returns a pytree whose leaves are per-row (leading axis the chunk's size)
  or () bool flags. With ``batch_size`` None or >= n, fn runs once on the
  arrays as given (its outputs returned as they are); otherwise on chunks of
  ``batch_size`` rows gathered on the host, the last one padded, and the
  per-row outputs are concatenated (numpy; padding dropped), the flags OR-ed.
  A per-row result equals the unchunked one when fn treats rows
  independently (per-example keys, see :func:`example_keys`), up to the
  rounding of XLA programs compiled for a different batch size.
  """
  n = arrays[0].shape[0]
  if batch_size is None or batch_size >= n:
    return fn(*arrays)
  host = [np.asarray(a) for a in arrays]
  parts = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    take = padded(rows, batch_size)
    parts.append((rows.size, fn(*[a[take] for a in host])))  # dispatched asynchronously
  treedef = jax.tree_util.tree_structure(parts[0][1])
  leaves = [[np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)] for _, out in parts]
  merged = []
  for j, first in enumerate(leaves[0]):
    if first.ndim == 0:
      merged.append(np.any([lv[j] for lv in leaves]))
    else:
      merged.append(np.concatenate([lv[j][:m] for (m, _), lv in zip(parts, leaves)]))
  return jax.tree_util.tree_unflatten(treedef, merged)


@functools.partial(jax.jit, static_argnames=('tag',))
def _forward(logits_fn, x, key, index, *, tag):
  if tag is None:
    return logits_fn(x)
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys(key, index), tag)
  return logits_fn(x, keys)


def logits_of(logits_fn, x, batch_size: int | None = None, *, key=None, index=None,
              tag: int | None = None) -> np.ndarray:
  """Host logits (n, C) of a lifted ``logits_fn``, computed in chunks of one compiled size.

  A randomised ``logits_fn(x, keys)`` (see :func:`keyed_multiclass`) needs
  ``key``, ``index`` and a ``tag``: example i then draws from
  fold_in(fold_in(key, index[i]), tag), one draw per call."""
  n = x.shape[0]
  index = np.arange(n) if index is None else index
  run = lambda xs, ids: _forward(logits_fn, xs, key, ids, tag=tag)
  return np.asarray(run_chunked(run, [x, index], chunk_size(n, batch_size)))


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
