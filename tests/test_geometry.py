import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.metrics import geometry


@settings(max_examples=8, deadline=None, derandomize=True)
@given(m=st.sampled_from([2, 5]), seed=st.integers(0, 999))
def test_linear_map_metric_is_AtA(m, seed):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((m, 3)).astype(np.float32)
  x = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
  g = geometry.pullback_metric(lambda x: x @ a.T, x)
  ata = a.T @ a
  np.testing.assert_allclose(g, np.broadcast_to(ata, (4, 3, 3)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(geometry.lambda_max(g), np.linalg.eigvalsh(ata)[-1], rtol=1e-4)
  logvol = geometry.log_volume_element(g)
  if m >= 3:
    np.testing.assert_allclose(logvol, 0.5 * np.linalg.slogdet(ata)[1], rtol=1e-4, atol=1e-4)
  else:  # rank < 3: det g = 0
    assert np.all(logvol < -5) or np.all(np.isinf(logvol))


def test_plane_metric_and_nonlinear_map():
  a = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)), jnp.float32)
  phi = lambda x: jnp.tanh(x @ a.T)
  x0, x1, x2 = (jnp.asarray(np.random.default_rng(i).standard_normal(4), jnp.float32)
                for i in (1, 2, 3))
  pts, basis, coords, anchors = geometry.plane_through(x0, x1, x2, n=5)
  chex.assert_shape(pts, (25, 4))
  chex.assert_shape(coords, (5, 5, 2))
  np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-5)
  for xi, ai in zip((x0, x1, x2), anchors):
    np.testing.assert_allclose(x0 + basis @ ai, xi, atol=1e-5)  # the plane holds the points
  g = geometry.pullback_metric(phi, pts, basis)
  j = jax.vmap(jax.jacfwd(lambda x: phi(x[None])[0]))(pts)  # full Jacobians (25, 6, 4)
  expected = jnp.einsum('dk,nmd,nme,el->nkl', basis, j, j, basis)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(geometry.log_volume_element(g),
                             0.5 * np.linalg.slogdet(np.asarray(expected, np.float64))[1],
                             rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match='collinear'):
    geometry.plane_through(x0, x1, 2 * x1 - x0, n=3)


def test_grid_and_plot(tmp_path):
  pts, t = geometry.grid_2d(-2.0, 2.0, 7)
  chex.assert_shape(pts, (49, 2))
  np.testing.assert_allclose(pts[:7, 1], -2.0)  # row 0 is the lowest y
  np.testing.assert_allclose(pts[:7, 0], t)
  maps = {'a': np.random.rand(7, 7), 'b': np.full((7, 7), -np.inf)}
  path = tmp_path / 'm.png'
  geometry.plot_maps(maps, (-2, 2, -2, 2), str(path), points=np.zeros((2, 2)), labels=[0, 1],
                     contour={'a': np.random.randn(7, 7)})
  assert path.stat().st_size > 1000


def _orthonormal(rng, m, k):
  q, r = np.linalg.qr(rng.standard_normal((m, k)))
  return q * np.sign(np.diag(r))


@pytest.mark.parametrize('m, k', [(2, 2), (5, 3)])
@pytest.mark.parametrize('cond', [1.0, 1e2, 1e4, 1e6])
def test_log_volume_and_lambda_max_hold_small_singular_values(m, k, cond):
  # phi(z) = z @ J^T with J = U diag(s) V^T, s from 1 down to 1 / cond, over 20 random
  # rotations: closed forms 0.5 log det g = sum log s and lambda_max = s_max^2 = 1.
  # Formed in float32, g = J^T J held no trace of s < ~3e-4: at cond 1e4 the log
  # volume came out -inf (3 of 20) or off by up to 0.73; at 1e6 -inf 13 of 20.
  # From J E's singular values the error is float32's own, ~eps * cond.
  s = np.geomspace(1.0, 1.0 / cond, k)
  js = np.stack([_orthonormal(np.random.default_rng(i), m, k) @ np.diag(s)
                 @ _orthonormal(np.random.default_rng(100 + i), k, k).T for i in range(20)])
  x = jnp.zeros((1, k), jnp.float32)

  def maps(j):
    g = geometry.pullback_metric(lambda z: z @ j.T, x)
    return geometry.log_volume_element(g)[0], geometry.lambda_max(g)[0]

  logvol, lam = jax.jit(jax.vmap(maps))(jnp.asarray(js, jnp.float32))
  assert np.all(np.isfinite(logvol))
  eps = np.finfo(np.float32).eps
  np.testing.assert_allclose(logvol, np.sum(np.log(s)), rtol=0, atol=4 * eps * cond + 1e-6)
  np.testing.assert_allclose(lam, 1.0, rtol=1e-6)


def test_metric_is_a_pytree_and_formed_on_request():
  a = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3)), jnp.float32)
  g = jax.jit(lambda x: geometry.pullback_metric(lambda z: z @ a.T, x))(jnp.ones((4, 3)))
  assert isinstance(g, geometry.PullbackMetric)
  chex.assert_shape(g.jacobian, (4, 2, 3))
  assert g.shape == (4, 3, 3)
  np.testing.assert_allclose(np.asarray(g), np.broadcast_to(a.T @ a, (4, 3, 3)), rtol=1e-5,
                             atol=1e-6)
  # Fewer features than slice directions: det g = 0 exactly.
  assert np.all(np.isneginf(geometry.log_volume_element(g)))
  with pytest.raises(ValueError, match='basis must be'):
    geometry.pullback_metric(lambda z: z, jnp.ones((4, 3)), jnp.ones((2, 2)))
  with pytest.raises(ValueError, match='g must be'):
    geometry.log_volume_element(jnp.ones((3, 2)))
