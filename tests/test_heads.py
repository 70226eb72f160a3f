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


# Badly scaled features (issue 19): L-BFGS on the raw float32 problem stopped far
# from the optimum (objective 0.0106 vs 0.000437, probabilities off by 0.11; and
# 0.412 vs 0.408, off by 0.12), silently.

def _mixture(seed, sep, offset):
  """300 x 20 two-class Gaussian mixture: unit noise around class means of size sep."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, 300)
  return rng.normal(size=(300, 20)) + sep * rng.normal(size=(2, 20))[y] + offset, y


def _badly_scaled(case):
  if case == 'x100':     # offset features times 100
    x, y = _mixture(7, 0.55, 10.0)
    return 100.0 * x, y
  x, y = _mixture(1, 0.3, 0.0)     # columns scaled from 1e-2 to 1e2
  return x * np.logspace(-2, 2, 20), y


def _objective64(kernel, bias, x, y, l2):
  z = x @ kernel + bias
  z = z - z.max(1, keepdims=True)
  return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])
               + 0.5 * l2 * np.sum(kernel ** 2))


def _probs64(kernel, bias, x):
  z = x @ kernel + bias
  p = np.exp(z - z.max(1, keepdims=True))
  return p / p.sum(1, keepdims=True)


def _grad64(kernel, bias, x, y, l2):
  r = _probs64(kernel, bias, x) - np.eye(kernel.shape[1])[y]
  return x.T @ r / len(y) + l2 * kernel, r.mean(0)


def _newton64(x, y, num_classes, l2, iters=100):
  """The float64 optimum by damped Newton (affine invariant, so feature scales do not
  matter); the softmax's free bias shift is handled by a least-squares step."""
  n, f, c = *x.shape, num_classes
  xa = np.concatenate([x, np.ones((n, 1))], 1)
  theta = np.zeros((f + 1, c))
  obj = lambda t: _objective64(t[:f], t[f], x, y, l2)
  for _ in range(iters):
    gk, gb = _grad64(theta[:f], theta[f], x, y, l2)
    g = np.concatenate([gk, gb[None]]).ravel()
    if np.linalg.norm(g) < 1e-13:
      break
    p = _probs64(theta[:f], theta[f], x)
    s = np.einsum('ic,cd->icd', p, np.eye(c)) - np.einsum('ic,id->icd', p, p)
    h = np.einsum('ij,ik,icd->jckd', xa, xa, s).reshape((f + 1) * c, (f + 1) * c) / n
    h[:f * c, :f * c] += l2 * np.eye(f * c)
    step = -np.linalg.lstsq(h, g, rcond=1e-14)[0].reshape(f + 1, c)
    t, f0 = 1.0, obj(theta)
    while obj(theta + t * step) > f0 + 1e-4 * t * (g @ step.ravel()) and t > 1e-10:
      t *= 0.5
    theta = theta + t * step
  return theta[:f], theta[f] - theta[f].mean()


@pytest.mark.parametrize('case, optimum', [('x100', 4.36869e-4), ('cols', 0.408257)])
def test_reaches_float64_optimum_on_badly_scaled_features(case, optimum):
  x, y = _badly_scaled(case)
  l2 = 1e-4
  k64, b64 = _newton64(x, y, 2, l2)
  opt = _objective64(k64, b64, x, y, l2)
  np.testing.assert_allclose(opt, optimum, rtol=1e-5)
  assert np.linalg.norm(np.concatenate([a.ravel() for a in _grad64(k64, b64, x, y, l2)])) < 1e-10
  params, info = fit_logistic_regression(x, y, num_classes=2, l2=l2, return_info=True)
  assert bool(info['converged']) and float(info['grad_norm']) <= 1e-6
  kernel, bias = np.asarray(params['kernel'], np.float64), np.asarray(params['bias'], np.float64)
  ours = _objective64(kernel, bias, x, y, l2)
  assert ours - opt <= 1e-3 * opt, (ours, opt)
  np.testing.assert_allclose(float(info['objective']), ours, rtol=1e-3)
  np.testing.assert_allclose(_probs64(kernel, bias, x), _probs64(k64, b64, x), atol=1e-3)
  # The float64 gradient at our solution, in the solver's standardised coordinates
  # (kernel row j less mean_j times the bias gradient, over scale_j): what tol bounds.
  gk, gb = _grad64(kernel, bias, x, y, l2)
  mean, scale = x.mean(0), np.sqrt(x.var(0) + l2)
  g_std = np.concatenate([((gk - mean[:, None] * gb[None]) / scale[:, None]).ravel(), gb])
  assert np.linalg.norm(g_std) < 2e-6, np.linalg.norm(g_std)   # tol plus float32 rounding


def test_warns_with_diagnostics_when_max_iter_is_too_small(digits):
  x, y = digits
  with pytest.warns(RuntimeWarning, match=r'stopped after 2 of max_iter=2 iterations'):
    params, info = fit_logistic_regression(x, y, num_classes=10, l2=1e-3, max_iter=2,
                                           return_info=True)
    jax.block_until_ready(params)
    jax.effects_barrier()
  assert not bool(info['converged']) and int(info['iterations']) == 2
  assert float(info['grad_norm']) > 1e-6


def test_warns_per_seed_under_vmap():
  # Seed 0: zero features, balanced labels: the gradient at the zero start is 0
  # (converged after 0 steps). Seed 1: one step is not enough. One warning, seed 1's.
  rng = np.random.default_rng(3)
  f = jnp.stack([jnp.zeros((40, 3)), jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)])
  y = jnp.asarray(np.arange(40) % 2, jnp.int32)
  fit = jax.vmap(lambda f: fit_logistic_regression(f, y, num_classes=2, max_iter=1,
                                                   return_info=True))
  with pytest.warns(RuntimeWarning) as record:
    params, info = fit(f)
    jax.block_until_ready(params)
    jax.effects_barrier()
  assert [str(w.message).count('stopped after 1 of max_iter=1') for w in record] == [1]
  chex.assert_trees_all_equal(np.asarray(info['converged']), np.array([True, False]))
  chex.assert_trees_all_equal(np.asarray(info['iterations']), np.array([0, 1], np.int32))
  chex.assert_trees_all_equal(params['kernel'][0], jnp.zeros((3, 2)))


@pytest.mark.parametrize('kwargs, match', [
    (dict(features=np.zeros((4,))), 'features must be'),
    (dict(labels=np.zeros((3,), np.int32)), 'labels must be'),
    (dict(labels=np.array([0, 1, 2, 0])), r'labels must lie in \[0, 2\)'),
    (dict(labels=np.zeros((4,), np.float32)), 'labels must be integers'),
    (dict(num_classes=1), 'num_classes'),
    (dict(l2=-1.0), 'l2'),
    (dict(max_iter=0), 'max_iter'),
    (dict(tol=0.0), 'tol'),
])
def test_refuses_bad_input(kwargs, match):
  args = dict(features=np.zeros((4, 2), np.float32), labels=np.array([0, 1, 0, 1]),
              num_classes=2)
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    fit_logistic_regression(args.pop('features'), args.pop('labels'), **args)
