"""The ensemble's compile-ahead (``ensemble._CompileAhead``): once a point
outlives a chunk, the later members' programs are compiled before they are
reached, and they see what the caller's thread sees: traced with the caller's
thread-local jax config and context variables, as when the cascade compiled
them itself."""
import contextlib
import contextvars

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from robustjax.attacks import evaluate_robust_accuracy
from tests.helpers import count_compiles
from tests.models import random_affine

K = jax.random.PRNGKey(0)
# Two members, a few steps: APGD-CE leaves points robust, so Square's program
# is compiled ahead (in the pool) while APGD-CE's results are read.
TWO = dict(version='custom', attacks=('apgd-ce', 'square'), n_iter=5, square_queries=10,
           warn=False)

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
    r = evaluate_robust_accuracy(model, x, y, eps=1e-3, norm='l2', key=K, **TWO)
  finally:
    _SIGN.reset(token)
  assert r['clean_accuracy'] == 1.0
  assert r['robust_accuracy'] == 1.0, r['per_attack']   # Square (compiled ahead) broke none
  np.testing.assert_array_equal(r['x_adv'], np.asarray(x))


def test_model_under_the_callers_mesh_context():
  # with_sharding_constraint with a PartitionSpec needs the mesh that
  # jax.set_mesh put in the caller's thread.
  f, _, _, x, y = random_affine(12, 6, 4, 16)
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  model = lambda a: f(jax.lax.with_sharding_constraint(a, P('data')))
  kw = dict(eps=0.1, norm='linf', key=K, **TWO)
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
                              **TWO)
  assert r['per_attack'][0]['broken'] < 16   # points left for Square: compiled ahead
  assert sorted(names) == ['jit(_attack_chunk)'] * 2 + ['jit(_forward)'], names


def test_later_programs_compile_before_their_member_is_reached():
  # After APGD's program has run and a point outlived its chunk, FAB-T's and
  # Square's programs (not APGD-T's: it shares APGD's) are compiling.
  from robustjax.attacks import common, ensemble
  f, _, _, x, y = random_affine(14, 6, 4, 16)
  b = ensemble._budgets('standard', dict(n_iter=3, fab_steps=3, square_queries=5))
  members = ensemble._members(ensemble.VERSION_ATTACKS['standard'], 'linf', b, 4, False)
  logits_fn, yi = common.multiclass(f), np.asarray(y, np.int32)
  args = lambda m, rank, target, take: (logits_fn, np.asarray(x)[take], yi[take], take,
                                        target[take], K, m.tag, rank, 0, m.restarts, 1, 0.1, None)
  with contextlib.closing(ensemble._CompileAhead(members, args, yi, 16)) as ahead:
    ahead.reach(members[0][0])
    ahead.start()
    ahead.start()   # once only
    futures = dict(ahead._futures)
    for m, _ in members[1:]:
      ahead.reach(m)   # waits for its program (raises what compiling raised)
  assert sorted(p.kind for p in futures) == ['fab-t', 'square']
  assert all(fu.done() for fu in futures.values())
