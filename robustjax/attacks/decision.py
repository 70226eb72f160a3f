"""Decision-based (hard-label) l2 attacks: HopSkipJump and TangentAttack.

The model is only asked for its predicted label (argmax of the logits); every
such question is one query and is counted per example.

HopSkipJump (Chen, Jordan & Wainwright, S&P 2020), l2: from a boundary point
x_b, estimate the boundary normal by Monte-Carlo (B_t = B_0 sqrt(t) random
unit directions u, probed at x_b + delta u, delta = sqrt(d) theta dist,
theta = d^-3/2; v = sum (phi - mean phi) u with phi = +-1 for adversarial or
not), step from x_b along v by xi = dist / sqrt(t) (halved until the point is
adversarial), and bisect back to the boundary between x and that point.

TangentAttack (Ma et al., NeurIPS 2021), hemisphere variant: the same normal
estimate, but the step goes to the point of the hemisphere centred at x_b
(radius xi, on the side v points to) where the line from x touches it (the
tangent point); when that point lies below the hemisphere's base the base
circle's point nearest to x's direction is used. Then bisection as above.

Both start from the nearest other example in the batch that the model labels
differently (its label is already known: no query), else from Gaussian noise
of doubling scale around x, and bisect to the boundary first. ``starts=
'gaussian'`` is the start of Paper B's authors (Pehlevan-Group/rep-spectral,
src/adversarial/black_box.py, ``_initialize``): x + N(0, start_std^2) per
coordinate, clamped to ``bounds``, redrawn (one query per draw) until
misclassified or ``start_tries`` draws are spent, then the nearest-other-label
start above. Bisection stops at a relative tolerance min(theta, 1e-3) of the
segment, and the points kept are always on the adversarial side, so each
distance is an upper bound on the true one. Batched over examples; the Monte-Carlo probes run in fixed-size
chunks inside lax loops so memory stays n x chunk x d.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks
from robustjax.attacks import common, health

METHODS = ('hopskipjump', 'tangent')
STARTS = ('nearest', 'per_class', 'gaussian')


def _flat(x):
  return x.reshape(x.shape[0], -1)


def _is_adv(logits_fn, y, x_flat, shape):
  """Hard-label oracle: True where the predicted label differs from y."""
  pred = jnp.argmax(logits_fn(x_flat.reshape((-1,) + shape)), axis=-1)
  return pred != y


def _clip(xf, bounds):
  return common.clip_to_bounds(xf, bounds)


def _bisect(oracle, x, x_adv, steps):
  """Boundary point on [x, x_adv] from the adversarial side, `steps` queries."""
  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    adv = oracle(x + mid[:, None] * (x_adv - x))
    return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

  n = x.shape[0]
  _, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros((n,), x.dtype), jnp.ones((n,), x.dtype)))
  return x + hi[:, None] * (x_adv - x)


def tangent_point(x, x_b, v, radius):
  """Tangent point from x on the hemisphere {||k - x_b|| = r, <k - x_b, v> >= 0}.

  In the plane of o = x - x_b and v, the tangent points k (relative to x_b)
  satisfy ||k|| = r and <k, o> = r^2: k = (r^2 / d) o_hat + b e with
  b = r sqrt(1 - r^2 / d^2) and e the unit part of v orthogonal to o. When
  <k, v> < 0 the tangent point is below the base; the base circle's point
  nearest to x's direction, r * unit(o - <o, v> v), is used instead.
  """
  o = x - x_b
  d = jnp.maximum(jnp.linalg.norm(o, axis=-1, keepdims=True), 1e-12)
  o_hat = o / d
  e = v - jnp.sum(v * o_hat, -1, keepdims=True) * o_hat
  e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  r = jnp.minimum(radius[:, None], d)
  k = (r * r / d) * o_hat + r * jnp.sqrt(jnp.maximum(1.0 - (r / d) ** 2, 0.0)) * e
  base = o - jnp.sum(o * v, -1, keepdims=True) * v
  base = r * base / jnp.maximum(jnp.linalg.norm(base, axis=-1, keepdims=True), 1e-12)
  below = jnp.sum(k * v, -1, keepdims=True) < 0
  return x_b + jnp.where(below, base, k)


def _estimate_normal(oracle_many, key, x_b, delta, num_evals, chunk, bounds):
  """Monte-Carlo boundary normal at x_b with baseline; returns (v, queries)."""
  n, d = x_b.shape
  n_chunks = (num_evals + chunk - 1) // chunk

  def body(c, acc):
    s_phi_u, s_u, s_phi = acc
    u = common.normal(jax.random.fold_in(key, c), (n, chunk, d), x_b.dtype)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    probe = _clip(x_b[:, None] + delta[:, None, None] * u, bounds)
    u = (probe - x_b[:, None]) / jnp.maximum(delta[:, None, None], 1e-12)
    phi = jnp.where(oracle_many(probe), 1.0, -1.0)
    return (s_phi_u + jnp.einsum('nc,ncd->nd', phi, u), s_u + u.sum(1), s_phi + phi.sum(1))

  zeros = (jnp.zeros((n, d), x_b.dtype), jnp.zeros((n, d), x_b.dtype), jnp.zeros((n,), x_b.dtype))
  s_phi_u, s_u, s_phi = jax.lax.fori_loop(0, n_chunks, body, zeros)
  total = (n_chunks * chunk).astype(x_b.dtype)
  mean_phi = s_phi / total
  # Baseline subtraction (HSJA eq. 16) unless all probes agree.
  all_same = jnp.abs(mean_phi) == 1.0
  v = jnp.where(all_same[:, None], s_phi_u, s_phi_u - mean_phi[:, None] * s_u)
  v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  return v, n_chunks * chunk


@functools.partial(jax.jit, static_argnames=('method', 'iterations', 'init_evals', 'max_evals',
                                             'chunk', 'bisect_steps', 'step_halvings',
                                             'init_tries', 'start_std', 'start_tries'))
def _attack(logits_fn, x, y, x_start, have, key, bounds, *, method, iterations, init_evals, max_evals, chunk,
            bisect_steps, step_halvings, init_tries, start_std=0.0, start_tries=0):
  shape = x.shape[1:]
  n = x.shape[0]
  xf = _flat(x)
  d = xf.shape[1]
  theta = 1.0 / (d * math.sqrt(d))
  oracle = functools.partial(_is_adv, logits_fn, y, shape=shape)
  y_rep = jnp.repeat(y, chunk)
  oracle_many = lambda p: _is_adv(logits_fn, y_rep, p.reshape(n * chunk, -1), shape).reshape(
      n, chunk)
  queries = jnp.ones((n,), jnp.int32)  # the clean label
  x_start = _flat(x_start)
  if start_std > 0:
    x_start, have, queries = _gaussian_starts(oracle, xf, x_start, have, queries, key, bounds,
                                              start_std, start_tries)

  # Else Gaussian noise of doubling scale, one query per try while not found.
  scale0 = jnp.maximum(jnp.sqrt(jnp.mean(xf * xf)), 1e-3)

  def try_noise(i, s):
    x_s, ok, q = s
    cand = _clip(xf + scale0 * 2.0 ** i * common.normal(
        jax.random.fold_in(key, 10_000 + i), xf.shape, xf.dtype), bounds)
    adv = oracle(cand)
    q = q + (~ok).astype(jnp.int32)
    take = ~ok & adv
    return jnp.where(take[:, None], cand, x_s), ok | adv, q

  x_start, found, queries = jax.lax.fori_loop(0, init_tries, try_noise, (x_start, have, queries))
  x_b = _bisect(oracle, xf, x_start, bisect_steps)
  queries = queries + bisect_steps * found.astype(jnp.int32)
  dist = jnp.where(found, jnp.linalg.norm(x_b - xf, axis=-1), jnp.inf)

  def iterate(t, s):
    x_b, dist, best_x, best_d, q = s
    tk = jax.random.fold_in(key, t)
    num_evals = jnp.minimum(init_evals * jnp.sqrt(t + 1.0), max_evals).astype(jnp.int32)
    delta = jnp.sqrt(d * 1.0) * theta * jnp.where(found, dist, 0.0)
    v, used = _estimate_normal(oracle_many, tk, x_b, delta, num_evals, chunk, bounds)
    xi0 = jnp.where(found, dist, 0.0) / jnp.sqrt(t + 1.0)

    def step_point(xi):
      if method == 'hopskipjump':
        return _clip(x_b + xi[:, None] * v, bounds)
      return _clip(tangent_point(xf, x_b, v, xi), bounds)

    def shrink(_, c):
      xi, done, q = c
      adv = oracle(step_point(xi))
      q = q + (~done).astype(jnp.int32)
      done = done | adv
      return jnp.where(done, xi, 0.5 * xi), done, q

    q = q + used * found.astype(jnp.int32)
    xi, done, q = jax.lax.fori_loop(0, step_halvings, shrink, (xi0, ~found, q))
    # Points whose step never became adversarial stay at x_b (still adversarial).
    cand = jnp.where(done[:, None], step_point(xi), x_b)
    x_b = _bisect(oracle, xf, cand, bisect_steps)
    q = q + bisect_steps * found.astype(jnp.int32)
    dist = jnp.where(found, jnp.linalg.norm(x_b - xf, axis=-1), jnp.inf)
    better = dist < best_d
    return (x_b, dist, jnp.where(better[:, None], x_b, best_x), jnp.where(better, dist, best_d), q)

  _, _, best_x, best_d, queries = jax.lax.fori_loop(
      0, iterations, iterate, (x_b, dist, x_b, dist, queries))
  # One more query: step 1e-4 (relative) past the boundary if still adversarial,
  # so float rounding in another batch shape cannot flip the point back.
  safe = _clip(xf + (1.0 + 1e-4) * (best_x - xf), bounds)
  keep = found & oracle(safe)
  best_x = jnp.where(keep[:, None], safe, best_x)
  best_d = jnp.where(found, jnp.linalg.norm(best_x - xf, axis=-1), jnp.inf)
  return best_x.reshape(x.shape), best_d, queries + found.astype(jnp.int32)


def _gaussian_starts(oracle, xf, fallback, have_fallback, queries, key, bounds, std, tries):
  """x + N(0, std^2) clamped, redrawn until misclassified (up to ``tries`` draws, one
  query each per point still searching); the others keep ``fallback``."""
  def cond(s):
    i, _, ok, _ = s
    return (i < tries) & ~jnp.all(ok)

  def body(s):
    i, x_s, ok, q = s
    cand = _clip(xf + std * common.normal(jax.random.fold_in(key, 20_000 + i), xf.shape,
                                          xf.dtype), bounds)
    adv = oracle(cand)
    q = q + (~ok).astype(jnp.int32)
    take = ~ok & adv
    return i + 1, jnp.where(take[:, None], cand, x_s), ok | adv, q

  none = jnp.zeros((xf.shape[0],), bool)
  _, x_g, found, queries = jax.lax.while_loop(cond, body, (0, xf, none, queries))
  return jnp.where(found[:, None], x_g, fallback), found | have_fallback, queries


def start_points(logits_fn, x, y, start_class):
  """Per example, the nearest batch point labelled ``start_class`` (any label != y
  where start_class < 0); (points (n, ...), whether one exists (n,)).

  The batch's labels come from the clean predictions, which the attack has
  already paid for, so choosing a start costs no query.
  """
  xf = _flat(x)
  pred = jnp.argmax(logits_fn(x), axis=-1)
  sq = jnp.sum(xf * xf, -1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * xf @ xf.T
  wanted = jnp.where(start_class[:, None] < 0, pred[None, :] != y[:, None],
                     (pred[None, :] == start_class[:, None]) & (pred[None, :] != y[:, None]))
  d2 = jnp.where(wanted, d2, jnp.inf)
  j = jnp.argmin(d2, axis=1)
  return x[j], jnp.isfinite(d2[jnp.arange(x.shape[0]), j])


def decision_attack(predict_fn, x, y, *, method: str = 'tangent', key, iterations: int = 40,
                    init_evals: int = 100, max_evals: int = 10_000, chunk: int = 100,
                    bisect_tol: float | None = None, step_halvings: int = 20,
                    init_tries: int = 20, starts: str = 'nearest', start_std: float = 0.5,
                    start_tries: int = 5000, bounds=None):
  """Hard-label l2 attack; returns (x_adv, distances (n,), queries (n,) int).

  Args:
    predict_fn: batch -> logits (only their argmax is used), or scalar logits
      (n,) with y in {-1, +1}.
    method: 'hopskipjump' or 'tangent' (TangentAttack, hemisphere).
    iterations: boundary steps (Paper B: 40). init_evals / max_evals: B_0 and
      the cap of the Monte-Carlo probes per step (rounded up to ``chunk``).
    bisect_tol: relative bisection tolerance, default min(d^-3/2, 1e-3).
    step_halvings: how often a step may halve before it is abandoned.
    init_tries: noise draws (doubling scale) for points with no differently
      labelled batch neighbour.
    starts: 'nearest' (published: one run from the nearest differently
      labelled batch point) or 'per_class' (one run from the nearest point of
      each other class, keeping the closest result; queries add up). Hard-label
      attacks descend locally along the boundary, so from one start they can
      settle on a facet that is not the nearest one; more starts guard
      against that at C - 1 times the cost. 'gaussian' (Paper B's authors):
      x + N(0, start_std^2) clamped to ``bounds``, redrawn until misclassified
      (one query per draw, at most ``start_tries`` draws), else 'nearest'.
    start_std, start_tries: the Gaussian start's scale (input units) and
      retry budget; used with starts='gaussian' only.
  ``inf`` distance marks points with no adversarial start, and points whose
  final point or logits are not finite (never counted as adversarial; a
  warning says how many). Labels: integers in [0, C) for logits (n, C), -1 or
  +1 for scalar logits (n,). x: floating, finite, inside ``bounds``.

  Raises ValueError / TypeError (one line naming the argument) on a bad
  method, budget (iterations, step_halvings, init_tries >= 0; init_evals,
  max_evals, chunk >= 1), bisect_tol (in (0, 1)), starts, bounds, dtype or
  label. Hard-label attacks see only the argmax, so probability outputs do not
  weaken them and are not warned about.
  """
  checks.choice(method, METHODS, 'method')
  checks.choice(starts, STARTS, 'starts')
  iterations = checks.budget(iterations, 'iterations', minimum=0)
  init_evals = checks.budget(init_evals, 'init_evals')
  max_evals = checks.budget(max_evals, 'max_evals')
  chunk = checks.budget(chunk, 'chunk')
  step_halvings = checks.budget(step_halvings, 'step_halvings', minimum=0)
  init_tries = checks.budget(init_tries, 'init_tries', minimum=0)
  if bisect_tol is not None:
    checks.number(bisect_tol, 'bisect_tol', low=0, high=1, low_open=True, high_open=True)
  logits_fn, yi, _, _ = common.checked_lift(predict_fn, x, y, bounds)
  d = int(math.prod(x.shape[1:]))
  tol = bisect_tol if bisect_tol is not None else min(1.0 / (d * math.sqrt(d)), 1e-3)
  bisect_steps = max(1, int(math.ceil(math.log2(1.0 / tol))))
  if starts == 'gaussian':
    checks.positive(start_std, 'start_std', ' (input units)')
    start_tries = checks.budget(start_tries, 'start_tries')
  n, num_classes = x.shape[0], logits_fn(x[:1]).shape[-1]
  run = functools.partial(
      _attack, logits_fn, method=method, iterations=int(iterations), init_evals=int(init_evals),
      max_evals=int(max_evals), chunk=int(chunk), bisect_steps=bisect_steps,
      step_halvings=int(step_halvings), init_tries=int(init_tries))
  if starts != 'per_class' or num_classes == 2:
    x_start, have = start_points(logits_fn, x, yi, jnp.full((n,), -1, jnp.int32))
    gaussian = (dict(start_std=float(start_std), start_tries=start_tries)
                if starts == 'gaussian' else {})
    return _finite_only(logits_fn, *run(x, yi, x_start, have, key, bounds, **gaussian))
  best_x, best_d, total_q = x, jnp.full((n,), jnp.inf, x.dtype), jnp.zeros((n,), jnp.int32)
  for c in range(num_classes):  # a handful of whole runs, not iterations
    cls = jnp.full((n,), c, jnp.int32)
    x_start, have = start_points(logits_fn, x, yi, cls)
    active = have & (yi != c)
    x_adv, dist, q = run(x, yi, x_start, have, jax.random.fold_in(key, c), bounds)
    dist = jnp.where(active, dist, jnp.inf)
    better = dist < best_d
    best_x = jnp.where(common.bview(better, x), x_adv, best_x)
    best_d = jnp.where(better, dist, best_d)
    total_q = total_q + jnp.where(active, q, 0)
  return _finite_only(logits_fn, best_x, best_d, total_q)


def _finite_only(logits_fn, x_adv, dist, queries):
  """Distances of points whose point or logits are not finite become inf, with a warning."""
  finite = health.rows_finite(np.asarray(x_adv), np.asarray(logits_fn(x_adv)))
  bad = ~np.asarray(finite) & np.isfinite(np.asarray(dist))
  if bad.any():
    health.warn([f'decision attack: {int(bad.sum())} of {bad.size} points ended on a point with '
                 'non-finite values or logits; counted as not found (inf)'], stacklevel=4)
  return x_adv, jnp.where(jnp.asarray(bad), jnp.inf, dist), queries


def hopskipjump(predict_fn, x, y, *, key, **kwargs):
  """HopSkipJump (l2); see :func:`decision_attack`."""
  return decision_attack(predict_fn, x, y, method='hopskipjump', key=key, **kwargs)


def tangent_attack(predict_fn, x, y, *, key, **kwargs):
  """TangentAttack, hemisphere variant (l2); see :func:`decision_attack`."""
  return decision_attack(predict_fn, x, y, method='tangent', key=key, **kwargs)
