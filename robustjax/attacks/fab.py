"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), l2 and linf.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020 (arXiv 1907.02044); reference code
github.com/fra31/fab-attack (FAB_l2.py, FAB_linf_pt.py) and AutoAttack's
autoattack/fab_base.py, fab_projections.py.

Each step linearises the classifier at the current iterate x1: the boundary to
the class whose linearised boundary is closest (untargeted; in the dual norm)
or to the target class (FAB-T) becomes a hyperplane {z : <w, z> = b}. Both x1
and the original point x0 are projected onto that hyperplane intersected with
the input box (d1, d2: the smallest l2 or linf perturbations reaching it, see
:func:`hyperplane_projection`), and the next iterate is the biased combination

  x1 <- clip((x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha),
  alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max),

which leans towards x0 so the iterates stay close to it; eta > 1 extrapolates
past the linearised boundary. Once x1 is misclassified it is recorded if it is
the closest so far and pulled back, x1 <- x0 + beta (x1 - x0). Restarts after
the first start from a random point on the sphere of radius
min(eps, best distance so far) / 2 around x0 (FAB_l2.py's rule). A final search
(FAB's ``final_search``: three steps of regula falsi on the segment from x0 to
the best point, using the logits' linear interpolation) shortens the best
point; FMN's bisection along the same ray then finishes it (regula falsi
stalls when a step lands exactly on the boundary, on its clean side, which
on an affine model is every first step) and settles it 1e-4 (relative) past the
boundary (:func:`robustjax.attacks.minimal.settle`).

Published parameters: alpha_max = 0.1, eta = 1.05, beta = 0.9, 100
iterations. AutoAttack 'standard' runs FAB-T against the 9 runner-up classes
with one restart each (here ``targets=9, restarts=1``), 'plus' adds untargeted
FAB with 5 restarts (``targets=None, restarts=5``); both with ``eps`` set.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks
from robustjax.attacks import common
from robustjax.attacks.minimal import _loss_grad, _over_targets, _refine_along_ray


def hyperplane_projection(w: jax.Array, s: jax.Array, lo: jax.Array, hi: jax.Array,
                          norm: str, max_steps: int = 64) -> jax.Array:
  """Per row, the smallest perturbation d (l2 or linf) with <w, d> = s and lo <= d <= hi.

  Args:
    w: (m, d) hyperplane normals. s: (m,) the required <w, d>.
    lo, hi: (m, d) the box for d (the input box shifted by the point), with
      lo <= 0 <= hi; entries may be -inf / +inf (unbounded coordinates).
    norm: 'l2' or 'linf'.
    max_steps: cap on the Newton steps below (they stop when exact, typically
      after 3 to 10).

  Returns (m, d). Where no d in the box reaches the hyperplane, the box corner
  that moves <w, d> furthest towards s (FAB projects onto the part of the
  hyperplane inside the box when there is one, and otherwise goes as far as the
  box allows). Coordinates with w_i = 0 stay 0.

  Method (Croce & Hein 2020, Sec. 3.1, Eq. 4). Flip signs so that s >= 0 and
  let cap_i >= 0 be the room coordinate i has in the direction that helps.
  The minimisers are d_i = sign(w_i) min(t q_i, cap_i) for one t >= 0, with
  q_i = |w_i| for l2 (the KKT conditions: d = clip(lam w)) and q_i = 1 for
  linf (all unsaturated coordinates at +-rho). The achieved <w, d>,
  g(t) = sum_i |w_i| min(t q_i, cap_i), is concave, piecewise linear and
  non-decreasing, with a breakpoint cap_i / q_i per coordinate. The reference
  (fab_projections.py) sorts the breakpoints and bisects over their ranks;
  here Newton's method runs from the lower bound t = s / g'(0): each step
  solves the linear piece through the current t, which by concavity stays a
  lower bound and passes at least one breakpoint unless it is the solution,
  so it ends exactly, in at most d steps and in practice in a few (sorting
  the breakpoints costs ~6x more under XLA on CPU). Stopped early by
  ``max_steps``, d falls short of the hyperplane, never past it.
  """
  sgn = jnp.where(s < 0, -1.0, 1.0).astype(w.dtype)
  w = w * sgn[:, None]
  s = jnp.abs(s)
  aw = jnp.abs(w)
  nz = aw > 0
  cap = jnp.where(w > 0, hi, jnp.where(w < 0, -lo, 0.0))
  q = aw if norm == 'l2' else nz.astype(w.dtype)
  bp = jnp.where(nz, cap / jnp.where(nz, q, 1.0), jnp.inf)     # t at which i saturates
  bounded = jnp.isfinite(bp)
  gain = jnp.where(bounded, aw * jnp.where(bounded, cap, 0.0), 0.0)   # |w_i| cap_i, saturated
  slope = aw * q                                                       # d g / d t, unsaturated

  def newton(t):
    saturated = bounded & (bp <= t[:, None])
    rest = jnp.sum(jnp.where(saturated, 0.0, slope), -1)
    short = s - jnp.sum(jnp.where(saturated, gain, 0.0), -1)
    # rest == 0: every coordinate is at its face; s beyond reach -> the corner (inf).
    t_new = jnp.where(rest > 0, short / jnp.where(rest > 0, rest, 1.0),
                      jnp.where(short > 0, jnp.inf, t))
    return jnp.maximum(t, t_new)

  def cond(c):
    i, t, moved = c
    return (i < max_steps) & jnp.any(moved)

  def body(c):
    i, t, _ = c
    t_new = newton(t)
    return i + 1, t_new, t_new > t

  t0 = jnp.zeros_like(s)
  _, t, _ = jax.lax.while_loop(cond, body, (0, t0, jnp.ones(s.shape, bool)))
  d = jnp.sign(w) * jnp.minimum(t[:, None] * q, cap)
  return jnp.where(nz & (s[:, None] > 0), d, 0.0)


def _flat(a):
  return a.reshape(a.shape[0], -1)


def _untargeted_plane(logits_fn, y, x1, norm):
  """(f, w): the linearised boundary f + <w, z - x1> = 0 closest to x1 over classes k != y.

  f = z_k - z_y at x1 (negative while x1 is classified y), w its gradient; the
  class is the argmin of |f_k| / ||w_k||_* (the full Jacobian: C backward passes).
  """
  logits, vjp = jax.vjp(logits_fn, x1)
  n, c = logits.shape
  rows = jnp.arange(n)
  eye = jnp.eye(c, dtype=logits.dtype)
  jac = jax.vmap(lambda e: _flat(vjp(jnp.broadcast_to(e, logits.shape))[0]))(eye)  # (C, n, d)
  jac = jnp.swapaxes(jac, 0, 1)
  df = logits - logits[rows, y][:, None]
  dg = jac - jac[rows, y][:, None]
  dual = (jnp.sum(jnp.abs(dg), -1) if norm == 'linf' else jnp.sqrt(jnp.sum(dg * dg, -1)))
  dist = jnp.abs(df) / (dual + 1e-12)
  dist = jnp.where(jax.nn.one_hot(y, c, dtype=bool), jnp.inf, dist)
  k = jnp.argmin(dist, -1)
  return df[rows, k], dg[rows, k]


def _plane(logits_fn, y, target, x1, norm, targeted):
  if targeted:
    f, g, _ = _loss_grad(logits_fn, y, target, x1)   # f = z_t - z_y
    return f, _flat(g)
  return _untargeted_plane(logits_fn, y, x1, norm)


def _is_adv(logits_fn, y, xa):
  """Misclassified (any class) with finite input and logits: NaN never counts."""
  ok = jnp.all(jnp.isfinite(_flat(xa)), -1)
  return (common.margin(logits_fn(xa), y) < 0) & ok


def _final_search(logits_fn, y, x0, xa, steps, bounds):
  """Regula falsi on [x0, xa] (FAB_l2.py's linear_approximation_search): returns a point
  of the segment, adversarial wherever xa is, no farther from x0 than xa."""
  rows = jnp.arange(x0.shape[0])

  def diff(z, la):   # z_y - z_la: > 0 on y's side of the boundary to class la
    return z[rows, y] - z[rows, la]

  z2 = logits_fn(xa)
  init = (x0, logits_fn(x0), xa, z2, jnp.argmax(z2, -1))

  def body(_, s):
    a1, z1, a2, z2, la2 = s
    t1, t2 = diff(z1, la2), -diff(z2, la2)
    t3 = t1 / (t1 + t2 + 1e-10)
    t3 = jnp.where((t3 >= 0) & (t3 <= 1), t3, 1.0)
    a3 = common.clip_to_bounds(a1 + common.bview(t3, x0) * (a2 - a1), bounds)
    z3 = logits_fn(a3)
    adv = (common.margin(z3, y) < 0) & jnp.all(jnp.isfinite(_flat(z3)), -1)
    sel = lambda m, a, b: jnp.where(common.bview(m, a), a, b)
    return (sel(adv, a1, a3), sel(adv, z1, z3), sel(adv, a3, a2), sel(adv, z3, z2),
            jnp.where(adv, jnp.argmax(z3, -1), la2))

  return jax.lax.fori_loop(0, steps, body, init)[2]


@functools.partial(jax.jit, static_argnames=('norm', 'steps', 'restarts', 'targeted',
                                             'final_search_steps', 'refine_steps'))
def _fab(logits_fn, x, y, target, keys, eps, bounds, alpha_max, eta, beta, *, norm, steps,
         restarts, targeted, final_search_steps, refine_steps):
  n = x.shape[0]
  x0f = _flat(x)
  if bounds is None:
    lo = jnp.full_like(x0f, -jnp.inf)
    hi = jnp.full_like(x0f, jnp.inf)
  else:
    lo = _flat(jnp.broadcast_to(jnp.asarray(bounds[0], x.dtype), x.shape))
    hi = _flat(jnp.broadcast_to(jnp.asarray(bounds[1], x.dtype), x.shape))

  def step(_, s):
    x1, best_d, best_x = s
    x1f = _flat(x1)
    f, w = _plane(logits_fn, y, target, x1, norm, targeted)
    # The linearised boundary {z : f + <w, z - x1> = 0}, reached from x1 and from x0.
    need = jnp.concatenate([-f, -f - jnp.sum(w * (x0f - x1f), -1)])
    d = hyperplane_projection(jnp.concatenate([w, w]), need,
                              jnp.concatenate([lo - x1f, lo - x0f]),
                              jnp.concatenate([hi - x1f, hi - x0f]), norm)
    a = jnp.maximum(common.norm(d, norm), 1e-8)
    alpha = jnp.clip(a[:n] / (a[:n] + a[n:]), 0.0, alpha_max)[:, None]
    x1f = (x1f + eta * d[:n]) * (1 - alpha) + (x0f + eta * d[n:]) * alpha
    x1 = common.clip_to_bounds(x1f.reshape(x.shape), bounds)
    adv = _is_adv(logits_fn, y, x1)
    dist = common.norm(x1 - x, norm)
    better = adv & (dist < best_d)
    best_d = jnp.where(better, dist, best_d)
    best_x = jnp.where(common.bview(better, x), x1, best_x)
    # Backward step: once across, restart the approach closer to x0.
    x1 = jnp.where(common.bview(adv, x), x + beta * (x1 - x), x1)
    return x1, best_d, best_x

  def descend(x1, s):
    _, best_d, best_x = jax.lax.fori_loop(0, steps, step, (x1,) + s)
    return best_d, best_x

  def restart(scale, r, s):
    best_d, _ = s
    rkeys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, r)
    if norm == 'linf':
      u = common.per_example(lambda k: common.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0), rkeys)
    else:
      u = common.per_example(lambda k: common.normal(k, x.shape[1:], x.dtype), rkeys)
    u = u / common.bview(jnp.maximum(common.norm(u, norm), 1e-12), x)
    radius = 0.5 * jnp.minimum(best_d, scale)
    radius = jnp.where(jnp.isfinite(radius), radius, 0.0)
    return descend(common.clip_to_bounds(x + common.bview(radius, x) * u, bounds), s)

  adv0 = _is_adv(logits_fn, y, x)   # misclassified points: distance 0 at x itself
  best_d, best_x = descend(x, (jnp.where(adv0, 0.0, jnp.inf).astype(x.dtype), x))
  if restarts > 1:   # the first run starts at x, the others at random points
    # Without eps the restarts' radius is the first-order distance to the boundary at x.
    f0, w0 = _plane(logits_fn, y, target, x, norm, targeted)
    scale = jnp.where(jnp.isfinite(eps), eps, jnp.abs(f0) / (common.dual_norm(w0, norm) + 1e-12))
    best_d, best_x = jax.lax.fori_loop(1, restarts, functools.partial(restart, scale),
                                       (best_d, best_x))
  found = jnp.isfinite(best_d)
  shorten = found & (best_d > 0)
  if final_search_steps > 0:
    searched = _final_search(logits_fn, y, x, best_x, final_search_steps, bounds)
    best_x = jnp.where(common.bview(shorten, x), searched, best_x)
  delta = best_x - x
  # Regula falsi can stall on the clean side of a boundary it hit exactly
  # (float ties); bisection along the ray then settles it (FMN's refinement).
  refined = _refine_along_ray(logits_fn, y, x, delta, shorten, refine_steps, bounds)
  # Settling (1e-4 past the boundary) must not carry a point out of the eps-ball.
  delta = jnp.where(common.bview(common.norm(refined, norm) <= eps, x), refined, delta)
  x_adv = common.clip_to_bounds(x + delta, bounds)   # x + (p - x) can round past a bound
  dist = common.norm(x_adv - x, norm)
  ok = found & (dist <= eps)
  return jnp.where(common.bview(ok, x), x_adv, x), jnp.where(ok, dist, jnp.inf), {}


def rank_keys(keys, rank):
  """Per-example keys for the runner-up of ``rank`` (0 = the runner-up): one
  stream per (rank, example), the same in :func:`fab` and the ensemble."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, rank)


@functools.partial(jax.jit, static_argnames=('norm', 'steps', 'restarts', 'targets',
                                             'num_classes', 'final_search_steps',
                                             'refine_steps'))
def _fab_batch(logits_fn, x, y, key, index, eps, bounds, alpha_max, eta, beta, *, norm, steps,
               restarts, targets, num_classes, final_search_steps, refine_steps):
  """:func:`fab` on one batch, in one program: (x_adv, distances)."""
  n = x.shape[0]
  keys = common.example_keys(key, index)
  if targets is not None:
    # One key stream per (runner-up rank, example), in _over_targets' rank-major order.
    k = max(1, min(int(targets), num_classes - 1))
    keys = jax.vmap(lambda r: rank_keys(keys, r))(jnp.arange(k)).reshape(
        (k * n,) + keys.shape[1:])
  run = lambda xs, ys, ts: _fab(
      logits_fn, xs, ys, ts, keys, eps, bounds, alpha_max, eta, beta, norm=norm, steps=steps,
      restarts=restarts, targeted=targets is not None, final_search_steps=final_search_steps,
      refine_steps=refine_steps)
  x_adv, dist, _ = _over_targets(run, logits_fn, x, y, num_classes, targets)
  return x_adv, dist


def _check(x, key, *, eps, steps, restarts, targets, alpha_max, eta, beta,
           final_search_steps, refine_steps, index):
  """FAB's own arguments (x, y and bounds go through ``common.checked_lift``)."""
  steps = checks.budget(steps, 'steps')
  restarts = checks.budget(restarts, 'restarts')
  final_search_steps = checks.budget(final_search_steps, 'final_search_steps', minimum=0)
  refine_steps = checks.budget(refine_steps, 'refine_steps', minimum=0)
  targets = checks.optional_budget(targets, 'targets')
  checks.number(alpha_max, 'alpha_max', low=0, high=1, low_open=True)
  checks.number(eta, 'eta', low=1)
  checks.number(beta, 'beta', low=0, high=1, low_open=True)
  if eps is not None:
    checks.positive(eps, 'eps')
  if restarts > 1 and key is None:
    raise ValueError('key: a PRNG key is needed when restarts > 1 (the random starts)')
  if index is not None:
    checks.batch(x, jnp.asarray(index), name_y='index')
  return steps, restarts, final_search_steps, refine_steps, targets


def fab(predict_fn, x, y, *, norm: str = 'linf', key=None, eps: float | None = None,
        steps: int = 100, restarts: int = 1, targets: int | None = None,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        final_search_steps: int = 3, refine_steps: int = 12, bounds=None, index=None,
        batch_size: int | None = None):
  """FAB attack; returns (x_adv (n, ...), distances (n,), inf where none was found).

  Args:
    predict_fn: batch -> logits (n, C), or scalar logits (n,) with y in {-1, +1}
      (lifted to two classes by :func:`common.lift`).
    x: (n, ...) clean inputs (floating point). y: (n,) labels.
    norm: 'l2' or 'linf' (the norm minimised and reported).
    key: PRNG key for the random restarts (needed when restarts > 1); example i
      draws from fold_in(key, index[i]), then from the target's rank and the
      restart number, so its result does not depend on the rest of the batch.
    eps: None for the minimal-norm attack; a radius to attack "within eps": it
      sets the restarts' radius (min(eps, best) / 2) and points whose best
      distance exceeds eps are reported as not found (x_adv = x, distance inf),
      so every returned point lies inside the eps-ball.
    steps: iterations per restart (published: 100). restarts: random restarts
      (the first starts at x).
    targets: None runs untargeted FAB; an integer k runs FAB-T against each of
      the k runner-up classes by clean logit (capped at C - 1) and keeps the
      closest point (AutoAttack's FAB-T: k = 9), as ``fmn``'s ``targets``.
    alpha_max, eta, beta: the published 0.1 (bias towards x0), 1.05
      (extrapolation), 0.9 (backward step).
    final_search_steps: regula falsi steps on [x, best point] (FAB's final
      search: 3); 0 turns it off. refine_steps: bisection steps along the ray
      afterwards (relative precision 2^-refine_steps, as ``fmn``).
    bounds: None or (lo, hi), the input domain; the iterates and x_adv stay in it.
    index: (n,) positions of the examples in the full data set (default arange).
    batch_size: None runs all points in one program; an integer runs them in
      chunks of that many (the last padded), one compiled program for all;
      memory grows with batch_size (times the targets), not with n; per
      point the same result (keys by index).

  ``distances[i]`` is the norm of x_adv[i] - x[i]; finite entries are
  misclassified points; points misclassified already report 0 and x itself.
  Raises ValueError / TypeError (one line) on bad arguments.
  """
  checks.norm(norm)
  logits_fn, yi, num_classes, _ = common.checked_lift(predict_fn, x, y, bounds)
  steps, restarts, final_search_steps, refine_steps, targets = _check(
      x, key, eps=eps, steps=steps, restarts=restarts, targets=targets, alpha_max=alpha_max,
      eta=eta, beta=beta, final_search_steps=final_search_steps, refine_steps=refine_steps,
      index=index)
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  n = x.shape[0]
  index = np.arange(n) if index is None else index
  key = np.zeros(2, np.uint32) if key is None else key   # jax.random.PRNGKey(0), unused
  eps_v = np.asarray(np.inf if eps is None else float(eps), x.dtype)
  run = lambda xs, ys, ids: _fab_batch(
      logits_fn, xs, ys, key, ids, eps_v, bounds, float(alpha_max), float(eta), float(beta),
      norm=norm, steps=steps, restarts=restarts, targets=targets, num_classes=num_classes,
      final_search_steps=final_search_steps, refine_steps=refine_steps)
  x_adv, dist = common.run_chunked(run, [x, yi, index], batch_size)
  return jnp.asarray(x_adv), jnp.asarray(dist)
