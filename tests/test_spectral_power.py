"""Power iteration against singular values we construct, and its gradient."""
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.spectral import top_singular_value
from robustjax.spectral.power_iteration import iterate


def _orthogonal(rng, n):
  q, r = np.linalg.qr(rng.standard_normal((n, n)))
  return q * np.sign(np.diag(r))


def with_singular_values(key, m, n, s):
  """W = U diag(s) V^T with random orthogonal U, V: singular values exactly s (numpy:
  no per-shape compiles)."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)) if not
                              isinstance(key, int) else key)
  k = len(s)
  u, v = _orthogonal(rng, m)[:, :k], _orthogonal(rng, n)[:, :k]
  w = (u * np.asarray(s)) @ v.T
  return jnp.asarray(w, jnp.float32), jnp.asarray(u[:, 0], jnp.float32), jnp.asarray(v[:, 0], jnp.float32)


CASES = {
    'random': (40, 30, np.sort(np.random.default_rng(0).uniform(0.1, 5.0, 30))[::-1]),
    'ill_conditioned': (50, 20, np.logspace(3, -3, 20)),        # condition 1e6
    'rank_deficient': (30, 25, np.r_[4.0, 3.0, 1.0, np.zeros(22)]),  # rank 3
    'wide': (10, 60, np.linspace(7.0, 0.5, 10)),
    'degenerate_top': (20, 20, np.r_[2.0, 2.0, np.linspace(1.0, 0.1, 18)]),  # sigma_1 = sigma_2
}


@pytest.mark.parametrize('name', list(CASES))
def test_matches_constructed_and_svd(name):
  m, n, s = CASES[name]
  w, _, _ = with_singular_values(jax.random.PRNGKey(1), m, n, s)
  sigma, v = top_singular_value(w, iters=2000, tol=1e-8)
  svd_top = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
  np.testing.assert_allclose(sigma, s[0], rtol=1e-4)
  np.testing.assert_allclose(sigma, svd_top, rtol=1e-4)
  chex.assert_shape(v, (n,))
  np.testing.assert_allclose(jnp.linalg.norm(v), 1.0, rtol=1e-5)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(m=st.sampled_from([2, 9, 24]), n=st.sampled_from([3, 16]), gap=st.floats(0.05, 0.9),
       top=st.floats(1e-2, 1e3), seed=st.integers(0, 2**16))
def test_property_top_singular_value(m, n, gap, top, seed):
  """Any shape and scale, a relative gap sigma_2 / sigma_1 <= 1 - gap: 1e-4 relative."""
  k = min(m, n)
  rest = np.random.default_rng(seed).uniform(0, 1 - gap, k - 1)
  s = top * np.r_[1.0, np.sort(rest)[::-1]]
  w, _, _ = with_singular_values(seed, m, n, s)
  sigma, _ = top_singular_value(w, iters=3000, tol=1e-9, key=jax.random.PRNGKey(seed + 1))
  np.testing.assert_allclose(sigma, s[0], rtol=1e-4)


def test_gradient_is_two_sigma_u_vT():
  # sigma converges like ratio^(2k) but v like ratio^k: a clear gap lets v
  # converge to float32 accuracy before sigma stops changing.
  w, u1, v1 = with_singular_values(jax.random.PRNGKey(2), 12, 9, np.r_[3.0, np.linspace(1.0, 0.2, 8)])
  grad = jax.grad(lambda w: top_singular_value(w, iters=2000, tol=1e-9)[0] ** 2)(w)
  expected = 2 * 3.0 * jnp.outer(u1, v1)  # sign-invariant: u and v flip together
  np.testing.assert_allclose(grad, expected, atol=1e-4)


def test_no_gradient_through_vector():
  w, _, _ = with_singular_values(jax.random.PRNGKey(3), 6, 5, np.linspace(2.0, 0.5, 5))
  v0 = jnp.ones(5) / jnp.sqrt(5.0)
  g = jax.grad(lambda v: top_singular_value(w, v, iters=3, tol=0.0)[0])(v0)
  chex.assert_trees_all_close(g, jnp.zeros(5))


def test_warm_start_needs_fewer_iterations():
  w, _, _ = with_singular_values(jax.random.PRNGKey(4), 30, 30, np.linspace(1.0, 0.01, 30))
  v0 = jax.random.normal(jax.random.PRNGKey(5), (30,))
  v0 = v0 / jnp.linalg.norm(v0)
  v, cold = iterate(w, v0, iters=5000, tol=1e-7)
  w2 = w + 1e-4 * jax.random.normal(jax.random.PRNGKey(6), w.shape)  # one small step later
  _, warm = iterate(w2, v, iters=5000, tol=1e-7)
  assert int(warm) < int(cold) // 2, (int(warm), int(cold))


def test_iteration_budget_and_zero_matrix():
  w, _, _ = with_singular_values(jax.random.PRNGKey(7), 8, 8, np.linspace(1.0, 0.9, 8))
  _, i = iterate(w, jnp.ones(8) / jnp.sqrt(8.0), iters=10, tol=0.0)
  assert int(i) == 10
  sigma, v = top_singular_value(jnp.zeros((4, 3)), iters=10, tol=1e-6)
  assert float(sigma) == 0.0 and np.all(np.isfinite(v))


def test_jit_vmap_over_matrices():
  ws = jnp.stack([with_singular_values(jax.random.PRNGKey(i), 7, 5, np.linspace(s, 0.1, 5))[0]
                  for i, s in enumerate((1.0, 2.0, 3.0))])
  sigma, v = jax.jit(jax.vmap(lambda w: top_singular_value(w, iters=500, tol=1e-8)))(ws)
  chex.assert_shape(v, (3, 5))
  np.testing.assert_allclose(sigma, [1.0, 2.0, 3.0], rtol=1e-4)


def test_rejects_non_matrix():
  with pytest.raises(ValueError, match='matrix'):
    top_singular_value(jnp.ones((2, 2, 2)), iters=3, tol=1e-6)


def test_unconverged_power_iteration_warns_with_its_residual():
  # Singular values 1 and 0.99: convergence at rate 0.99^2 per step, far from 1e-9 in 5.
  w, _, _ = with_singular_values(jax.random.PRNGKey(8), 6, 6, [1.0, 0.99, 0.8, 0.6, 0.4, 0.2])
  with pytest.warns(RuntimeWarning, match=r'top_singular_value: power iteration stopped after 5 '
                    r'iterations with relative change .* > tol=1e-09'):
    sigma, _, info = top_singular_value(w, iters=5, tol=1e-9, return_info=True)
    jax.block_until_ready(sigma)
    jax.effects_barrier()
  assert int(info['iterations']) == 5 and not bool(info['converged'])
  assert float(info['residual']) > 1e-9
  # Converged, or a fixed budget (tol = 0): no warning.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    sigma, _, info = top_singular_value(w, iters=5000, tol=1e-9, return_info=True)
    top_singular_value(w, iters=5, tol=0.0)
    jax.effects_barrier()
  assert bool(info['converged']) and float(info['residual']) <= 1e-9
  np.testing.assert_allclose(sigma, 1.0, rtol=1e-5)
