"""Power-law exponents from log-log least squares, with intervals over seeds.

A law ``y = C x^beta`` is a line in log-log coordinates; its exponent beta is
the ordinary-least-squares slope of log y on log x. Paper A's scaling claims
(clean encoders' adversarial distance ~ sqrt(k / D): beta = 1/2; purified
encoders' ~ 1: beta = 0) are tested by fitting beta once per seed (every
seed's points share the x values) and taking the Student-t interval of the
per-seed slopes: ``mean +- t_{(1 + confidence) / 2, S - 1} * sd / sqrt(S)``
with ``sd`` the sample standard deviation (ddof 1) over the S seeds. The
interval treats seeds as independent replicates of the whole sweep; it needs
S >= 2.
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc


def _positive_finite(a, name: str) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.size and not (np.all(np.isfinite(a)) and np.all(a > 0)):
    bad = a[~(np.isfinite(a) & (a > 0))].flat[0]
    raise ValueError(f'{name}: must be finite and > 0 (log-log fit), got {bad!r}')
  return a


def log_log_slope(x, y) -> tuple[float, float]:
  """(slope, intercept) of the least-squares line log y = intercept + slope log x.

  Args:
    x, y: (P,) values > 0 and finite; x needs at least 2 distinct values.

  Raises ValueError (one line) on other shapes or values.
  """
  x, y = _positive_finite(x, 'x'), _positive_finite(y, 'y')
  if x.ndim != 1 or y.shape != x.shape:
    raise ValueError(f'x and y: must be (P,) of equal length, got shapes {x.shape}, {y.shape}')
  if np.unique(x).size < 2:
    raise ValueError(f'x: needs at least 2 distinct values for a slope, got {np.unique(x)}')
  lx, ly = np.log(x), np.log(y)
  cx = lx - lx.mean()
  slope = float(np.sum(cx * (ly - ly.mean())) / np.sum(cx * cx))
  return slope, float(ly.mean() - slope * lx.mean())


def _t_cdf(t: float, df: float) -> float:
  """Student t CDF, through the regularised incomplete beta function."""
  tail = 0.5 * float(betainc(jnp.float32(df / 2), jnp.float32(0.5),
                             jnp.float32(df / (df + t * t))))
  return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=256)  # a bisection of jax calls: ~0.1 s; the same (p, df) recur
def t_quantile(p: float, df: float) -> float:
  """The p-quantile of Student's t with ``df`` degrees of freedom (p in (0, 1), df > 0).

  Bisection on the CDF to 1e-6 relative (float32 incomplete beta inside: the
  result is good to about 1e-4). Raises ValueError on p or df out of range.
  """
  if not (isinstance(p, (int, float)) and 0 < p < 1):
    raise ValueError(f'p: must be a probability in (0, 1), got {p!r}')
  if not (isinstance(df, (int, float)) and math.isfinite(df) and df > 0):
    raise ValueError(f'df: must be a finite number > 0, got {df!r}')
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  lo, hi = 0.0, 1.0
  while _t_cdf(hi, df) < p:
    hi *= 2.0
  while hi - lo > 1e-6 * hi:
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
  return 0.5 * (lo + hi)


def exponent_interval(x, y_per_seed, confidence: float = 0.95) -> dict:
  """The exponent of y ~ x^beta: one log-log slope per seed, their mean and t interval.

  Args:
    x: (P,) the points' x values (> 0; at least 2 distinct).
    y_per_seed: (S, P) the measured values (> 0, finite), one row per seed,
      S >= 2.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    {'exponent': mean slope, 'lo', 'hi': the interval, 'per_seed': [S slopes],
     'num_seeds': S, 'num_points': P, 'confidence': confidence}.

  Raises ValueError (one line) on bad shapes or values.
  """
  if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
    raise ValueError(f'confidence: must be in (0, 1), got {confidence!r}')
  y = np.asarray(y_per_seed, np.float64)
  x = np.asarray(x, np.float64)
  if y.ndim != 2 or x.ndim != 1 or y.shape[1] != x.shape[0]:
    raise ValueError(f'y_per_seed: must be (S, P) with P = len(x) = {x.shape[-1] if x.ndim else x}'
                     f', got shape {y.shape}')
  if y.shape[0] < 2:
    raise ValueError(f'y_per_seed: an interval over seeds needs S >= 2 rows, got {y.shape[0]}')
  slopes = np.array([log_log_slope(x, row)[0] for row in y])
  s = slopes.size
  half = float(t_quantile(0.5 + confidence / 2, s - 1) * slopes.std(ddof=1) / math.sqrt(s))
  mean = float(slopes.mean())
  return {'exponent': mean, 'lo': mean - half, 'hi': mean + half,
          'per_seed': slopes.tolist(), 'num_seeds': s, 'num_points': int(x.size),
          'confidence': float(confidence)}


def contains(interval: dict, value: float) -> bool:
  """Whether ``value`` lies in [interval['lo'], interval['hi']]."""
  return bool(interval['lo'] <= value <= interval['hi'])
