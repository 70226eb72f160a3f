"""PGD: closed-form optima on linear models, ball/bounds properties, no retracing."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from robustjax.attacks import PGDSpec, pgd
from robustjax.attacks.pgd import random_init

W = jnp.array([0.5, -2.0, 1.0, 0.25])


def linear_loss(x):
  """Minus the logit of f(x) = w.x: the attack pushes f down."""
  return -(x @ W)


def _x(n=8, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, W.shape[0]))


@pytest.mark.parametrize('random_start', [False, True])
def test_l2_reaches_closed_form_optimum(random_start):
  x, eps = _x(), 0.7
  x_adv = pgd(linear_loss, x, eps=eps, norm='l2', steps=40, step_size=0.5 * eps,
              key=jax.random.PRNGKey(1), random_start=random_start)
  expected = x - eps * W / jnp.linalg.norm(W)
  # From x the optimum is exact after two steps; from a random start the
  # orthogonal part shrinks by a constant factor per projected step.
  chex.assert_trees_all_close(x_adv, expected, atol=1e-5 if not random_start else 2e-3)


@pytest.mark.parametrize('steps', [1, 10])
def test_linf_reaches_closed_form_optimum(steps):
  x, eps = _x(), 0.3
  x_adv = pgd(linear_loss, x, eps=eps, norm='linf', steps=steps, step_size=eps,
              key=jax.random.PRNGKey(1), random_start=steps > 1)
  chex.assert_trees_all_close(x_adv, x - eps * jnp.sign(W), atol=1e-6)  # steps=1 is FGSM


def test_per_example_eps_and_bounds():
  x = jax.random.uniform(jax.random.PRNGKey(2), (6, 4))
  eps = jnp.linspace(0.0, 0.5, 6)
  x_adv = pgd(linear_loss, x, eps=eps, norm='linf', steps=5, step_size=eps,
              key=jax.random.PRNGKey(3), bounds=(0.0, 1.0))
  chex.assert_trees_all_close(x_adv, jnp.clip(x - eps[:, None] * jnp.sign(W), 0.0, 1.0),
                              atol=1e-6)


def test_eps_zero_returns_input():
  x = _x()
  for norm in ('l2', 'linf'):
    out = pgd(linear_loss, x, eps=0.0, norm=norm, steps=3, step_size=0.1,
              key=jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(out, x)


def test_best_iterate_is_kept():
  # loss = -(x - 0.3)^2 on [-1, 1] with unit linf steps oscillates between
  # x = 0 (loss -0.09) and x = 1 (loss -0.49); the start is the best point.
  loss = lambda x: -jnp.sum((x - 0.3) ** 2, axis=-1)
  x = jnp.zeros((1, 1))
  for steps in (1, 2, 5):
    out = pgd(loss, x, eps=1.0, norm='linf', steps=steps, step_size=1.0,
              key=jax.random.PRNGKey(0), random_start=False)
    chex.assert_trees_all_close(out, x)


def test_restarts_never_worse_than_one_start():
  loss = lambda x: jnp.sum(jnp.sin(3 * x), axis=-1)
  x = _x(32)
  kw = dict(eps=1.0, norm='l2', steps=3, step_size=0.3, key=jax.random.PRNGKey(4))
  one, many = pgd(loss, x, restarts=1, **kw), pgd(loss, x, restarts=4, **kw)
  # Restart 0 uses the same key, so the best of 4 includes the single run.
  assert np.all(np.asarray(loss(many)) >= np.asarray(loss(one)) - 1e-6)


def _wiggly_loss(x):
  return jnp.sum(jnp.sin(5 * x) * x, axis=(1, 2))


@settings(max_examples=25, deadline=None)
@given(norm=st.sampled_from(['l2', 'linf']), eps=st.floats(0.0, 3.0),
       step=st.floats(0.01, 5.0), seed=st.integers(0, 2 ** 16), bounded=st.booleans(),
       steps=st.sampled_from([1, 3]))
def test_output_stays_in_ball_and_bounds(norm, eps, step, seed, bounded, steps):
  loss = _wiggly_loss  # one function object: examples share compiles
  x = jax.random.uniform(jax.random.PRNGKey(seed), (5, 3, 2))
  bounds = (0.0, 1.0) if bounded else None
  out = pgd(loss, x, eps=eps, norm=norm, steps=steps, step_size=step,
            key=jax.random.PRNGKey(seed + 1), bounds=bounds)
  d = np.asarray(out - x).reshape(5, -1)
  size = np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)
  assert np.all(size <= eps * (1 + 1e-5) + 1e-6)  # float32 rounding of x + delta
  if bounded:
    assert np.all((np.asarray(out) >= 0.0) & (np.asarray(out) <= 1.0))


def test_l2_random_start_is_uniform_in_the_ball():
  n, dim, eps = 20000, 5, 2.0
  d = np.asarray(random_init(jax.random.PRNGKey(0), jnp.zeros((n, dim)), eps, 'l2'))
  r = np.linalg.norm(d, axis=1) / eps
  # Uniform in the ball: P(r <= t) = t^dim, so r^dim ~ U[0, 1].
  assert stats.kstest(r ** dim, 'uniform').pvalue > 1e-3
  u = d / np.linalg.norm(d, axis=1, keepdims=True)
  np.testing.assert_allclose(u.mean(0), 0, atol=0.03)
  np.testing.assert_allclose(np.cov(u.T), np.eye(dim) / dim, atol=0.01)


def test_linf_random_start_is_uniform_in_the_cube():
  d = np.asarray(random_init(jax.random.PRNGKey(0), jnp.zeros((20000, 3)), 0.5, 'linf'))
  assert np.abs(d).max() <= 0.5
  assert stats.kstest(d.ravel(), 'uniform', args=(-0.5, 1.0)).pvalue > 1e-3


def test_no_retrace_on_repeated_calls():
  traces = []

  def loss(x):
    traces.append(1)  # runs only while tracing
    return -(x @ W)

  spec = PGDSpec(eps=0.5, norm='l2', steps=3)
  spec(loss, _x(seed=0), jax.random.PRNGKey(0))
  first = len(traces)
  for seed in range(1, 4):  # new inputs, keys and radii: same compiled attack
    pgd(loss, _x(seed=seed), eps=0.1 * seed, norm='l2', steps=3, step_size=0.05 * seed,
        key=jax.random.PRNGKey(seed))
  assert len(traces) == first

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attack(params, x, key):
    f = jax.tree_util.Partial(lambda p, x: -(x @ p), params)  # params are leaves
    return spec(f, x, key)

  for seed in range(3):
    attack(W * (seed + 1), _x(seed=seed), jax.random.PRNGKey(seed))


def test_bad_arguments():
  with pytest.raises(ValueError, match='norm'):
    pgd(linear_loss, _x(), eps=0.1, norm='l1', steps=1, step_size=0.1, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='steps'):
    pgd(linear_loss, _x(), eps=0.1, norm='l2', steps=0, step_size=0.1, key=jax.random.PRNGKey(0))
