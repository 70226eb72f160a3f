"""End to end: launch.py on a tiny config, stage hand-off through checkpoints, the main claim."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax.stages import sparse_coding
from robustjax.train import loop, state as state_lib
from tests.helpers import TINY, launch

KEYS = ('purity_median', 'participation_ratio_median', 'pretrain_clean_acc',
        'pretrain_robust_acc', 'downstream_clean_acc', 'downstream_robust_acc')


def test_launch_tiny_pipeline(tmp_path):
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={tmp_path}', *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'downstream robust acc' in proc.stdout  # the table was printed
  res = json.loads((tmp_path / 'results.json').read_text())
  assert res['config']['data']['d'] == 8 and res['config']['num_seeds'] == 2
  assert set(res['summary']) == {'clean', 'adversarial', 'end_to_end_clean',
                                 'end_to_end_adversarial'}
  for mode in ('clean', 'adversarial'):
    s = res['summary'][mode]
    for k in KEYS:
      assert 0.0 <= s[k] <= (1.0 if 'ratio' not in k else 8.0), (mode, k, s[k])
    assert len(s['downstream_robust_acc_per_run']) == 2 * 2  # seeds x tasks
    assert len(s['purity_median_per_seed']) == 2
    # Accuracy under attack cannot exceed clean accuracy.
    assert s['downstream_robust_acc'] <= s['downstream_clean_acc']
  assert res['eval_eps'] == [0.0, 0.2, 0.4]
  assert res['timings']['total'] > 0 and 'pretrain_adversarial' in res['timings']
  for png in ('purity.png', 'loadings.png', 'robustness.png'):
    assert (tmp_path / png).stat().st_size > 1000
  assert (tmp_path / 'checkpoints' / 'encoder_adversarial').is_dir()


def test_supervised_then_downstream_stage(tmp_path, tiny_sparse_coding_config):
  cfg = tiny_sparse_coding_config
  cfg.stage = 'supervised'
  cfg.pretrain.modes = ('adversarial',)
  pre = sparse_coding.main(cfg, str(tmp_path / 'pre'))
  assert set(pre) == {'adversarial'} and 'downstream_clean_acc' not in pre['adversarial']
  cfg.stage = 'downstream'
  cfg.downstream.encoder_dir = str(tmp_path / 'pre' / 'checkpoints')
  sparse_coding.validate(cfg)
  down = sparse_coding.main(cfg, str(tmp_path / 'down'))
  # The downstream stage reads the encoders back: same units, same purity.
  assert set(down) == {'adversarial'}
  s = down['adversarial']
  assert s['purity_median'] == pytest.approx(pre['adversarial']['purity_median'], rel=1e-6)
  assert 0.0 <= s['downstream_robust_acc'] <= s['downstream_clean_acc']
  assert not os.path.exists(tmp_path / 'down' / 'checkpoints')


def test_fit_stops_on_non_finite_loss():
  def loss_fn(params, key, aux):
    return jnp.log(params['x'] - 2.0), {}  # log of a negative number: NaN

  st = state_lib.create({'x': jnp.ones(())}, optax.sgd(0.1))
  with pytest.raises(loop.DivergedError, match='not finite'):
    loop.fit(st, None, jax.random.PRNGKey(0), loss_fn, steps=4, chunk_size=2, progress=False)


@pytest.mark.slow
def test_main_job_reproduces_paper_a(tmp_path):
  """The default config: purification and robustness inheritance (~2-3 min on 2 cores)."""
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={tmp_path}',
                '--config.progress=False', timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.loads((tmp_path / 'results.json').read_text())['summary']
  clean, adv = s['clean'], s['adversarial']
  assert adv['purity_median'] > clean['purity_median'] + 0.2
  assert adv['downstream_robust_acc'] >= clean['downstream_robust_acc'] + 0.15
  assert abs(adv['downstream_clean_acc'] - clean['downstream_clean_acc']) <= 0.05
  assert np.min(adv['downstream_robust_acc_per_run']) > np.max(
      clean['downstream_robust_acc_per_run'])
