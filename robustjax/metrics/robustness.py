"""Clean and robust accuracy under PGD at a list of radii; adversarial distances;
robustness curves under the attack ensemble with gradient-masking checks.

Label conventions, the same across the library: multi-class logits (n, C)
with integer labels in [0, C); binary scalar logits (n,) with labels in
{-1, +1} (the margin is y f, as ``losses.margin``); anything else, e.g. {0, 1}
labels with scalar logits, is refused with one line (``robustjax.checks``).
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks, losses
from robustjax.attacks import common, health, pgd, registry
from robustjax.attacks.ensemble import (RANDOMNESS_MSG, black_box_check,
                                        evaluate_robust_accuracy)


def _check_outputs(logits, y, name: str = 'logits'):
  if logits.ndim not in (1, 2):
    raise ValueError(f'{name}: must be scalar logits (n,) or logits (n, C), got shape '
                     f'{logits.shape}')
  y = checks.batch(logits, y)
  checks.labels(y, binary=logits.ndim == 1,
                num_classes=None if logits.ndim == 1 else logits.shape[-1])
  return y


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Share of correct predictions: margin > 0 (``losses.margin``), a scalar.

  logits (n, C) with y integers in [0, C), or scalar logits (n,) with y in
  {-1, +1}; other labels ({0, 1} with scalar logits) raise ValueError.
  Non-finite logits count as wrong.
  """
  y = _check_outputs(logits, y)
  return jnp.mean(losses.margin(logits, y) > 0)


def robust_accuracy(logit_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                    *, eps: float | Sequence[float], norm: str, steps: int,
                    rel_step_size: float | None = None, restarts: int, key: chex.PRNGKey,
                    bounds=None, **renamed) -> jax.Array:
  """Accuracy under PGD on the negative margin at each eps.

  Args:
    logit_fn: batch -> logits (n, C) with y integers in [0, C), or scalar
      logits (n,) with y in {-1, +1}.
    x: clean batch (n, ...), floating, finite, inside ``bounds``; y: (n,).
    eps: one radius (float >= 0): a scalar result; or a sequence of radii:
      shape (len(eps),).
    norm: 'l2' or 'linf'; steps, restarts: integers >= 1.
    rel_step_size: the PGD step as a fraction of each radius: radius e uses
      the absolute step ``rel_step_size * e`` (>= 0), as ``PGDSpec`` and the
      configs' ``rel_step_size``. (``step_size``, its former name here, is
      refused with a TypeError: library-wide ``step_size`` means an absolute
      step, as in ``attacks.pgd``, and silently reading 0.25 as absolute would
      change results.)
    key: PRNG key; bounds: None or (lo, hi).

  The attack maximises the negative margin (CW-style), so the best iterate
  kept per example is the most misclassified one. A point counts as robust
  when it is correctly classified and PGD found no misclassified point with
  finite values and logits in its ball; eps = 0 gives the clean accuracy.
  Raises ValueError / TypeError (one line naming the argument) on bad input;
  outside ``jit`` warns when the outputs look like probabilities.
  """
  checks.renamed('robust_accuracy', renamed, step_size=(
      'rel_step_size', 'relative to eps: each radius e steps rel_step_size * e'))
  if rel_step_size is None:   # (a default only so that the former name gets its own message)
    raise TypeError("robust_accuracy() missing 1 required keyword-only argument: 'rel_step_size'")
  eps_list, is_seq = checks.radii(eps)
  checks.norm(norm)
  steps = checks.budget(steps, 'steps')
  restarts = checks.budget(restarts, 'restarts')
  checks.number(rel_step_size, 'rel_step_size', low=0, what=' (relative to eps)')
  checks.inputs(x)
  checks.bounds(bounds)
  checks.inside(x, bounds)
  y = checks.batch(x, jnp.asarray(y))
  if not isinstance(logit_fn, jax.tree_util.Partial):
    logit_fn = jax.tree_util.Partial(logit_fn)
  binary, num_classes = common.output_kind(logit_fn, x)
  checks.labels(y, binary=binary, num_classes=num_classes)
  clean_logits, prob = health.outputs(logit_fn, x)
  if checks.concrete(prob):
    health.warn(health.messages('robust_accuracy', dict(prob=prob)), stacklevel=3)
  correct = losses.margin(clean_logits, y) > 0
  attack_loss = jax.tree_util.Partial(_neg_margin, logit_fn, y)
  accs = []
  for i, e in enumerate(eps_list):
    x_adv = pgd(attack_loss, x, eps=e, norm=norm, steps=steps, step_size=rel_step_size * e,
                key=jax.random.fold_in(key, i), restarts=restarts, bounds=bounds)
    z = logit_fn(x_adv)
    broken = (losses.margin(z, y) <= 0) & health.rows_finite(x_adv, z)
    accs.append(jnp.mean(correct & ~broken))
  return jnp.stack(accs) if is_seq else accs[0]


def _neg_margin(logit_fn, y, x):
  return -losses.margin(logit_fn(x), y)


# --- Adversarial distance (Paper B) -----------------------------------------

DISTANCE_METHODS = registry.names(registry.MINIMAL)


def distance_summary(distances) -> dict:
  """mean, median, q25, q75 over the points the attack broke; counts of all and failed."""
  d = np.asarray(distances, np.float64)
  ok = d[np.isfinite(d)]
  stat = (lambda f: float(f(ok))) if ok.size else (lambda f: float('nan'))
  return dict(mean=stat(np.mean), median=stat(np.median),
              q25=stat(lambda v: np.quantile(v, 0.25)), q75=stat(lambda v: np.quantile(v, 0.75)),
              num_points=int(d.size), num_failed=int(d.size - ok.size))


def adversarial_distance(predict_fn: Callable, x, y, *, method: str, key: chex.PRNGKey,
                         max_points: int | None = 1000, bounds=None,
                         batch_size: int | None = None, **method_kwargs) -> dict:
  """Per-example adversarial distances for the correctly classified points.

  Paper B's protocol: the first ``max_points`` correctly classified points of
  ``x`` (all when None), attacked one batch of ``batch_size`` (default: all)
  at a time; a short last batch is padded so every batch shares one compile.
  The clean pass runs in the same batches, so device memory grows with
  ``batch_size``, not with the number of points (the host holds x); the
  clean pass, the attack and the re-check each compile one program, and a
  later call with the same batch size compiles nothing.
  Hard-label attacks pick their start points inside the batch, so larger
  batches give them better starts.

  Args:
    predict_fn: batch -> logits (n, C) with integer labels, or scalar logits
      (n,) with labels in {-1, +1}.
    method: a minimal-distance method of ``attacks.registry`` (its 'minimal'
      kind, ``DISTANCE_METHODS``): 'fmn' (white-box minimal norm; 'ddn' is
      accepted and runs FMN, the same family), 'bisection' (radius bisection
      over PGD), 'hopskipjump' or 'tangent' (hard-label, l2 only,
      TangentAttack hemisphere variant). A fixed-radius attack ('apgd-ce',
      ...) is refused: it measures robust accuracy at one eps
      (``evaluate_robust_accuracy``).
    key: PRNG key.
    method_kwargs: passed to ``attacks.fmn`` / ``attacks.bisection`` /
      ``attacks.decision_attack`` (e.g. norm='linf', iterations=40).

  Returns a dict: 'distances' (n_correct,) with ``inf`` where the attack found
  nothing (or its point did not re-check as misclassified with finite values
  and logits), 'indices' into ``x``, 'queries' (per point, hard-label methods;
  else None), 'x_adv', 'method' (the attack actually run) and 'summary'
  (:func:`distance_summary`).

  Raises ValueError / TypeError (one line naming the argument) on a bad
  method, a norm the method does not support, max_points / batch_size
  (integers >= 1 or None), bounds, dtype or label (the attacks check their
  own options); points outside ``bounds`` are
  refused. For the gradient-based methods, warns when the outputs look like
  probabilities (hard-label methods see only the argmax, which they do not
  change).
  """
  entry = registry.get(method, registry.MINIMAL, 'method')
  norm = registry.check_norm(entry, checks.norm(method_kwargs.get('norm', 'l2')))
  max_points = checks.optional_budget(max_points, 'max_points')
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  logits_fn, yi, _, _ = common.checked_lift(predict_fn, x, y, bounds)
  x = np.asarray(x)   # host: batches are gathered here, each then one device transfer
  yi = np.asarray(yi)
  y = np.asarray(y)
  clean_logits = common.logits_of(logits_fn, x, batch_size)
  prob = bool(health.looks_like_probabilities(clean_logits))
  if entry.white_box:
    health.warn(health.messages('adversarial_distance', dict(prob=prob)), stacklevel=3)
  correct = np.asarray(common.margin(clean_logits, yi) > 0)
  indices = np.nonzero(correct)[0]
  if max_points is not None:
    indices = indices[:max_points]
  if indices.size == 0:  # the summary's statistics are then nan: say why
    warnings.warn(f'adversarial_distance: none of the {len(yi)} points is classified correctly '
                  '(margin > 0): no distance to measure', RuntimeWarning, stacklevel=2)
  bs = max(len(indices), 1) if batch_size is None else batch_size
  dists, queries, advs = [], [], []
  for b, start in enumerate(range(0, len(indices), bs)):
    idx = indices[start:start + bs]
    m = len(idx)
    if batch_size is not None and m < bs:
      # Pad the last batch with copies of its first point: one compile serves
      # all batches. (Copies share their label, so hard-label attacks never
      # start from them.)
      idx = common.padded(idx, bs)
    xb, yb = x[idx], y[idx]
    # FMN draws nothing; the others get a key per batch.
    kb = jax.random.fold_in(key, b) if entry.random else key
    with warnings.catch_warnings():
      # Said once above, not once per batch.
      warnings.filterwarnings('ignore', message='.*look like probabilities')
      x_adv, dist, q = registry.run_minimal(method, predict_fn, xb, yb, key=kb, bounds=bounds,
                                            **method_kwargs)
    # Count only points that re-check as misclassified (finite point and
    # logits), at their true distance.
    wrong, true_d = (np.asarray(a)[:m] for a in _recheck(logits_fn, xb, yi[idx], x_adv, norm=norm))
    dists.append(np.where(wrong & np.isfinite(np.asarray(dist)[:m]), true_d, np.inf))
    advs.append(np.asarray(x_adv)[:m])
    if q is not None:
      queries.append(np.asarray(q)[:m])
  distances = np.concatenate(dists) if dists else np.zeros((0,), np.float32)
  return dict(distances=distances, indices=indices,
              queries=np.concatenate(queries) if queries else None,
              x_adv=np.concatenate(advs) if advs else np.zeros((0,) + x.shape[1:]),
              method=entry.runs,
              summary=distance_summary(distances))


@functools.partial(jax.jit, static_argnames=('norm',))
def _recheck(logits_fn, x, y, x_adv, *, norm):
  """(misclassified with a finite point and logits (n,), ||x_adv - x|| (n,)) in one program."""
  z = logits_fn(x_adv)
  wrong = (jnp.argmax(z, -1) != y) & health.rows_finite(x_adv, z)
  return wrong, common.norm(x_adv - x, norm)


def compare_distances(white_box, hard_label, *, tol: float = 0.0, max_share: float = 0.05,
                      warn: bool = True) -> dict:
  """Flags a weak white-box attack: its distance should not exceed the hard-label one.

  Both arrays are per point (same points, same order), distances >= 0 with
  ``inf`` for failures; nan or negative values, different shapes, tol < 0 or
  max_share outside [0, 1] raise ValueError. Returns the share and positions
  of points where ``white > hard * (1 + tol)`` and whether that share is above
  ``max_share`` (then a warning is issued).
  """
  w = np.asarray(white_box, np.float64)
  h = np.asarray(hard_label, np.float64)
  for name, d in (('white_box', w), ('hard_label', h)):
    if d.ndim != 1 or np.any(np.isnan(d)) or np.any(d < 0):
      raise ValueError(f'{name}: must be distances (n,) >= 0 (inf for failures), got shape '
                       f'{d.shape}{" with nan or negative values" if d.ndim == 1 else ""}')
  if w.shape != h.shape:
    raise ValueError(f'hard_label: must have the shape of white_box {w.shape}, got {h.shape}')
  checks.number(tol, 'tol', low=0)
  checks.number(max_share, 'max_share', low=0, high=1)
  larger = w > h * (1.0 + tol)
  share = float(larger.mean()) if larger.size else 0.0
  flagged = share > max_share
  if flagged and warn:
    warnings.warn(f'white-box minimal distance exceeds the hard-label one on {share:.1%} of '
                  f'points (> {max_share:.0%}): the white-box attack looks weak',
                  RuntimeWarning, stacklevel=2)
  return dict(share_white_larger=share, positions=np.nonzero(larger)[0], flagged=flagged)


# --- Robustness curves and gradient-masking checks --------------------------

def gradient_masking_checks(eps, accuracy, *, large_eps_accuracy=None, monotone_tol: float = 0.0,
                            zero_tol: float = 0.05, per_eps=None,
                            masking_tol: float = 0.01) -> list[str]:
  """Warnings (strings) for the usual signs of gradient masking.

  - accuracy must not increase with eps (beyond ``monotone_tol``);
  - at the large radius accuracy must be <= ``zero_tol`` (~0);
  - black-box attacks must not break more than ``masking_tol`` of the points
    the white-box ones left robust (from each eps's ensemble record), whose
    'health_warnings' (probability-like outputs, zero or non-finite gradients
    of the white-box attacks) are passed on too, as is its randomness check
    (outputs that change between calls with the same input).
  """
  msgs = []
  eps = np.asarray(eps, np.float64)
  acc = np.asarray(accuracy, np.float64)
  order = np.argsort(eps)
  rises = np.nonzero(np.diff(acc[order]) > monotone_tol)[0]
  for i in rises:
    msgs.append(f'gradient masking? accuracy rises with eps: {acc[order][i]:.4f} at '
                f'eps={eps[order][i]:g} -> {acc[order][i + 1]:.4f} at eps={eps[order][i + 1]:g}')
  if large_eps_accuracy is not None and large_eps_accuracy > zero_tol:
    msgs.append(f'gradient masking? accuracy {large_eps_accuracy:.4f} at a large eps does not '
                f'reach ~0 (tolerance {zero_tol:g})')
  for rec in per_eps or ():
    msgs.extend(m for m in rec.get('health_warnings', []) if m not in msgs)
    if rec.get('randomness') and RANDOMNESS_MSG not in msgs:
      msgs.append(RANDOMNESS_MSG)
    msgs.extend(black_box_check(rec, masking_tol))
  return msgs


def robustness_curve(predict_fn: Callable, x, y, *, eps: Sequence[float], norm: str,
                     key: chex.PRNGKey, large_eps: float | None = None, zero_tol: float = 0.05,
                     monotone_tol: float = 0.0, masking_tol: float = 0.01, warn: bool = True,
                     plot_path: str | None = None, **ensemble_kwargs) -> dict:
  """Robust accuracy against eps under the attack ensemble, with masking checks.

  Runs ``evaluate_robust_accuracy`` at each eps (same key, so the curve is
  not noisier than the attacks) and, when ``large_eps`` is given, once more
  there for the "reaches ~0" check. Returns {'eps', 'accuracy' (len(eps),),
  'large_eps', 'large_eps_accuracy', 'per_eps' (the ensemble dicts without
  their adversarial points), 'warnings'}; warnings are also issued. With
  ``plot_path`` the curve is also saved there as a PNG.

  ``eps``: a sequence of radii >= 0; ``large_eps`` >= 0 or None; the
  tolerances in [0, 1] (monotone_tol >= 0); other arguments as in
  ``evaluate_robust_accuracy``, which checks them. Bad values raise
  ValueError / TypeError with one line naming the argument.
  """
  eps, is_seq = checks.radii(eps)
  if not is_seq:
    raise ValueError(f'eps: must be a sequence of radii for a curve, got {eps[0]!r}')
  eps = [float(e) for e in eps]
  if large_eps is not None:
    checks.radius(large_eps, name='large_eps', per_example=False)
  checks.number(zero_tol, 'zero_tol', low=0, high=1)
  checks.number(masking_tol, 'masking_tol', low=0, high=1)
  checks.number(monotone_tol, 'monotone_tol', low=0)
  per_eps = []
  for e in eps:
    r = evaluate_robust_accuracy(predict_fn, x, y, eps=e, norm=norm, key=key, warn=False,
                                 masking_tol=masking_tol, **ensemble_kwargs)
    per_eps.append({k: v for k, v in r.items() if k not in ('x_adv',)})
  large_acc = None
  if large_eps is not None:
    r = evaluate_robust_accuracy(predict_fn, x, y, eps=float(large_eps), norm=norm, key=key,
                                 warn=False, masking_tol=masking_tol, **ensemble_kwargs)
    large_acc = r['robust_accuracy']
  acc = np.array([r['robust_accuracy'] for r in per_eps])
  msgs = gradient_masking_checks(eps, acc, large_eps_accuracy=large_acc, zero_tol=zero_tol,
                                 monotone_tol=monotone_tol, per_eps=per_eps,
                                 masking_tol=masking_tol)
  if warn:
    for m in msgs:
      warnings.warn(m, RuntimeWarning, stacklevel=2)
  curve = dict(eps=np.array(eps), accuracy=acc, large_eps=large_eps,
               large_eps_accuracy=large_acc, per_eps=per_eps, norm=norm, warnings=msgs)
  if plot_path is not None:
    plot_robustness_curve(curve, plot_path)
  return curve


def plot_robustness_curve(curves, path: str | None = None, *, labels=None):
  """One plot of accuracy against eps for one curve or a list; saves PNG when ``path``."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  curves = [curves] if isinstance(curves, dict) else list(curves)
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for i, c in enumerate(curves):
    label = labels[i] if labels else None
    ax.plot(c['eps'], c['accuracy'], marker='o', label=label)
  ax.set_xlabel(f"eps ({curves[0]['norm']})")
  ax.set_ylabel('robust accuracy')
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  if labels:
    ax.legend()
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
