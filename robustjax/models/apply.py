"""Model functions as jit-friendly pytrees.

Attacks take their loss as a ``jax.tree_util.Partial``: the arrays it closes
over (parameters, labels) are traced leaves, the function is static. The
static part must compare by value, or every new closure recompiles; ``bind``
gives a function with its module fixed that does. ``in_batches`` runs a
model function over many points in batches of one compiled size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class _Bound:
  fn: Callable       # a module-level function fn(model, *args)
  model: Any         # a flax module: hashable and compared by its fields

  def __call__(self, *args):
    return self.fn(self.model, *args)


def bind(fn: Callable, model: Any, *arrays) -> jax.tree_util.Partial:
  """Partial(fn, model, *arrays) where equal (fn, model) pairs share one compile."""
  return jax.tree_util.Partial(_Bound(fn, model), *arrays)


def logits(model, params, x):
  """model.apply on plain params."""
  return model.apply({'params': params}, x)


def in_batches(fn: Callable, x: jax.Array, batch_size: int, *, multiple_of: int = 1,
               axis: int = 0) -> jax.Array:
  """``fn`` over x (n, ...) in batches of one size, concatenated: bounded memory.

  Every call sees the same batch shape (one compile): the size is
  ``min(batch_size, n)`` rounded up to a multiple of ``multiple_of`` (the
  devices a batch is split over), and a short last batch is padded with copies
  of its first row, whose outputs are dropped. ``fn`` must treat rows
  independently (eval-mode models do). Its outputs have the batch on ``axis``
  (1 for outputs stacked over seeds); the result holds the n real rows there.
  Raises ValueError on a batch_size or multiple_of below 1.
  """
  for name, v in (('batch_size', batch_size), ('multiple_of', multiple_of)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {v!r}')
  n = x.shape[0]
  if n == 0:
    raise ValueError('x must have at least one row, got 0')
  size = -(-min(int(batch_size), n) // multiple_of) * multiple_of
  outs = []
  for start in range(0, n, size):
    xb = x[start:start + size]
    if xb.shape[0] < size:
      xb = jnp.concatenate([xb, jnp.broadcast_to(xb[:1], (size - xb.shape[0],) + xb.shape[1:])])
    outs.append(fn(xb))
  out = jnp.concatenate(outs, axis=axis) if len(outs) > 1 else outs[0]
  return jax.lax.slice_in_dim(out, 0, n, axis=axis)
