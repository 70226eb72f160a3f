"""The l2 Square attack (Andriushchenko et al. 2020, Section 3.2): its window
pattern, the mass-moving step, and the contracts (ball, bounds, per-example
keys) against exact answers on affine models."""
import importlib

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from robustjax.attacks.exact import affine_min_distance
from robustjax.attacks.square import square
from tests.models import random_affine

# The module itself (the package exports the function under the same name).
sq = importlib.import_module('robustjax.attacks.square')
SUMS = sq._inv_square_sums(16)
QUERIES = 40
# A box holding every test point with its ball: inactive, so box-free exact
# distances stay the known answer, and every attack below shares one compile.
WIDE = (-10.0, 10.0)


def _flat_input(g, z):
  return g(z.reshape(z.shape[0], -1))


_eta = jax.jit(sq._eta)  # sizes traced, as in the attack: one compile per grid shape


def _pattern(sh, sw):
  a, b = np.meshgrid(np.arange(sh), np.arange(sw), indexing='ij')
  return np.asarray(_eta(a, b, sh, sw, SUMS))


def test_eta_3x3_is_the_published_pattern():
  """Rectangle k around a half's centre weighs 1/(k+1)^2: the 1 x 3 top half
  is (1/4, 1 + 1/4, 1/4), the 2 x 3 bottom half has 1 + 1/4 at its centre
  (1, 1) and 1/4 around it; each half of unit norm, the window too."""
  top = np.array([[0.25, 1.25, 0.25]])
  bottom = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
  want = np.concatenate([top / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)])
  np.testing.assert_allclose(_pattern(3, 3), want / np.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize('sh,sw', [(5, 5), (7, 7), (4, 4), (9, 1), (2, 1)])
def test_eta_unit_norm_plus_then_minus_and_zero_outside(sh, sw):
  e = _pattern(sh, sw)
  np.testing.assert_allclose(np.linalg.norm(e), 1.0, rtol=1e-6)
  assert np.all(e[:sh // 2] > 0) and np.all(e[sh // 2:] < 0)
  np.testing.assert_allclose(np.sum(e[:sh // 2] ** 2), 0.5, rtol=1e-6)
  if sw % 2:  # centred on column sw // 2: left-right symmetric when sw is odd
    np.testing.assert_allclose(e, e[:, ::-1], rtol=1e-6)
  # Cells outside the window (offsets beyond it) are 0, inside the same values.
  a, b = np.meshgrid(np.arange(-2, sh + 2), np.arange(-2, sw + 2), indexing='ij')
  big = np.asarray(_eta(a, b, sh, sw, SUMS))
  np.testing.assert_allclose(big[2:-2, 2:-2], e, rtol=1e-6)
  assert np.count_nonzero(big) == sh * sw


_proposal = jax.jit(sq._l2_proposal)


def _box(cells):
  r, c = np.nonzero(cells)
  return (r.max() - r.min() + 1, c.max() - c.min() + 1) if r.size else (0, 0)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.01, 0.8), st.floats(0.5, 1.0))
def test_l2_step_moves_mass_between_two_windows_on_the_sphere(seed, p, fill):
  """One step on a perturbation of norm fill * e: the result has norm e
  exactly (the unused budget is spent), equals the old one outside two
  s x s windows, puts new mass in one (W1) and empties the other's rest (W2)."""
  h, w, c, e = 12, 12, 3, 2.0
  d = jax.random.normal(jax.random.PRNGKey(seed), (h, w, c))
  d = d * fill * e / jnp.linalg.norm(d)
  cand = np.asarray(_proposal(jax.random.PRNGKey(seed + 1), d, e, p, SUMS))
  d = np.asarray(d)
  np.testing.assert_allclose(np.linalg.norm(cand), e, rtol=1e-5)
  s = int(sq._l2_side(p, h, w)[0])
  assert s >= 3 and s % 2 == 1
  # (The final rescaling to norm e moves every cell by rounding error only.)
  changed = ~np.all(np.isclose(cand, d, rtol=1e-4, atol=1e-6), axis=-1)
  emptied = np.all(cand == 0, axis=-1)
  moved = changed & ~emptied
  assert max(_box(moved)) <= s and max(_box(emptied)) <= s
  assert changed.sum() <= 2 * s * s


@pytest.fixture(scope='module')
def affine():
  return random_affine(0, 16, 4, 48)


def test_l2_square_on_an_affine_model_is_sound_and_breaks_the_easy_points(affine):
  """Known answer: the exact l2 distance of each point. Square never reports
  a point broken that is not (robust accuracy >= the exact one), and within
  40 queries breaks every point whose distance is under half the radius."""
  f, w, b, x, y = affine
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  eps = float(np.median(exact))
  assert float(jnp.abs(x).max()) + eps < WIDE[1]
  x_adv, robust, queries = square(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0),
                                  n_queries=QUERIES, bounds=WIDE)
  robust = np.asarray(robust)
  assert robust.mean() >= (exact > eps).mean()
  assert not np.any(robust[exact < eps / 2])
  assert np.all(robust[exact > eps])
  assert float(jnp.linalg.norm(x_adv - x, axis=-1).max()) <= eps * (1 + 1e-5)
  wrong = np.asarray(jnp.argmax(f(x_adv), -1) != y)
  np.testing.assert_array_equal(wrong, ~robust)
  # Points broken early stop paying queries.
  assert int(queries.max()) <= QUERIES and float(np.mean(np.asarray(queries)[~robust])) < 20


@pytest.mark.parametrize('layout', ['flat', 'image'])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 3.0))
def test_l2_square_stays_in_ball_and_box(affine, layout, seed, eps):
  """Any radius, inputs in [0, 1] (flat (n, 16) or images (n, 4, 4, 1)): the
  points stay in the ball and the box, broken points are misclassified, and
  the robust accuracy is never below the exact box-free one (a box only
  weakens the attacker)."""
  f, w, b, _, _ = affine
  x = jax.random.uniform(jax.random.PRNGKey(seed), (48, 16))
  y = jnp.argmax(f(x), -1)
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  g, xl = f, x
  if layout == 'image':
    g = jax.tree_util.Partial(_flat_input, f)
    xl = x.reshape(48, 4, 4, 1)
  x_adv, robust, queries = square(g, xl, y, eps=eps, norm='l2',
                                  key=jax.random.PRNGKey(seed + 1), n_queries=QUERIES,
                                  bounds=(0.0, 1.0))
  assert x_adv.shape == xl.shape
  dist = np.asarray(jnp.linalg.norm((x_adv - xl).reshape(48, -1), axis=-1))
  assert dist.max() <= eps * (1 + 1e-5)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  robust = np.asarray(robust)
  np.testing.assert_array_equal(np.asarray(jnp.argmax(g(x_adv), -1) != y), ~robust)
  assert robust.mean() >= (exact > eps).mean()
  assert int(queries.min()) >= 1 and int(queries.max()) <= QUERIES


def test_l2_results_do_not_depend_on_the_batch(affine):
  f, _, _, x, y = affine
  key = jax.random.PRNGKey(5)
  kw = dict(eps=1.0, norm='l2', key=key, n_queries=QUERIES, bounds=WIDE)
  xa, rob, q = square(f, x, y, **kw)
  perm = np.random.default_rng(0).permutation(x.shape[0])
  xp, rp, qp = square(f, x[perm], y[perm], index=perm, **kw)
  np.testing.assert_array_equal(np.asarray(rob)[perm], np.asarray(rp))
  np.testing.assert_array_equal(np.asarray(q)[perm], np.asarray(qp))
  np.testing.assert_allclose(np.asarray(xa)[perm], np.asarray(xp), atol=1e-6)


def test_simple_l2_update_is_kept_and_the_choice_checked(affine):
  """'simple' (the earlier update) stays available, sound and in the ball."""
  f, w, b, x, y = affine
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  eps = float(np.median(exact))
  x_adv, robust, _ = square(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0),
                            n_queries=QUERIES, bounds=WIDE, l2_update='simple')
  assert float(jnp.linalg.norm(x_adv - x, axis=-1).max()) <= eps * (1 + 1e-5)
  np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1) != y), ~np.asarray(robust))
  assert np.asarray(robust).mean() >= (exact > eps).mean()
  with pytest.raises(ValueError, match="^l2_update: must be one of \\('published', 'simple'\\)"):
    square(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0), l2_update='paper')
