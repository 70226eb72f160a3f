"""Clean and robust accuracy under PGD at a list of radii."""
from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from robustjax import losses
from robustjax.attacks import pgd


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(losses.margin(logits, y) > 0)


def robust_accuracy(logit_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                    *, eps: Sequence[float], norm: str, steps: int, step_size: float,
                    restarts: int, key: chex.PRNGKey, bounds=None) -> jax.Array:
  """Accuracy under PGD on the negative margin at each eps, shape (len(eps),).

  The step size is relative: each radius uses ``step_size * eps``. The attack
  maximises the negative margin (CW-style), so the best iterate kept per
  example is the most misclassified one. eps = 0 gives the clean accuracy.
  """
  if not isinstance(logit_fn, jax.tree_util.Partial):
    logit_fn = jax.tree_util.Partial(logit_fn)
  attack_loss = jax.tree_util.Partial(_neg_margin, logit_fn, y)
  accs = []
  for i, e in enumerate(eps):
    x_adv = pgd(attack_loss, x, eps=e, norm=norm, steps=steps, step_size=step_size * e,
                key=jax.random.fold_in(key, i), restarts=restarts, bounds=bounds)
    accs.append(accuracy(logit_fn(x_adv), y))
  return jnp.stack(accs)


def _neg_margin(logit_fn, y, x):
  return -losses.margin(logit_fn(x), y)
