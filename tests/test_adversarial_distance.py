"""adversarial_distance (Paper B's metric): protocol, known answers, white-box vs hard-label."""
import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks.exact import affine_min_distance
from robustjax.metrics.robustness import (adversarial_distance, compare_distances,
                                          distance_summary)
from tests import models
from tests.models import affine_logits, random_affine

D, C, N = 10, 4, 40


def _constant(x):
  # Class 0 everywhere: no perturbation can change the label.
  return jnp.zeros((x.shape[0], 3)).at[:, 0].set(1.0) + 0.0 * x[:, :1]


@pytest.fixture(scope='module')
def affine():
  f, w, b, x, pred = random_affine(21, D, C, N)
  pred = np.asarray(pred)
  y = pred.copy()
  y[::5] = (y[::5] + 1) % C          # every fifth point misclassified
  return f, w, b, x, jnp.asarray(y)


@pytest.fixture(scope='module')
def digits_mlp():
  return models.digits_mlp()


def test_protocol_and_known_answer(affine):
  f, w, b, x, y = affine
  out = adversarial_distance(f, x, y, method='fmn', key=jax.random.PRNGKey(0))
  assert set(out) >= {'distances', 'indices', 'queries', 'summary'}
  correct = np.nonzero(np.asarray(jnp.argmax(f(x), -1) == y))[0]
  np.testing.assert_array_equal(out['indices'], correct)
  assert out['queries'] is None
  exact = np.asarray(affine_min_distance(w, b, x[correct], y[correct], 'l2'))
  np.testing.assert_allclose(out['distances'], exact, rtol=0.01)
  s = out['summary']
  assert s['num_points'] == len(correct) and s['num_failed'] == 0
  assert s['mean'] == pytest.approx(np.mean(out['distances']))
  assert s['median'] == pytest.approx(np.median(out['distances']))
  assert s['q25'] <= s['median'] <= s['q75']
  # Paper B: only the first max_points correctly classified points.
  # (batch_size pads the 7 points to the compiled batch of all correct points.)
  first = adversarial_distance(f, x, y, method='ddn', key=jax.random.PRNGKey(0), max_points=7,
                               batch_size=len(correct))
  np.testing.assert_array_equal(first['indices'], correct[:7])
  assert first['method'] == 'fmn'          # 'ddn' runs FMN
  np.testing.assert_allclose(first['distances'], out['distances'][:7], rtol=1e-3)


@pytest.mark.slow
def test_linf_and_bisection(affine):
  f, w, b, x, y = affine
  out = adversarial_distance(f, x, y, method='bisection', key=jax.random.PRNGKey(0),
                             norm='linf', targets=C - 1, pgd_steps=10, search_steps=10)
  idx = out['indices']
  exact = np.asarray(affine_min_distance(w, b, x[idx], y[idx], 'linf'))
  assert np.all(out['distances'] >= exact * (1 - 1e-4))
  assert np.all(out['distances'] <= exact * 1.05)


@pytest.mark.parametrize('method', ['tangent', pytest.param('hopskipjump', marks=pytest.mark.slow)])
def test_binary_scalar_logits_hard_label(method):
  k = jax.random.split(jax.random.PRNGKey(22), 2)
  w = jax.random.normal(k[0], (D,))
  x = jax.random.normal(k[1], (N, D))
  f = jax.tree_util.Partial(affine_logits, w, 0.1)
  y = jnp.where(f(x) > 0, 1, -1).at[:3].multiply(-1)   # three misclassified points
  out = adversarial_distance(f, x, y, method=method, key=jax.random.PRNGKey(0))
  idx = out['indices']
  assert len(idx) == N - 3 and not np.isin([0, 1, 2], idx).any()
  exact = np.asarray(affine_min_distance(w, 0.1, x[idx], y[idx], 'l2'))
  rel = out['distances'] / exact - 1.0
  assert rel.min() >= -1e-4 and rel.max() <= 0.05
  chex.assert_shape(out['queries'], (len(idx),))
  assert np.all(out['queries'] > 1000)


@pytest.mark.parametrize('method', ['fmn', pytest.param('tangent', marks=pytest.mark.slow)])
def test_failures_are_inf_and_counted(method):
  x = jax.random.normal(jax.random.PRNGKey(0), (16, D))
  y = jnp.zeros((16,), jnp.int32)
  # A white-box attack that cannot move says so (hard-label ones see only labels).
  with (pytest.warns(RuntimeWarning, match='zero gradients') if method == 'fmn'
        else contextlib.nullcontext()):
    out = adversarial_distance(_constant, x, y, method=method, key=jax.random.PRNGKey(0),
                               **({'iterations': 2} if method == 'tangent' else {}))
  assert np.all(np.isinf(out['distances']))
  assert out['summary']['num_failed'] == 16 and out['summary']['num_points'] == 16
  assert np.isnan(out['summary']['mean'])


def test_summary_ignores_failures():
  s = distance_summary(np.array([1.0, 2.0, 3.0, np.inf]))
  assert s == dict(mean=2.0, median=2.0, q25=1.5, q75=2.5, num_points=4, num_failed=1)


def test_compare_distances_flags_weak_white_box():
  with pytest.warns(RuntimeWarning, match='weak'):
    r = compare_distances(np.array([2.0, 1.0, 3.0]), np.array([1.0, 1.0, 4.0]))
  assert r['flagged'] and r['share_white_larger'] == pytest.approx(1 / 3)
  np.testing.assert_array_equal(r['positions'], [0])
  assert not compare_distances(np.ones(40), np.ones(40) * 1.1)['flagged']


def test_white_box_not_above_hard_label_on_trained_mlp(digits_mlp):
  f, x, y = digits_mlp
  key = jax.random.PRNGKey(0)
  white = adversarial_distance(f, x, y, method='fmn', key=key)
  hard = adversarial_distance(f, x, y, method='tangent', key=key)
  np.testing.assert_array_equal(white['indices'], hard['indices'])
  assert white['summary']['num_points'] > 40
  assert white['summary']['num_failed'] == 0 and hard['summary']['num_failed'] == 0
  r = compare_distances(white['distances'], hard['distances'])
  assert not r['flagged'], r
  # The hard-label attack (40 iterations, one start) stays within a sane factor.
  assert np.median(hard['distances'] / white['distances']) < 1.5
