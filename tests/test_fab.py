"""FAB against exact answers: box-constrained projections and affine models' distances."""
import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from robustjax.attacks import fab
from robustjax.attacks.exact import affine_min_distance
from robustjax.attacks.fab import hyperplane_projection
from robustjax.attacks.minimal import fmn
from tests.models import affine_logits, digits_mlp, random_affine

D, C, N = 10, 5, 32
STEPS = 20   # FAB lands on an affine model's boundary in one step; 20 leave room.


def _bisection_projection(w, s, lo, hi, norm):
  """The same projection by bisection on the multiplier, in float64 numpy."""
  w = w * (1.0 if s >= 0 else -1.0)
  s = abs(s)
  cap = np.where(w > 0, hi, np.where(w < 0, -lo, 0.0))
  if norm == 'l2':
    point = lambda t: np.clip(t * w, lo, hi)
  else:
    point = lambda t: np.sign(w) * np.minimum(t, cap)
  reach = lambda t: np.sum(w * point(t))
  a, b = 0.0, 1.0
  while reach(b) < s and b < 1e30:
    b *= 2.0
  if reach(b) < s:                        # out of reach: the box corner
    return np.where(w != 0, np.sign(w) * cap, 0.0)
  for _ in range(200):
    m = 0.5 * (a + b)
    a, b = (m, b) if reach(m) < s else (a, m)
  return point(b)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(['l2', 'linf']))
def test_projection_matches_bisection(seed, norm):
  rng = np.random.default_rng(seed)
  m, d = 6, 7
  w = rng.normal(size=(m, d)) * (rng.random((m, d)) > 0.2)       # some w_i = 0
  t = rng.random((m, d))
  lo, hi = -t, 1.0 - t
  free = rng.random((m, d)) < 0.15                                 # some unbounded coordinates
  lo, hi = np.where(free, -np.inf, lo), np.where(free, np.inf, hi)
  s = rng.normal(size=m) * rng.choice([0.05, 1.0, 10.0], size=m)   # 10: often out of reach
  got = np.asarray(hyperplane_projection(*(jnp.asarray(a, jnp.float32) for a in (w, s, lo, hi)),
                                         norm))
  want = np.stack([_bisection_projection(w[i], s[i], lo[i], hi[i], norm) for i in range(m)])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.all(got >= lo - 1e-6) and np.all(got <= hi + 1e-6)


def _check_adversarial(f, x, y, x_adv, dist, norm, eps=None, bounds=None):
  flat = (x_adv - x).reshape(x.shape[0], -1)
  size = jnp.linalg.norm(flat, axis=-1) if norm == 'l2' else jnp.max(jnp.abs(flat), -1)
  finite = np.isfinite(np.asarray(dist))
  chex.assert_trees_all_close(size[finite], dist[finite], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(size)[~finite], 0.0)    # not found: x itself
  assert np.all(np.asarray(jnp.argmax(f(x_adv), -1) != y)[finite])
  if eps is not None:
    assert np.all(np.asarray(dist)[finite] <= eps)
  if bounds is not None:
    assert float(x_adv.min()) >= bounds[0] and float(x_adv.max()) <= bounds[1]


@pytest.mark.parametrize('targets', [None, C - 1])
@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_fab_matches_exact_distance_within_1pct(norm, targets):
  f, w, b, x, y = random_affine(0, D, C, N)
  exact = np.asarray(affine_min_distance(w, b, x, y, norm))
  x_adv, dist = fab(f, x, y, norm=norm, targets=targets, steps=STEPS)
  _check_adversarial(f, x, y, x_adv, dist, norm)
  rel = np.asarray(dist) / exact - 1.0
  assert rel.min() >= -1e-4          # never below the exact minimum
  assert rel.max() <= 0.01


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 10_000))
def test_fab_outputs_are_adversarial_at_the_reported_distance(seed):
  f, w, b, x, y = random_affine(seed, D, C, N)
  x_adv, dist = fab(f, x, y, norm='l2', steps=STEPS)
  _check_adversarial(f, x, y, x_adv, dist, 'l2')
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  assert np.all(np.asarray(dist) <= exact * 1.01)


def _boxed(seed=1, n=N):
  f, w, b, x, _ = random_affine(seed, D, C, n)
  x01 = jax.nn.sigmoid(x)
  return f, w, b, x01, jnp.argmax(f(x01), -1)


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_fab_within_eps_stays_in_ball_and_bounds(norm):
  f, w, b, x, y = _boxed()
  exact = np.asarray(affine_min_distance(w, b, x, y, norm))   # the unbounded minimum
  eps = float(np.median(exact))
  x_adv, dist = fab(f, x, y, norm=norm, targets=C - 1, eps=eps, restarts=2, steps=STEPS,
                    bounds=(0.0, 1.0), key=jax.random.PRNGKey(0))
  _check_adversarial(f, x, y, x_adv, dist, norm, eps=eps, bounds=(0.0, 1.0))
  found = np.isfinite(np.asarray(dist))
  assert np.all(np.asarray(dist)[found] >= exact[found] * (1 - 1e-4))
  assert not np.any(found & (exact > eps))
  # The box only matters where the boundary point leaves it: most points below eps are found.
  assert found.sum() >= 0.8 * np.sum(exact < eps)


def test_fab_result_does_not_depend_on_the_batch():
  f, _, _, x, y = _boxed()
  kw = dict(norm='l2', targets=C - 1, eps=0.5, restarts=2, steps=STEPS, bounds=(0.0, 1.0),
            key=jax.random.PRNGKey(3))
  _, full = fab(f, x, y, **kw)
  # Half the points again, at other positions, among points from elsewhere (a
  # batch of the same shape: one compiled program).
  keep = np.arange(0, N, 2)
  other = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(9), (N - keep.size, D)))
  order = np.random.default_rng(0).permutation(N)
  xs = jnp.concatenate([x[keep], other])[order]
  ys = jnp.argmax(f(xs), -1)
  index = np.concatenate([keep, N + np.arange(other.shape[0])])[order]
  _, part = fab(f, xs, ys, index=jnp.asarray(index), **kw)
  where = np.argsort(order)[:keep.size]          # positions of the kept points in xs
  chex.assert_trees_all_close(part[where], full[keep], rtol=1e-4)


def test_fab_binary_scalar_logits():
  k = jax.random.split(jax.random.PRNGKey(3), 2)
  w = jax.random.normal(k[0], (D,))
  x = jax.random.normal(k[1], (N, D))
  f = jax.tree_util.Partial(affine_logits, w, -0.2)
  y = jnp.where(f(x) > 0, 1, -1)
  exact = affine_min_distance(w, -0.2, x, y, 'linf')
  x_adv, dist = fab(f, x, y, norm='linf', steps=STEPS)
  assert float(jnp.max(jnp.abs(dist / exact - 1.0))) <= 0.01
  assert np.all(np.asarray(jnp.sign(f(x_adv)) != y))


def _nan_beyond(w, b, limit, x):
  z = x @ w + b
  return jnp.where(jnp.max(jnp.abs(x), -1, keepdims=True) > limit, jnp.nan, z)


def test_fab_never_reports_a_nan_point():
  _, w, b, x, y = random_affine(0, D, C, N)
  limit = float(jnp.max(jnp.abs(x))) + 1e-3    # NaN logits as soon as the point moves out
  f = jax.tree_util.Partial(_nan_beyond, w, b, limit)
  exact = np.asarray(affine_min_distance(w, b, x, y, 'linf'))
  x_adv, dist = fab(f, x, y, norm='linf', steps=STEPS)
  assert np.all(np.isfinite(np.asarray(f(x_adv))))
  finite = np.isfinite(np.asarray(dist))
  assert np.all(np.asarray(jnp.argmax(f(x_adv), -1) != y)[finite])
  assert np.all(np.asarray(dist)[finite] >= exact[finite] * (1 - 1e-4))


@pytest.mark.parametrize('kwargs, match', [
    (dict(norm='l1'), 'norm'), (dict(steps=0), 'steps'), (dict(restarts=2), 'key'),
    (dict(targets=0), 'targets'), (dict(eps=-1.0), 'eps'), (dict(eps=jnp.ones(2)), 'eps'),
    (dict(alpha_max=1.5), 'alpha_max'), (dict(refine_steps=1.5), 'refine_steps'),
    (dict(eta=0.5), 'eta'), (dict(beta=0.0), 'beta'), (dict(bounds=(1.0, 0.0)), 'bounds'),
    (dict(final_search_steps=-1), 'final_search_steps'), (dict(index=jnp.arange(3)), 'index')])
def test_fab_refuses_bad_arguments(kwargs, match):
  f, _, _, x, y = random_affine(0, D, C, N)
  with pytest.raises((ValueError, TypeError), match=f'^{match}'):
    fab(f, x, y, **kwargs)


def test_fab_refuses_bad_labels():
  f, _, _, x, y = random_affine(0, D, C, N)
  with pytest.raises(ValueError, match=r'^y: class labels must be integers in \[0, '):
    fab(f, x, y.at[0].set(C))
  with pytest.raises(TypeError, match='^x: dtype int32 is not floating'):
    fab(f, x.astype(jnp.int32), y)


@pytest.mark.slow
def test_fab_t_no_worse_than_fmn_on_digits_mlp():
  """Rule: on every point FAB-T (9 targets) finds a point no farther than 1.05x
  FMN's (9 targets), wherever FMN finds one, and the median ratio is <= 1.01.
  Equivalently FAB-T breaks, within eps, every point FMN breaks within eps / 1.05."""
  f, x, y = digits_mlp()
  for norm in ('l2', 'linf'):
    _, d_fab = fab(f, x, y, norm=norm, targets=9, bounds=(0.0, 1.0))
    _, d_fmn = fmn(f, x, y, norm=norm, targets=9, bounds=(0.0, 1.0))
    d_fab, d_fmn = np.asarray(d_fab), np.asarray(d_fmn)
    hit = np.isfinite(d_fmn) & (d_fmn > 0)
    assert np.all(np.isfinite(d_fab[hit]))
    ratio = d_fab[hit] / d_fmn[hit]
    assert ratio.max() <= 1.05, (norm, ratio.max())
    assert np.median(ratio) <= 1.01, (norm, np.median(ratio))
