"""Paper B's experiments end to end through launch.py on tiny configs."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from tests.helpers import launch

COMMON = ['--config.num_seeds=2', '--config.progress=False', '--config.chunk_size=50',
          '--config.eval.max_points=16', '--config.eval.grid_size=8',
          '--config.eval.fmn.steps=10', '--config.eval.tangent.iterations=3',
          '--config.eval.tangent.init_evals=20', '--config.eval.tangent.max_evals=100']


def _results(tmp_path, proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(tmp_path, 'results.json')) as f:
    return json.load(f)


def _check_summary(res, num_seeds=2, combos=('original/fmn', 'original/tangent', 'refit/fmn',
                                             'refit/tangent')):
  s = res['summary']
  assert list(s) == ['none', 'll', 'rep']
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
  for plot in res['plots']:
    assert plot.endswith('.png')
  return s


@pytest.mark.slow  # ~40 s alone, minutes on a shared 2-core machine
def test_xor_end_to_end_and_penalty_takes_effect(tmp_path):
  # A strong penalty for a short schedule: rep must shrink the hidden layer's
  # sigma_max below the unregularised run's, and only ll the readout's.
  proc = launch('--config=configs/xor_spectral.py', f'--workdir={tmp_path}', *COMMON,
                '--config.train.epochs=60', '--config.regularizer.burn_in_epochs=30',
                '--config.regularizer.lam=0.05', '--config.data.test_per_blob=10',
                "--config.eval.attacks=('fmn',)", '--config.eval.primary_attack=fmn')
  res = _results(tmp_path, proc)
  s = _check_summary(res, combos=('original/fmn', 'refit/fmn'))
  sig = lambda kind, layer: np.asarray(s[kind]['sigma_max_per_seed'][f'{layer}/kernel'])
  assert np.all(sig('rep', 'hidden_0') < sig('none', 'hidden_0'))
  assert np.all(sig('ll', 'hidden_0') < sig('none', 'hidden_0'))
  assert np.all(sig('ll', 'readout') < sig('rep', 'readout'))
  for name in ('adv_distance_box', 'log_volume', 'log10_lambda_max', 'boundary'):
    assert os.path.getsize(os.path.join(tmp_path, f'{name}.png')) > 1000
  assert 'none' in proc.stdout and 'refit/fmn' in proc.stdout  # the table


def test_digits_end_to_end(tmp_path):
  proc = launch('--config=configs/mnist_spectral.py', f'--workdir={tmp_path}', *COMMON,
                '--config.model.widths=(32,)', '--config.data.max_train=256',
                '--config.data.max_test=64', '--config.train.batch_size=64',
                '--config.train.epochs=4', '--config.regularizer.burn_in_epochs=2',
                "--config.eval.heads=('refit',)", "--config.eval.attacks=('tangent',)")
  res = _results(tmp_path, proc)
  s = _check_summary(res, combos=('refit/tangent',))
  assert res['config']['data']['name'] == 'digits'
  assert os.path.getsize(os.path.join(tmp_path, 'log_volume.png')) > 1000  # image plane
  for kind in s:
    assert s[kind]['test_acc'] > 0.3  # 10 classes: well above chance after 4 epochs
    for name, d in s[kind]['distances'].items():
      assert all(n <= 16 for n in d['num_points_per_seed'])


def test_bad_config_through_launch_is_one_line_exit_2(tmp_path):
  workdir = os.path.join(tmp_path, 'w')
  proc = launch('--config=configs/mnist_spectral.py', f'--workdir={workdir}',
                '--config.data.name=mnist')  # no prepared data_dir
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and 'config.data.data_dir' in lines[0], proc.stderr
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('field,value', [
    ('regularizer.kinds', ('rep', 'spectral')),
    ('regularizer.burn_in_epochs', 20000),
    ('regularizer.layers', ('hiden_0',)),
    ('regularizer.lam', -1.0),
    ('eval.primary_attack', 'hopskipjump'),   # not among eval.attacks
    ('eval.attacks', ('fgsm',)),
    ('model.widths', ()),
    ('data.max_test', -1),
    ('checkpoint_every', 0),
])
def test_validate_names_the_bad_field(field, value):
  from configs import mnist_spectral
  from robustjax.config_validation import ConfigError
  from robustjax.stages import spectral
  cfg = mnist_spectral.get_config()
  spectral.validate(cfg)  # the defaults are valid
  node, *_ = cfg, None
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=f'config.{field}'):
    spectral.validate(cfg)


def test_xor_rerun_resumes_each_kind_and_matches(tmp_path, capsys):
  # configs/xor_spectral.py:quick at a tiny size, in-process. 'rep' only: its
  # optimizer state holds the zero-size power-iteration placeholders (biases)
  # that orbax refuses, the case that once broke spectral checkpoints.
  from configs import xor_spectral
  from robustjax.stages import spectral
  cfg = xor_spectral.get_config('quick')
  cfg.update(dict(num_seeds=2, progress=False, chunk_size=8, checkpoint_every=8))
  cfg.train.epochs, cfg.regularizer.burn_in_epochs = 6, 3   # 24 steps, penalty from 12
  cfg.regularizer.kinds = ('rep',)
  cfg.data.test_per_blob = 4
  cfg.eval.update(dict(heads=('original',), attacks=('fmn',), primary_head='original',
                       primary_attack='fmn', max_points=4, geometry=False))
  cfg.eval.fmn.update(steps=3, targets=1)
  spectral.validate(cfg)
  workdir = str(tmp_path)
  spectral.main(cfg, workdir)
  first = json.load(open(os.path.join(workdir, 'results.json')))
  ckpt = os.path.join(workdir, 'checkpoints', 'rep')
  assert sorted(n for n in os.listdir(ckpt) if n.isdigit()) == ['16', '24']
  # As if killed after step 16: the final checkpoint is gone, the rerun resumes there.
  shutil.rmtree(os.path.join(ckpt, '24'))
  capsys.readouterr()
  spectral.main(cfg, workdir)
  assert 'train rep: resuming from step 16/24' in capsys.readouterr().out
  again = json.load(open(os.path.join(workdir, 'results.json')))
  for res in (first, again):
    res.pop('timings'), res.pop('config')
  assert again == first
