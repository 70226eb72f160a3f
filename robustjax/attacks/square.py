"""Square attack (Andriushchenko et al., ECCV 2020): score-based random search.

Only the logits are queried, never gradients, which makes it the ensemble's
check against gradient masking. Inputs are viewed as (n, h, w, c): images
(NHWC, flax's layout) keep their shape, flat vectors (n, d) become (n, d, 1, 1)
so a "square" is a contiguous window of coordinates. The window's share p of
the input follows the published schedule (p_init halved at 10, 50, 200, 500,
1000, 2000, 4000, 6000, 8000 of 10000 queries, rescaled to the budget).

linf is the published attack: a vertical-stripe start at the corners of the
cube, then windows set to +-eps per channel, kept when the margin loss drops.
l2 here is a simplified variant of the published one: the same windows get a
random +-eps sqrt(p) pattern added and the whole perturbation is put back on
the eps-sphere (so it stays in the ball); it lacks the paper's mass-moving
update and is weaker, which only makes the masking check more conservative.

Windows are drawn per example from per-example keys, so a point's result does
not depend on the rest of its batch. Points stop being queried once
misclassified; each point's query count is returned.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks
from robustjax.attacks import common, health
from robustjax.attacks.pgd import project

_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: jax.Array, n_queries: int) -> jax.Array:
  """Window share at iteration ``it``: p_init halved at each rescaled milestone."""
  it = (it * 10000) // n_queries
  halvings = sum((it > m).astype(jnp.int32) for m in _P_SCHEDULE)
  return p_init / (2.0 ** halvings)


def _as_image(x):
  if x.ndim == 2:
    return x[:, :, None, None]
  if x.ndim == 3:
    return x[..., None]
  return x


def _window_mask(key, h, w, p):
  """Boolean (h, w) mask of one random window covering a share p of the plane."""
  if w == 1:
    sh, sw = jnp.clip(jnp.round(p * h), 1, h).astype(jnp.int32), 1
  else:
    s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w)).astype(jnp.int32)
    sh, sw = s, s
  kr, kc = jax.random.split(key)
  r = jax.random.randint(kr, (), 0, h - sh + 1)
  c = jax.random.randint(kc, (), 0, w - sw + 1)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  return (rows >= r) & (rows < r + sh) & (cols >= c) & (cols < c + sw)


@functools.partial(jax.jit, static_argnames=('norm', 'n_queries'))
def _square(logits_fn, x, y, eps, keys, bounds, p_init, *, norm, n_queries):
  shape = x.shape
  xi = _as_image(x)
  n, h, w, c = xi.shape
  eps_vec = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (n,))
  eps4 = eps_vec[:, None, None, None]

  def margin_of(delta4):
    return common.margin(logits_fn(common.clip_to_bounds(x + delta4.reshape(shape), bounds)), y)

  def to_ball(delta4):
    # Back into the ball and the box; returns the feasible perturbation.
    d = project(delta4, eps4, norm)
    return (common.clip_to_bounds(x + d.reshape(shape), bounds) - x).reshape(xi.shape)

  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(keys)  # not an iteration index
  stripes = jax.vmap(lambda k: common.signs(k, (1, w, c), x.dtype))(init_keys)
  delta = eps4 * jnp.broadcast_to(stripes, xi.shape)
  if norm == 'l2':
    delta = delta / jnp.sqrt(jnp.asarray(h * w * c, x.dtype))
  delta = to_ball(delta)
  m = margin_of(delta)
  queries = jnp.ones((n,), jnp.int32)

  def body(it, carry):
    delta, m, queries = carry
    active = m > 0
    p = p_selection(p_init, it, n_queries)
    ikeys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, it)

    def propose(k, d, e):
      kw, ks = jax.random.split(k)
      mask = _window_mask(kw, h, w, p)[:, :, None]
      signs = common.signs(ks, (1, 1, c), x.dtype)
      if norm == 'linf':
        return jnp.where(mask, e * signs, d)
      return d + mask * signs * e * jnp.sqrt(p)

    cand = jax.vmap(propose)(ikeys, delta, eps_vec)
    if norm == 'l2':
      # Keep the full budget: put the proposal on the eps-sphere.
      nrm = common.norm(cand, 'l2')[:, None, None, None]
      cand = cand * eps4 / jnp.maximum(nrm, 1e-12)
    cand = to_ball(cand)
    m_new = margin_of(cand)
    take = active & (m_new < m)
    delta = jnp.where(take[:, None, None, None], cand, delta)
    return delta, jnp.where(take, m_new, m), queries + active.astype(jnp.int32)

  delta, m, queries = jax.lax.fori_loop(0, n_queries - 1, body, (delta, m, queries))
  x_adv = common.clip_to_bounds(x + delta.reshape(shape), bounds)
  return x_adv, m > 0, queries


def square(predict_fn, x, y, *, eps, norm: str, key, n_queries: int = 5000,
           p_init: float = 0.8, bounds=None, index=None, warn: bool = True):
  """Runs the Square attack; returns (x_adv, robust (n,) bool, queries (n,)).

  ``predict_fn`` returns logits (n, C) with y integers in [0, C), or scalar
  logits (n,) with y in {-1, +1}. ``eps`` >= 0, scalar or (n,);
  ``n_queries`` >= 1; ``p_init`` in (0, 1], 0.8 is AutoAttack's choice.
  ``index`` gives each example's position in the full data set for its random
  draws (default arange). x must be floating, finite and inside ``bounds``.

  A point is reported broken only if its returned point and logits are
  finite. Raises ValueError / TypeError (one line naming the argument) on bad
  input (``robustjax.checks``); with ``warn`` a RuntimeWarning flags outputs
  that look like probabilities (a saturated softmax gives Square a flat score).
  """
  checks.norm(norm)
  n_queries = checks.budget(n_queries, 'n_queries')
  checks.number(p_init, 'p_init', low=0, high=1, low_open=True)
  logits_fn, yi, _, _ = common.checked_lift(predict_fn, x, y, bounds)
  checks.radius(eps, x.shape[0], 'eps')
  index = jnp.arange(x.shape[0]) if index is None else checks.batch(x, jnp.asarray(index),
                                                                     name_y='index')
  keys = common.example_keys(key, index)
  x_adv, robust, queries = _square(logits_fn, x, yi, eps, keys, bounds, p_init, norm=norm,
                                   n_queries=n_queries)
  _, prob = health.outputs(logits_fn, x)
  finite = health.rows_finite(np.asarray(x_adv), np.asarray(logits_fn(x_adv)))
  if warn:
    health.warn(health.messages('square', dict(prob=prob)))
  return x_adv, robust | jnp.asarray(~finite), queries
