"""Power-law exponents and their intervals over seeds (robustjax.analysis.power_law)."""
import math

import chex
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.analysis import power_law as pl

K = np.array([2.0, 4.0, 8.0, 16.0])


@pytest.mark.parametrize('df,expected', [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281),
                                         (30, 2.0423)])
def test_t_quantile_known_values(df, expected):
  # Tables of Student's t (two-sided 95%).
  assert abs(pl.t_quantile(0.975, df) - expected) < 2e-3
  assert abs(pl.t_quantile(0.025, df) + expected) < 2e-3


def test_t_quantile_df2_closed_form():
  # df = 2: t_p = (2p - 1) / sqrt(2 p (1 - p)).
  for p in (0.6, 0.9, 0.99):
    assert abs(pl.t_quantile(p, 2) - (2 * p - 1) / math.sqrt(2 * p * (1 - p))) < 1e-3


@settings(max_examples=30, deadline=None)
@given(beta=st.floats(-2, 2), log_c=st.floats(-3, 3))
def test_noise_free_power_law_gives_its_exponent(beta, log_c):
  x = np.concatenate([K / 32, K / 128])
  y = math.exp(log_c) * x ** beta
  slope, intercept = pl.log_log_slope(x, y)
  chex.assert_trees_all_close((slope, intercept), (beta, log_c), atol=1e-9)
  iv = pl.exponent_interval(x, np.stack([y, y, y]))
  chex.assert_trees_all_close((iv['exponent'], iv['lo'], iv['hi']), (beta,) * 3, atol=1e-9)


def test_interval_of_seeds_with_known_slopes():
  # Seeds whose own exponents are 0.55, 0.5, 0.45 exactly: mean 0.5, sd 0.05,
  # half-width t_{0.975, 2} * 0.05 / sqrt(3) = 0.1242.
  x = np.concatenate([K / 32, K / 128])
  y = np.stack([0.7 * x ** b for b in (0.55, 0.5, 0.45)])
  iv = pl.exponent_interval(x, y)
  chex.assert_trees_all_close((iv['exponent'], iv['lo'], iv['hi']), (0.5, 0.3758, 0.6242),
                              atol=2e-4)
  assert pl.contains(iv, 0.5) and pl.contains(iv, 0.6) and not pl.contains(iv, 0.7)


def test_interval_is_mean_plus_minus_t_times_standard_error():
  rng = np.random.default_rng(0)
  y = np.exp(0.5 * np.log(K)[None] + 0.2 * rng.standard_normal((3, 4)))
  iv = pl.exponent_interval(K, y)
  slopes = np.array([np.polyfit(np.log(K), np.log(row), 1)[0] for row in y])
  chex.assert_trees_all_close(np.array(iv['per_seed']), slopes, atol=1e-10)
  half = 4.3027 * slopes.std(ddof=1) / math.sqrt(3)
  chex.assert_trees_all_close((iv['lo'], iv['hi']), (slopes.mean() - half, slopes.mean() + half),
                              atol=1e-3)
  assert iv['num_seeds'] == 3 and iv['num_points'] == 4 and iv['confidence'] == 0.95


def test_interval_covers_the_known_exponent_at_its_nominal_rate():
  # 3 seeds of a noisy sqrt law (log-normal noise, sd 0.3): the 95% interval
  # contains 1/2 in about 95% of 2000 replicates (binomial sd 0.5%), and it
  # excludes a wrong exponent (0) nearly always.
  rng = np.random.default_rng(1)
  x = np.concatenate([K / 32, K / 64, K / 128])
  covered = excludes_zero = 0
  n = 2000
  for _ in range(n):
    y = np.exp(np.log(0.7 * x ** 0.5)[None] + 0.3 * rng.standard_normal((3, x.size)))
    iv = pl.exponent_interval(x, y)
    covered += pl.contains(iv, 0.5)
    excludes_zero += not pl.contains(iv, 0.0)
  assert 0.93 <= covered / n <= 0.97, covered / n
  assert excludes_zero / n > 0.95


@pytest.mark.parametrize('call,match', [
    (lambda: pl.log_log_slope([1.0, 2.0], [1.0, 0.0]), '^y: must be finite and > 0'),
    (lambda: pl.log_log_slope([1.0, -2.0], [1.0, 1.0]), '^x: must be finite and > 0'),
    (lambda: pl.log_log_slope([2.0, 2.0], [1.0, 3.0]), '^x: needs at least 2 distinct'),
    (lambda: pl.log_log_slope([1.0, 2.0, 3.0], [1.0, 3.0]), '^x and y: must be'),
    (lambda: pl.exponent_interval(K, np.ones((1, 4))), '^y_per_seed: an interval over seeds'),
    (lambda: pl.exponent_interval(K, np.ones((3, 3))), '^y_per_seed: must be'),
    (lambda: pl.exponent_interval(K, np.ones((3, 4)), confidence=1.0), '^confidence'),
    (lambda: pl.t_quantile(1.0, 2), '^p: must be'),
    (lambda: pl.t_quantile(0.9, 0), '^df: must be'),
])
def test_bad_input_is_refused_in_one_line(call, match):
  with pytest.raises(ValueError, match=match):
    call()
