"""Evaluations that cannot mislead: probability outputs and zero gradients are
flagged, non-finite points never count as adversarial, one binary convention,
and robust_accuracy takes one radius or several. Known answers from
``attacks/exact.py`` and closed forms."""
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import losses
from robustjax.attacks import (apgd, bisection, evaluate_robust_accuracy, fmn, health,
                               hopskipjump, square, tangent_attack)
from robustjax.attacks.apgd import target_classes
from robustjax.attacks.exact import affine_min_distance
from robustjax.metrics import robustness
from tests.models import affine_logits, random_affine

K = jax.random.PRNGKey(0)


def _between(distances, k):
  """A radius halfway between the k-th and (k+1)-th smallest exact distances:
  exactly k points are broken, and none sits on the boundary."""
  d = np.sort(np.asarray(distances))
  return float(0.5 * (d[k - 1] + d[k]))


def _record(fn, *args, **kwargs):
  with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter('always')
    out = fn(*args, **kwargs)
  return out, [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]


# --- Item 4: probabilities instead of logits ---------------------------------

def _logits_or_probs(as_probs, w, b, x):
  """The affine logits, or the issue's softmax(1000 * logits) when ``as_probs``:
  one function with an array switch, so both share one compiled attack."""
  z = x @ w + b
  return jnp.where(as_probs, jax.nn.softmax(1000.0 * z), z)


@pytest.fixture(scope='module')
def three_class():
  """A 3-class affine model, 64 points (one padding bucket: the ensemble's and
  the direct attack's programs are shared) and the radius with exact robust
  accuracy 0.5."""
  f, w, b, x, y = random_affine(3, 4, 3, 64)
  return f, w, b, x, y, _between(affine_min_distance(w, b, x, y, 'l2'), 32)


def test_looks_like_probabilities():
  z = jax.random.normal(K, (6, 4))
  assert bool(health.looks_like_probabilities(jax.nn.softmax(z)))
  assert not bool(health.looks_like_probabilities(z))
  assert not bool(health.looks_like_probabilities(jax.nn.log_softmax(z)))
  assert not bool(health.looks_like_probabilities(jax.nn.softmax(z)[:, 0]))  # scalar outputs
  # A binary model's scalar outputs, lifted to [0, f] as the attacks see them:
  # a sigmoid's are probabilities, the logits (either sign) are not.
  lift = lambda f: np.stack([np.zeros_like(f), f], -1)
  f = np.asarray(z[:, 0])
  assert bool(health.looks_like_probabilities(lift(1 / (1 + np.exp(-f)))))
  assert not bool(health.looks_like_probabilities(lift(f)))
  assert not bool(health.looks_like_probabilities(lift(np.abs(f) + 1.5)))


def test_binary_sigmoid_outputs_warned_and_the_logit_gives_the_exact_answer():
  # sigmoid(w.x + b) never changes sign, so under the binary convention (the
  # sign is the class) every point is "class +1" and no attack can flip it:
  # robust accuracy = the share of +1 labels, a plausible wrong number. The
  # ensemble says so; with the logit it gives the exact answer.
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=4).astype(np.float32), np.float32(0.1)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  logit = lambda a: a @ w + b
  y = np.where(logit(x) > 0, 1, -1)
  dist = np.abs(logit(x)) / np.linalg.norm(w)
  eps = float(np.median(dist))
  kw = dict(eps=eps, norm='l2', key=K, attacks=('apgd-ce',), n_iter=10)
  r, warned = _record(evaluate_robust_accuracy, lambda a: jax.nn.sigmoid(logit(a)), x, y, **kw)
  assert r['robust_accuracy'] == r['clean_accuracy'] == float(np.mean(y == 1))
  assert any('look like probabilities' in m and 'binary scalar outputs' in m for m in warned)
  r = evaluate_robust_accuracy(logit, x, y, **kw)
  assert r['robust_accuracy'] == float(np.mean(dist > eps)) and r['warnings'] == []


def test_probability_outputs_warned_and_logits_give_exact_answer(three_class):
  _, w, b, x, y, eps = three_class
  exact = float(np.mean(np.asarray(affine_min_distance(w, b, x, y, 'l2')) > eps))
  assert exact == 0.5
  kw = dict(eps=eps, norm='l2', key=K, attacks=('apgd-t',), n_iter=10, n_target_classes=2)
  probs = jax.tree_util.Partial(_logits_or_probs, jnp.array(True), w, b)
  logits = jax.tree_util.Partial(_logits_or_probs, jnp.array(False), w, b)
  r, warned = _record(evaluate_robust_accuracy, probs, x, y, **kw)
  assert any('look like probabilities' in m and 'pass the logits' in m for m in r['warnings'])
  # The white-box masking check: the targeted attack sees zero gradients almost everywhere.
  zero = [m for m in r['warnings'] if "white-box 'apgd-t' found a zero gradient" in m]
  assert len(zero) == 1 and r['warnings'] == warned
  assert r['robust_accuracy'] > exact   # what the warning is about
  r = evaluate_robust_accuracy(logits, x, y, **kw)
  assert r['robust_accuracy'] == exact and r['warnings'] == []
  # The attacks and metrics called directly say it too.
  _, warned = _record(apgd, probs, x, y, eps=eps, norm='l2', key=K, loss='dlr-t', n_iter=10,
                      target=target_classes(probs, x, 2))
  assert any(m.startswith('apgd (margin-t): the model outputs look like probabilities')
             for m in warned)
  assert any(m.startswith('apgd (margin-t): zero gradients at the start point') for m in warned)
  _, warned = _record(robustness.robust_accuracy, probs, x, y, eps=eps, norm='l2', steps=2,
                      rel_step_size=0.25, restarts=1, key=K)
  assert any(m.startswith('robust_accuracy: the model outputs look like') for m in warned)


# --- Item 5: non-finite gradients and non-finite points ------------------------

def _sqrt_feature(x):
  """Class 0 everywhere near x >= 0: logits [f, 0], f = 1 + sum sqrt(x_i)_+ + 0.1 sum x.

  Finite outputs, nan input gradient at x_i = 0 (0 * inf from the where). For
  clean x >= 0 and a linf radius eps, f >= 1 - 0.1 d eps > 0 on the whole
  ball: exact robust accuracy 1.0 for d eps < 10.
  """
  feat = jnp.where(x > 0, jnp.sqrt(x), 0.0)
  f = 1.0 + feat.sum(-1) + 0.1 * x.sum(-1)
  return jnp.stack([f, jnp.zeros_like(f)], -1)


X_SQRT = jnp.maximum(jax.random.normal(jax.random.PRNGKey(4), (8, 4)), 0.0)
ZERO_ROWS = int(np.sum(np.any(np.asarray(X_SQRT) == 0, axis=-1)))


def test_nan_gradients_never_break_robust_points():
  y = jnp.zeros((8,), jnp.int32)
  assert ZERO_ROWS > 0
  (x_adv, robust, _, _), warned = _record(apgd, _sqrt_feature, X_SQRT, y, eps=0.5, norm='linf',
                                          key=K, n_iter=5)
  assert bool(jnp.all(robust))                       # exact robust accuracy 1.0
  assert bool(jnp.all(jnp.isfinite(x_adv)))
  assert float(jnp.max(jnp.abs(x_adv - X_SQRT))) <= 0.5 * (1 + 1e-6)
  # (Iterates leave x, so the count is of points whose gradient was ever non-finite.)
  assert any(re.match(r'apgd \(ce\): non-finite gradients \(nan or inf\) on [1-8] of 8 points',
                      m) for m in warned)
  acc, warned = _record(robustness.robust_accuracy, _sqrt_feature, X_SQRT, y, eps=0.5,
                        norm='linf', steps=3, rel_step_size=0.25, restarts=1, key=K)
  assert float(acc) == 1.0
  assert any(re.match(r'pgd: non-finite gradients \(nan or inf\) on [1-8] of 8 points', m)
             for m in warned)


def _nan_region(x):
  """Class 0 (logits [2 - x_0, 0]) for x_0 < 1; logits [0, nan] beyond.

  No finite point is ever misclassified, so the exact robust accuracy is 1.0
  at every radius and every minimal distance is inf; a nan logit read as "not
  class 0" (argmax picks the nan, margin comparisons are false) would break
  points. The gradient pushes x_0 up, into the nan region.
  """
  ok = x[:, :1] < 1.0
  z = jnp.concatenate([2.0 - x[:, :1], jnp.zeros_like(x[:, :1])], -1) + 0.0 * x[:, 1:2]
  return jnp.where(ok, z, jnp.stack([jnp.zeros_like(x[:, 0]), jnp.full_like(x[:, 0], jnp.nan)],
                                    -1))


X_NAN = jnp.concatenate([jax.random.uniform(jax.random.PRNGKey(5), (8, 1), minval=0.7,
                                            maxval=0.95),
                         jax.random.normal(jax.random.PRNGKey(6), (8, 1))], -1)
Y_NAN = jnp.zeros((8,), jnp.int32)


@pytest.mark.parametrize('attack', [
    'apgd', 'square', 'tangent',
    # (The same guard on the same kind of attack, or already right before.)
    pytest.param('fmn', marks=pytest.mark.slow),
    pytest.param('ensemble', marks=pytest.mark.slow),
    pytest.param('bisection', marks=pytest.mark.slow),
    pytest.param('hopskipjump', marks=pytest.mark.slow)])
def test_non_finite_points_never_count_as_adversarial(attack):
  if attack == 'apgd':
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)  # (starts in the nan region: no gradient)
      x_adv, robust, _, _ = apgd(_nan_region, X_NAN, Y_NAN, eps=0.5, norm='l2', key=K,
                                 n_iter=3)
  elif attack == 'square':
    x_adv, robust, _ = square(_nan_region, X_NAN, Y_NAN, eps=0.5, norm='linf', key=K,
                              n_queries=20)
  elif attack == 'ensemble':
    r = evaluate_robust_accuracy(_nan_region, X_NAN, Y_NAN, eps=0.5, norm='l2', key=K,
                                 attacks=('apgd-ce', 'square'), n_iter=3, square_queries=20,
                                 warn=False)
    x_adv, robust = r['x_adv'], r['robust']
  else:
    fn = {'fmn': fmn, 'bisection': bisection, 'tangent': tangent_attack,
          'hopskipjump': hopskipjump}[attack]
    kw = {'fmn': dict(steps=5), 'bisection': dict(key=K, pgd_steps=2, search_steps=2),
          'tangent': dict(key=K, iterations=2), 'hopskipjump': dict(key=K, iterations=2)}[attack]
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)
      out = fn(_nan_region, X_NAN, Y_NAN, **kw)
    x_adv, robust = out[0], np.isinf(np.asarray(out[1]))
  np.testing.assert_array_equal(np.asarray(robust), True)
  assert np.all(np.isfinite(np.asarray(x_adv)))


# --- Item 6: one binary convention; issue 13: one radius or several -----------

@pytest.fixture(scope='module')
def binary():
  """Binary affine model, labels in {-1, +1} from the boundary x w = 0.3."""
  w = jnp.array([1.0, -0.5, 2.0])
  x = jax.random.normal(jax.random.PRNGKey(7), (64, 3))
  f = jax.tree_util.Partial(affine_logits, w, -0.3)
  return f, w, x, jnp.where(f(x) > 0, 1, -1)


def test_binary_convention_agrees_across_metrics(binary):
  f, w, x, y = binary
  exact = np.asarray(affine_min_distance(w, -0.3, x, y, 'l2'))
  eps = _between(exact, 17)  # (PGD's few steps need a gap between the distances)
  assert float(robustness.accuracy(f(x), y)) == 1.0
  ra = float(robustness.robust_accuracy(f, x, y, eps=eps, norm='l2', steps=5, rel_step_size=0.5,
                                        restarts=1, key=K))
  ens = evaluate_robust_accuracy(f, x, y, eps=eps, norm='l2', key=K, attacks=('apgd-ce',),
                                 n_iter=10)
  assert ra == ens['robust_accuracy'] == 47 / 64 == float(np.mean(exact > eps))
  assert ens['clean_accuracy'] == 1.0
  # The other binary convention is refused by each of them with one line.
  y01 = (y + 1) // 2
  for call in (lambda: robustness.accuracy(f(x), y01),
               lambda: robustness.robust_accuracy(f, x, y01, eps=eps, norm='l2', steps=5,
                                                  rel_step_size=0.5, restarts=1, key=K),
               lambda: evaluate_robust_accuracy(f, x, y01, eps=eps, norm='l2', key=K)):
    with pytest.raises(ValueError, match=r'^y: labels in \{0, 1\} with scalar logits'):
      call()
  # The losses follow the same convention: the margin is y f.
  chex.assert_trees_all_close(losses.margin(f(x), y), y * f(x))


def test_robust_accuracy_takes_one_radius_or_a_sequence(binary):
  f, w, x, y = binary
  exact = np.asarray(affine_min_distance(w, -0.3, x, y, 'l2'))
  eps = [_between(exact, 17), _between(exact, 40)]
  kw = dict(norm='l2', steps=5, rel_step_size=0.5, restarts=1, key=K)
  one = robustness.robust_accuracy(f, x, y, eps=eps[0], **kw)
  chex.assert_shape(one, ())
  many = robustness.robust_accuracy(f, x, y, eps=eps, **kw)
  chex.assert_shape(many, (2,))
  chex.assert_shape(robustness.robust_accuracy(f, x, y, eps=[eps[0]], **kw), (1,))
  chex.assert_shape(robustness.robust_accuracy(f, x, y, eps=np.asarray(eps), **kw), (2,))
  np.testing.assert_array_equal(np.asarray(many), [47 / 64, 24 / 64])
  assert float(one) == float(many[0])
