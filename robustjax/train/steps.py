"""The one training step every stage uses, and its scan over many steps.

A stage supplies ``loss_fn(params, key, aux) -> (loss, metrics)``: it draws or
picks its batch from ``key``, may attack it, and returns the scalar loss. ``aux``
carries the arrays the loss needs besides the trained parameters (the data
world, a frozen encoder), so one compiled step serves every seed when vmapped.

Models with BatchNorm keep their running statistics in ``state.batch_stats``;
their loss takes them and hands back the updated ones:
``loss_fn(params, key, aux, batch_stats) -> (loss, (metrics, new_batch_stats))``.
Only the training forward pass may update them: attacks inside the loss run
the model in eval mode and never touch them.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax.training import train_state

LossFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, dict]]


def train_step(state: train_state.TrainState, key: jax.Array, aux: Any, loss_fn: LossFn):
  """One optax update on loss_fn's gradient; returns (state, metrics)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if getattr(state, 'batch_stats', None) is None:
    (loss, metrics), grads = grad_fn(state.params, key, aux)
    return state.apply_gradients(grads=grads), dict(metrics, loss=loss)
  (loss, (metrics, stats)), grads = grad_fn(state.params, key, aux, state.batch_stats)
  return (state.apply_gradients(grads=grads, batch_stats=stats), dict(metrics, loss=loss))


def train_steps(state: train_state.TrainState, key: jax.Array, aux: Any, first_step,
                num_steps: int, loss_fn: LossFn):
  """``num_steps`` steps under lax.scan; step t uses fold_in(key, t).

  Deriving each step's key from its global index makes a run's randomness
  independent of how it is chunked (and so of where it was resumed).
  """
  def body(state, t):
    return train_step(state, jax.random.fold_in(key, t), aux, loss_fn)

  if num_steps == 1:  # no loop at all (see loop.fit's fused_steps)
    state, metrics = body(state, first_step)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(body, state, first_step + jax.numpy.arange(num_steps))
