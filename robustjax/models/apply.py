"""Model functions as jit-friendly pytrees.

Attacks take their loss as a ``jax.tree_util.Partial``: the arrays it closes
over (parameters, labels) are traced leaves, the function is static. The
static part must compare by value, or every new closure recompiles; ``bind``
gives a function with its module fixed that does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax


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
