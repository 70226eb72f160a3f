"""Square attack (Andriushchenko et al., ECCV 2020): score-based random search.

Only the logits are queried, never gradients, which makes it the ensemble's
check against gradient masking. Inputs are viewed as (n, h, w, c): images
(NHWC, flax's layout) keep their shape, flat vectors (n, d) become (n, d, 1, 1)
so a "square" is a contiguous strip of coordinates (of length p d). The
window's share p of the input follows the published schedule ``p_selection``
(p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000
queries, rescaled to the budget). A proposal is kept when it lowers the margin
z_y - max_{k != y} z_k; a point is broken once the margin is <= 0.

linf (the paper's Algorithm 2): a vertical-stripe start at the corners of the
cube (+-eps per column and channel), then one window of side
s = round(sqrt(p h w)) set to +-eps per channel.

l2 (the paper's Section 3.2 / Algorithm 3, and ``attack_single_run`` in
fra31/auto-attack's ``autoattack/square.py``):

- start: the image is tiled by blocks of side min(h, w) // 5 (the reference's
  tiling, centred; at least 1), each holding the l2 "meta" pattern ``_eta``
  with a random sign per channel and a random orientation; the sum is put on
  the eps-sphere.
- step: a window W1 and a window W2 of side s = round(sqrt(p h w)), at least
  3 and odd, drawn independently. Per channel, W1 becomes
  ``_eta * (+-1) + delta_W1 / ||delta_W1||``, rescaled so that it holds all the
  mass of W1 and W2 plus an even share of the unused budget,
  ``sqrt(||delta_{W1 u W2}||^2 + max(eps^2 - ||delta||^2, 0) / c)``, and W2
  is emptied: mass moves between the windows and the total stays on the
  eps-sphere (the result is rescaled to norm eps, then clipped to the box).
- ``_eta`` on an a x b window: its first a // 2 rows are +, the rest -; each
  half is a sum of concentric rectangles around its centre, the k-th (k >= 0,
  growing by one cell per side) weighted 1 / (k + 1)^2, normalised to unit l2
  norm; the whole window to unit norm. A random transpose splits it along
  columns instead (square windows only).

``l2_update='simple'`` keeps robustjax's earlier l2 update instead: the linf
start scaled onto the eps-sphere, then one window of the linf size gets
+-eps sqrt(p) per channel added and the whole is put back on the sphere. It
is not the published attack, and it is the stronger one on small inputs past
a few hundred queries: on the digits MLP (64 inputs in [0, 1], 297 points,
eps 0.5, mean of 3 keys) the robust accuracy is 0.596 published vs 0.655
simple at 100 queries, 0.514 vs 0.421 at 300 and 0.456 vs 0.311 at 1000
(APGD-CE: 0.306); ``benchmarks/square_l2.py`` prints the table.

Windows, signs and orientations are drawn per example from per-example keys,
so a point's result does not depend on the rest of its batch. Points stop
being queried once misclassified; each point's query count is returned.
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

L2_UPDATES = {
    'published': 'two windows, mass moved between them (Andriushchenko et al. 2020)',
    'simple': 'a vertical-stripe start; each window gets +-eps sqrt(p) per channel added '
              'and the whole is put back on the eps-sphere',
}


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
  """Boolean (h, w) mask of one random window covering a share p of the plane (linf)."""
  if w == 1:
    sh, sw = jnp.clip(jnp.round(p * h), 1, h).astype(jnp.int32), 1
  else:
    s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w)).astype(jnp.int32)
    sh, sw = s, s
  r, c = _origin(key, h, w, sh, sw)
  return _in_window(h, w, r, c, sh, sw)


def _origin(key, h, w, sh, sw):
  """A uniform top-left corner for an sh x sw window inside h x w."""
  kr, kc = jax.random.split(key)
  return (jax.random.randint(kr, (), 0, h - sh + 1), jax.random.randint(kc, (), 0, w - sw + 1))


def _in_window(h, w, r, c, sh, sw):
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  return (rows >= r) & (rows < r + sh) & (cols >= c) & (cols < c + sw)


def _l2_side(p, h, w):
  """(sh, sw) of l2's windows: area ~ p h w, side >= 3 and odd, within the plane
  (the reference's rule; a d x 1 strip for flat inputs)."""
  if w == 1:
    s = jnp.maximum(jnp.round(p * h), 3).astype(jnp.int32)
    return jnp.minimum(s + (1 - s % 2), h), 1
  s = jnp.maximum(jnp.round(jnp.sqrt(p * h * w)), 3).astype(jnp.int32)
  s = jnp.minimum(s + (1 - s % 2), min(h, w))
  return s, s


def _inv_square_sums(n: int) -> jax.Array:
  """H[m] = sum_{k=1}^m 1/k^2 for m = 0..n (H[0] = 0)."""
  return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]),
                     jnp.float32)


def _rectangles(a, b, rows, cols, sums):
  """Concentric rectangles on a rows x cols block at cells (a, b), 0 outside it.

  Rectangle k (k = 0, 1, ...) is centred on cell (rows // 2, cols // 2) with
  half-sides k, clipped to the block, and weighs 1 / (k + 1)^2; a cell at
  Chebyshev distance d from the centre sums the rectangles k >= d, up to
  K = max(rows, cols) // 2 + 1: H[K] - H[d].
  """
  ca, cb = rows // 2, cols // 2
  top = jnp.maximum(ca, cb) + 1
  d = jnp.maximum(jnp.abs(a - ca), jnp.abs(b - cb))
  inside = (a >= 0) & (a < rows) & (b >= 0) & (b < cols)
  value = jnp.take(sums, top) - jnp.take(sums, jnp.clip(d, 0, top))
  return jnp.where(inside, value, 0.0)


def _unit(t):
  return t / jnp.maximum(jnp.sqrt(jnp.sum(t * t)), 1e-12)


def _eta(i, j, sh, sw, sums):
  """The l2 Square's window pattern at window cells (i, j), 0 outside the window.

  ``i``, ``j``: integer arrays of row and column offsets from the window's
  corner, which must cover the whole sh x sw window (the normalisations sum
  over them). The first sh // 2 rows hold +rectangles, the others
  -rectangles, each half of unit l2 norm; the result has unit l2 norm
  (Andriushchenko et al. 2020, Section 3.2). ``sh``, ``sw`` may be traced;
  ``sums``: ``_inv_square_sums(n)`` with n >= max(sh, sw) // 2 + 1.
  """
  half = sh // 2
  plus = _rectangles(i, j, half, sw, sums)
  minus = _rectangles(i - half, j, sh - half, sw, sums)
  return _unit(_unit(plus) - _unit(minus))


def _channel_norm(t):
  return jnp.sqrt(jnp.sum(t * t, axis=(0, 1)))


def _l2_start(key, h, w, c, dtype, sums):
  """The l2 start of one example (h, w, c), before scaling to eps: tiles of the
  meta pattern with a random sign per channel and a random orientation."""
  if w == 1:
    bh, bw = max(h // 5, 1), 1
  else:
    bh = bw = max(min(h, w) // 5, 1)
  nh, nw = h // bh, w // bw
  oh, ow = (h - nh * bh) // 2, (w - nw * bw) // 2
  a, b = np.meshgrid(np.arange(bh), np.arange(bw), indexing='ij')
  tile = _eta(jnp.asarray(a), jnp.asarray(b), bh, bw, sums)
  tiles = jnp.stack([tile, tile.T if bh == bw else tile])
  ks, kt = jax.random.split(key)
  signs = common.signs(ks, (nh, nw, c), dtype)
  flip = jax.random.bernoulli(kt, 0.5, (nh * nw,)).astype(jnp.int32).reshape(nh, nw)
  rows, cols = np.arange(h) - oh, np.arange(w) - ow
  bi, bj = np.clip(rows // bh, 0, nh - 1), np.clip(cols // bw, 0, nw - 1)
  covered = ((rows >= 0) & (rows < nh * bh))[:, None] & ((cols >= 0) & (cols < nw * bw))[None]
  pattern = tiles[flip[bi[:, None], bj[None]], (rows % bh)[:, None], (cols % bw)[None]]
  start = jnp.where(covered[..., None], pattern[..., None] * signs[bi[:, None], bj[None]], 0.0)
  return start.astype(dtype)


def _l2_proposal(key, d, e, p, sums):
  """One l2 step for one example: d (h, w, c) -> the candidate, norm e before clipping."""
  h, w, c = d.shape
  sh, sw = _l2_side(p, h, w)
  k1, k2, kt, ks = jax.random.split(key, 4)
  r1, c1 = _origin(k1, h, w, sh, sw)
  r2, c2 = _origin(k2, h, w, sh, sw)
  in1 = _in_window(h, w, r1, c1, sh, sw)[..., None]
  in2 = _in_window(h, w, r2, c2, sh, sw)[..., None]
  i = jnp.arange(h)[:, None] - r1
  j = jnp.arange(w)[None, :] - c1
  if w > 1:  # square windows: split the +- halves along rows or columns
    flip = jax.random.bernoulli(kt)
    i, j = jnp.where(flip, j, i), jnp.where(flip, i, j)
  pattern = _eta(i, j, sh, sw, sums)[..., None] * common.signs(ks, (1, 1, c), d.dtype)
  old = jnp.where(in1, d, 0.0)
  moved = pattern + old / (1e-12 + _channel_norm(old))
  spare = jnp.maximum(e * e - jnp.sum(d * d), 0.0)
  mass = jnp.sqrt(spare / c + _channel_norm(jnp.where(in1 | in2, d, 0.0)) ** 2)
  moved = moved / (1e-12 + _channel_norm(moved)) * mass
  cand = jnp.where(in1, moved, jnp.where(in2, 0.0, d))
  return (cand * e / jnp.maximum(jnp.sqrt(jnp.sum(cand * cand)), 1e-12)).astype(d.dtype)


@functools.partial(jax.jit, static_argnames=('norm', 'n_queries', 'l2_update'))
def _square(logits_fn, x, y, eps, key, index, bounds, p_init, *, norm, n_queries, l2_update):
  """Square on one batch: (x_adv, robust (n,), queries (n,), outputs look like
  probabilities ()). A point whose returned point or logits are not finite
  counts as robust. ``key`` and ``index`` give each example its key."""
  keys = common.example_keys(key, index)
  shape = x.shape
  xi = _as_image(x)
  n, h, w, c = xi.shape
  eps_vec = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (n,))
  eps4 = eps_vec[:, None, None, None]
  sums = _inv_square_sums(max(h, w) // 2 + 2)

  def margin_of(delta4):
    return common.margin(logits_fn(common.clip_to_bounds(x + delta4.reshape(shape), bounds)), y)

  def to_ball(delta4):
    # Back into the ball and the box; returns the feasible perturbation.
    d = project(delta4, eps4, norm)
    return (common.clip_to_bounds(x + d.reshape(shape), bounds) - x).reshape(xi.shape)

  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(keys)  # not an iteration index
  if norm == 'l2' and l2_update == 'published':
    delta = jax.vmap(lambda k: _l2_start(k, h, w, c, x.dtype, sums))(init_keys)
    delta = delta * eps4 / jnp.maximum(common.norm(delta, 'l2'), 1e-12)[:, None, None, None]
  else:
    stripes = jax.vmap(lambda k: common.signs(k, (1, w, c), x.dtype))(init_keys)
    delta = eps4 * jnp.broadcast_to(stripes, xi.shape)
    if norm == 'l2':
      delta = delta / jnp.sqrt(jnp.asarray(h * w * c, x.dtype))
  delta = to_ball(delta)
  m = margin_of(delta)
  queries = jnp.ones((n,), jnp.int32)

  def propose_window(k, d, e, p):
    # linf: the window set to +-eps per channel; l2 'simple': +-eps sqrt(p)
    # per channel added to it, then the whole put back on the eps-sphere.
    kw, ks = jax.random.split(k)
    mask = _window_mask(kw, h, w, p)[:, :, None]
    signs = common.signs(ks, (1, 1, c), x.dtype)
    if norm == 'linf':
      return jnp.where(mask, e * signs, d)
    cand = d + mask * signs * e * jnp.sqrt(p)
    return cand * e / jnp.maximum(jnp.sqrt(jnp.sum(cand * cand)), 1e-12)

  def body(it, carry):
    delta, m, queries = carry
    active = m > 0
    p = p_selection(p_init, it, n_queries)
    ikeys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, it)
    if norm == 'l2' and l2_update == 'published':
      cand = jax.vmap(_l2_proposal, in_axes=(0, 0, 0, None, None))(ikeys, delta, eps_vec, p,
                                                                    sums)
    else:
      cand = jax.vmap(propose_window, in_axes=(0, 0, 0, None))(ikeys, delta, eps_vec, p)
    cand = to_ball(cand)
    m_new = margin_of(cand)
    take = active & (m_new < m)
    delta = jnp.where(take[:, None, None, None], cand, delta)
    return delta, jnp.where(take, m_new, m), queries + active.astype(jnp.int32)

  delta, m, queries = jax.lax.fori_loop(0, n_queries - 1, body, (delta, m, queries))
  x_adv = common.clip_to_bounds(x + delta.reshape(shape), bounds)
  finite = health.rows_finite(x_adv, logits_fn(x_adv))
  prob = health.looks_like_probabilities(logits_fn(x))
  return x_adv, (m > 0) | ~finite, queries, prob


def square(predict_fn, x, y, *, eps, norm: str, key, n_queries: int = 5000,
           p_init: float = 0.8, bounds=None, index=None, l2_update: str = 'published',
           warn: bool = True, batch_size: int | None = None):
  """Runs the Square attack; returns (x_adv, robust (n,) bool, queries (n,)).

  ``predict_fn`` returns logits (n, C) with y integers in [0, C), or scalar
  logits (n,) with y in {-1, +1}. ``eps`` >= 0, scalar or (n,);
  ``n_queries`` >= 1; ``p_init`` in (0, 1], 0.8 is AutoAttack's choice.
  ``index`` gives each example's position in the full data set for its random
  draws (default arange). x must be floating, finite and inside ``bounds``.
  ``l2_update`` (l2 only): 'published' (the paper's and AutoAttack's, see
  the module docstring) or 'simple' (robustjax's earlier update, see
  ``L2_UPDATES``). ``batch_size``: None runs all points in one program, an
  integer in chunks of that many (one compiled program; same per-point
  results, keys by index; memory set by batch_size).

  A point is reported broken only if its returned point and logits are
  finite. Raises ValueError / TypeError (one line naming the argument) on bad
  input (``robustjax.checks``); with ``warn`` a RuntimeWarning flags outputs
  that look like probabilities (a saturated softmax gives Square a flat score).
  """
  checks.norm(norm)
  checks.choice(l2_update, tuple(L2_UPDATES), 'l2_update')
  n_queries = checks.budget(n_queries, 'n_queries')
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  checks.number(p_init, 'p_init', low=0, high=1, low_open=True)
  logits_fn, yi, _, _ = common.checked_lift(predict_fn, x, y, bounds)
  checks.radius(eps, x.shape[0], 'eps')
  index = np.arange(x.shape[0]) if index is None else checks.batch(x, index, name_y='index')
  run = lambda xs, ys, ids, es: _square(logits_fn, xs, ys, es, key, ids, bounds, p_init,
                                        norm=norm, n_queries=n_queries, l2_update=l2_update)
  x_adv, robust, queries, prob = common.run_chunked(
      run, [x, yi, index, common.per_point(eps, x.shape[0], x.dtype)], batch_size)
  if warn:
    health.warn(health.messages('square', dict(prob=prob)))
  return jnp.asarray(x_adv), jnp.asarray(robust), jnp.asarray(queries)
