"""Signs that a model cannot be attacked as given, and the warnings they raise.

An attack's number is only an upper bound on robustness; it is a loose one,
silently, when the model hands the attack nothing to work with. Three signs
are tracked, inside the compiled attacks (no host sync there) and turned into
``RuntimeWarning``s at the Python level:

  * outputs that look like probabilities (every row >= 0 and summing to 1, the
    test AutoAttack's ``check_range_output`` uses, or a binary model's scalar
    outputs all in [0, 1], a sigmoid's): a saturated softmax has zero
    gradients and a flat score, and a sigmoid never changes sign, so white-
    and black-box attacks stall or cannot succeed; pass the logits (or
    log-probabilities) instead;
  * a zero gradient at the attack's start point (the clean point for FMN and
    bisection, the first random start for PGD and APGD: where AutoAttack's
    ``check_zero_gradients`` looks): gradient-based attacks cannot leave it
    (gradient masking?);
  * non-finite gradients (nan / inf, e.g. sqrt at 0): their entries are set to
    0 so the attack can go on, and no iterate whose point or logits are
    non-finite is ever counted or returned as adversarial.

A health record is a dict of arrays: 'prob' () bool, 'zero_grad' (n,) bool,
'nonfinite' (n,) bool; attacks without logits or gradients leave keys out.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

PROB_TOL = 1e-5  # AutoAttack's alpha in check_range_output


def _xp(*arrays):
  """numpy for host arrays (no compile, no device op), jax.numpy otherwise."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def looks_like_probabilities(logits, tol: float = PROB_TOL):
  """() bool: every row of (n, C >= 2) outputs is >= 0 and sums to 1 (within
  tol), or the outputs are a binary model's scalars lifted to [0, f]
  (``common.multiclass``) with every f in [0, 1]: a sigmoid's probability,
  whose sign never changes, where the library's binary convention wants the
  logit (its sign is the class).

  numpy in, numpy out (the host-side checks); jax arrays inside compiled code."""
  xp = _xp(logits)
  if logits.ndim != 2 or logits.shape[-1] < 2:
    return xp.asarray(False)
  in_unit = xp.all(logits > -tol) & xp.all(logits < 1 + tol)
  softmax = xp.all(xp.abs(xp.sum(logits, -1) - 1) < tol * max(1, logits.shape[-1] / 10))
  sigmoid = xp.asarray(logits.shape[-1] == 2) & xp.all(logits[:, 0] == 0)
  return in_unit & (softmax | sigmoid)


def rows_finite(*arrays):
  """(n,) bool: every value of row i of every array is finite (numpy or jax, as given)."""
  xp = _xp(*arrays)
  out = None
  for a in arrays:
    ok = xp.all(xp.isfinite(a.reshape(a.shape[0], -1)), axis=-1)
    out = ok if out is None else out & ok
  return out


def grad_flags(g: jax.Array):
  """(zero (n,), nonfinite (n,)): the gradient is 0 (below the smallest normal
  float: a step cannot use it) / has a nan or inf entry."""
  flat = g.reshape(g.shape[0], -1)
  nonfinite = ~jnp.all(jnp.isfinite(flat), axis=-1)
  zero = jnp.all(jnp.abs(flat) < jnp.finfo(g.dtype).tiny, axis=-1) & ~nonfinite
  return zero, nonfinite


def finite_grad(g: jax.Array) -> jax.Array:
  """g with nan / inf entries set to 0: the attack steps along the usable rest."""
  return jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))


def outputs(logits_fn, x):
  """(outputs (n, C), do they look like probabilities ()) from one forward pass.

  Outside ``jit`` the check runs in numpy on the host, so a one-off check adds
  no compiled program; inside ``jit`` it is traced into the caller's.
  """
  z = logits_fn(x)
  if isinstance(z, jax.core.Tracer):
    return z, looks_like_probabilities(z)
  return z, bool(looks_like_probabilities(np.asarray(z)))


PROB_MSG = ('{who}: the model outputs look like probabilities (every row >= 0 and summing '
            'to 1, or binary scalar outputs all in [0, 1]): saturated probabilities give zero '
            'gradients and flat scores, and a sigmoid output never changes sign, so attacks '
            'overstate robustness; pass the logits (or log-probabilities; for a binary model '
            'the logit, whose sign is the class) instead')


def messages(who: str, health: dict, n: int | None = None) -> list[str]:
  """Warning lines for one attack's health record (first ``n`` rows are real points);
  none for a record traced inside ``jit`` (nothing can be read there)."""
  if any(isinstance(v, jax.core.Tracer) for v in health.values()):
    return []
  msgs = []
  if 'prob' in health and bool(health['prob']):
    msgs.append(PROB_MSG.format(who=who))
  for key, text in (('zero_grad', 'zero gradients at the start point on {k} of {n} points: '
                     'gradient-based attacks cannot move from there (gradient masking?); the '
                     'robustness they report is only an upper bound'),
                    ('nonfinite', 'non-finite gradients (nan or inf) on {k} of {n} points: those '
                     'entries were treated as 0, and no non-finite point was counted as '
                     'adversarial')):
    if key not in health:
      continue
    flags = np.asarray(health[key])
    flags = flags if n is None else flags[:n]
    k = int(flags.sum())
    if k:
      msgs.append(f'{who}: ' + text.format(k=k, n=flags.size))
  return msgs


def warn(msgs, stacklevel: int = 3) -> None:
  for m in msgs:
    warnings.warn(m, RuntimeWarning, stacklevel=stacklevel)


def merge(a: dict | None, b: dict) -> dict:
  """Health of two runs over the same points: any flag set in either."""
  if a is None:
    return dict(b)
  return {k: (a[k] | b[k]) if k in a else b[k] for k in b}
