"""Every public attack and metric refuses bad input with one line naming the argument.

One table of entry points, one test per kind of mistake (radius, budget,
dtype, bounds, labels, temperature), parametrized over every public function
that takes that kind of argument. Refusals happen before any compile, so the
whole file runs in seconds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax import checks, losses
from robustjax.attacks import (PGDSpec, apgd, bisection, decision_attack,
                               evaluate_robust_accuracy, fmn, hopskipjump, instance_attack,
                               pgd, square, tangent_attack)
from robustjax.attacks.exact import affine_min_distance
from robustjax.metrics import robustness
from tests.models import affine_logits

N, D, C = 8, 4, 3
K = jax.random.PRNGKey(0)
X = jax.random.uniform(jax.random.PRNGKey(1), (N, D))
W = jax.random.normal(jax.random.PRNGKey(2), (D, C))
B = jnp.zeros((C,))
MULTI = jax.tree_util.Partial(affine_logits, W, B)
Y = jnp.argmax(MULTI(X), -1)
W_BIN = W[:, 0]
BINARY = jax.tree_util.Partial(affine_logits, W_BIN, -0.5)
Y01 = jnp.arange(N) % 2  # both classes


def _loss(x):
  return -(x @ W_BIN)


def _embed(x):
  return x.reshape(x.shape[0], -1) @ W


# name -> fn(model, x, y, eps, budget, bounds). Defaults are valid input; each
# test replaces one argument with a bad value.
def _pgd(model, x, y, eps, budget, bounds):
  return pgd(_loss, x, eps=eps, norm='linf', steps=budget, step_size=0.05, key=K, bounds=bounds)


def _spec(model, x, y, eps, budget, bounds):
  return PGDSpec(eps=eps, norm='linf', steps=budget)(_loss, x, K, bounds=bounds)


ENTRIES = {
    'pgd': _pgd,
    'PGDSpec': _spec,
    'apgd': lambda m, x, y, eps, budget, bounds: apgd(
        m, x, y, eps=eps, norm='linf', key=K, n_iter=budget, bounds=bounds),
    'square': lambda m, x, y, eps, budget, bounds: square(
        m, x, y, eps=eps, norm='linf', key=K, n_queries=budget, bounds=bounds),
    'fmn': lambda m, x, y, eps, budget, bounds: fmn(m, x, y, steps=budget, bounds=bounds),
    'bisection': lambda m, x, y, eps, budget, bounds: bisection(
        m, x, y, key=K, pgd_steps=budget, bounds=bounds),
    'decision_attack': lambda m, x, y, eps, budget, bounds: decision_attack(
        m, x, y, key=K, init_evals=budget, bounds=bounds),
    'hopskipjump': lambda m, x, y, eps, budget, bounds: hopskipjump(
        m, x, y, key=K, chunk=budget, bounds=bounds),
    'tangent_attack': lambda m, x, y, eps, budget, bounds: tangent_attack(
        m, x, y, key=K, max_evals=budget, bounds=bounds),
    'evaluate_robust_accuracy': lambda m, x, y, eps, budget, bounds: evaluate_robust_accuracy(
        m, x, y, eps=eps, norm='linf', key=K, n_iter=budget, bounds=bounds),
    'robust_accuracy': lambda m, x, y, eps, budget, bounds: robustness.robust_accuracy(
        m, x, y, eps=eps, norm='linf', steps=budget, rel_step_size=0.25, restarts=1, key=K,
        bounds=bounds),
    'robustness_curve': lambda m, x, y, eps, budget, bounds: robustness.robustness_curve(
        m, x, y, eps=[0.0, eps], norm='linf', key=K, n_iter=budget, bounds=bounds),
    'adversarial_distance': lambda m, x, y, eps, budget, bounds: robustness.adversarial_distance(
        m, x, y, method='fmn', key=K, max_points=budget, bounds=bounds),
    'instance_attack': lambda m, x, y, eps, budget, bounds: instance_attack(
        _embed, x, x, K, PGDSpec(eps=eps, steps=budget), bounds=bounds),
    'accuracy': lambda m, x, y, eps, budget, bounds: robustness.accuracy(m(x), y),
    'affine_min_distance': lambda m, x, y, eps, budget, bounds: affine_min_distance(
        W_BIN if m is BINARY else W, -0.5 if m is BINARY else B, x, y),
}

# The argument each entry's budget goes to.
BUDGET = {'pgd': 'steps', 'PGDSpec': 'steps', 'apgd': 'n_iter', 'square': 'n_queries',
          'fmn': 'steps', 'bisection': 'pgd_steps', 'decision_attack': 'init_evals',
          'hopskipjump': 'chunk', 'tangent_attack': 'max_evals',
          'evaluate_robust_accuracy': 'n_iter', 'robust_accuracy': 'steps',
          'robustness_curve': 'n_iter', 'adversarial_distance': 'max_points',
          'instance_attack': 'steps'}
RADIUS = ['pgd', 'PGDSpec', 'apgd', 'square', 'evaluate_robust_accuracy', 'robust_accuracy',
          'robustness_curve', 'instance_attack']
DTYPE = [e for e in ENTRIES if e not in ('PGDSpec', 'accuracy')]
BOUNDS = [e for e in ENTRIES if e not in ('accuracy', 'affine_min_distance')]
LABELS = ['apgd', 'square', 'fmn', 'bisection', 'decision_attack', 'hopskipjump',
          'tangent_attack', 'evaluate_robust_accuracy', 'robust_accuracy', 'robustness_curve',
          'adversarial_distance', 'accuracy', 'affine_min_distance']


def _call(name, model=MULTI, x=X, y=Y, eps=0.1, budget=2, bounds=None):
  return ENTRIES[name](model, x, y, eps, budget, bounds)


def _one_line(excinfo, prefix):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  assert msg.startswith(prefix), msg


@pytest.mark.parametrize('name', RADIUS)
def test_negative_radius_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, eps=-0.5)
  _one_line(e, 'eps: ')
  assert '>= 0' in str(e.value) and '-0.5' in str(e.value)


@pytest.mark.parametrize('name', ['pgd', 'apgd', 'square', 'evaluate_robust_accuracy',
                                  'robust_accuracy'])
def test_non_finite_radius_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, eps=float('nan'))
  _one_line(e, 'eps: ')


@pytest.mark.parametrize('name', sorted(BUDGET))
@pytest.mark.parametrize('bad', [0, 2.5])
def test_bad_budget_refused(name, bad):
  with pytest.raises((ValueError, TypeError)) as e:
    _call(name, budget=bad)
  _one_line(e, f'{BUDGET[name]}: must be an integer >= ')


@pytest.mark.parametrize('name', DTYPE)
def test_integer_images_refused(name):
  with pytest.raises(TypeError) as e:
    _call(name, x=(X * 255).astype(jnp.uint8))
  _one_line(e, 'x: dtype uint8 is not floating; convert with x.astype(jnp.float32) / 255')


def test_issue_example_points_outside_bounds_refused():
  # The issue's input: uniform [0, 1]^2 shifted by +0.3 in one coordinate.
  x = jax.random.uniform(jax.random.PRNGKey(0), (200, 2)).at[:, 0].add(0.3)
  outside = int(np.sum(np.asarray(x[:, 0]) > 1.0))
  kw = dict(eps=0.1, norm='linf', key=K, bounds=(0.0, 1.0))
  with pytest.raises(ValueError) as e:
    pgd(lambda z: z[:, 0], x, steps=3, step_size=0.1, **kw)
  _one_line(e, f'x: {outside} of 200 points lie outside bounds=(0, 1) (by up to 0.29')
  f = jax.tree_util.Partial(affine_logits, jnp.array([1.0, -1.0]), 0.0)
  with pytest.raises(ValueError, match='^x: .* outside bounds'):
    robustness.robust_accuracy(f, x, jnp.where(f(x) > 0, 1, -1), steps=3, rel_step_size=0.25,
                               restarts=1, **kw)


@pytest.mark.parametrize('name', BOUNDS)
def test_points_outside_bounds_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, x=X.at[:3, 0].add(1.2), bounds=(0.0, 1.0))
  _one_line(e, 'x: 3 of 8 points lie outside bounds=(0, 1)')


@pytest.mark.parametrize('name', ['pgd', 'apgd', 'fmn', 'evaluate_robust_accuracy'])
@pytest.mark.parametrize('bounds', [(1.0, 0.0), (0.0, float('inf')), (0.0,)])
def test_bad_bounds_refused(name, bounds):
  with pytest.raises(ValueError) as e:
    _call(name, bounds=bounds)
  _one_line(e, 'bounds: ')


@pytest.mark.parametrize('name', LABELS)
def test_binary_zero_one_labels_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, model=BINARY, y=Y01)
  _one_line(e, 'y: labels in {0, 1} with scalar logits (n,)')
  assert 'pass 2 * y - 1' in str(e.value)


@pytest.mark.parametrize('name', LABELS)
def test_class_labels_out_of_range_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, y=Y.at[0].set(C))
  _one_line(e, f'y: class labels must be integers in [0, {C})')


@pytest.mark.parametrize('name', ['apgd', 'fmn', 'evaluate_robust_accuracy', 'accuracy'])
def test_label_shape_refused(name):
  with pytest.raises(ValueError) as e:
    _call(name, y=Y[:-1])
  _one_line(e, f'y: must have shape ({N},)')


def test_non_finite_inputs_refused():
  with pytest.raises(ValueError) as e:
    apgd(MULTI, X.at[2, 1].set(jnp.nan), Y, eps=0.1, norm='l2', key=K)
  _one_line(e, 'x: 1 of 8 points have non-finite values')


@pytest.mark.parametrize('call', [
    lambda t: losses.nt_xent(X, X, t),
    lambda t: losses.instance_contrastive(X, X, X, t),
    lambda t: instance_attack(_embed, X, X, K, PGDSpec(eps=0.1), temperature=t),
])
@pytest.mark.parametrize('t', [0.0, -0.5, float('inf')])
def test_temperature_refused(call, t):
  with pytest.raises(ValueError) as e:
    call(t)
  _one_line(e, 'temperature: must be finite and > 0')


def test_norm_and_names_refused():
  with pytest.raises(ValueError, match="^norm: must be one of \\('l2', 'linf'\\), got 'l1'$"):
    affine_min_distance(W, B, X, Y, 'l1')  # used to fall through to l2 silently
  with pytest.raises(ValueError, match='^attacks: '):
    evaluate_robust_accuracy(MULTI, X, Y, eps=0.1, norm='l2', key=K, attacks=('pgd',))
  with pytest.raises(ValueError, match='^loss: '):
    apgd(MULTI, X, Y, eps=0.1, norm='l2', key=K, loss='cw')
  with pytest.raises(ValueError, match='^method: '):
    robustness.adversarial_distance(MULTI, X, Y, method='deepfool', key=K)


def test_compare_distances_refuses_bad_input():
  with pytest.raises(ValueError, match='^white_box: '):
    robustness.compare_distances(np.array([1.0, np.nan]), np.array([1.0, 1.0]))
  with pytest.raises(ValueError, match='^hard_label: must have the shape'):
    robustness.compare_distances(np.ones(3), np.ones(2))
  with pytest.raises(ValueError, match='^max_share: '):
    robustness.compare_distances(np.ones(3), np.ones(3), max_share=2.0)


def test_checks_skip_values_under_jit():
  # Traced values cannot be read without a host sync: only shapes are checked
  # there, and a valid attack compiles and runs.
  @jax.jit
  def attack(x, eps):
    return pgd(_loss, x, eps=eps, norm='l2', steps=2, step_size=eps, key=K, bounds=(0.0, 1.0))
  out = attack(X, jnp.float32(0.1))
  assert out.shape == X.shape
  with pytest.raises(ValueError, match='^eps: must have shape'):
    attack(X, jnp.ones((3,)))


@settings(max_examples=30, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_radius_accepts_exactly_the_non_negative_numbers(v):
  if v >= 0:
    assert checks.radius(v) == v
    assert checks.radius(np.full((N,), v, np.float32), N) is not None
  else:
    with pytest.raises(ValueError, match='^eps: '):
      checks.radius(v)
    with pytest.raises(ValueError, match=f'^eps: .*\\(1 of {N} examples\\)'):
      checks.radius(np.r_[np.zeros(N - 1), v], N)


# --- Found by a new user's review ----------------------------------------------

def test_review_findings_are_refused_or_warned():
  from robustjax.attacks import pgd
  from robustjax.attacks.ensemble import evaluate_robust_accuracy
  from robustjax.metrics.robustness import adversarial_distance
  w = jnp.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
  f = lambda x: x @ w
  x = jnp.full((4, 2), 0.5)
  y = jnp.array([0, 1, 0, 1])
  k = jax.random.PRNGKey(0)
  # A loss summed over the batch (or logits) is not a per-example loss.
  with pytest.raises(ValueError, match=r'loss_fn: must return per-example losses of shape \(4,\)'):
    pgd(lambda z: f(z).sum(), x, eps=0.1, norm='l2', steps=2, step_size=0.05, key=k)
  with pytest.raises(ValueError, match=r'got shape \(4, 3\)'):
    pgd(f, x, eps=0.1, norm='l2', steps=2, step_size=0.05, key=k)
  # One attack name as a string was iterated letter by letter.
  with pytest.raises(TypeError, match=r"attacks: a list of names .*pass \('apgd-ce',\)"):
    evaluate_robust_accuracy(f, x, y, eps=0.1, norm='l2', key=k, attacks='apgd-ce')
  with pytest.raises(ValueError, match='attacks: needs at least one of'):
    evaluate_robust_accuracy(f, x, y, eps=0.1, norm='l2', key=k, attacks=())
  # No points: one line naming x, not numpy's reshape error.
  with pytest.raises(ValueError, match=r'x: must hold at least one point, got shape \(0, 2\)'):
    evaluate_robust_accuracy(f, x[:0], y[:0], eps=0.1, norm='l2', key=k)
  # No correctly classified point: the nan summary comes with the reason.
  wrong = (jnp.argmax(f(x), -1) + 1) % 3
  with pytest.warns(RuntimeWarning, match='none of the 4 points is classified correctly'):
    r = adversarial_distance(f, x, wrong, method='fmn', key=k, steps=2)
  assert r['summary']['num_points'] == 0
