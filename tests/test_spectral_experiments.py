"""Paper B's experiments end to end through launch.py on tiny configs."""
import json
import math
import os
import shutil
import warnings

import chex
import jax
import numpy as np
import pytest

from configs import mnist_spectral as config_lib
from robustjax.experiments import runner, spectral as spectral_stage
from tests.helpers import (GOLDEN_EXACT, GOLDEN_LOOSE, assert_same_numbers, golden_exact,
                           launch)



GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                      'golden_spectral_tiny.json')


def _assert_golden(name, res, stdout=None):
  """A tiny run's results.json (and printed table) against the numbers recorded
  before spectral was ported onto the runner (tests/data/golden_spectral_tiny.json):
  keys, order and strings exactly; numbers to rtol 1e-6 and verdicts and the
  table exactly on the machine that recorded them, elsewhere
  ``helpers.GOLDEN_LOOSE`` without verdicts or table."""
  with open(GOLDEN) as f:
    golden = json.load(f)
  want, exact = golden[name], golden_exact(golden)
  per_point = ('distances',) if exact else ()
  for key in ('runs', 'summary', 'final_train_metrics', 'claims') + per_point:
    assert_same_numbers(res[key], want[key], key, **(GOLDEN_EXACT if exact else GOLDEN_LOOSE),
                        exact=exact)
  if stdout is not None and exact:
    assert want['table'] in stdout, stdout


def _results(tmp_path, proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(tmp_path, 'results.json')) as f:
    return json.load(f)


def _check_summary(res, num_seeds=2, combos=('original/fmn', 'original/tangent', 'refit/fmn',
                                             'refit/tangent'),
                   kinds=('clean', 'll_readout', 'll', 'rep')):
  s = res['summary']
  assert list(s) == list(kinds)
  heads = {c.split('/')[0] for c in combos}
  combos = set(combos) | {f'{h}/certified' for h in heads}
  for kind, row in s.items():
    assert 0.0 <= row['test_acc'] <= 1.0
    assert len(row['test_acc_per_seed']) == num_seeds
    assert len(row['adv_distance_mean_per_seed']) == num_seeds
    assert len(row['adv_distance_median_per_seed']) == num_seeds
    assert math.isfinite(row['adv_distance_mean']) and row['adv_distance_mean'] > 0
    assert math.isfinite(row['adv_distance_median']) and row['adv_distance_median'] > 0
    assert set(row['distances']) == set(combos)
    # The headline is the configured primary head/attack.
    primary = res['config']['eval']['primary_head'] + '/' + res['config']['eval']['primary_attack']
    assert row['adv_distance_mean'] == row['distances'][primary]['mean']
    # certified <= true <= attack distance on every point, per head.
    assert set(row['certified_violations_per_seed']) == set(combos) - {
        f'{h}/certified' for h in heads}
    assert all(v == [0] * num_seeds for v in row['certified_violations_per_seed'].values())
    for h in heads:
      cert = row['distances'][f'{h}/certified']
      assert 0 < cert['mean'] < min(row['distances'][c]['mean'] for c in combos
                                    if c.startswith(h + '/') and c != f'{h}/certified')
  for plot in res['plots']:
    assert plot.endswith('.png')
  return s


@pytest.mark.slow  # ~40 s alone, minutes on a shared 2-core machine
def test_xor_end_to_end_and_penalty_takes_effect(tmp_path):
  # A strong penalty for a short schedule: rep must shrink the hidden layer's
  # sigma_max below the unregularised run's, and only ll the readout's.
  proc = launch('--config=configs/xor_spectral.py:tiny', f'--workdir={tmp_path}',
                '--config.regularizer.lam=0.01',
                "--config.eval.distance_attacks=('fmn',)", '--config.eval.primary_attack=fmn')
  res = _results(tmp_path, proc)
  s = _check_summary(res, combos=('original/fmn', 'refit/fmn'),
                     kinds=('clean', 'll_readout', 'll', 'rep', 'rep_eig_ub'))
  sig = lambda kind, layer: np.asarray(s[kind]['sigma_max_per_seed'][f'{layer}/kernel'])
  for kind in ('rep', 'rep_eig_ub', 'll'):
    assert np.all(sig(kind, 'hidden_0') < sig('clean', 'hidden_0')), kind
  assert np.all(sig('ll', 'readout') < sig('rep', 'readout'))
  assert np.all(sig('ll_readout', 'readout') < sig('rep', 'readout'))
  # rep_eig_ub's loss carries its batch slope term; the others' do not.
  assert 'slope_term' in res['final_train_metrics']['rep_eig_ub']
  assert 'slope_term' not in res['final_train_metrics']['rep']
  assert [c['name'] for c in res['claims']] == [
      f'B: {k} raises the refit/fmn adversarial distance (lam 0.01)' for k in ('rep', 'rep_eig_ub')]
  for name in ('adv_distance_box', 'log_volume', 'log10_lambda_max', 'boundary'):
    assert os.path.getsize(os.path.join(tmp_path, f'{name}.png')) > 1000
  assert 'clean' in proc.stdout and 'refit/fmn' in proc.stdout  # the table


def test_digits_end_to_end(tmp_path):
  proc = launch('--config=configs/mnist_spectral.py:tiny', f'--workdir={tmp_path}',
                "--config.eval.heads=('refit',)", "--config.eval.distance_attacks=('tangent',)")
  res = _results(tmp_path, proc)
  _assert_golden('digits', res, proc.stdout)
  s = _check_summary(res, combos=('refit/tangent',))
  assert res['config']['data']['name'] == 'digits'
  assert os.path.getsize(os.path.join(tmp_path, 'log_volume.png')) > 1000  # image plane
  for kind in s:
    # 10 classes: the re-fitted head is well above chance after 4 epochs (the
    # trained readout, from the authors' N(0, 0.01^2) init, may still be at chance).
    assert s[kind]['refit_test_acc'] > 0.3
    for name, d in s[kind]['distances'].items():
      assert all(n <= 16 for n in d['num_points_per_seed'])
  # One claim format for every experiment: the lines, results.json, the files, the timings.
  assert [c['name'] for c in res['claims']] == [
      'B: rep raises the refit/tangent adversarial distance (lam 0.01)']
  assert 'claims this run tests:' in proc.stdout and 'files written:' in proc.stdout
  for name in ('data', 'burn_in', 'train_rep', 'eval_rep', 'total'):
    t = res['timings'][name]
    assert abs(t['compile'] + t['run'] - t['wall']) < 0.02 and t['cpu'] > 0, (name, t)
  # The runner's training log: one line per chunk and job (8 steps each: one chunk).
  lines = runner.read_metrics(os.path.join(tmp_path, runner.METRICS))
  assert [(r['job'], r['fit'], r['step']) for r in lines] == [('burn_in', 'burn-in', 8)] + [
      (f'train_{k}', f'train {k}', 8) for k in s]
  assert len(lines[0]['loss_per_run']) == 2
  assert res['plots'][-1] == runner.CURVES
  assert sorted(os.listdir(os.path.join(tmp_path, runner.TRAIN_CHECKPOINTS))) == sorted(
      ['burn_in', *s])


def _summary_row(mean, std, acc):
  return dict(adv_distance_mean=mean, adv_distance_mean_std=std, refit_test_acc=acc)


@pytest.mark.parametrize('rep,ll_readout,acc,holds', [
    ((0.60, 0.01), (0.55, 0.01), 0.96, True),    # gap 0.05 > 0.01 on both
    ((0.60, 0.06), (0.55, 0.01), 0.96, False),   # gap 0.05 <= rep's own spread 0.06
    ((0.60, 0.01), (0.595, 0.01), 0.96, False),  # not above ll_readout
    ((0.60, 0.01), (0.55, 0.01), 0.94, False),   # accuracy 0.94 < clean's 0.96 - 0.01
])
def test_claim_rule(rep, ll_readout, acc, holds):
  cfg = config_lib.get_config()
  summary = {'clean': _summary_row(0.50, 0.01, 0.96), 'll_readout': _summary_row(*ll_readout, 0.96),
             'll': _summary_row(0.70, 0.01, 0.80), 'rep': _summary_row(*rep, acc)}
  runs = {k: {'kind': k, 'lam': 0.01} for k in summary}
  (c,) = spectral_stage.claims(cfg, summary, runs)
  assert c.holds is holds
  assert c.numbers['ll'] == (0.70, 0.01) and 'vs ll: not above, not required' in c.rule


@pytest.mark.parametrize('override,says', [
    ('--config.data.name=mnist', 'config.data.data_dir'),  # no prepared data_dir
    # Old names: one line naming the new one.
    ("--config.regularizer.kinds=('none','rep')",
     "config.regularizer.kinds: 'none' is now called 'clean' (the unregularised baseline"),
    ("--config.eval.attacks=('fmn',)",
     'config.eval.attacks: renamed config.eval.distance_attacks (minimal-distance methods'),
])
def test_bad_config_through_launch_is_one_line_exit_2(tmp_path, override, says):
  workdir = os.path.join(tmp_path, 'w')
  proc = launch('--config=configs/mnist_spectral.py', f'--workdir={workdir}', override)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and says in lines[0], proc.stderr
  assert not os.path.exists(workdir)


def test_a_config_file_with_the_old_names_is_refused():
  from configs import xor_spectral
  from robustjax.config_validation import ConfigError
  cfg = xor_spectral.get_config()
  cfg.regularizer.kinds = ('none', 'rep')
  with pytest.raises(ConfigError, match="config.regularizer.kinds: 'none' is now called 'clean'"):
    spectral_stage.validate(cfg)
  cfg = xor_spectral.get_config()
  cfg.eval.attacks = tuple(cfg.eval.distance_attacks)  # an old file's field, beside the new
  with pytest.raises(ConfigError, match='config.eval.attacks: renamed config.eval.distance_'):
    spectral_stage.validate(cfg)


@pytest.mark.slow  # seven trainings and evaluations: ~100 s on the shared 2-core machine
def test_digits_sweep_end_to_end(tmp_path):
  # :digits_sweep at a tiny size: one burn-in, clean once, each penalised kind per lam,
  # the claim tested at each lam, and the plot against lam.
  proc = launch('--config=configs/mnist_spectral.py:digits_sweep,tiny', f'--workdir={tmp_path}',
                '--config.model.widths=(16,)', '--config.data.max_train=128',
                '--config.data.max_test=32', '--config.train.epochs=3',
                "--config.regularizer.kinds=('clean', 'rep')", '--config.sweep.lams=(0.01, 0.1)',
                "--config.eval.heads=('refit',)", "--config.eval.distance_attacks=('tangent',)")
  res = _results(tmp_path, proc)
  assert list(res['summary']) == ['clean', 'rep lam=0.01', 'rep lam=0.1']
  assert res['runs']['rep lam=0.1'] == {'kind': 'rep', 'lam': 0.1}
  claims = [c['name'] for c in res['claims']]
  assert claims == [f'B: rep raises the refit/tangent adversarial distance (lam {lam})'
                    for lam in ('0.01', '0.1')]
  # Each claim's numbers: rep's and clean's distance (mean, std) and accuracies.
  c = res['claims'][1]
  assert c['numbers']['rep'] == [res['summary']['rep lam=0.1']['adv_distance_mean'],
                                 res['summary']['rep lam=0.1']['adv_distance_mean_std']]
  assert set(c['numbers']) == {'rep', 'clean', 'refit_test_acc rep', 'refit_test_acc clean'}
  assert 'sweep.png' in res['plots'] and os.path.getsize(os.path.join(tmp_path, 'sweep.png')) > 1000
  ckpts = sorted(os.listdir(os.path.join(tmp_path, 'train_checkpoints')))
  assert ckpts == ['burn_in', 'clean', 'rep_lam0.01', 'rep_lam0.1']
  sig = lambda label: np.asarray(res['summary'][label]['sigma_max_per_seed']['hidden_0/kernel'])
  assert np.all(sig('rep lam=0.1') < sig('rep lam=0.01'))
  assert f': {claims[1]}: ' in proc.stdout  # the claim lines, in the shared format


@pytest.mark.parametrize('field,value', [
    ('regularizer.kinds', ('rep', 'spectral')),
    ('regularizer.kinds', ('rep', 'rep')),
    ('sweep.lams', (0.01, 0.0)),
    ('model.init', 'xavier'),
    ('eval.tangent.starts', 'uniform'),
    ('eval.tangent.start_std', 0.0),
    ('regularizer.burn_in_epochs', 20000),
    ('regularizer.layers', ('hiden_0',)),
    ('regularizer.lam', -1.0),
    ('eval.primary_attack', 'hopskipjump'),   # not among eval.distance_attacks
    ('eval.distance_attacks', ('fgsm',)),
    ('model.widths', ()),
    ('data.max_test', -1),
    ('checkpoint_every', 0),
    ('mesh.data', 0),
])
def test_validate_names_the_bad_field(field, value):
  from configs import mnist_spectral
  from robustjax.config_validation import ConfigError
  from robustjax.experiments import spectral
  cfg = mnist_spectral.get_config()
  spectral.validate(cfg)  # the defaults are valid
  node, *_ = cfg, None
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=f'config.{field}'):
    spectral.validate(cfg)


@pytest.mark.parametrize('variant', ['digits', 'digits_sweep', 'mnist'])
def test_hard_label_attack_on_the_refit_head_only(variant):
  # The headline is the re-fitted head's TangentAttack distance; the trained
  # head gets FMN and the bound (the hard-label attack would double the cost).
  e = config_lib.get_config(variant).eval
  runs = [f'{h}/{a}' for h in e.heads for a in e.distance_attacks if f'{h}/{a}' not in e.skip]
  assert runs == ['original/fmn', 'refit/fmn', 'refit/tangent']
  assert f'{e.primary_head}/{e.primary_attack}' == 'refit/tangent'


def test_xor_rerun_resumes_each_kind_and_matches(tmp_path, capsys):
  # configs/xor_spectral.py:quick at a tiny size, in-process. 'rep' only: its
  # optimizer state holds the zero-size power-iteration placeholders (biases)
  # that orbax refuses, the case that once broke spectral checkpoints.
  from configs import xor_spectral
  from robustjax.experiments import spectral
  cfg = xor_spectral.get_config('quick')
  cfg.update(dict(num_seeds=2, progress=False, chunk_size=8, checkpoint_every=8))
  cfg.train.epochs, cfg.regularizer.burn_in_epochs = 6, 3   # 24 steps, penalty from 12
  cfg.regularizer.kinds = ('rep',)
  cfg.data.test_per_blob = 4
  cfg.eval.update(dict(heads=('original',), distance_attacks=('fmn',), primary_head='original',
                       primary_attack='fmn', max_points=4, geometry=False))
  cfg.eval.fmn.update(steps=3, targets=1)
  spectral.validate(cfg)
  workdir = str(tmp_path)
  spectral.main(cfg, workdir)
  first = json.load(open(os.path.join(workdir, 'results.json')))
  _assert_golden('xor', first)
  # 12 burn-in steps shared by the kinds, then 12 penalised steps per kind.
  burn = os.path.join(workdir, 'train_checkpoints', 'burn_in')
  assert sorted(n for n in os.listdir(burn) if n.isdigit()) == ['12', '8']
  ckpt = os.path.join(workdir, 'train_checkpoints', 'rep')
  assert sorted(n for n in os.listdir(ckpt) if n.isdigit()) == ['12', '8']
  # As if killed after step 8: the final checkpoint is gone, the rerun resumes there.
  shutil.rmtree(os.path.join(ckpt, '12'))
  capsys.readouterr()
  spectral.main(cfg, workdir)
  out = capsys.readouterr().out
  assert 'burn-in: resuming from step 12/12' in out
  assert 'train rep: resuming from step 8/12' in out
  again = json.load(open(os.path.join(workdir, 'results.json')))
  for res in (first, again):
    res.pop('timings'), res.pop('config')
  assert again == first


def test_checkpoints_of_a_workdir_from_before_the_runner_are_resumed_where_they_are(tmp_path):
  # Old layout: <workdir>/checkpoints/<job>, the clean kind's as 'none'.
  cfg = config_lib.get_config()
  r = runner.Run(cfg, str(tmp_path))
  assert spectral_stage.checkpoint_dir(r, 'clean') == r.checkpoint_dir('clean')
  for old in ('burn_in', 'none', 'rep_lam0.01'):
    os.makedirs(tmp_path / 'checkpoints' / old)
  assert spectral_stage.checkpoint_dir(r, 'burn_in') == str(tmp_path / 'checkpoints' / 'burn_in')
  assert spectral_stage.checkpoint_dir(r, 'clean') == str(tmp_path / 'checkpoints' / 'none')
  assert spectral_stage.checkpoint_dir(r, 'rep_lam0.01') == str(
      tmp_path / 'checkpoints' / 'rep_lam0.01')
  assert spectral_stage.checkpoint_dir(r, 'rep') == r.checkpoint_dir('rep')


def test_runs_of_names_each_run_and_its_checkpoint_job():
  cfg = config_lib.get_config('digits_sweep')
  cfg.regularizer.kinds, cfg.sweep.lams = ('clean', 'rep', 'll'), (0.01, 0.1)
  assert spectral_stage.runs_of(cfg) == [
      ('clean', 'clean', 0.0, 'clean'), ('rep lam=0.01', 'rep', 0.01, 'rep_lam0.01'),
      ('ll lam=0.01', 'll', 0.01, 'll_lam0.01'), ('rep lam=0.1', 'rep', 0.1, 'rep_lam0.1'),
      ('ll lam=0.1', 'll', 0.1, 'll_lam0.1')]
  cfg.sweep.lams = ()
  assert [j for *_, j in spectral_stage.runs_of(cfg)] == ['clean', 'rep', 'll']


def test_key_streams_keep_the_fold_in_derivation():
  keys = spectral_stage.key_streams(3, 2)
  seeds = jax.random.split(jax.random.PRNGKey(3), 2)
  for i, name in enumerate(spectral_stage.STREAMS):
    chex.assert_shape(keys[name], (2, 2))
    for s in range(2):
      chex.assert_trees_all_equal(keys[name][s], jax.random.fold_in(seeds[s], i))


def test_a_head_attack_that_failed_everywhere_reads_all_failed_without_numpy_warnings():
  cfg = config_lib.get_config()
  cfg.num_seeds = 2
  rng = np.random.default_rng(0)
  evals = {k: {'test_acc': np.array([0.9, 0.8]), 'certified_violations': {'refit': [0, 0]},
               'sigma_max': {'hidden_0/kernel': np.array([1.0, 2.0])},
               'distances': {'original/fmn': [np.full(7, np.inf), np.full(7, np.nan)],
                             'refit/tangent': [rng.uniform(0.1, 1.0, 5), np.array([])]}}
           for k in ('clean', 'rep')}
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)
    summary = spectral_stage.summarize(cfg, evals)
  d = summary['clean']['distances']
  assert math.isnan(d['original/fmn']['mean'])
  assert d['original/fmn']['num_failed_per_seed'] == [7, 7]
  # The seed with no points is left out of the mean, not counted as failed.
  assert d['refit/tangent']['mean'] == pytest.approx(np.mean(evals['clean']['distances'][
      'refit/tangent'][0])) and d['refit/tangent']['num_failed_per_seed'] == [0, 0]
  text = spectral_stage.table(summary, cfg)
  assert text.count('all 14 failed') == 2 and 'nan' not in text
