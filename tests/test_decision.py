"""Hard-label attacks: known answers on affine models, query counts, label-only access."""
import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from robustjax.attacks import decision
from robustjax.attacks.decision import decision_attack, tangent_point
from robustjax.attacks.exact import affine_min_distance
from tests.models import affine_logits, random_affine

D, C, N = 10, 4, 24


def _label_only(w, b, x):
  # A model that exposes nothing but its label (one-hot of the argmax):
  # a hard-label attack must behave exactly as on the full logits.
  z = x @ w + b
  return jax.nn.one_hot(jnp.argmax(z, -1), z.shape[-1])


@pytest.fixture(scope='module')
def binary():
  k = jax.random.split(jax.random.PRNGKey(11), 2)
  w = jax.random.normal(k[0], (D,))
  x = jax.random.normal(k[1], (N, D))
  f = jax.tree_util.Partial(affine_logits, w, 0.2)
  y = jnp.where(f(x) > 0, 1, -1)
  return f, w, 0.2, x, y


@pytest.fixture(scope='module')
def multiclass():
  return random_affine(12, D, C, N)


_tangent_point = jax.jit(tangent_point)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 100_000), st.floats(0.05, 0.95))
def test_tangent_point_geometry(seed, rel_radius):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(k[0], (1, 6))
  x_b = jax.random.normal(k[1], (1, 6))
  v = jax.random.normal(k[2], (1, 6))
  v = v / jnp.linalg.norm(v)
  # Orient the normal away from x, as at a boundary point seen from the clean side.
  v = jnp.where(jnp.sum((x_b - x) * v) < 0, -v, v)
  r = rel_radius * jnp.linalg.norm(x - x_b, axis=-1)
  kpt = _tangent_point(x, x_b, v, r)
  rel = kpt - x_b
  chex.assert_trees_all_close(jnp.linalg.norm(rel, axis=-1), r, rtol=1e-4)
  assert float(jnp.sum(rel * v)) >= -1e-5          # on the hemisphere
  tangent = jnp.abs(jnp.sum((kpt - x) * rel)) <= 1e-4 * float(r[0]) * jnp.linalg.norm(kpt - x)
  on_base = jnp.abs(jnp.sum(rel * v)) <= 1e-4 * float(r[0])
  assert bool(tangent | on_base)                   # tangent point, or the base circle
  # Nothing on the hemisphere is closer in angle to x's view: the tangent point
  # makes the largest angle with x_b - x among hemisphere points we sample.
  samples = jax.random.normal(jax.random.fold_in(k[0], 1), (256, 6))
  samples = samples / jnp.linalg.norm(samples, axis=-1, keepdims=True)
  samples = jnp.where((samples @ v[0] < 0)[:, None], samples - 2 * (samples @ v[0])[:, None] * v,
                      samples)
  pts = x_b + r[0] * samples
  cos = lambda p: jnp.sum((p - x) * (x_b - x), -1) / (
      jnp.linalg.norm(p - x, axis=-1) * jnp.linalg.norm(x_b - x))
  assert float(cos(kpt)[0]) <= float(jnp.min(cos(pts))) + 1e-4


@pytest.mark.parametrize('method', ['hopskipjump', 'tangent'])
def test_binary_affine_within_5pct_default_budget(binary, method):
  f, w, b, x, y = binary
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  x_adv, dist, q = decision_attack(f, x, y, method=method, key=jax.random.PRNGKey(0))
  rel = np.asarray(dist) / exact - 1.0
  assert rel.min() >= -1e-4 and rel.max() <= 0.05
  assert np.all(np.asarray(jnp.sign(f(x_adv))) != np.asarray(y))
  assert np.all(np.asarray(q) > 0)


def _expected_queries(d, iterations=40, init_evals=100, max_evals=10_000, chunk=100):
  """Fixed part of the count: clean label, bisections, Monte-Carlo probes."""
  bisect = math.ceil(math.log2(1.0 / min(1.0 / (d * math.sqrt(d)), 1e-3)))
  probes = sum(math.ceil(int(min(init_evals * math.sqrt(t + 1.0), max_evals)) / chunk) * chunk
               for t in range(iterations))
  return 1 + bisect * (iterations + 1) + probes + 1   # + the final settling query


def test_query_counts(binary):
  f, _, _, x, y = binary
  _, _, q = decision_attack(f, x, y, method='tangent', key=jax.random.PRNGKey(0))
  base = _expected_queries(D)
  q = np.asarray(q)
  # Plus one query per step-size try: at least one, at most 20 per iteration.
  assert np.all(q >= base + 40) and np.all(q <= base + 40 * 20)


@pytest.mark.parametrize('method', [pytest.param('hopskipjump', marks=pytest.mark.slow),
                                    'tangent'])
def test_multiclass_affine_within_5pct_with_per_class_starts(multiclass, method):
  f, w, b, x, y = multiclass
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  _, dist, q = decision_attack(f, x, y, method=method, key=jax.random.PRNGKey(0),
                               starts='per_class')
  rel = np.asarray(dist) / exact - 1.0
  assert rel.min() >= -1e-4 and rel.max() <= 0.05
  # One run per other class that has a start point: queries add up.
  assert np.all(np.asarray(q) > _expected_queries(D))


def test_single_start_is_an_upper_bound(multiclass):
  f, w, b, x, y = multiclass
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  x_adv, dist, _ = decision_attack(f, x, y, method='tangent', key=jax.random.PRNGKey(0))
  assert np.all(np.asarray(dist) >= exact * (1 - 1e-4))
  assert np.all(np.asarray(jnp.argmax(f(x_adv), -1) != y))
  # Local descent along the boundary: most points still reach the nearest facet.
  assert np.mean(np.asarray(dist) <= exact * 1.05) >= 0.6


def test_uses_labels_only(multiclass):
  f, w, b, x, y = multiclass
  g = jax.tree_util.Partial(_label_only, w, b)
  key = jax.random.PRNGKey(4)
  _, d1, q1 = decision_attack(f, x, y, method='tangent', key=key)
  _, d2, q2 = decision_attack(g, x, y, method='tangent', key=key)
  chex.assert_trees_all_close(d1, d2, rtol=1e-6)
  np.testing.assert_array_equal(q1, q2)


def test_noise_start_when_batch_has_one_class(binary):
  f, w, _, x, _ = binary
  # A bias that puts every point in class +1: no batch neighbour to start from.
  # (Same Partial structure as the fixture: the compiled attack is reused.)
  g = jax.tree_util.Partial(affine_logits, w, 3.0 * float(jnp.abs(x @ w).max()))
  y = jnp.where(g(x) > 0, 1, -1)
  assert np.all(np.asarray(y) == 1)
  exact = np.asarray(affine_min_distance(w, 3.0 * float(jnp.abs(x @ w).max()), x, y, 'l2'))
  _, dist, _ = decision_attack(g, x, y, method='tangent', key=jax.random.PRNGKey(1))
  assert np.all(np.isfinite(np.asarray(dist)))
  assert np.all(np.asarray(dist) >= exact * (1 - 1e-4))
  assert np.max(np.asarray(dist) / exact) <= 1.05


def test_gaussian_start_stays_in_bounds_and_is_misclassified(multiclass):
  # The authors' start: x + N(0, std^2) clamped to the bounds, redrawn until the
  # label changes. Inputs inside a box that cuts through the affine model's regions.
  f, w, b, x, _ = multiclass
  lo, hi = -1.0, 1.0
  x = jnp.clip(x, lo, hi)
  y = jnp.argmax(f(x), -1)
  oracle = lambda p: jnp.argmax(f(p), -1) != y
  q0 = jnp.ones((x.shape[0],), jnp.int32)
  none = jnp.zeros((x.shape[0],), bool)
  start, have, q = jax.jit(lambda k: decision._gaussian_starts(
      oracle, x, x, none, q0, k, (lo, hi), 1.0, 500))(jax.random.PRNGKey(3))
  start, have, q = np.asarray(start), np.asarray(have), np.asarray(q)
  assert have.all()
  assert start.min() >= lo and start.max() <= hi
  assert np.all(np.asarray(jnp.argmax(f(jnp.asarray(start)), -1)) != np.asarray(y))
  assert np.all(q >= 2) and np.any(q > 2)     # >= one draw each; some needed redraws
  # Through the attack: with no boundary steps the result is the start's boundary point.
  x_adv, dist, _ = decision_attack(f, x, y, method='tangent', key=jax.random.PRNGKey(3),
                                   iterations=0, starts='gaussian', start_std=1.0,
                                   bounds=(lo, hi))
  x_adv = np.asarray(x_adv)
  assert x_adv.min() >= lo and x_adv.max() <= hi
  assert np.all(np.asarray(jnp.argmax(f(jnp.asarray(x_adv)), -1)) != np.asarray(y))
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  assert np.all(np.asarray(dist) >= exact * (1 - 1e-4))


def test_gaussian_start_falls_back_to_the_nearest_point(multiclass):
  # Draws too small to change any label: after the retry budget every point
  # starts from the nearest differently labelled batch point, as 'nearest' does
  # (same key for the rest of the attack), having spent one query per draw.
  f, _, _, x, y = multiclass
  kw = dict(method='tangent', key=jax.random.PRNGKey(5), iterations=1, init_evals=20, chunk=20)
  _, d_near, q_near = decision_attack(f, x, y, starts='nearest', **kw)
  _, d_g, q_g = decision_attack(f, x, y, starts='gaussian', start_std=1e-6, start_tries=3, **kw)
  chex.assert_trees_all_close(d_g, d_near)
  np.testing.assert_array_equal(np.asarray(q_g), np.asarray(q_near) + 3)


@pytest.mark.parametrize('kw,match', [(dict(starts='random'), 'starts'),
                                      (dict(starts='gaussian', start_std=0.0), 'start_std'),
                                      (dict(starts='gaussian', start_tries=0), 'start_tries')])
def test_bad_start_arguments_refused(multiclass, kw, match):
  f, _, _, x, y = multiclass
  with pytest.raises(ValueError, match=match):
    decision_attack(f, x, y, key=jax.random.PRNGKey(0), **kw)
