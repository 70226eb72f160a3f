"""Auto-PGD (Croce & Hein, ICML 2020) with CE, DLR and targeted DLR losses.

Step size starts at 2 eps; every iterate mixes the projected step with the
previous move (momentum 0.75). At the published checkpoints (p_0 = 0,
p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of the budget)
an example halves its step and restarts from its best point when either the
loss rose in fewer than rho = 0.75 of the steps since the last checkpoint, or
the step was not halved at the last checkpoint and the best loss has not
improved since. l2 uses the normalised gradient (Croce & Hein 2021), linf its
sign.

Per example the attack keeps the best iterate by loss (for the restarts) and
any misclassified iterate (the answer); random starts come from per-example
keys, so a point's result does not depend on the rest of its batch. An
iterate whose point or logits are not finite is never counted as
misclassified, nan / inf gradient entries are set to 0, and the attack reports
(:func:`apgd_with_health`) or warns (:func:`apgd`) about probability-like
outputs and zero or non-finite gradients (``attacks.health``).

DLR needs 3 classes, targeted DLR 4 (its denominator uses the 3rd and 4th
largest logits). With fewer classes :func:`resolve_loss` swaps in the margin
loss (untargeted: max_{k != y} z_k - z_y; targeted: z_t - z_y) and says so.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import checks
from robustjax.attacks import common, health
from robustjax.attacks.pgd import ascent_direction, project

LOSSES = ('ce', 'dlr', 'dlr-t', 'margin', 'margin-t')


def _sorted_desc(z):
  return -jnp.sort(-z, axis=-1)


def loss_value(name: str, logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example loss to maximise; ``target`` is ignored by untargeted losses."""
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
  if name == 'ce':
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)
  if name == 'margin':
    return -common.margin(logits, y)
  if name == 'margin-t':
    return z_t - z_y
  zs = _sorted_desc(logits)
  if name == 'dlr':
    return -common.margin(logits, y) / (zs[:, 0] - zs[:, 2] + 1e-12)
  if name == 'dlr-t':
    return (z_t - z_y) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)
  raise ValueError(f'loss must be one of {LOSSES}, got {name!r}')


def resolve_loss(name: str, num_classes: int) -> tuple[str, str | None]:
  """(loss actually used, a note when it had to change for too few classes)."""
  if name == 'dlr' and num_classes < 3:
    return 'margin', f'DLR needs >= 3 classes, {num_classes} given: margin loss used'
  if name == 'dlr-t' and num_classes < 4:
    return 'margin-t', (f'targeted DLR needs >= 4 classes, {num_classes} given: '
                        'targeted margin loss used')
  return name, None


def _loss_and_logit_grad(index, logits, y, target, losses=LOSSES):
  """(``loss_value`` of losses[index] (n,), its gradient in the logits (n, C)), with
  ``index`` traced so that one compiled program serves every loss in ``losses``
  (static); each branch uses the loss valid for C classes (:func:`resolve_loss`).
  Only the selected loss runs, and the switch itself is never differentiated:
  differentiating a switch over the losses compiles slower, and a select over
  all of them runs all each step (and lets an unselected loss's nan backward
  leak in). Each loss costs its program ~15 XLA:CPU kernels per evaluation
  site, so a program carries only the losses its callers run (one for
  :func:`apgd`, those of the cascade's APGD members for the ensemble)."""
  def branch(name):
    used = resolve_loss(name, logits.shape[-1])[0]
    def value_and_grad(z, y, t):
      # Each example's loss depends on its own logits only: the gradient of
      # the sum is the per-example gradient.
      l, vjp = jax.vjp(lambda z: loss_value(used, z, y, t), z)
      return l, vjp(jnp.ones_like(l))[0]
    return value_and_grad
  if len(losses) == 1:
    return branch(losses[0])(logits, y, target)
  return jax.lax.switch(index, [branch(name) for name in losses], logits, y, target)


def checkpoints(n_iter: int) -> tuple[list[int], list[int]]:
  """Iterations at which the step-size test runs, and each test's window length."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # round() first: 0.57 * 100 is 57.000000000000007 in floating point.
  ws = sorted({int(math.ceil(round(q * n_iter, 6))) for q in p[1:] if q <= 1.0})
  ws = [w for w in ws if 0 < w <= n_iter]
  windows = [w - prev for prev, w in zip([0] + ws[:-1], ws)]
  return ws, windows


def _project(x, x_adv, eps, norm, bounds):
  delta = project(x_adv - x, eps, norm)
  return common.clip_to_bounds(x + delta, bounds)


def _random_start(keys, x, eps, norm):
  if norm == 'linf':
    u = common.per_example(lambda k: common.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0), keys)
    return eps * u
  g = common.per_example(lambda k: common.normal(k, x.shape[1:], x.dtype), keys)
  # AutoAttack's l2 start: a point on the sphere of radius eps.
  return eps * g / common.bview(jnp.maximum(common.norm(g, 'l2'), 1e-12), x)


MODEL_DRAWS = 0x5EED  # folded into an example's key for a randomised model's draws


@functools.partial(jax.jit, static_argnames=('norm', 'n_iter', 'rho', 'randomized', 'losses'))
def _apgd(logits_fn, x, y, target, eps, key, index, bounds, loss, restarts, eot_iter=1, *, norm,
          n_iter, rho, randomized=False, losses=LOSSES):
  """APGD on one batch. ``logits_fn(x)`` or, ``randomized``, ``logits_fn(x, keys (n,))``;
  ``key`` and ``index`` (n,) give each example its key (:func:`common.example_keys`).
  ``loss`` (the position in ``losses`` of the loss to run), ``restarts`` and
  ``eot_iter`` are traced: APGD-CE, APGD-DLR and APGD-T with any restarts
  and draws share one program when ``losses`` holds their losses."""
  keys = common.example_keys(key, index)
  fold = lambda ks, i: jax.vmap(jax.random.fold_in, in_axes=(0, None))(ks, i)
  # A randomised model's draws: per example, restart, step (0 = the start) and draw.
  draw_keys = fold(keys, MODEL_DRAWS) if randomized else None
  draw_at = lambda ks, s: fold(ks, s) if randomized else None
  eps_vec = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
  eps = common.bview(eps_vec, x)
  ws, windows = checkpoints(n_iter)
  is_check = jnp.zeros((n_iter + 1,), bool).at[jnp.array(ws)].set(True)
  window = jnp.zeros((n_iter + 1,), jnp.float32).at[jnp.array(ws)].set(
      jnp.array(windows, jnp.float32))

  def loss_and_grad(xa, dkeys):
    f = (lambda xa: logits_fn(xa, dkeys)) if randomized else logits_fn
    logits, vjp = jax.vjp(f, xa)
    l, g_logits = _loss_and_logit_grad(loss, logits, y, target, losses)
    return l, vjp(g_logits)[0], logits

  def evaluate(xa, step_keys):
    """(loss, gradient with nan / inf set to 0, not adversarial, raw gradient, logits).

    A randomised model: the gradient is the mean over ``eot_iter`` draws (EOT,
    Athalye et al. 2018, as AutoAttack's ``eot_iter``); the loss and logits
    are the last draw's, as the reference's."""
    if not randomized:
      l, g, logits = loss_and_grad(xa, None)
    else:
      def draw(j, carry):
        l, g, logits = loss_and_grad(xa, fold(step_keys, j))
        return carry[0] + g, l, logits
      shapes = jax.eval_shape(loss_and_grad, xa, step_keys)
      init = (jnp.zeros_like(xa), jnp.zeros(shapes[0].shape, shapes[0].dtype),
              jnp.zeros(shapes[2].shape, shapes[2].dtype))
      g, l, logits = jax.lax.fori_loop(0, eot_iter, draw, init)
      g = g / eot_iter
    # Misclassified only with finite logits (the iterates themselves stay
    # finite: x is, and non-finite gradient entries are zeroed).
    adv = (common.margin(logits, y) <= 0) & health.rows_finite(logits)
    return l, health.finite_grad(g), ~adv, g, logits

  def sel(mask, a, b):
    return jnp.where(common.bview(mask, a), a, b)

  def one_restart(r, out):
    adv_x, robust, zero, prob, bad = out
    rkeys = fold(keys, r)
    dkeys = draw_at(draw_keys, r)
    x0 = _project(x, x + _random_start(rkeys, x, eps, norm), eps, norm, bounds)
    l0, g0, ok0, raw0, logits0 = evaluate(x0, draw_at(dkeys, 0))
    zero0, bad0 = health.grad_flags(raw0)
    # The first start point's gradient and outputs, where AutoAttack checks them.
    zero = jnp.where(r == 0, zero0, zero)
    prob = jnp.where(r == 0, health.looks_like_probabilities(logits0), prob)
    adv_x = sel(robust & ~ok0, x0, adv_x)
    robust = robust & ok0
    # A nan / inf start loss is never the best: -inf lets any finite one win.
    l0 = jnp.where(jnp.isfinite(l0), l0, -jnp.inf)
    state = dict(x_adv=x0, x_old=x0, grad=g0, loss=l0, x_best=x0, g_best=g0, l_best=l0,
                 step=2.0 * eps_vec, n_inc=jnp.zeros_like(l0),
                 l_best_check=l0, reduced=jnp.ones(l0.shape, bool), adv_x=adv_x,
                 robust=robust, bad=bad | bad0)

    def body(i, s):
      a = jnp.where(i == 0, 1.0, 0.75)
      step = common.bview(s['step'], x)
      z = _project(x, s['x_adv'] + step * ascent_direction(s['grad'], norm), eps, norm, bounds)
      x_new = s['x_adv'] + a * (z - s['x_adv']) + (1 - a) * (s['x_adv'] - s['x_old'])
      x_new = _project(x, x_new, eps, norm, bounds)
      l, g, ok, raw, _ = evaluate(x_new, draw_at(dkeys, i + 1))
      bad = ~health.rows_finite(raw)
      adv_x = sel(s['robust'] & ~ok, x_new, s['adv_x'])
      better = (l > s['l_best']) & jnp.isfinite(l)
      s = dict(s, x_old=s['x_adv'], x_adv=x_new, grad=g, adv_x=adv_x, bad=s['bad'] | bad,
               robust=s['robust'] & ok, n_inc=s['n_inc'] + (l > s['loss']), loss=l,
               x_best=sel(better, x_new, s['x_best']), g_best=sel(better, g, s['g_best']),
               l_best=jnp.where(better, l, s['l_best']))

      def at_checkpoint(s):
        oscillating = s['n_inc'] <= rho * window[i + 1]
        stalled = ~s['reduced'] & (s['l_best_check'] >= s['l_best'])
        halve = oscillating | stalled
        return dict(s, step=jnp.where(halve, 0.5 * s['step'], s['step']),
                    x_adv=sel(halve, s['x_best'], s['x_adv']),
                    grad=sel(halve, s['g_best'], s['grad']), reduced=halve,
                    l_best_check=s['l_best'], n_inc=jnp.zeros_like(s['n_inc']))

      return jax.lax.cond(is_check[i + 1], at_checkpoint, lambda s: s, s)

    s = jax.lax.fori_loop(0, n_iter, body, state)
    # Points never misclassified report their highest-loss iterate.
    return sel(s['robust'], s['x_best'], s['adv_x']), s['robust'], zero, prob, s['bad']

  no = jnp.zeros(x.shape[:1], bool)
  init = (x, jnp.ones(x.shape[:1], bool), no, jnp.asarray(False), no)
  x_adv, robust, zero, prob, bad = jax.lax.fori_loop(0, restarts, one_restart, init)
  return x_adv, robust, dict(prob=prob, zero_grad=zero, nonfinite=bad)


def apgd_with_health(predict_fn, x, y, *, eps, norm: str, key, loss: str = 'ce',
                     n_iter: int = 100, restarts: int = 1, target=None, bounds=None, index=None,
                     rho: float = 0.75, eot_iter: int = 1, randomized: bool = False,
                     batch_size: int | None = None):
  """:func:`apgd` without warnings: (x_adv, robust, loss used, note, health record)."""
  checks.norm(norm)
  checks.choice(loss, LOSSES, 'loss')
  n_iter = checks.budget(n_iter, 'n_iter')
  restarts = checks.budget(restarts, 'restarts')
  eot_iter = checks.budget(eot_iter, 'eot_iter')
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  checks.number(rho, 'rho', low=0, high=1, low_open=True)
  if not isinstance(randomized, bool):
    raise TypeError(f'randomized: must be True or False, got {randomized!r}')
  if eot_iter > 1 and not randomized:
    raise ValueError(f'eot_iter: {eot_iter} draws need a randomised model (randomized=True, '
                     'predict_fn(x, key)); a deterministic model gives the same gradient each draw')
  logits_fn, yi, num_classes, _ = common.checked_lift(predict_fn, x, y, bounds, randomized)
  checks.radius(eps, x.shape[0], 'eps')
  used, note = resolve_loss(loss, num_classes)
  if used.endswith('-t') and target is None:
    raise ValueError(f'target: loss {loss!r} needs target classes (n,)')
  if target is not None:
    target = checks.batch(x, target if hasattr(target, 'shape') else np.asarray(target),
                          name_y='target')
    checks.labels(target, binary=False, num_classes=num_classes, name='target')
    target = np.asarray(target, np.int32) if checks.concrete(target) else target.astype(jnp.int32)
  else:
    target = yi
  index = np.arange(x.shape[0]) if index is None else checks.batch(x, index, name_y='index')
  run = lambda xs, ys, ts, ids, es: _apgd(
      logits_fn, xs, ys, ts, es, key, ids, bounds, 0, restarts, eot_iter,
      norm=norm, n_iter=n_iter, rho=float(rho), randomized=randomized, losses=(used,))
  x_adv, robust, h = common.run_chunked(
      run, [x, yi, target, index, common.per_point(eps, x.shape[0], x.dtype)], batch_size)
  return jnp.asarray(x_adv), jnp.asarray(robust), used, note, h


def apgd(predict_fn, x, y, *, eps, norm: str, key, loss: str = 'ce', n_iter: int = 100,
         restarts: int = 1, target=None, bounds=None, index=None, rho: float = 0.75,
         eot_iter: int = 1, randomized: bool = False, batch_size: int | None = None):
  """Runs APGD; returns (x_adv, robust (n,) bool, loss actually used, note).

  Args:
    predict_fn: batch -> logits (n, C) with y integers in [0, C), or scalar
      logits (n,) with y in {-1, +1} (the library's binary convention). With
      ``randomized``, a randomised model ``predict_fn(x, key)`` (e.g. noise on
      the input), called on one example at a time (vmapped) with that
      example's own key per draw.
    x, y: clean batch (n, ...), floating, and labels (n,).
    eps: radius >= 0, scalar or (n,). norm: 'l2' or 'linf'.
    key: PRNG key; example i draws from fold_in(key, index[i]).
    loss: 'ce', 'dlr', 'dlr-t' (needs ``target``), 'margin' or 'margin-t'.
    n_iter: iterations per restart (>= 1); restarts: independent random
      starts (>= 1).
    target: (n,) integer target classes in [0, C) for the targeted losses.
    bounds: None or (lo, hi) input domain; x must lie inside it.
    index: (n,) positions of the examples in the full data set (default arange).
    rho: the step-size test's threshold, in (0, 1].
    eot_iter: draws of a randomised model per step (>= 1; > 1 needs
      ``randomized``): Expectation over Transformation (Athalye et al. 2018),
      the step follows the mean gradient over the draws (AutoAttack's
      ``eot_iter``; its 'rand' version uses 20); the loss and the
      misclassification test use the last draw, as the reference's.
    batch_size: None runs all n points in one program; an integer runs them
      in chunks of that many (the last padded), one compiled program for all
      chunks; memory grows with batch_size, not with n. Per point the same
      result either way (keys by index).

  ``robust[i]`` is False iff some iterate (start included) was misclassified
  with a finite point and finite logits; ``x_adv[i]`` is then that
  misclassified point, inside the eps-ball. Source: Croce & Hein, ICML 2020;
  fra31/auto-attack, autoattack/autopgd_base.py.

  Raises ValueError / TypeError (one line naming the argument) on a bad norm,
  loss, budget, radius, bounds, dtype, label or target (see
  ``robustjax.checks``); points outside ``bounds`` are refused. Warns
  (RuntimeWarning) when the outputs look like probabilities or gradients are
  zero at the first start point or non-finite (``attacks.health``).
  """
  x_adv, robust, used, note, h = apgd_with_health(
      predict_fn, x, y, eps=eps, norm=norm, key=key, loss=loss, n_iter=n_iter,
      restarts=restarts, target=target, bounds=bounds, index=index, rho=rho, eot_iter=eot_iter,
      randomized=randomized, batch_size=batch_size)
  health.warn(health.messages(f'apgd ({used})', h))
  return x_adv, robust, used, note


def target_classes(predict_fn, x, rank: int) -> jax.Array:
  """The class with the ``rank``-th largest clean logit (rank 2 = runner-up; rank >= 1)."""
  rank = checks.budget(rank, 'rank')
  logits = common.multiclass(predict_fn)(x)
  return jnp.argsort(-logits, axis=-1)[:, rank - 1].astype(jnp.int32)
