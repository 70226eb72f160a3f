"""Operator norm of a 2-D convolution layer: the true one, not the reshaped kernel's.

A conv layer is a linear map x (H, W, c_in) -> y (H', W', c_out); its operator
norm depends on the input size, the stride and the padding. Three methods:

- ``fft``: exact for circular padding (Sedghi, Gupta & Long 2019). A circular
  stride-1 conv is block-circulant, so the 2-D DFT block-diagonalises it: its
  singular values are those of the c_out x c_in matrices
  ``A(f) = sum_q K[q]^T exp(2 pi i <f, q> / N)``, one per frequency f. A
  stride s keeps every s-th output: split the input into its s^2 polyphase
  components x_r[m] = x[s m + r] (an orthogonal re-indexing) and the layer is a
  stride-1 circular conv on the (H/s, W/s) grid with s^2 c_in input channels
  and taps K_r[a] = K[s a + r]; the same per-frequency SVD then applies to the
  c_out x (s^2 c_in) blocks. Needs H and W divisible by the stride.
- ``power``: power iteration through the conv and its transpose (``jax.vjp``),
  for any padding and stride; the vector (input-shaped) is returned so a
  caller can warm-start the next call.
- ``reshape``: sigma_max of the kernel reshaped to (kh kw c_in, c_out), the
  cheap proxy. For circular stride-1 convs with N >= k,
  ``reshape <= true <= sqrt(kh kw) * reshape`` (Parseval over frequencies).

Layouts follow flax: kernel (kh, kw, c_in, c_out), inputs NHWC. Every method
returns ``(sigma, v)``; ``v`` is the power vector (passed through unchanged by
``fft`` and ``reshape``). sigma is differentiable in the kernel.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.spectral import power_iteration

METHODS = ('fft', 'power', 'reshape')


def _pair(s) -> tuple[int, int]:
  return (int(s), int(s)) if np.ndim(s) == 0 else tuple(int(v) for v in s)


def _spatial(input_shape: Sequence[int]) -> tuple[int, int]:
  if len(input_shape) not in (2, 3):
    raise ValueError(f'input_shape must be (H, W) or (H, W, c_in), got {input_shape}')
  return int(input_shape[0]), int(input_shape[1])


def conv(kernel: jax.Array, x: jax.Array, *, strides=1, padding='CIRCULAR') -> jax.Array:
  """The layer as a function of one input x (H, W, c_in) -> (H', W', c_out).

  padding: 'CIRCULAR' (wrap around, as flax's ``padding='CIRCULAR'``), 'SAME',
  'VALID', or explicit ((lo, hi), (lo, hi)) zero padding.
  """
  strides = _pair(strides)
  if isinstance(padding, str) and padding.upper() == 'CIRCULAR':
    kh, kw = kernel.shape[:2]
    # Total pad k - 1 with a wrap: exactly ceil(N / s) outputs, each a full
    # circular window; the offset is a circular shift, which no norm sees.
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)] + [(0, 0)]
    x = jnp.pad(x, pads, mode='wrap')
    padding = 'VALID'
  y = jax.lax.conv_general_dilated(x[None], kernel, strides, padding,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y[0]


def fft_blocks(kernel: jax.Array, input_shape: Sequence[int], strides=1) -> jax.Array:
  """The per-frequency matrices (H/s, W/s, c_out, s_h s_w c_in) of a circular conv."""
  (kh, kw, c_in, c_out), (H, W), (sh, sw) = kernel.shape, _spatial(input_shape), _pair(strides)
  if H % sh or W % sw:
    raise ValueError(f'fft needs the input size {(H, W)} divisible by the stride {(sh, sw)}')
  (mh, mw), (ah, aw) = (H // sh, W // sw), (-(-kh // sh), -(-kw // sw))
  # Polyphase: tap q = s a + r -> K[a, r]; taps past the kernel are zero.
  k = jnp.pad(kernel, ((0, ah * sh - kh), (0, aw * sw - kw), (0, 0), (0, 0)))
  k = k.reshape(ah, sh, aw, sw, c_in, c_out)
  # DFT of the taps on the (mh, mw) grid. A direct sum over taps (not an FFT
  # of a zero-padded kernel) also handles kernels larger than the grid, whose
  # taps wrap around and add up.
  eh = jnp.exp(2j * jnp.pi * np.outer(np.arange(mh), np.arange(ah)) / mh)
  ew = jnp.exp(2j * jnp.pi * np.outer(np.arange(mw), np.arange(aw)) / mw)
  blocks = jnp.einsum('fa,gb,arbsio->fgorsi', eh, ew, k.astype(eh.dtype))
  return blocks.reshape(mh, mw, c_out, sh * sw * c_in)


def conv_operator_norm(kernel: jax.Array, input_shape: Sequence[int], *, strides=1,
                       padding='CIRCULAR', method: str = 'fft', v: jax.Array | None = None,
                       iters=100, tol: float = 1e-6, key: jax.Array | None = None,
                       return_info: bool = False):
  """(sigma_max of the conv layer on inputs of ``input_shape``, power vector).

  Args:
    kernel: (kh, kw, c_in, c_out).
    input_shape: (H, W) or (H, W, c_in) of one input.
    strides: int or (sh, sw).
    padding: 'CIRCULAR' | 'SAME' | 'VALID' | ((lo, hi), (lo, hi)); ``fft`` is
      exact for 'CIRCULAR' only and refuses the others.
    method: 'fft' | 'power' | 'reshape' (see the module doc).
    v: ``power``'s warm-start vector (H, W, c_in); None starts from a random one.
    iters, tol: ``power``'s iteration budget and relative stopping tolerance.
    key: ``power``'s start when v is None (PRNGKey(0) by default).
    return_info: also return {'iterations', 'residual' (power's final
      relative change of sigma), 'converged'}; fft and reshape are exact
      (0 iterations, residual 0).

  Returns (sigma, v), or (sigma, v, info). ``power`` warns (RuntimeWarning,
  from the host) when tol > 0 was not met within iters.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  sigma, v, info = _conv_operator_norm(kernel, input_shape, strides, padding, method, v, iters,
                                       tol, key)
  if method == 'power':
    power_iteration.warn_unconverged('conv_operator_norm', info, tol)
  return (sigma, v, info) if return_info else (sigma, v)


def _conv_operator_norm(kernel, input_shape, strides, padding, method, v, iters, tol, key):
  # fft and reshape are exact: no iterations, nothing left to converge.
  exact = {'iterations': jnp.zeros((), jnp.int32), 'residual': jnp.zeros((), kernel.dtype),
           'converged': jnp.ones((), bool)}
  strides = _pair(strides)
  if not isinstance(padding, str):
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if method == 'reshape':
    kh, kw, c_in, c_out = kernel.shape
    return jnp.linalg.svd(kernel.reshape(kh * kw * c_in, c_out), compute_uv=False)[0], v, exact
  if method == 'fft':
    if not (isinstance(padding, str) and padding.upper() == 'CIRCULAR'):
      raise ValueError(f"method='fft' is exact for padding='CIRCULAR' only, got {padding!r}; "
                       "use method='power'")
    H, W = _spatial(input_shape)
    if H % strides[0] or W % strides[1]:
      raise ValueError(f'fft needs the input size {(H, W)} divisible by the stride {strides}')
    return _fft_norm(kernel, (H, W), strides), v, exact
  H, W = _spatial(input_shape)
  if v is None:
    k = jax.random.PRNGKey(0) if key is None else key
    v = jax.random.normal(k, (H, W, kernel.shape[2]), kernel.dtype)
    v = v / power_iteration.norm(v)
  return _power_norm(kernel, v, iters, tol, strides, padding)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fft_norm(kernel, hw, strides):
  return jnp.max(jnp.linalg.svd(fft_blocks(kernel, hw, strides), compute_uv=False))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _power_norm(kernel, v, iters, tol, strides, padding):
  fixed = jax.lax.stop_gradient(kernel)
  v, i, residual = power_iteration.iterate_operator(
      lambda x: conv(fixed, x, strides=strides, padding=padding), v, iters=iters, tol=tol,
      return_residual=True)
  info = power_iteration.diagnostics(i, residual, tol)
  # Recomputed with the live kernel: the gradient flows through it, not v.
  return power_iteration.safe_norm(conv(kernel, v, strides=strides, padding=padding)), v, info
