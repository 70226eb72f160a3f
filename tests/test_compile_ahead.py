"""The ensemble's compile-ahead (``ensemble._compiled_ahead``) sees what the
caller's thread sees: programs are traced with the caller's thread-local jax
config and context variables, as when the cascade compiled them itself."""
import contextvars

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from robustjax.attacks import evaluate_robust_accuracy
from tests.helpers import count_compiles
from tests.models import random_affine

K = jax.random.PRNGKey(0)
# One member, a few steps: its program is compiled ahead like any member's.
ONE = dict(version='custom', attacks=('apgd-ce',), n_iter=5, warn=False)

_SIGN = contextvars.ContextVar('sign', default=-1.0)


def test_model_reading_a_context_variable_is_attacked_as_the_caller_sees_it():
  # The caller's model is f; traced where the variable keeps its default it
  # would be -f, whose clean predictions are all wrong: the attacks'
  # re-check would count every point as broken without moving it. At l2
  # 1e-3 no point of f is broken (its smallest margin is far larger).
  f, _, _, x, y = random_affine(11, 5, 4, 16)
  model = lambda a: _SIGN.get() * f(a)
  token = _SIGN.set(1.0)
  try:
    r = evaluate_robust_accuracy(model, x, y, eps=1e-3, norm='l2', key=K, **ONE)
  finally:
    _SIGN.reset(token)
  assert r['clean_accuracy'] == 1.0
  assert r['robust_accuracy'] == 1.0, r['per_attack']
  np.testing.assert_array_equal(r['x_adv'], np.asarray(x))


def test_model_under_the_callers_mesh_context():
  # with_sharding_constraint with a PartitionSpec needs the mesh that
  # jax.set_mesh put in the caller's thread.
  f, _, _, x, y = random_affine(12, 6, 4, 16)
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  model = lambda a: f(jax.lax.with_sharding_constraint(a, P('data')))
  kw = dict(eps=0.1, norm='linf', key=K, **ONE)
  with jax.set_mesh(mesh):
    r = evaluate_robust_accuracy(model, x, y, **kw)
  plain = evaluate_robust_accuracy(f, x, y, **kw)
  np.testing.assert_array_equal(r['robust'], plain['robust'])
  np.testing.assert_array_equal(r['x_adv'], plain['x_adv'])


def test_programs_compile_once_under_a_thread_local_jax_config():
  # default_matmul_precision is part of jax's cache key: a program compiled
  # ahead without it would be compiled again by the cascade.
  f, _, _, x, y = random_affine(13, 7, 4, 16)
  with jax.default_matmul_precision('highest'):
    r, names = count_compiles(evaluate_robust_accuracy, f, x, y, eps=0.1, norm='l2', key=K,
                              **ONE)
  assert r['per_attack'][0]['broken'] < 16   # APGD ran
  assert sorted(names) == ['jit(_attack_chunk)', 'jit(_forward)'], names
