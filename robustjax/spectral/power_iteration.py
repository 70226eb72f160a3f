"""Top singular value of a dense matrix by power iteration on W^T W.

The iteration runs on ``stop_gradient(W)`` and returns its right singular
vector estimate ``v`` (unit norm, no gradient). The value is then recomputed
as ``sigma^2 = ||W v||^2`` *with* the gradient through W, so that

    d sigma^2 / dW = 2 W v v^T = 2 sigma u v^T,   u = W v / sigma,

the gradient of the squared spectral norm at a converged v (Yoshida & Miyato
2017; Paper B). Carrying v from one training step to the next (warm start)
makes a few iterations per step enough, because W moves little per step.

Diagnostics: the reporting entry points (``top_singular_value`` here,
``conv_norm.conv_operator_norm(method='power')``) return, with
``return_info=True``, the iterations run and the final relative change of
sigma (the quantity ``tol`` bounds), and warn on the host (one RuntimeWarning
line, one per matrix under vmap) when ``tol > 0`` was not met within
``iters`` (a tol below float resolution counts as met at 2 ulps). ``tol = 0``
asks for exactly ``iters`` iterations: no warning. The
training penalty's few warm-started iterations per step are a budget, not a
convergence target, and do not warn.

A zero matrix (a zero-initialised readout) is an ordinary input: sigma is
``safe_norm(W v)``, whose gradient at W v = 0 is 0 (the plain sqrt's is NaN
there), so d sigma^2 / dW = 0 at W = 0; and an iteration step whose image is
zero or not finite keeps the current unit vector (any unit vector is a top
singular vector of 0), so the carried vector never collapses to 0 and sigma
follows W once it becomes non-zero.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

_EPS = 1e-30


def norm(v: jax.Array) -> jax.Array:
  """Euclidean norm of all entries (any shape: vectors, conv activations)."""
  return jnp.sqrt(jnp.sum(v * v))


def safe_norm(v: jax.Array) -> jax.Array:
  """``norm(v)`` whose gradient at v = 0 is 0 (the plain sqrt's is NaN there)."""
  sq = jnp.sum(v * v)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _normalize(v: jax.Array) -> jax.Array:
  return v / jnp.maximum(norm(v), _EPS)


def _next_vector(new: jax.Array, v: jax.Array) -> jax.Array:
  """new / ||new||, or v when new is zero or not finite: the carried vector
  stays a unit vector (W = 0 maps every v to 0)."""
  n = norm(new)
  ok = (n > 0) & jnp.isfinite(n)
  return jnp.where(ok, new / jnp.where(ok, n, 1.0), v)


def usable(v: jax.Array) -> jax.Array:
  """Whether v can start a power iteration: finite and not zero (a scalar bool)."""
  n = norm(v)
  return (n > 0) & jnp.isfinite(n)


def initial_vector(key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
  """A random unit vector: almost surely not orthogonal to the top singular vector."""
  return _normalize(jax.random.normal(key, (n,), dtype))


def iterate_operator(op, v: jax.Array, *, iters, tol: float, return_residual: bool = False):
  """Power iteration on A^T A for a linear map ``op`` = A; returns (v, iterations run),
  and with ``return_residual`` the final relative change of ||A v|| too.

  Up to ``iters`` steps v <- A^T A v / ||A^T A v||, stopping once ||A v||
  changes by at most ``tol`` relative. A^T comes from ``jax.vjp`` (so any
  linear JAX function works: a matmul, a strided or padded convolution).
  A step whose image is zero or not finite keeps v (see the module note).
  ``iters`` may be traced (a schedule picks warm-up vs per-step counts inside
  jit). ``op`` must not carry gradients the caller wants: pass stopped arrays.
  """
  v = jax.lax.stop_gradient(v)
  # op is linear, so its VJP at any point is the transpose: build it once.
  _, op_t = jax.vjp(op, v)

  def cond(carry):
    i, _, sigma, prev = carry
    return (i < iters) & (jnp.abs(sigma - prev) > tol * jnp.maximum(sigma, _EPS))

  def body(carry):
    i, v, sigma, _ = carry
    av = op(v)
    # Two operator applications per step; ||A v|| of the current v is the check.
    return i + 1, _next_vector(op_t(av)[0], v), norm(av), sigma

  start = (jnp.zeros((), jnp.int32), v, jnp.full((), -1.0, v.dtype),
           jnp.full((), jnp.inf, v.dtype))
  i, v, sigma, prev = jax.lax.while_loop(cond, body, start)
  if return_residual:
    return v, i, jnp.abs(sigma - prev) / jnp.maximum(sigma, _EPS)
  return v, i


def _warn_unconverged(what, converged, iterations, residual, tol):
  if not converged:
    warnings.warn(f'{what}: power iteration stopped after {int(iterations)} iterations with '
                  f'relative change {float(residual):.3g} > tol={float(tol):.3g}; raise iters',
                  RuntimeWarning)


def diagnostics(iterations, residual, tol) -> dict:
  """{'iterations', 'residual', 'converged'} of a power iteration (jit/vmap friendly).

  A tol below the float resolution counts as met at a change of 2 ulps (sigma's
  last bits can alternate forever; the loop itself still runs to tol or iters);
  tol <= 0 (a fixed budget) always counts as met.
  """
  floor = 2 * jnp.finfo(residual.dtype).eps
  converged = (tol <= 0) | (residual <= jnp.maximum(tol, floor))
  return {'iterations': iterations, 'residual': residual, 'converged': converged}


def warn_unconverged(what: str, info: dict, tol) -> None:
  """One RuntimeWarning line from the host (``what`` names the caller) when
  ``info['converged']`` is False; per matrix under vmap. Call it outside the
  jitted solver, so that executable holds no host callback (a Python
  callback's address keeps a program out of the persistent compilation cache);
  inside a caller's jit it runs with the program."""
  args = (info['converged'], info['iterations'], info['residual'], tol)
  if not any(isinstance(a, jax.core.Tracer) for a in args):
    _warn_unconverged(what, *args)
    return
  # A real branch inside a caller's jit: converged runs (a benchmark's loop)
  # pay no host round trip. Under vmap both branches run: the host checks again.
  jax.lax.cond(info['converged'], lambda: None,
               lambda: jax.debug.callback(functools.partial(_warn_unconverged, what), *args))


def iterate(w: jax.Array, v: jax.Array, *, iters, tol: float, return_residual: bool = False):
  """``iterate_operator`` for a dense matrix w (m, n); v (n,). No gradient."""
  w = jax.lax.stop_gradient(w)
  return iterate_operator(lambda x: w @ x, v, iters=iters, tol=tol,
                          return_residual=return_residual)


def top_singular_value(w: jax.Array, v: jax.Array | None = None, *, iters=100,
                       tol: float = 1e-6, key: jax.Array | None = None,
                       return_info: bool = False):
  """(sigma_max(W), v) for a matrix w (m, n); v (n,) is the right singular vector estimate.

  Args:
    w: (m, n) matrix. A flax Dense kernel (in, out) works as is: W and W^T
      have the same singular values (v then lives in the output space).
    v: warm-start vector (n,) from the previous call; None draws a random one
      from ``key`` (PRNGKey(0) when no key is given).
    iters: maximum iterations (may be traced).
    tol: stop when sigma changes by at most ``tol`` relative (0: run all iters).
    return_info: also return {'iterations', 'residual' (the final relative
      change of sigma), 'converged'}.

  The returned sigma is ``||W v||``: differentiable in w (gradient 2 sigma u
  v^T for sigma^2), constant in v. Rank-zero W gives sigma = 0 with gradient
  0 (``safe_norm``) and returns a unit v.

  Returns (sigma, v), or (sigma, v, info). Warns (RuntimeWarning, from the
  host) when tol > 0 was not met within iters.
  """
  if w.ndim != 2:
    raise ValueError(f'top_singular_value needs a matrix, got shape {w.shape}')
  if v is None:
    v = initial_vector(jax.random.PRNGKey(0) if key is None else key, w.shape[1], w.dtype)
  sigma, v, info = _top_singular_value(w, v, iters, tol)
  warn_unconverged('top_singular_value', info, tol)
  return (sigma, v, info) if return_info else (sigma, v)


@jax.jit
def _top_singular_value(w, v, iters, tol):
  # Compiled once per shape (iters and tol are traced): eager calls from a
  # loop or a test sweep do not re-trace the while_loop every time.
  v, i, residual = iterate(w, v, iters=iters, tol=tol, return_residual=True)
  return safe_norm(w @ v), v, diagnostics(i, residual, tol)
