"""Linear readouts re-fitted on frozen features (Paper B's "new head" protocol).

``fit_logistic_regression`` minimises the mean multinomial cross-entropy plus
``l2 / 2 * ||kernel||^2`` (the bias is not penalised, as in scikit-learn's
lbfgs solver, whose ``C`` equals ``1 / (l2 * n)``) with optax's L-BFGS and a
zoom line search, inside one jit-compiled ``lax.while_loop``. It starts from
zeros and uses no randomness, so it is deterministic. The objective is
strictly convex in the kernel and the softmax is shift invariant in the bias,
so predicted probabilities are unique; the bias is returned centred (zero
mean), which fixes the free shift.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def linear_head(params: dict, features: jax.Array) -> jax.Array:
  """Logits ``features @ kernel + bias``."""
  return features @ params['kernel'] + params['bias']


def _objective(params, features, labels, l2):
  logits = linear_head(params, features)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return ce + 0.5 * l2 * jnp.sum(params['kernel'] ** 2)


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_iter'))
def _fit(features, labels, l2, tol, *, num_classes, max_iter):
  f = features.shape[1]
  params = {'kernel': jnp.zeros((f, num_classes), features.dtype),
            'bias': jnp.zeros((num_classes,), features.dtype)}
  fun = functools.partial(_objective, features=features, labels=labels, l2=l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad)

  def cont(carry):
    _, state, gnorm = carry
    return (optax.tree.get(state, 'count') < max_iter) & (gnorm > tol)

  params, _, _ = jax.lax.while_loop(cont, step, (params, opt.init(params), jnp.inf))
  bias = params['bias'] - jnp.mean(params['bias'])
  return {'kernel': params['kernel'], 'bias': bias}


def fit_logistic_regression(features: jax.Array, labels: jax.Array, *, num_classes: int,
                            l2: float = 1e-4, max_iter: int = 500,
                            tol: float = 1e-6) -> dict:
  """Multinomial logistic regression; returns {'kernel': (F, C), 'bias': (C,)}.

  Args:
    features: (n, F) frozen features. labels: (n,) integers in [0, C).
    num_classes: C (>= 2; binary tasks use two classes with labels 0/1).
    l2: weight of ``0.5 * ||kernel||^2`` next to the mean cross-entropy.
    max_iter: L-BFGS iterations at most; tol: stop when ||grad|| <= tol.
  """
  features = jnp.asarray(features, jnp.float32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  return _fit(features, labels, jnp.float32(l2), jnp.float32(tol),
              num_classes=int(num_classes), max_iter=int(max_iter))


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
