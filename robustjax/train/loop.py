"""Run a stage's training: compiled chunks of steps, a progress bar, a NaN guard."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from tqdm.auto import tqdm

from robustjax.train.steps import LossFn, train_steps


class DivergedError(FloatingPointError):
  """The training loss became NaN or inf."""


def fit(state: train_state.TrainState, aux, key: jax.Array, loss_fn: LossFn, *,
        steps: int, chunk_size: int = 250, batched: bool = False, desc: str = 'train',
        progress: bool = True):
  """Trains for ``steps`` steps; returns (state, metrics of the last chunk).

  ``batched=True`` vmaps everything over the leading axis of ``state``, ``aux``
  and ``key`` (seeds, tasks): one compile trains them all. The loss is checked
  for NaN/inf after every chunk; a diverging run raises ``DivergedError``.
  """
  run = functools.partial(train_steps, loss_fn=loss_fn)
  if batched:
    run = jax.vmap(run, in_axes=(0, 0, 0, None, None))
  run = jax.jit(run, static_argnums=4)

  metrics = {}
  with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
    for start in range(0, steps, chunk_size):
      n = min(chunk_size, steps - start)
      state, chunk_metrics = run(state, key, aux, jnp.asarray(start), n)
      metrics = jax.tree.map(lambda m: np.asarray(m).mean(axis=-1), chunk_metrics)
      if not np.all(np.isfinite(metrics['loss'])):
        raise DivergedError(f'{desc}: loss is not finite at step <= {start + n}; '
                            'lower the learning rate or the attack radius')
      bar.update(n)
      bar.set_postfix(loss=f"{np.mean(metrics['loss']):.4f}")
  return state, metrics
