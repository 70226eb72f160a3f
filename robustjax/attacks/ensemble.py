"""AutoAttack-style ensemble: robust accuracy at one radius.

Attacks run in order; each only sees the points every earlier attack left
robust (AutoAttack's cascade), so the ensemble's robust accuracy is never above
any of its members'. Every adversarial point an attack returns is re-checked
(misclassified, inside the eps-ball up to float32 rounding, inside ``bounds``)
before it counts. Sub-batches are padded to powers of two so the shrinking
sets of robust points reuse a few compiled shapes, and random draws are keyed
by each point's position in ``x``, so a point's fate under an attack does not
depend on which other points share its batch.

Attacks (names for ``attacks=``):
  'apgd-ce'  APGD on cross-entropy.
  'apgd-dlr' APGD on DLR (margin loss with < 3 classes).
  'apgd-t'   targeted APGD on DLR against each of the top ``n_target_classes``
             runner-up classes in turn (targeted margin with < 4 classes).
  'fmn'      FMN minimal-norm attack (targeted on the runner-ups); a point
             counts as broken when its minimal perturbation is within eps.
             Stands in for AutoAttack's FAB-T.
  'square'   Square attack, score-based black box.

Before any attack the clean outputs are tested for looking like probabilities,
and every white-box attack reports the points whose gradient at the clean
point is zero or whose gradients were non-finite (``attacks.health``); both
go to the result's 'warnings' (and are warned) with the black-box check.
"""
from __future__ import annotations

import time
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks
from robustjax.attacks import common, health
from robustjax.attacks.apgd import apgd_with_health, target_classes
from robustjax.attacks.minimal import fmn_with_health
from robustjax.attacks.square import square

ATTACKS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fmn', 'square')
WHITE_BOX = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fmn')
DEFAULT_ATTACKS = ('apgd-ce', 'apgd-t', 'fmn', 'square')


def _attack_key(key, name):
  # A key per attack name: the same attack gets the same draws alone or in
  # any ensemble.
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _verify(predict_fn, x, y, x_adv, eps, norm, bounds):
  """True where x_adv is a valid adversarial example for (x, y): finite,
  misclassified, inside the ball and the box."""
  logits_fn, yi, _, _ = common.lift(predict_fn, x, y)
  logits = logits_fn(x_adv)
  wrong = (common.margin(logits, yi) <= 0) & health.rows_finite(np.asarray(x_adv),
                                                                np.asarray(logits))
  d = common.norm(x_adv - x, norm)
  inside = d <= eps * (1 + 1e-5) + 1e-6
  if bounds is not None:
    inside &= jnp.all((x_adv >= bounds[0]).reshape(x.shape[0], -1), -1)
    inside &= jnp.all((x_adv <= bounds[1]).reshape(x.shape[0], -1), -1)
  return np.asarray(wrong & inside)


def _run_one(name, predict_fn, xs, ys, idx, *, eps, norm, key, bounds, opts, rank=None):
  """One attack on a (padded) sub-batch; returns (x_adv, note or None, health record)."""
  if name in ('apgd-ce', 'apgd-dlr', 'apgd-t'):
    loss = {'apgd-ce': 'ce', 'apgd-dlr': 'dlr', 'apgd-t': 'dlr-t'}[name]
    target = target_classes(predict_fn, xs, rank) if name == 'apgd-t' else None
    x_adv, _, used, note, h = apgd_with_health(
        predict_fn, xs, ys, eps=eps, norm=norm, key=key, loss=loss, n_iter=opts['n_iter'],
        restarts=opts['restarts'], target=target, bounds=bounds, index=idx)
    return x_adv, note, h
  if name == 'fmn':
    x_adv, _, h = fmn_with_health(predict_fn, xs, ys, norm=norm, steps=opts['fmn_steps'],
                                  targets=opts['n_target_classes'], bounds=bounds)
    return x_adv, None, h
  if name == 'square':
    x_adv, _, _ = square(predict_fn, xs, ys, eps=eps, norm=norm, key=key,
                         n_queries=opts['square_queries'], bounds=bounds, index=idx, warn=False)
    return x_adv, None, {}
  raise ValueError(f'unknown attack {name!r}; choose from {ATTACKS}')


def evaluate_robust_accuracy(predict_fn, x, y, *, eps: float, norm: str,
                             attacks=DEFAULT_ATTACKS, key, bounds=None, n_iter: int = 100,
                             restarts: int = 1, n_target_classes: int = 9,
                             fmn_steps: int = 100, square_queries: int = 5000,
                             masking_tol: float = 0.01, warn: bool = True) -> dict:
  """Robust accuracy of ``predict_fn`` at radius ``eps`` under an attack cascade.

  Args:
    predict_fn: batch -> logits (n, C) with labels integers in [0, C), or
      scalar logits (n,) with labels in {-1, +1} (the library's one binary
      convention; {0, 1} labels are refused).
    x, y: inputs (n, ...), floating and finite, and labels (n,).
    eps: radius, a float >= 0; norm: 'l2' or 'linf'.
    attacks: names from ``ATTACKS``, run in this order.
    key: PRNG key.
    bounds: None or (lo, hi) input domain, lo < hi; x must lie inside it.
    n_iter, restarts: APGD budget; n_target_classes: runner-up classes for
      'apgd-t' and 'fmn'; fmn_steps; square_queries (all integers >= 1).
    masking_tol: share of all points (in [0, 1]) the black-box attack may
      break after the white-box ones before the evaluation warns of gradient
      masking.

  Returns a dict: 'clean_accuracy', 'robust_accuracy', 'robust' (n,) bool,
  'x_adv' (adversarial points where broken, else x), 'per_attack' (per
  attack: name, 'broken' points, robust accuracy after it, seconds), 'notes'
  (loss substitutions, e.g. DLR -> margin for binary tasks), 'health_warnings'
  (probability-like outputs; zero or non-finite gradients per white-box
  attack) and 'warnings' (those and the black-box check).

  Raises ValueError / TypeError (one line naming the argument) on a bad
  attack name, norm, radius, budget, bounds, dtype or label; points outside
  ``bounds`` are refused. Only finite points are ever counted as adversarial.
  """
  attacks = tuple(attacks)
  for a in attacks:
    checks.choice(a, ATTACKS, 'attacks')
  checks.norm(norm)
  checks.radius(eps, name='eps', per_example=False)
  opts = dict(n_iter=checks.budget(n_iter, 'n_iter'), restarts=checks.budget(restarts, 'restarts'),
              fmn_steps=checks.budget(fmn_steps, 'fmn_steps'),
              n_target_classes=checks.budget(n_target_classes, 'n_target_classes'),
              square_queries=checks.budget(square_queries, 'square_queries'))
  checks.number(masking_tol, 'masking_tol', low=0, high=1)
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  n = x.shape[0]
  logits_fn, yi, num_classes, binary = common.checked_lift(predict_fn, x, y, bounds)
  clean_logits, prob = health.outputs(logits_fn, x)
  robust = np.array(common.margin(clean_logits, yi) > 0)
  clean = float(robust.mean())
  x_adv = np.array(x)
  health_msgs = health.messages('predict_fn', dict(prob=prob))
  notes, per_attack = [], []
  if binary:
    notes.append('binary task: scalar logits lifted to two classes [0, f]')

  for name in attacks:
    t0 = time.perf_counter()
    broken_here = 0
    flags = {}  # per white-box attack: points with a zero / non-finite gradient
    ranks = [None]
    if name == 'apgd-t':
      ranks = list(range(2, min(n_target_classes, num_classes - 1) + 2))
    for rank in ranks:
      idx = np.nonzero(robust)[0]
      if idx.size == 0:
        break
      size = common.pad_to_bucket(idx.size)
      xs, ys, ids = common.take_padded([x, y, jnp.arange(n)], idx, size)
      k = _attack_key(key, name) if rank is None else jax.random.fold_in(
          _attack_key(key, name), rank)
      xa, note, h = _run_one(name, predict_fn, xs, ys, ids, eps=eps, norm=norm, key=k,
                             bounds=bounds, opts=opts, rank=rank)
      if note and f'{name}: {note}' not in notes:
        notes.append(f'{name}: {note}')
      for flag in ('zero_grad', 'nonfinite'):
        if flag in h:
          flags.setdefault(flag, np.zeros(n, bool))[idx] |= np.asarray(h[flag])[:idx.size]
          flags.setdefault('attacked', np.zeros(n, bool))[idx] = True
      ok = _verify(predict_fn, xs, ys, xa, eps, norm, bounds)[:idx.size]
      xa = np.asarray(xa)[:idx.size]
      x_adv[idx[ok]] = xa[ok]
      robust[idx[ok]] = False
      broken_here += int(ok.sum())
    per_attack.append(dict(name=name, broken=broken_here, robust_accuracy=float(robust.mean()),
                           seconds=time.perf_counter() - t0))
    health_msgs += _gradient_messages(name, flags)

  out = dict(clean_accuracy=clean, robust_accuracy=float(robust.mean()), robust=robust,
             x_adv=x_adv, per_attack=per_attack, notes=notes, eps=float(eps), norm=norm,
             num_points=n, health_warnings=health_msgs, warnings=[])
  out['warnings'] = health_msgs + black_box_check(out, masking_tol)
  if warn:
    for w in out['warnings']:
      warnings.warn(w, RuntimeWarning, stacklevel=2)
  return out


def _gradient_messages(name: str, flags: dict) -> list[str]:
  """Gradient-masking lines for a white-box attack's zero / non-finite gradients."""
  msgs = []
  if 'attacked' not in flags:
    return msgs
  m = int(flags['attacked'].sum())
  zero, bad = int(flags['zero_grad'].sum()), int(flags['nonfinite'].sum())
  if zero:
    msgs.append(f"gradient masking? white-box '{name}' found a zero gradient at its start point "
                f'on {zero} of the {m} points it attacked: it cannot move there, so robustness '
                'is overstated; check that the model returns logits and is differentiable')
  if bad:
    msgs.append(f"white-box '{name}' met non-finite gradients (nan or inf) on {bad} of the {m} "
                'points it attacked (those entries were set to 0; non-finite points never count '
                'as adversarial); a non-differentiable point such as sqrt at 0 is the usual cause')
  return msgs


def black_box_check(result: dict, tol: float) -> list[str]:
  """A warning when black-box attacks broke > tol of the points after white-box ones."""
  seen_white = False
  msgs = []
  for rec in result['per_attack']:
    if rec['name'] in WHITE_BOX:
      seen_white = True
    elif seen_white and rec['broken'] > tol * result['num_points']:
      msgs.append(
          f"gradient masking? black-box '{rec['name']}' broke {rec['broken']} of "
          f"{result['num_points']} points the white-box attacks left robust at "
          f"eps={result['eps']:g}")
  return msgs
