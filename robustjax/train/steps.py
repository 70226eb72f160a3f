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

Every step also reports, under ``metrics['finite']``, whether each thing it
computed was finite, in the order a non-finite value propagates: ``loss``,
``grads`` (the task gradient), ``penalty`` (what a spectral penalty in the
optimizer chain added to it) and ``params`` (after the update). ``loop.fit``
names the first one that failed instead of guessing.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax.training import train_state

from robustjax.spectral.regularizers import SpectralState

LossFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, dict]]

# The finiteness flags of one step, in the order a NaN propagates through it.
FINITE = ('loss', 'grads', 'penalty', 'params')


def all_finite(tree) -> jax.Array:
  """Whether every entry of every leaf is finite (a scalar bool; True for no leaves)."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
                             or [True]))


def _penalty_finite(opt_state) -> jax.Array:
  """Whether every spectral penalty in the optimizer chain added a finite gradient."""
  spectral = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, SpectralState))
              if isinstance(s, SpectralState)]
  return all_finite([s.grad_norm for s in spectral])


def train_step(state: train_state.TrainState, key: jax.Array, aux: Any, loss_fn: LossFn):
  """One optax update on loss_fn's gradient; returns (state, metrics).

  ``metrics`` holds loss_fn's metrics, ``loss`` and ``finite``: a dict of
  scalar bools over ``FINITE`` (see the module docstring).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if getattr(state, 'batch_stats', None) is None:
    (loss, metrics), grads = grad_fn(state.params, key, aux)
    new = state.apply_gradients(grads=grads)
  else:
    (loss, (metrics, stats)), grads = grad_fn(state.params, key, aux, state.batch_stats)
    new = state.apply_gradients(grads=grads, batch_stats=stats)
  finite = {'loss': jnp.all(jnp.isfinite(loss)), 'grads': all_finite(grads),
            'penalty': _penalty_finite(new.opt_state), 'params': all_finite(new.params)}
  return new, dict(metrics, loss=loss, finite=finite)


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
