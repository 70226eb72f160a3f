"""White-box minimal-norm attacks: FMN and radius bisection over PGD.

Both return, per example, the smallest perturbation norm they found that flips
the prediction (``inf`` where none was found) and the adversarial point.

FMN (Pintor et al., NeurIPS 2021), l2 and linf. Each step moves delta along
the normalised gradient of the negative margin and projects it on a ball of
radius eps_k that shrinks by (1 - gamma) while the point is adversarial, grows
by (1 + gamma) once one was found and it is not, and before any is found jumps
to ||delta|| + |margin| / ||grad||_* (the first-order distance to the
boundary). alpha and gamma follow cosine schedules. Step lengths are relative
to each example's first-order distance estimate at x, so the attack needs no
tuning to the input's scale. The best adversarial point is finally pulled back
towards x by bisection along its own ray, which can only shorten it, and then
settled 1e-4 (relative) past the boundary so that float rounding cannot flip
it back (see :func:`settle`).

DDN (Rony et al. 2019) is the same family; ``method='ddn'`` maps to FMN.

Bisection: for each example, PGD on the negative margin at radius r decides
"adversarial within r"; r doubles from a first-order estimate until PGD
succeeds, then bisection narrows [lo, hi]. The reported distance is the norm
of the best adversarial point PGD found, never more than hi.

Both count a point as adversarial only when it and its logits are finite; nan
/ inf gradient entries are set to 0, and each attack reports (``*_with_health``)
or warns about probability-like outputs and zero or non-finite gradients
(``attacks.health``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from robustjax import checks
from robustjax.attacks import common, health
from robustjax.attacks.pgd import _pgd, ascent_direction, project


def _attack_loss(logits_fn, y, target, x):
  """z_t - z_y towards a target class; max_{k != y} z_k - z_y when target < 0."""
  logits = logits_fn(x)
  z_t = jnp.take_along_axis(logits, jnp.maximum(target, 0)[:, None], axis=-1)[:, 0]
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  return jnp.where(target < 0, -common.margin(logits, y), z_t - z_y)


def _loss_grad(logits_fn, y, target, xa):
  """(loss, gradient with nan / inf entries set to 0, (gradient zero, had nan / inf))."""
  loss, vjp = jax.vjp(jax.tree_util.Partial(_attack_loss, logits_fn, y, target), xa)
  g = vjp(jnp.ones_like(loss))[0]
  return loss, health.finite_grad(g), health.grad_flags(g)


def _first_order_distance(logits_fn, y, target, x, norm):
  """(|loss| / ||grad||_*, 0 where not finite; the gradient's flags at x)."""
  loss, g, flags = _loss_grad(logits_fn, y, target, x)
  d = jnp.abs(loss) / jnp.maximum(common.dual_norm(g, norm), 1e-12)
  return jnp.where(jnp.isfinite(d), d, 0.0), flags


def _is_adv(logits_fn, y, xa):
  """Misclassified, with a finite point and finite logits."""
  logits = logits_fn(xa)
  return (common.margin(logits, y) < 0) & health.rows_finite(xa, logits)


def _refine_along_ray(logits_fn, y, x, delta, found, steps, bounds):
  """Smallest t in (0, 1] (to 2^-steps) with x + t delta still adversarial."""
  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    adv = _is_adv(logits_fn, y, x + common.bview(mid, x) * delta)
    return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

  n = x.shape[0]
  _, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros((n,), x.dtype), jnp.ones((n,), x.dtype)))
  return settle(logits_fn, y, x, delta * common.bview(jnp.where(found, hi, 1.0), x), found,
                bounds)


def settle(logits_fn, y, x, delta, found, bounds, rel=1e-4):
  """delta lengthened by ``rel`` when that is still adversarial.

  A point found by bisection sits within float rounding of the boundary and
  can flip back when the model runs on a batch of another shape (XLA's
  matmuls round differently); a 1e-4 relative step past it keeps it
  adversarial at a negligible cost in distance.
  """
  safe = common.clip_to_bounds(x + (1.0 + rel) * delta, bounds) - x
  keep = _is_adv(logits_fn, y, x + safe) & found
  return jnp.where(common.bview(keep, x), safe, delta)


@functools.partial(jax.jit, static_argnames=('norm', 'steps', 'refine_steps'))
def _fmn(logits_fn, x, y, target, bounds, alpha_init, alpha_final, gamma_init, gamma_final, *,
         norm, steps, refine_steps):
  n = x.shape[0]
  scale, (zero, bad) = _first_order_distance(logits_fn, y, target, x, norm)
  worst = jnp.full((n,), jnp.inf, x.dtype)

  def body(i, s):
    delta, eps, best_norm, best_delta, found, bad = s
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * i / steps))
    alpha = alpha_final + (alpha_init - alpha_final) * cosine
    gamma = gamma_final + (gamma_init - gamma_final) * cosine
    loss, g, (_, bad_here) = _loss_grad(logits_fn, y, target, x + delta)
    # Any misclassification counts, whatever class the loss aims at.
    adv = _is_adv(logits_fn, y, x + delta)
    dn = common.norm(delta, norm)
    better = adv & (dn < best_norm)
    best_norm = jnp.where(better, dn, best_norm)
    best_delta = jnp.where(common.bview(better, x), delta, best_delta)
    found = found | adv
    to_boundary = jnp.abs(loss) / jnp.maximum(common.dual_norm(g, norm), 1e-12)
    to_boundary = jnp.where(jnp.isfinite(to_boundary), to_boundary, 0.0)
    eps = jnp.where(adv, jnp.minimum(eps * (1 - gamma), best_norm),
                    jnp.where(found, eps * (1 + gamma), (dn + to_boundary) * (1 + gamma)))
    delta = delta + common.bview(alpha * scale, x) * ascent_direction(g, norm)
    delta = project(delta, common.bview(eps, x), norm)
    delta = common.clip_to_bounds(x + delta, bounds) - x
    return delta, eps, best_norm, best_delta, found, bad | bad_here

  init = (jnp.zeros_like(x), jnp.zeros((n,), x.dtype), worst, jnp.zeros_like(x),
          jnp.zeros((n,), bool), bad)
  delta, _, best_norm, best_delta, found, bad = jax.lax.fori_loop(0, steps, body, init)
  # The last iterate has not been checked yet.
  last_adv = _is_adv(logits_fn, y, x + delta)
  last_better = last_adv & (common.norm(delta, norm) < best_norm)
  best_delta = jnp.where(common.bview(last_better, x), delta, best_delta)
  found = found | last_adv
  best_delta = _refine_along_ray(logits_fn, y, x, best_delta, found, refine_steps, bounds)
  dist = jnp.where(found, common.norm(best_delta, norm), jnp.inf)
  prob = health.looks_like_probabilities(logits_fn(x))
  return x + best_delta, dist, dict(prob=prob, zero_grad=zero, nonfinite=bad)


def runner_up_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """(k, n) classes other than y, by decreasing clean logit."""
  masked = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.argsort(-masked, axis=-1)[:, :k].T.astype(jnp.int32)


def _over_targets(run, logits_fn, x, y, num_classes, targets):
  """Runs ``run(x, y, target)`` untargeted or once per runner-up class; keeps the closest.

  Targeted runs aim at one linear piece each, so on affine models the best of
  all C - 1 of them is the exact minimal distance; the untargeted loss can
  follow the class with the largest logit instead of the nearest boundary.
  """
  n = x.shape[0]
  if targets is None:
    return run(x, y, jnp.full((n,), -1, jnp.int32))
  k = max(1, min(int(targets), num_classes - 1))
  t = runner_up_classes(logits_fn(x), y, k)
  tile = lambda a: jnp.broadcast_to(a[None], (k,) + a.shape).reshape((k * n,) + a.shape[1:])
  x_adv, dist, h = run(tile(x), tile(y), t.reshape(-1))
  dist = dist.reshape(k, n)
  best = jnp.argmin(dist, axis=0)
  x_adv = x_adv.reshape((k, n) + x.shape[1:])[best, jnp.arange(n)]
  h = {name: v if v.ndim == 0 else jnp.any(v.reshape(k, n), axis=0) for name, v in h.items()}
  return x_adv, dist[best, jnp.arange(n)], h


@functools.partial(jax.jit, static_argnames=('norm', 'steps', 'refine_steps', 'targets',
                                             'num_classes'))
def _fmn_batch(logits_fn, x, y, bounds, alpha_init, alpha_final, gamma_init, gamma_final, *,
               norm, steps, refine_steps, targets, num_classes):
  """:func:`fmn` on one batch, in one program: (x_adv, distances, health)."""
  run = lambda xs, ys, ts: _fmn(logits_fn, xs, ys, ts, bounds, alpha_init, alpha_final,
                                gamma_init, gamma_final, norm=norm, steps=steps,
                                refine_steps=refine_steps)
  return _over_targets(run, logits_fn, x, y, num_classes, targets)


def fmn_with_health(predict_fn, x, y, *, norm: str = 'l2', steps: int = 100,
                    targets: int | None = 9, alpha_init: float = 1.0, alpha_final: float = 0.01,
                    gamma_init: float = 0.05, gamma_final: float = 0.001, refine_steps: int = 12,
                    bounds=None, key=None, batch_size: int | None = None):
  """:func:`fmn` without warnings: (x_adv, distances, health record)."""
  del key
  checks.norm(norm)
  steps = checks.budget(steps, 'steps')
  targets = checks.optional_budget(targets, 'targets')
  refine_steps = checks.budget(refine_steps, 'refine_steps', minimum=0)
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  for name, v in (('alpha_init', alpha_init), ('alpha_final', alpha_final)):
    checks.positive(v, name)
  for name, v in (('gamma_init', gamma_init), ('gamma_final', gamma_final)):
    checks.number(v, name, low=0, high=1, low_open=True, high_open=True)
  logits_fn, yi, num_classes, _ = common.checked_lift(predict_fn, x, y, bounds)
  run = lambda xs, ys: _fmn_batch(logits_fn, xs, ys, bounds, alpha_init, alpha_final, gamma_init,
                                  gamma_final, norm=norm, steps=steps, refine_steps=refine_steps,
                                  targets=targets, num_classes=num_classes)
  x_adv, dist, h = common.run_chunked(run, [x, yi], batch_size)
  return jnp.asarray(x_adv), jnp.asarray(dist), h


def fmn(predict_fn, x, y, *, norm: str = 'l2', steps: int = 100, targets: int | None = 9,
        alpha_init: float = 1.0, alpha_final: float = 0.01, gamma_init: float = 0.05,
        gamma_final: float = 0.001, refine_steps: int = 12, bounds=None, key=None,
        batch_size: int | None = None):
  """Fast Minimum-Norm attack; returns (x_adv, distances (n,), inf if not found).

  ``predict_fn`` returns logits (n, C) with y integers in [0, C), or scalar
  logits (n,) with y in {-1, +1}. ``targets``: None runs the published
  untargeted FMN; an integer k >= 1 runs targeted FMN against each of the k
  runner-up classes (capped at C - 1) and keeps the closest (AutoAttack's
  FAB-T convention; exact on affine models when k >= C - 1). ``steps`` >= 1;
  ``alpha_*`` > 0 are step lengths relative to each example's first-order
  distance estimate; ``gamma_*`` in (0, 1) the relative eps updates;
  ``refine_steps`` >= 0 bisection steps along the final ray. x must be
  floating, finite and inside ``bounds``. FMN is deterministic; ``key`` is
  accepted (and unused) for a uniform interface. ``batch_size``: None runs
  all points in one program, an integer in chunks of that many (one compiled
  program; memory set by batch_size times the targets, not by n).

  Raises ValueError / TypeError (one line naming the argument) on bad input
  (``robustjax.checks``). Warns (RuntimeWarning) when the outputs look like
  probabilities or gradients are zero at the clean point (its start) or non-finite.
  """
  x_adv, dist, h = fmn_with_health(
      predict_fn, x, y, norm=norm, steps=steps, targets=targets, alpha_init=alpha_init,
      alpha_final=alpha_final, gamma_init=gamma_init, gamma_final=gamma_final,
      refine_steps=refine_steps, bounds=bounds, batch_size=batch_size)
  health.warn(health.messages('fmn', h))
  return x_adv, dist


@functools.partial(jax.jit, static_argnames=('norm', 'search_steps', 'expand_steps',
                                             'pgd_steps', 'restarts'))
def _bisection(logits_fn, x, y, target, key, bounds, *, norm, search_steps, expand_steps, pgd_steps,
               restarts):
  n = x.shape[0]
  loss_fn = jax.tree_util.Partial(_attack_loss, logits_fn, y, target)

  def probe(i, r, best):
    best_dist, best_x, bad = best
    x_adv, h = _pgd(loss_fn, x, r, 2.5 * r / pgd_steps, jax.random.fold_in(key, i), bounds,
                    norm=norm, steps=pgd_steps, restarts=restarts, random_start=True)
    adv = _is_adv(logits_fn, y, x_adv)
    d = common.norm(x_adv - x, norm)
    better = adv & (d < best_dist)
    return adv, (jnp.where(better, d, best_dist), jnp.where(common.bview(better, x), x_adv, best_x),
                 bad | h['nonfinite'])

  # Start from twice the first-order estimate (exact for affine models).
  r0, (zero, bad) = _first_order_distance(logits_fn, y, target, x, norm)
  r0 = 2.0 * r0
  r0 = jnp.where(jnp.isfinite(r0) & (r0 > 0), r0, 1.0)

  def expand(i, s):
    hi, ok, best = s
    adv, best = probe(i, hi, best)
    ok = ok | adv
    return jnp.where(ok, hi, 2.0 * hi), ok, best

  best = (jnp.full((n,), jnp.inf, x.dtype), x, bad)
  hi, _, best = jax.lax.fori_loop(0, expand_steps, expand,
                                  (r0, jnp.zeros((n,), bool), best))

  def search(i, s):
    lo, hi, best = s
    mid = 0.5 * (lo + hi)
    adv, best = probe(expand_steps + i, mid, best)
    return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi), best

  _, _, (dist, x_adv, bad) = jax.lax.fori_loop(0, search_steps, search,
                                               (jnp.zeros((n,), x.dtype), hi, best))
  found = jnp.isfinite(dist)
  x_adv = x + settle(logits_fn, y, x, x_adv - x, found, bounds)
  prob = health.looks_like_probabilities(logits_fn(x))
  return (x_adv, jnp.where(found, common.norm(x_adv - x, norm), jnp.inf),
          dict(prob=prob, zero_grad=zero, nonfinite=bad))


def bisection(predict_fn, x, y, *, norm: str = 'l2', key, search_steps: int = 12,
              expand_steps: int = 8, pgd_steps: int = 20, restarts: int = 1,
              targets: int | None = None, bounds=None):
  """Minimal radius by bisection over PGD; returns (x_adv, distances (n,)).

  ``expand_steps`` (>= 1) doublings of the start radius, then
  ``search_steps`` (>= 0) halvings of [lo, hi]; each probe is a
  ``pgd_steps``-step (>= 1) PGD with step 2.5 r / pgd_steps and ``restarts``
  (>= 1) starts. ``inf`` marks points PGD never flipped. ``targets`` as in
  :func:`fmn` (default untargeted: PGD on the negative margin, which can
  overshoot on multi-class models when the class with the largest logit is
  not the nearest boundary). Labels and inputs as in :func:`fmn`.

  Raises ValueError / TypeError (one line naming the argument) on bad input;
  warns (RuntimeWarning) when the outputs look like probabilities or
  gradients are zero at the clean point (its start) or non-finite.
  """
  checks.norm(norm)
  search_steps = checks.budget(search_steps, 'search_steps', minimum=0)
  expand_steps = checks.budget(expand_steps, 'expand_steps')
  pgd_steps = checks.budget(pgd_steps, 'pgd_steps')
  restarts = checks.budget(restarts, 'restarts')
  targets = checks.optional_budget(targets, 'targets')
  logits_fn, yi, num_classes, _ = common.checked_lift(predict_fn, x, y, bounds)
  x_adv, dist, h = _bisection_batch(
      logits_fn, x, yi, key, bounds, norm=norm, search_steps=search_steps,
      expand_steps=expand_steps, pgd_steps=pgd_steps, restarts=restarts, targets=targets,
      num_classes=num_classes)
  health.warn(health.messages('bisection', h))
  return x_adv, dist


@functools.partial(jax.jit, static_argnames=('norm', 'search_steps', 'expand_steps', 'pgd_steps',
                                             'restarts', 'targets', 'num_classes'))
def _bisection_batch(logits_fn, x, y, key, bounds, *, norm, search_steps, expand_steps, pgd_steps,
                     restarts, targets, num_classes):
  """:func:`bisection` in one program."""
  run = lambda xs, ys, ts: _bisection(
      logits_fn, xs, ys, ts, key, bounds, norm=norm, search_steps=search_steps,
      expand_steps=expand_steps, pgd_steps=pgd_steps, restarts=restarts)
  return _over_targets(run, logits_fn, x, y, num_classes, targets)
