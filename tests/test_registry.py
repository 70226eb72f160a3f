"""attacks.registry: one table of attack names, used by the ensemble and adversarial_distance."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import ensemble, registry
from robustjax.attacks.apgd import apgd
from robustjax.attacks.decision import decision_attack
from robustjax.attacks.fab import fab
from robustjax.attacks.minimal import bisection, fmn
from robustjax.attacks.square import square
from robustjax.attacks.registry import FIXED, MINIMAL
from robustjax.metrics import robustness
from tests.models import random_affine

K = jax.random.PRNGKey(0)

# What each name must run: (function, the keyword arguments its name fixes).
EXPECTED = {
    FIXED: {'apgd-ce': (apgd, {'loss': 'ce'}), 'apgd-dlr': (apgd, {'loss': 'dlr'}),
            'apgd-t': (apgd, {'loss': 'dlr-t'}), 'fab': (fab, {}),
            'fab-t': (fab, {}), 'fmn': (fmn, {}), 'square': (square, {})},
    MINIMAL: {'fmn': (fmn, {}), 'ddn': (fmn, {}),
              'bisection': (bisection, {}),
              'hopskipjump': (decision_attack, {'method': 'hopskipjump'}),
              'tangent': (decision_attack, {'method': 'tangent'})},
}
# The ensemble's compiled program per fixed attack.
FAMILY = {'apgd-ce': 'apgd', 'apgd-dlr': 'apgd', 'apgd-t': 'apgd', 'fab': 'fab',
          'fab-t': 'fab-t', 'fmn': 'fmn', 'square': 'square'}


@pytest.fixture(scope='module')
def affine():
  f, _, _, x, pred = random_affine(3, 6, 4, 8)
  return f, x, pred


def _one_line(excinfo, prefix):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  assert msg.startswith(prefix), msg
  return msg


def test_names_are_the_ones_the_library_accepts():
  assert registry.names(FIXED) == ensemble.ATTACKS == tuple(EXPECTED[FIXED])
  assert registry.names(MINIMAL) == robustness.DISTANCE_METHODS == tuple(EXPECTED[MINIMAL])
  assert set(ensemble.TARGETED) == {'apgd-t', 'fab-t', 'fmn'}
  assert set(ensemble.WHITE_BOX) == set(ensemble.ATTACKS) - {'square'}
  for kind in (FIXED, MINIMAL):
    for name in registry.names(kind):
      entry = registry.get(name, kind)
      function, options = EXPECTED[kind][name]
      assert (entry.name, entry.kind, entry.function, dict(entry.options)) == (
          name, kind, function, options)
      assert set(entry.norms) <= {'l2', 'linf'} and entry.norms
  with pytest.raises(ValueError) as e:
    registry.names('distance')
  _one_line(e, "kind: must be one of ('fixed', 'minimal'), got 'distance'")


def test_budget_fields_are_real_arguments():
  # 'fixed': the ensemble's keyword arguments, with each version's values; 'minimal': the
  # function's own keywords, with its defaults.
  for name in registry.names(FIXED):
    d = registry.defaults(name, FIXED, 'plus')
    assert d and all(v == ensemble.VERSION_BUDGETS['plus'][k] for k, v in d.items())
  assert registry.defaults('fmn', MINIMAL) == dict(steps=100, targets=9, refine_steps=12)
  assert registry.defaults('tangent', MINIMAL) == dict(iterations=40, init_evals=100,
                                                       max_evals=10_000)
  assert registry.defaults('bisection', MINIMAL)['pgd_steps'] == 20


def test_each_fixed_name_builds_its_ensemble_program():
  b = ensemble.VERSION_BUDGETS['custom']
  members = ensemble._members(registry.names(FIXED), 'linf', b, 10, False)
  for (m, note), name in zip(members, registry.names(FIXED)):
    entry = registry.get(name, FIXED)
    assert note is None and m.name == name
    assert m.program.kind == entry.family == FAMILY[name]
    if entry.family == 'apgd':   # 10 classes: the loss the name fixes runs unchanged
      assert m.loss == entry.options['loss'] and m.n_iter == b['n_iter']
      assert m.restarts == (1 if name == 'apgd-t' else b['restarts'])
  # APGD's losses share one program; the others each have their own.
  programs = {m.name: m.program for m, _ in members}
  assert programs['apgd-ce'] == programs['apgd-dlr'] == programs['apgd-t']
  assert len(set(programs.values())) == 5


@pytest.mark.parametrize('name', registry.names(MINIMAL))
def test_each_minimal_name_dispatches_to_its_function(name, affine, monkeypatch):
  f, x, y = affine
  entry = registry.get(name, MINIMAL)
  calls = []

  def spy(predict_fn, xb, yb, **kw):
    calls.append(kw)
    d = jnp.full((xb.shape[0],), 0.5)
    q = jnp.full((xb.shape[0],), 7)
    return (xb + 1.0, d, q) if 'method' in kw else (xb + 1.0, d)

  monkeypatch.setitem(registry.REGISTRY[MINIMAL], name, entry._replace(function=spy))
  out = robustness.adversarial_distance(f, x, y, method=name, key=K, batch_size=4, steps=3)
  assert len(calls) == 2   # 8 correct points, batches of 4
  for b, kw in enumerate(calls):
    assert {k: kw[k] for k in entry.options} == dict(entry.options)
    assert kw['steps'] == 3 and kw['bounds'] is None
    # Deterministic FMN gets no key; the others one per batch.
    if entry.random:
      np.testing.assert_array_equal(kw['key'], jax.random.fold_in(K, b))
    else:
      assert 'key' not in kw
  assert out['method'] == ('fmn' if name == 'ddn' else name)
  assert (out['queries'] is None) == (name not in ('hopskipjump', 'tangent'))


def test_unknown_names_are_refused_with_the_registry_names(affine):
  f, x, y = affine
  with pytest.raises(ValueError) as e:
    ensemble.evaluate_robust_accuracy(f, x, y, eps=0.1, norm='l2', key=K, attacks=('pgd',))
  msg = _one_line(e, 'attacks: must be one of ')
  assert str(registry.names(FIXED)) in msg and "got 'pgd'" in msg
  with pytest.raises(ValueError) as e:
    robustness.adversarial_distance(f, x, y, method='deepfool', key=K)
  msg = _one_line(e, 'method: must be one of ')
  assert str(registry.names(MINIMAL)) in msg and "got 'deepfool'" in msg


@pytest.mark.parametrize('name', ['bisection', 'tangent', 'hopskipjump', 'ddn'])
def test_ensemble_refuses_a_distance_method(name, affine):
  f, x, y = affine
  with pytest.raises(ValueError) as e:
    ensemble.evaluate_robust_accuracy(f, x, y, eps=0.1, norm='l2', key=K, attacks=(name,))
  msg = _one_line(e, f"attacks: {name!r} is a minimal-distance method (registry kind 'minimal'")
  assert 'adversarial_distance' in msg and 'eval.distance_attacks' in msg
  assert str(registry.names(FIXED)) in msg


def test_adversarial_distance_refuses_a_fixed_radius_attack_and_a_wrong_norm(affine):
  f, x, y = affine
  with pytest.raises(ValueError) as e:
    robustness.adversarial_distance(f, x, y, method='apgd-ce', key=K)
  msg = _one_line(e, "method: 'apgd-ce' is a fixed-radius attack (registry kind 'fixed'")
  assert 'eval.attacks' in msg and str(registry.names(MINIMAL)) in msg
  with pytest.raises(ValueError) as e:
    robustness.adversarial_distance(f, x, y, method='tangent', key=K, norm='linf')
  _one_line(e, "norm: 'tangent' supports ('l2',), got 'linf'")


def test_robust_accuracy_refuses_the_former_step_size_keyword(affine):
  f, x, y = affine
  kw = dict(eps=0.1, norm='l2', steps=2, restarts=1, key=K)
  with pytest.raises(TypeError) as e:
    robustness.robust_accuracy(f, x, y, step_size=0.25, **kw)
  msg = _one_line(e, 'step_size: robust_accuracy() now takes rel_step_size (relative to eps')
  assert 'rel_step_size=0.25' in msg
  with pytest.raises(TypeError, match=re.escape(
      "robust_accuracy() got an unexpected keyword argument 'stepsize'")):
    robustness.robust_accuracy(f, x, y, rel_step_size=0.25, stepsize=0.1, **kw)
