"""Sampler statistics of the sparse-coding model."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.data import sparse_coding as sc

N = 20000


def test_orthonormal_dictionary():
  m = sc.make_dictionary(jax.random.PRNGKey(0), 20, 12, 'orthonormal')
  chex.assert_shape(m, (20, 12))
  chex.assert_trees_all_close(m.T @ m, jnp.eye(12), atol=1e-5)


def test_overcomplete_dictionary_unit_columns():
  m = sc.make_dictionary(jax.random.PRNGKey(0), 10, 30, 'overcomplete')
  chex.assert_shape(m, (10, 30))
  chex.assert_trees_all_close(jnp.linalg.norm(m, axis=0), jnp.ones(30), atol=1e-5)


def test_orthonormal_needs_d_at_least_D():
  with pytest.raises(ValueError, match='D <= d'):
    sc.make_dictionary(jax.random.PRNGKey(0), 4, 8, 'orthonormal')


def test_exact_k_support_and_signs():
  spec = sc.SparseCodingSpec(d=16, D=16, k=3, exact_k=True)
  x = sc.sample_features(jax.random.PRNGKey(1), N, spec)
  chex.assert_shape(x, (N, 16))
  np.testing.assert_array_equal(np.sum(x != 0, axis=1), 3)
  np.testing.assert_array_equal(np.abs(x[x != 0]), 1.0)
  # Each feature is active with probability k/D, with balanced signs.
  np.testing.assert_allclose(np.mean(x != 0, axis=0), 3 / 16, atol=0.012)
  assert abs(np.mean(np.sign(x[x != 0]))) < 0.02


def test_bernoulli_active_rate_and_magnitudes():
  spec = sc.SparseCodingSpec(d=32, D=32, k=4, exact_k=False, magnitude_low=0.5)
  x = np.asarray(sc.sample_features(jax.random.PRNGKey(2), N, spec))
  active = x != 0
  np.testing.assert_allclose(active.mean(), 4 / 32, rtol=0.03)
  np.testing.assert_allclose(active.sum(1).var(), 32 * (4 / 32) * (1 - 4 / 32), rtol=0.05)
  mags = np.abs(x[active])
  assert mags.min() >= 0.5 and mags.max() <= 1.0
  np.testing.assert_allclose(mags.mean(), 0.75, atol=0.01)


def test_observation_norm_and_noise():
  # Orthonormal M and unit magnitudes: E||Z||^2 = k + sigma^2 exactly.
  spec = sc.SparseCodingSpec(d=64, D=32, k=4, noise_std=0.5)
  world = sc.make_world(jax.random.PRNGKey(3), spec)
  z, y, x = sc.sample_task(jax.random.PRNGKey(4), N, world, spec)
  chex.assert_shape((z, y, x), ((N, 64), (N,), (N, 32)))
  np.testing.assert_allclose(np.mean(np.sum(np.asarray(z) ** 2, 1)), 4 + 0.25, rtol=0.02)
  noise = np.asarray(z - x @ world.dictionary.T)
  np.testing.assert_allclose(noise.std(), 0.5 / 8, rtol=0.02)


def test_labels_balanced_and_consistent():
  spec = sc.SparseCodingSpec()
  world = sc.make_world(jax.random.PRNGKey(5), spec)
  _, y, x = sc.sample_task(jax.random.PRNGKey(6), N, world, spec)
  assert set(np.unique(y)) == {-1.0, 1.0}
  assert abs(float(jnp.mean(y))) < 0.03
  np.testing.assert_array_equal(y, np.where(x @ world.theta0 >= 0, 1.0, -1.0))


def test_downstream_task_is_fresh_and_labels_follow_theta():
  spec = sc.SparseCodingSpec()
  world = sc.make_world(jax.random.PRNGKey(7), spec)
  theta = sc.new_task(jax.random.PRNGKey(8), spec)
  _, y, x = sc.sample_task(jax.random.PRNGKey(9), 4000, world, spec, theta)
  np.testing.assert_array_equal(y, np.where(x @ theta >= 0, 1.0, -1.0))
  agree = np.mean(y == np.where(x @ world.theta0 >= 0, 1.0, -1.0))
  assert 0.3 < agree < 0.7  # independent of the pre-training task


def test_pure_function_of_key_and_jittable():
  spec = sc.SparseCodingSpec(d=8, D=8, k=2)
  world = sc.make_world(jax.random.PRNGKey(0), spec)
  f = jax.jit(lambda k, w: sc.sample_task(k, 16, w, spec))
  chex.assert_trees_all_equal(f(jax.random.PRNGKey(1), world), f(jax.random.PRNGKey(1), world))
  chex.assert_trees_all_close(f(jax.random.PRNGKey(1), world),
                              sc.sample_task(jax.random.PRNGKey(1), 16, world, spec), atol=1e-6)
  worlds = jax.vmap(lambda k: sc.make_world(k, spec))(jax.random.split(jax.random.PRNGKey(2), 3))
  chex.assert_shape(worlds.dictionary, (3, 8, 8))


def test_traced_k_gives_the_static_samplers_features():
  # sample_features(k=...) with spec.k as the bound: one program for every k <= spec.k,
  # and for each k exactly the features the static sampler with that k draws.
  key = jax.random.PRNGKey(11)
  bound = sc.SparseCodingSpec(d=16, D=16, k=8)
  per_k = jax.jit(jax.vmap(lambda k: sc.sample_features(key, 256, bound, k)))(
      jnp.array([1, 3, 8], jnp.int32))
  for x, k in zip(per_k, (1, 3, 8)):
    static = sc.sample_features(key, 256, sc.SparseCodingSpec(d=16, D=16, k=k))
    np.testing.assert_array_equal(x, static)
    np.testing.assert_array_equal(np.sum(x != 0, axis=1), k)


@pytest.mark.parametrize('k,error,match', [(0, ValueError, r'k must lie in \[1, spec.k = 8\]'),
                                           (9, ValueError, r'k must lie in \[1, spec.k = 8\]'),
                                           (2.0, TypeError, 'k must be a scalar integer')])
def test_traced_k_out_of_range_is_refused(k, error, match):
  with pytest.raises(error, match=match):
    sc.sample_features(jax.random.PRNGKey(0), 4, sc.SparseCodingSpec(d=16, D=16, k=8), k)
