"""RoCL's instance-wise attack (Kim, Tack & Hwang, NeurIPS 2020), by PGD.

Without labels, an input is attacked through its identity: x_adv in the
eps-ball around a view x maximises the NT-Xent loss of embed(x_adv) against
its positive, embed(x_pos) (another augmentation of the same image), and
negatives, the clean embeddings of the other examples. RoCL recomputes the
other examples' adversarial embeddings as negatives inside the attack, which
couples the examples; here every target is computed once from the clean batch
and held fixed (``losses.instance_contrastive``), so each example's loss
depends on its own input alone. That is what ``attacks.pgd`` needs for its
per-example steps and best-iterate selection to be valid, and at x_adv = x the
objective equals SimCLR's per-anchor loss ``losses.nt_xent(embed(x),
embed(x_pos))[:n]``.

``embed_fn`` maps a batch to embeddings (n, d), in eval mode (frozen
BatchNorm statistics, no dropout): pass a ``jax.tree_util.Partial`` over the
parameters so that new parameters reuse the compiled attack. Model state is
never updated here; the returned batch carries no gradient (a training step
treats it as data, as in adversarial training).
"""
from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from robustjax import checks, losses
from robustjax.attacks.common import as_partial
from robustjax.attacks.pgd import PGDSpec


def _flat_embed(embed_fn, x):
  z = embed_fn(x)
  return z.reshape(z.shape[0], -1)


def _loss(embed_fn, z_pos, z_neg, neg_mask, temperature, x):
  return losses.instance_contrastive(_flat_embed(embed_fn, x), z_pos, z_neg, temperature,
                                     neg_mask)


def instance_loss_fn(embed_fn: Callable, x: jax.Array, x_pos: jax.Array,
                     temperature: float | jax.Array) -> jax.tree_util.Partial:
  """The attack's objective: x_adv (n, ...) -> per-example losses (n,).

  Targets, computed once from the clean batch and gradient-stopped: example
  i's positive is embed(x_pos)_i, its negatives are embed(x)_j and
  embed(x_pos)_j for every j != i (the 2n - 2 negatives of NT-Xent).
  ``temperature`` > 0 (ValueError otherwise, checked when concrete).
  """
  checks.temperature(temperature)
  embed_fn = as_partial(embed_fn)
  n = x.shape[0]
  z = jax.lax.stop_gradient(_flat_embed(embed_fn, x))
  z_pos = jax.lax.stop_gradient(_flat_embed(embed_fn, x_pos))
  z_neg = jnp.concatenate([z, z_pos], axis=0)
  others = ~jnp.eye(n, dtype=bool)
  neg_mask = jnp.concatenate([others, others], axis=1)
  return jax.tree_util.Partial(_loss, embed_fn, z_pos, z_neg, neg_mask,
                               jnp.asarray(temperature, z.dtype))


@functools.partial(jax.jit, static_argnames=('spec',))
def _instance_attack(embed_fn, x, x_pos, key, bounds, temperature, *, spec):
  # Stopping the inputs (parameters included), not only the output, spares a
  # caller's jax.grad the linearisation of the whole PGD program.
  embed_fn, x, x_pos = jax.lax.stop_gradient((embed_fn, x, x_pos))
  return spec(instance_loss_fn(embed_fn, x, x_pos, temperature), x, key, bounds=bounds)


def instance_attack(embed_fn: Callable, x: jax.Array, x_pos: jax.Array, key: chex.PRNGKey,
                    spec: PGDSpec, bounds=None, *,
                    temperature: float | jax.Array = 0.5) -> jax.Array:
  """The attacked batch: x_adv in ``spec``'s ball around x, inside ``bounds``.

  Args:
    embed_fn: batch -> embeddings (n, ...) (flattened to (n, d)), eval mode;
      a ``jax.tree_util.Partial`` over the parameters avoids recompiles.
    x: the view to attack (n, H, W, C) (any (n, ...) works), inside bounds.
    x_pos: its positive, another view of the same images, same shape as x.
    key: PRNG key for PGD's random starts.
    spec: the PGD attack (radius, norm, steps, step size, restarts).
    bounds: None or (lo, hi), the input domain, e.g. (0., 1.).
    temperature: NT-Xent temperature T (> 0); RoCL and SimCLR on CIFAR use 0.5.

  Raises ValueError / TypeError (one line naming the argument) when spec is
  not a PGDSpec, x / x_pos are not floating batches of one shape (or, when
  concrete, not finite or outside bounds), bounds are not (lo, hi) with
  lo < hi, or the temperature is not > 0. (The spec checks its own radius,
  norm and budgets when it is made.)
  """
  if not isinstance(spec, PGDSpec):
    raise TypeError(f'spec: must be a PGDSpec, got {type(spec).__name__}')
  checks.inputs(x)
  checks.inputs(x_pos, 'x_pos')
  if x.shape != x_pos.shape:
    raise ValueError(f'x_pos: must have the shape of x {x.shape}, got {x_pos.shape}')
  checks.bounds(bounds)
  checks.inside(x, bounds)
  checks.inside(x_pos, bounds, 'x_pos')
  checks.temperature(temperature)
  return _instance_attack(as_partial(embed_fn), x, x_pos, key, bounds,
                          jnp.asarray(temperature, x.dtype), spec=spec)
