"""Linear readouts re-fitted on frozen features (Paper B's "new head" protocol).

``fit_logistic_regression`` minimises the mean multinomial cross-entropy plus
``l2 / 2 * ||kernel||^2`` (the bias is not penalised, as in scikit-learn's
lbfgs solver, whose ``C`` equals ``1 / (l2 * n)``) with optax's L-BFGS and a
zoom line search, inside one jit-compiled ``lax.while_loop``. It starts from
zeros and uses no randomness, so it is deterministic. The objective is
strictly convex in the kernel and the softmax is shift invariant in the bias,
so predicted probabilities are unique; the bias is returned centred (zero
mean), which fixes the free shift.

Scaling. L-BFGS in float32 on raw features stalls far from the optimum when
columns are large (features x 100) or of very different scales (1e-2 to 1e2):
the Hessian's diagonal spans many decades and the line search runs out of
float32 resolution. The solver therefore works on standardised features
``z = (x - mean) / scale`` with ``scale_j = sqrt(var_j + l2)`` (the square
root of column j's Hessian diagonal up to the softmax curvature, so no
direction is left unpreconditioned, not even a constant column), an exact
change of variables: ``kernel = V / scale``, ``bias = c - mean @ kernel``.
The penalty stays on the ORIGINAL kernel, so row j of the standardised
kernel V carries weight ``l2 / scale_j^2``; the optimum is the same problem's.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def linear_head(params: dict, features: jax.Array) -> jax.Array:
  """Logits ``features @ kernel + bias``."""
  return features @ params['kernel'] + params['bias']


def _objective(params, features, labels, l2):
  """The problem as stated: mean cross-entropy + 0.5 * l2 * ||kernel||^2 (l2 a scalar
  or one weight per feature row)."""
  logits = linear_head(params, features)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  l2 = jnp.asarray(l2)
  penalty = l2[:, None] * params['kernel'] ** 2 if l2.ndim else l2 * params['kernel'] ** 2
  return ce + 0.5 * jnp.sum(penalty)


def _warn_unconverged(grad_norm, iterations, objective, tol, max_iter):
  if not grad_norm <= tol:   # also catches NaN
    warnings.warn(f'fit_logistic_regression: L-BFGS stopped after {int(iterations)} of '
                  f'max_iter={int(max_iter)} iterations with gradient norm {float(grad_norm):.3g} '
                  f'> tol={float(tol):.3g} (objective {float(objective):.6g}); raise max_iter or '
                  'check the features for NaN/inf', RuntimeWarning)


# max_iter is traced: one compiled program per shape serves every budget.
@functools.partial(jax.jit, static_argnames=('num_classes',))
def _fit(features, labels, l2, tol, max_iter, *, num_classes):
  f = features.shape[1]
  mean = jnp.mean(features, axis=0)
  centred = features - mean
  scale = jnp.sqrt(jnp.mean(centred ** 2, axis=0) + l2)
  scale = jnp.where(scale > 0, scale, 1.0)   # a constant column with l2 = 0: nothing to scale
  z = centred / scale
  params = {'kernel': jnp.zeros((f, num_classes), features.dtype),
            'bias': jnp.zeros((num_classes,), features.dtype)}
  fun = functools.partial(_objective, features=z, labels=labels, l2=l2 / scale ** 2)
  opt = optax.lbfgs()

  def step(carry):
    params, state, value, grad = carry
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    # The line search leaves value and gradient at the accepted point in the state.
    return (optax.apply_updates(params, updates), state, optax.tree.get(state, 'value'),
            optax.tree.get(state, 'grad'))

  def cont(carry):
    _, state, _, grad = carry
    return (optax.tree.get(state, 'count') < max_iter) & (optax.tree.norm(grad) > tol)

  value, grad = jax.value_and_grad(fun)(params)
  params, state, value, grad = jax.lax.while_loop(
      cont, step, (params, opt.init(params), value, grad))
  info = {'grad_norm': optax.tree.norm(grad), 'iterations': optax.tree.get(state, 'count'),
          'objective': value}
  info['converged'] = info['grad_norm'] <= tol
  # On the host, per seed when vmapped (the callback is unrolled over the batch).
  jax.debug.callback(_warn_unconverged, info['grad_norm'], info['iterations'], value, tol,
                     max_iter)
  kernel = params['kernel'] / scale[:, None]
  bias = params['bias'] - mean @ kernel
  return {'kernel': kernel, 'bias': bias - jnp.mean(bias)}, info


def fit_logistic_regression(features: jax.Array, labels: jax.Array, *, num_classes: int,
                            l2: float = 1e-4, max_iter: int = 500, tol: float = 1e-6,
                            return_info: bool = False):
  """Multinomial logistic regression; returns {'kernel': (F, C), 'bias': (C,)}.

  Args:
    features: (n, F) frozen features (cast to float32). labels: (n,) integers
      in [0, C) (checked when concrete; under vmap/jit they are traced).
    num_classes: C (>= 2; binary tasks use two classes with labels 0/1).
    l2: weight (>= 0) of ``0.5 * ||kernel||^2`` next to the mean cross-entropy.
    max_iter: L-BFGS iterations at most (>= 1).
    tol: stop when the gradient norm of the standardised problem (module
      docstring) is <= tol (> 0). That gradient is the original one with row j
      of the kernel's gradient divided by ``scale_j``, so tol is relative to
      the features' spread, not to their units.
    return_info: also return a dict of diagnostics: ``grad_norm`` (the norm
      tol is compared with), ``iterations`` (L-BFGS steps run), ``objective``
      (the objective at the returned params), ``converged`` (grad_norm <= tol);
      stacked over seeds when vmapped.

  Returns:
    params, or (params, info) with ``return_info``.

  Raises:
    ValueError / TypeError on bad shapes or arguments (one line each).
  Warns:
    RuntimeWarning (one line, from the host, one per seed under vmap) when the
    tolerance was not met within max_iter.
  """
  if getattr(features, 'ndim', np.ndim(features)) != 2:
    raise ValueError(f'features must be (n, F), got shape {np.shape(features)}')
  if getattr(labels, 'ndim', np.ndim(labels)) != 1 or np.shape(labels)[0] != np.shape(features)[0]:
    raise ValueError(f'labels must be (n,) with n = {np.shape(features)[0]} rows of features, '
                     f'got shape {np.shape(labels)}')
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
      or num_classes < 2:
    raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}')
  if not np.isfinite(l2) or l2 < 0:
    raise ValueError(f'l2 must be finite and >= 0, got {l2!r}')
  if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f'max_iter must be an integer >= 1, got {max_iter!r}')
  if not np.isfinite(tol) or tol <= 0:
    raise ValueError(f'tol must be finite and > 0, got {tol!r}')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f'labels must be integers in [0, {num_classes}), got dtype '
                    f'{jnp.result_type(labels)}')
  if not isinstance(labels, jax.core.Tracer):
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= num_classes:
      raise ValueError(f'labels must lie in [0, {num_classes}) (num_classes={num_classes}), '
                       f'got range [{lo}, {hi}]')
  features = jnp.asarray(features, jnp.float32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  params, info = _fit(features, labels, jnp.float32(l2), jnp.float32(tol), jnp.int32(max_iter),
                      num_classes=int(num_classes))
  return (params, info) if return_info else params


def _readout(feature_fn, params, x):
  return linear_head(params, feature_fn(x))


def readout_predict_fn(feature_fn: Callable, params: dict) -> jax.tree_util.Partial:
  """predict_fn(x) = linear_head(params, feature_fn(x)), as a jit-friendly Partial.

  ``feature_fn`` should itself be a ``Partial`` (e.g. from
  ``robustjax.models.apply.bind``) so attacks on the composed model reuse
  their compiled code across parameter values.
  """
  if not isinstance(feature_fn, jax.tree_util.Partial):
    feature_fn = jax.tree_util.Partial(feature_fn)
  return jax.tree_util.Partial(_readout, feature_fn, params)
