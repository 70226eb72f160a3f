"""Re-fitted logistic-regression readout against scikit-learn and its optimality conditions."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from robustjax.models.heads import (_objective, fit_logistic_regression, linear_head,
                                    readout_predict_fn)


@pytest.fixture(scope='module')
def digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x[:400] / 16.0, jnp.float32), jnp.asarray(y[:400], jnp.int32)


def test_matches_sklearn_multinomial(digits):
  x, y = digits
  l2 = 1e-2
  params = fit_logistic_regression(x, y, num_classes=10, l2=l2)
  chex.assert_shape(params['kernel'], (64, 10))
  chex.assert_shape(params['bias'], (10,))
  # Same objective: sklearn's C = 1 / (l2 * n), unpenalised intercept.
  sk = LogisticRegression(C=1.0 / (l2 * x.shape[0]), max_iter=10_000, tol=1e-10).fit(x, y)
  probs = jax.nn.softmax(linear_head(params, x))
  np.testing.assert_allclose(probs, sk.predict_proba(np.asarray(x)), atol=1e-3)
  kernel_sk = sk.coef_.T - sk.coef_.T.mean(1, keepdims=True)   # same shift convention
  np.testing.assert_allclose(params['kernel'] - params['kernel'].mean(1, keepdims=True),
                             kernel_sk, atol=2e-2)


def test_gradient_vanishes_at_solution_and_bias_centred(digits):
  x, y = digits
  params = fit_logistic_regression(x, y, num_classes=10, l2=1e-3)
  g = jax.jit(jax.grad(_objective))(params, x, y, 1e-3)
  assert float(optax.tree.norm(g)) < 1e-4
  assert abs(float(params['bias'].mean())) < 1e-6


def test_deterministic(digits):
  x, y = digits
  a = fit_logistic_regression(x, y, num_classes=10)
  b = fit_logistic_regression(x, y, num_classes=10)
  chex.assert_trees_all_equal(a, b)


def test_separable_data_reaches_full_training_accuracy():
  # Same shapes as the digits tests: one compiled fit serves the whole file.
  rng = np.random.default_rng(0)
  means = 4.0 * rng.normal(size=(10, 64))
  y = np.arange(400) % 10
  x = jnp.asarray(means[y] + 0.3 * rng.normal(size=(400, 64)), jnp.float32)
  params = fit_logistic_regression(x, y, num_classes=10, l2=1e-3)
  assert float(jnp.mean(jnp.argmax(linear_head(params, x), -1) == y)) == 1.0


def _features(w, x):
  return jnp.tanh(x @ w)


def test_readout_on_frozen_features(digits):
  x, y = digits
  w = jnp.asarray(np.random.default_rng(1).normal(size=(64, 64)) / 8.0, jnp.float32)
  feat = jax.tree_util.Partial(_features, w)
  params = fit_logistic_regression(feat(x), y, num_classes=10, l2=1e-4)
  predict = readout_predict_fn(feat, params)
  chex.assert_trees_all_close(predict(x), linear_head(params, feat(x)))
  assert float(jnp.mean(jnp.argmax(predict(x), -1) == y)) > 0.9
  # A Partial: attacks jit over it and gradients reach the input.
  g = jax.grad(lambda z: predict(z)[:, 0].sum())(x[:4])
  assert float(jnp.abs(g).sum()) > 0


@pytest.mark.slow
def test_vmaps_over_seeds_like_one_fit_each():
  # The spectral stage fits one head per seed under vmap.
  rng = np.random.default_rng(2)
  f = jnp.asarray(rng.normal(size=(3, 50, 8)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=(3, 50)), jnp.int32)
  fit = lambda f, y: fit_logistic_regression(f, y, num_classes=3, l2=1e-3, max_iter=100)
  batched = jax.vmap(fit)(f, y)
  single = fit(f[1], y[1])
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], batched), single, atol=1e-5)
