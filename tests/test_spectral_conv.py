"""Conv operator norms against the SVD of the explicit convolution matrix."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.spectral import conv_operator_norm
from robustjax.spectral.conv_norm import conv


def explicit_matrix(kernel, shape, strides, padding):
  """The layer's matrix, column j = the layer applied to the j-th basis input."""
  n = int(np.prod(shape))
  f = lambda x: conv(kernel, x.reshape(shape), strides=strides, padding=padding).ravel()
  return np.asarray(jax.jacfwd(f)(jnp.zeros(n, kernel.dtype)), np.float64)


def circular_matrix_by_hand(kernel, H, W, s):
  """y[p] = sum_q K[q]^T x[(s p + q - lo) mod N]: the circular conv written out."""
  kh, kw, ci, co = kernel.shape
  k = np.asarray(kernel, np.float64)
  lo_h, lo_w = (kh - 1) // 2, (kw - 1) // 2
  Ho, Wo = H // s, W // s
  m = np.zeros((Ho, Wo, co, H, W, ci))
  for ph in range(Ho):
    for pw in range(Wo):
      for qh in range(kh):
        for qw in range(kw):
          m[ph, pw, :, (s * ph + qh - lo_h) % H, (s * pw + qw - lo_w) % W, :] += k[qh, qw].T
  return m.reshape(Ho * Wo * co, H * W * ci)


def _top(m):
  return np.linalg.svd(m, compute_uv=False)[0]


@pytest.mark.parametrize('k,H,W,ci,co,s', [(3, 6, 6, 2, 3, 1), (3, 8, 8, 2, 3, 2), (5, 4, 4, 1, 2, 1),
                                           (2, 6, 4, 3, 2, 2), (3, 5, 7, 2, 2, 1), (4, 8, 8, 2, 2, 4)])
def test_fft_matches_explicit_circular_matrix(k, H, W, ci, co, s):
  kernel = jax.random.normal(jax.random.PRNGKey(k * H + s), (k, k, ci, co))
  by_hand = circular_matrix_by_hand(kernel, H, W, s)
  # Our conv (used by 'power') is the same operator as the hand-written one.
  np.testing.assert_allclose(explicit_matrix(kernel, (H, W, ci), s, 'CIRCULAR'), by_hand, atol=1e-5)
  sigma, v = conv_operator_norm(kernel, (H, W, ci), strides=s, padding='CIRCULAR', method='fft')
  assert v is None
  np.testing.assert_allclose(sigma, _top(by_hand), rtol=1e-5)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), ci=st.sampled_from([1, 3]),
       co=st.sampled_from([1, 2]), s=st.sampled_from([1, 2]), mh=st.integers(1, 4),
       mw=st.integers(1, 4), seed=st.integers(0, 999))
def test_property_fft_exact_and_reshape_bounds(kh, kw, ci, co, s, mh, mw, seed):
  H, W = s * mh, s * mw
  kernel = jnp.asarray(np.random.default_rng(seed).standard_normal((kh, kw, ci, co)), jnp.float32)
  true = _top(circular_matrix_by_hand(kernel, H, W, s))
  fft, _ = conv_operator_norm(kernel, (H, W), strides=s, method='fft')
  np.testing.assert_allclose(fft, true, rtol=1e-5, atol=1e-6)
  if s == 1 and H >= kh and W >= kw:
    # Parseval: reshape <= true <= sqrt(kh kw) reshape for stride-1 circular convs.
    r, _ = conv_operator_norm(kernel, (H, W), method='reshape')
    assert r <= true * (1 + 1e-5) and true <= np.sqrt(kh * kw) * r * (1 + 1e-5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(k=st.sampled_from([1, 3]), ci=st.sampled_from([1, 3]), co=st.just(2),
       s=st.sampled_from([1, 2]), m=st.sampled_from([2, 4]), seed=st.integers(0, 999))
def test_property_power_agrees_with_fft_on_circular(k, ci, co, s, m, seed):
  kernel = jnp.asarray(np.random.default_rng(seed).standard_normal((k, k, ci, co)), jnp.float32)
  shape = (s * m, s * m, ci)
  fft, _ = conv_operator_norm(kernel, shape, strides=s, method='fft')
  power, v = conv_operator_norm(kernel, shape, strides=s, method='power', iters=3000, tol=1e-9,
                                key=jax.random.PRNGKey(seed + 1))
  chex.assert_shape(v, shape)
  # Power iteration approaches from below; a tiny gap between the top two
  # singular values slows it, so the check is one-sided plus 1e-3 closeness.
  assert power <= fft * (1 + 1e-5)
  np.testing.assert_allclose(power, fft, rtol=1e-3)


@pytest.mark.parametrize('padding,s', [('SAME', 1), ('SAME', 2), ('VALID', 1), (((1, 0), (2, 1)), 2)])
def test_power_matches_explicit_matrix_any_padding(padding, s):
  kernel = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 2, 3))
  true = _top(explicit_matrix(kernel, (6, 6, 2), s, padding))
  sigma, _ = conv_operator_norm(kernel, (6, 6, 2), strides=s, padding=padding, method='power',
                                iters=3000, tol=1e-9)
  np.testing.assert_allclose(sigma, true, rtol=1e-4)


def test_power_warm_start_and_gradient_match_fft():
  kernel = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 2, 2))
  shape = (8, 8, 2)
  # tol=0 runs all iterations: v itself (not only sigma) reaches float32 accuracy.
  _, v = conv_operator_norm(kernel, shape, method='power', iters=3000, tol=0.0)
  # Warm-started: a few iterations from the carried vector are already exact.
  sigma, _ = conv_operator_norm(kernel, shape, method='power', v=v, iters=2, tol=0.0)
  fft, _ = conv_operator_norm(kernel, shape, method='fft')
  np.testing.assert_allclose(sigma, fft, rtol=1e-5)
  g_power = jax.grad(lambda k: conv_operator_norm(k, shape, method='power', v=v, iters=2,
                                                  tol=0.0)[0] ** 2)(kernel)
  g_fft = jax.grad(lambda k: conv_operator_norm(k, shape, method='fft')[0] ** 2)(kernel)
  # The top singular value is a conjugate-frequency pair here; the gradient is
  # still unique. float32 power iteration gets it to ~1e-3 of its norm.
  assert jnp.linalg.norm(g_power - g_fft) <= 2e-3 * jnp.linalg.norm(g_fft)


def test_reshape_is_looser_than_true_norm_here():
  # A kernel whose taps all share one matrix: at frequency 0 they add up, so
  # the true norm is kh kw ||K_0|| while the reshape sees sqrt(kh kw) ||K_0||.
  k0 = jnp.array([[1.0, 0.5], [0.0, 2.0]])
  kernel = jnp.broadcast_to(k0, (3, 3, 2, 2))
  fft, _ = conv_operator_norm(kernel, (6, 6), method='fft')
  r, _ = conv_operator_norm(kernel, (6, 6), method='reshape')
  top = _top(np.asarray(k0))
  np.testing.assert_allclose(fft, 9 * top, rtol=1e-5)
  np.testing.assert_allclose(r, 3 * top, rtol=1e-5)


def test_bad_arguments():
  kernel = jnp.ones((3, 3, 1, 1))
  with pytest.raises(ValueError, match='CIRCULAR'):
    conv_operator_norm(kernel, (4, 4), padding='SAME', method='fft')
  with pytest.raises(ValueError, match='divisible'):
    conv_operator_norm(kernel, (5, 4), strides=2, method='fft')
  with pytest.raises(ValueError, match='method'):
    conv_operator_norm(kernel, (4, 4), method='svd')


def test_power_reports_iterations_and_warns_when_unconverged():
  kernel = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 2, 3))
  with pytest.warns(RuntimeWarning, match='conv_operator_norm: power iteration stopped after 2 '):
    sigma, _, info = conv_operator_norm(kernel, (6, 6, 2), padding='SAME', method='power',
                                        iters=2, tol=1e-7, return_info=True)
    jax.block_until_ready(sigma)
    jax.effects_barrier()
  assert int(info['iterations']) == 2 and not bool(info['converged'])
  _, _, info = conv_operator_norm(kernel, (6, 6), method='fft', return_info=True)
  assert int(info['iterations']) == 0 and bool(info['converged'])
