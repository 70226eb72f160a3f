"""AutoAttack's versions (standard / plus / rand / custom), the randomised-model
interface and its checks, chunks of one compiled size, and compile counts."""
import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import apgd, ensemble, evaluate_robust_accuracy, fab, fmn, square
from robustjax.attacks.common import run_chunked
from robustjax.metrics.robustness import adversarial_distance
from tests import models
from tests.helpers import count_compiles
from tests.models import mlp_logits, random_affine

K = jax.random.PRNGKey(0)
# Tiny budgets: the tests here are about plumbing; known answers live in test_apgd / test_fab.
SMALL = dict(n_iter=5, fab_steps=5, fmn_steps=5, square_queries=20, n_target_classes=3)


@pytest.fixture(scope='module')
def digits_mlp():
  return models.digits_mlp()


# --- The reference's versions --------------------------------------------------

def test_versions_are_the_references_lists_and_budgets():
  # fra31/auto-attack, autoattack.py set_version (linf / l2).
  assert ensemble.VERSION_ATTACKS['standard'] == ('apgd-ce', 'apgd-t', 'fab-t', 'square')
  assert ensemble.VERSION_ATTACKS['plus'] == ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t',
                                              'fab-t')
  assert ensemble.VERSION_ATTACKS['rand'] == ('apgd-ce', 'apgd-dlr')
  budget = lambda version: {m.name: m.budget(9) for m, _ in ensemble._members(
      ensemble.VERSION_ATTACKS[version], 'linf', ensemble.VERSION_BUDGETS[version], 10,
      version == 'rand')}
  std = budget('standard')
  assert std['apgd-ce'] == dict(n_iter=100, restarts=1, loss='ce', rho=0.75)
  assert std['apgd-t'] == dict(n_iter=100, restarts=1, loss='dlr-t', rho=0.75, n_target_classes=9)
  assert std['fab-t'] == dict(n_iter=100, restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
                              n_target_classes=9)
  assert std['square'] == dict(n_queries=5000, p_init=0.8)
  plus = budget('plus')
  assert plus['apgd-ce']['restarts'] == plus['apgd-dlr']['restarts'] == 5
  assert plus['fab']['restarts'] == 5 and 'n_target_classes' not in plus['fab']
  assert plus['apgd-t']['restarts'] == plus['fab-t']['restarts'] == 1
  rand = budget('rand')
  assert rand['apgd-ce'] == dict(n_iter=100, restarts=1, loss='ce', rho=0.75, eot_iter=20)
  assert rand['apgd-dlr']['eot_iter'] == 20
  l2 = {m.name: m for m, _ in ensemble._members(('square',), 'l2',
                                                 ensemble.VERSION_BUDGETS['standard'], 10, False)}
  assert l2['square'].l2_update == 'published'
  assert ensemble.VERSION_BUDGETS['custom']['square_l2_update'] == 'simple'


def test_version_arguments_refused():
  f, _, _, x, y = random_affine(0, 4, 3, 8)
  kw = dict(eps=0.1, norm='l2', key=K)
  with pytest.raises(ValueError, match=r"^version: must be one of"):
    evaluate_robust_accuracy(f, x, y, version='fast', **kw)
  with pytest.raises(ValueError, match=r"^attacks: the 'standard' version fixes its attacks"):
    evaluate_robust_accuracy(f, x, y, version='standard', attacks=('apgd-ce',), **kw)
  with pytest.raises(ValueError, match=r'^batch_size: must be an integer >= 1'):
    evaluate_robust_accuracy(f, x, y, batch_size=0, **kw)
  with pytest.raises(ValueError, match=r'^eot_iter: must be an integer >= 1'):
    evaluate_robust_accuracy(f, x, y, eot_iter=0, **kw)
  with pytest.raises(ValueError, match=r'^square_l2_update: must be one of'):
    evaluate_robust_accuracy(f, x, y, square_l2_update='fast', **kw)
  with pytest.raises(ValueError, match=r"^predict_fn: version='rand' is for randomised models"):
    evaluate_robust_accuracy(f, x, y, version='rand', **kw)
  keyed = lambda x, key: f(x)
  with pytest.raises(ValueError, match=r"^predict_fn: takes \(x, key\), a randomised model"):
    evaluate_robust_accuracy(keyed, x, y, **kw)
  with pytest.raises(ValueError, match=r'^eot_iter: 20 draws need a randomised model'):
    apgd(f, x, y, eps=0.1, norm='l2', key=K, eot_iter=20)


LINF = dict(eps=0.1, norm='linf', key=K, bounds=(0.0, 1.0), warn=False)


@pytest.fixture(scope='module')
def digits_standard(digits_mlp):
  """The default version on the digits MLP's 64 points, linf 0.1, small budgets:
  one chunk (64 < 250), 4 programs, shared by the tests below."""
  f, x, y = digits_mlp
  return evaluate_robust_accuracy(f, x, y, **LINF, **SMALL)


def test_standard_no_weaker_than_custom_small_budgets(digits_mlp, digits_standard):
  f, x, y = digits_mlp
  std = digits_standard
  custom = evaluate_robust_accuracy(f, x, y, version='custom', **LINF, **SMALL)
  assert std['robust_accuracy'] <= custom['robust_accuracy'] + 0.005
  assert std['robust_accuracy'] < std['clean_accuracy']
  assert std['version'] == 'standard' and custom['version'] == 'custom'
  assert [a['name'] for a in std['per_attack']] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  assert [a['name'] for a in custom['per_attack']] == ['apgd-ce', 'apgd-t', 'fmn', 'square']
  assert std['per_attack'][2]['budget'] == dict(n_iter=5, restarts=1, alpha_max=0.1, eta=1.05,
                                                beta=0.9, n_target_classes=3)
  assert any("budgets differ from AutoAttack's 'standard'" in n for n in std['notes'])
  # The reference's log: version line, initial accuracy, per-chunk counts, final accuracy.
  log = std['log']
  assert log[0] == 'using standard version including apgd-ce, apgd-t, fab-t, square.'
  assert log[1] == f"initial accuracy: {std['clean_accuracy']:.2%}"
  assert log[-1] == f"robust accuracy: {std['robust_accuracy']:.2%}"


@pytest.mark.slow
@pytest.mark.parametrize('norm,eps,budgets', [('l2', 0.5, SMALL), ('linf', 0.1, {}),
                                              ('l2', 0.5, {})])
def test_standard_no_weaker_than_custom(digits_mlp, norm, eps, budgets):
  """Small budgets for l2; the published budgets (AutoAttack's exactly) for both norms."""
  f, x, y = digits_mlp
  r = {v: evaluate_robust_accuracy(f, x, y, **dict(LINF, norm=norm, eps=eps), version=v,
                                   **budgets) for v in ('standard', 'custom')}
  assert r['standard']['robust_accuracy'] <= r['custom']['robust_accuracy'] + 0.005
  if not budgets:
    assert r['standard']['notes'] == []


# --- Randomised models: 'rand' (EOT) and the randomness check ----------------------

def _noisy(params, sigma, x, key):
  """The digits MLP behind Gaussian input noise: a randomised defense."""
  noise = jax.random.normal(key, (x.size,)).reshape(x.shape)   # flat draws compile fast on CPU
  return mlp_logits(params, x + sigma * noise)


def test_rand_eot_lowers_robust_accuracy(digits_mlp):
  f, x, y = digits_mlp
  g = jax.tree_util.Partial(_noisy, f.args[0], 0.2)
  kw = dict(eps=0.1, norm='linf', key=K, version='rand', n_iter=5, bounds=(0.0, 1.0), warn=False)
  eot = evaluate_robust_accuracy(g, x, y, **kw)
  single = evaluate_robust_accuracy(g, x, y, eot_iter=1, **kw)
  assert eot['per_attack'][0]['budget']['eot_iter'] == 20
  assert eot['clean_accuracy'] == single['clean_accuracy']   # the same clean draw
  assert eot['robust_accuracy'] < single['robust_accuracy']
  assert eot['randomness'] is None and eot['warnings'] == []


class _PythonNoise:
  """Noise drawn in Python at each call: fixed inside each compiled program,
  different in each one (a randomised model passed as predict_fn(x))."""

  def __init__(self, params):
    self.params, self.calls = params, 0

  def __call__(self, x):
    self.calls += 1
    noise = np.random.default_rng(self.calls).normal(size=x.shape).astype(np.float32)
    return mlp_logits(self.params, x + 0.01 * noise)


def _host_noise(x):
  return x + 0.01 * np.random.default_rng().normal(size=x.shape).astype(x.dtype)


def _callback_noise(params, x):
  """Noise drawn on the host at run time: each run of a compiled program differs."""
  noisy = jax.pure_callback(_host_noise, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
  return mlp_logits(params, noisy)


def test_randomness_check_fires_without_rand(digits_mlp):
  f, x, y = digits_mlp
  # Labels no point has (the noise, sigma 0.01, is too small to reach them):
  # every point starts broken, so no attack runs and nothing but the clean
  # pass compiles; the check runs before the attacks.
  wrong = (np.asarray(jnp.argmax(f(x), -1)) + 1) % 10
  kw = dict(eps=0.1, norm='linf', key=K, bounds=(0.0, 1.0))
  for model in (_PythonNoise(f.args[0]), jax.tree_util.Partial(_callback_noise, f.args[0])):
    with pytest.warns(RuntimeWarning, match="outputs change between calls.*version='rand'"):
      r = evaluate_robust_accuracy(model, x, wrong, **kw)
    assert r['randomness'] is True and r['clean_accuracy'] == 0.0
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    r = evaluate_robust_accuracy(f, x, wrong, **kw)
  assert r['randomness'] is False


# --- Chunks of one compiled size, compile counts --------------------------------

def test_run_chunked_traces_once_and_matches_the_whole_batch():
  x = np.arange(37 * 3, dtype=np.float32).reshape(37, 3)
  rowwise = jax.jit(chex.assert_max_traces(
      lambda a: (a.sum(-1), a * 2.0, jnp.any(a > 108.5)), n=1))
  chunked = run_chunked(rowwise, [x], 8)    # 5 chunks, the last padded: one trace
  chex.assert_trees_all_close(chunked, (x.sum(-1), x * 2.0, np.bool_(True)))
  assert chunked[2].ndim == 0               # () flags OR-ed over the chunks


def _noisy_copy(x, seed):
  rng = np.random.default_rng(seed)
  return np.clip(np.asarray(x) + 0.05 * rng.normal(size=x.shape), 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope='module')
def chunked_runs(digits_mlp, digits_standard):
  """The default ('standard') ensemble on 128 points (the digits MLP's 64 and
  64 noisy copies) in chunks of 64, after clearing jax's in-memory caches (its
  programs must be compiled, or read from the persistent cache, here); again
  on new data of the same shape; and ``digits_standard``, the first 64 points
  unchunked (one call per member and rank) with the same compiled size."""
  f, x, y = digits_mlp
  y2 = np.concatenate([y, y])
  kw = dict(LINF, batch_size=64, **SMALL)
  jax.clear_caches()
  first, first_names = count_compiles(evaluate_robust_accuracy, f,
                                      np.concatenate([x, _noisy_copy(x, 0)]), y2, **kw)
  second, second_names = count_compiles(evaluate_robust_accuracy, f,
                                        np.concatenate([_noisy_copy(x, 1), _noisy_copy(x, 2)]), y2,
                                        **kw)
  return first, first_names, second, second_names, digits_standard


def test_default_ensemble_compiles_one_program_per_member(chunked_runs):
  first, names, second, second_names, _ = chunked_runs
  # 2 chunks for the clean pass and APGD-CE, fewer for the later members, 3
  # target ranks for APGD-T and FAB-T: 4 programs for the 4 members, the
  # clean pass, APGD (CE and T share it), FAB-T and Square.
  assert first['batch_size'] == 64 and len(first['per_attack']) == 4
  assert any(line.startswith('apgd-ce - 2/2 - ') for line in first['log'])   # 2 chunks
  assert sorted(names) == ['jit(_attack_chunk)'] * 3 + ['jit(_forward)'], names
  assert second_names == []                    # new data, same shapes: nothing compiles
  assert 0 < second['robust_accuracy'] < second['clean_accuracy']


def test_apgd_program_holds_just_the_cascades_losses():
  # One switch over the APGD members' losses: 'standard' runs CE and targeted
  # DLR, 'plus' adds DLR; the index each member passes picks its own loss.
  members = lambda v, c=10: [m for m, _ in ensemble._members(
      ensemble.VERSION_ATTACKS[v], 'linf', ensemble.VERSION_BUDGETS[v], c, False)
      if m.family == 'apgd']
  std = members('standard')
  assert {m.program for m in std} == {ensemble.Program('apgd', 'linf', n_iter=100,
                                                       losses=('ce', 'dlr-t'))}
  assert [m.losses.index(m.loss) for m in std] == [0, 1]
  assert members('plus')[0].losses == ('ce', 'dlr', 'dlr-t')
  assert members('standard', c=3)[0].losses == ('ce', 'margin-t')   # too few classes for DLR
  assert members('rand')[0].program.losses == ('ce', 'dlr')


def test_nothing_compiles_ahead_when_no_point_is_left_to_attack():
  # Every clean prediction wrong: the clean pass is the only program (the
  # members' programs are compiled ahead only when some point is robust).
  jax.clear_caches()   # the clean pass compiles here, whatever ran before in this process
  f, _, _, x, y = random_affine(3, 6, 4, 12)
  wrong = (np.argmax(np.asarray(f(x)), -1) + 1) % 4
  r, names = count_compiles(evaluate_robust_accuracy, f, x, wrong, eps=0.1, norm='linf', key=K,
                            warn=False, **SMALL)
  assert names == ['jit(_forward)'], names
  assert r['clean_accuracy'] == r['robust_accuracy'] == 0.0
  assert [a['broken'] for a in r['per_attack']] == [0, 0, 0, 0]


def test_nothing_compiles_ahead_when_apgd_ce_breaks_every_point():
  # An affine model at a radius past every point's decision boundary: APGD-CE
  # breaks all 12, so FAB-T's and Square's programs are never compiled.
  jax.clear_caches()
  f, _, _, x, y = random_affine(5, 6, 4, 12)
  r, names = count_compiles(evaluate_robust_accuracy, f, x, y, eps=5.0, norm='linf', key=K,
                            warn=False, **SMALL)
  assert [a['broken'] for a in r['per_attack']] == [12, 0, 0, 0]
  assert sorted(names) == ['jit(_attack_chunk)', 'jit(_forward)'], names


def test_an_error_while_compiling_ahead_reaches_the_caller():
  # The forward pass works (clean pass, traces); the backward pass raises, in
  # the background thread that compiles APGD's program: the call raises it.
  @jax.custom_vjp
  def guarded(z):
    return z

  def fwd(z):
    return z, None

  def bwd(_, g):
    raise ValueError('no gradient through this layer')

  guarded.defvjp(fwd, bwd)
  f, _, _, x, y = random_affine(4, 6, 4, 12)
  with pytest.raises(ValueError, match='^no gradient through this layer'):
    evaluate_robust_accuracy(lambda a: guarded(f(a)), x, y, eps=0.1, norm='l2', key=K, **SMALL)


def test_chunked_and_unchunked_give_identical_per_point_results(chunked_runs):
  first, _, _, _, whole = chunked_runs
  # The first 64 points: alone in one chunk, or packed with 64 others into
  # chunks of 64 (the still-robust ones of each round, the last chunk padded).
  np.testing.assert_array_equal(first['robust'][:64], whole['robust'])
  np.testing.assert_array_equal(first['x_adv'][:64], whole['x_adv'])


@pytest.mark.slow
def test_chunk_size_does_not_change_per_point_results(digits_mlp, digits_standard):
  # Programs compiled for 16 rows instead of 64: the same points, up to the
  # rounding of the two programs.
  f, x, y = digits_mlp
  r = evaluate_robust_accuracy(f, x, y, batch_size=16, **LINF, **SMALL)
  np.testing.assert_array_equal(r['robust'], digits_standard['robust'])
  np.testing.assert_allclose(r['x_adv'], digits_standard['x_adv'], atol=1e-5)


@pytest.mark.slow
def test_attacks_batch_size_gives_the_same_points():
  f, _, _, x, y = random_affine(5, 6, 4, 20)
  xb = jax.nn.sigmoid(x)
  runs = {
      'apgd': lambda bs: apgd(f, xb, y, eps=0.3, norm='l2', key=K, n_iter=5, batch_size=bs,
                              bounds=(0.0, 1.0))[:2],
      'square': lambda bs: square(f, xb, y, eps=0.3, norm='l2', key=K, n_queries=10,
                                  batch_size=bs, bounds=(0.0, 1.0))[:2],
      'fab': lambda bs: fab(f, xb, y, norm='linf', targets=2, steps=5, batch_size=bs),
      'fmn': lambda bs: fmn(f, xb, y, norm='l2', targets=2, steps=5, batch_size=bs),
  }
  for name, run in runs.items():
    whole, chunked = run(None), run(8)
    chex.assert_trees_all_close(whole, chunked, atol=1e-5, custom_message=name)


def test_adversarial_distance_second_call_compiles_nothing():
  f, _, _, x, y = random_affine(23, 9, 4, 30)
  kw = dict(method='fmn', key=K, batch_size=8, steps=5, targets=2)
  first, names = count_compiles(adversarial_distance, f, x, y, **kw)
  # Clean pass, the attack, the re-check: one program each for all chunks.
  assert sorted(names) == ['jit(_fmn_batch)', 'jit(_forward)', 'jit(_recheck)'], names
  f2, _, _, x2, y2 = random_affine(24, 9, 4, 30)
  _, names = count_compiles(adversarial_distance, f2, x2[:21], y2[:21], **kw)
  assert names == []   # other data, other number of points: the same programs
  assert first['summary']['num_failed'] == 0
