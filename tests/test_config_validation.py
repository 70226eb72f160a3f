"""Every bad config field fails before any work, with one line naming it."""
import importlib
import json
import os

import pytest

from configs import sparse_coding as sparse_coding_config
from robustjax.config_validation import ConfigError
from robustjax.experiments import sparse_coding
from tests.helpers import launch

BAD = [
    ('stage', 'finetune', 'stage'),
    ('contrastive.modes', ('adversarial', 'both'), 'contrastive.modes'),
    ('contrastive.negative_fraction', 1.5, 'contrastive.negative_fraction'),
    ('contrastive.dropout', -0.1, 'contrastive.dropout'),
    ('contrastive.score_scale', 0.0, 'contrastive.score_scale'),
    ('contrastive.sweep_alphas', (0.0, 2.0), 'contrastive.sweep_alphas'),
    ('contrastive.width_sweep', (16, 0), 'contrastive.width_sweep'),
    ('contrastive.steps', 0, 'contrastive.steps'),
    ('num_seeds', 0, 'num_seeds'),
    ('data.d', -3, 'data.d'),
    ('data.D', 0, 'data.D'),
    ('data.k', 65, 'data.k'),
    ('data.k', 0, 'data.k'),
    ('data.noise_std', -0.1, 'data.noise_std'),
    ('data.noise_std', float('nan'), 'data.noise_std'),   # nan passed every comparison
    ('attack.eps', float('nan'), 'attack.eps'),
    ('attack.eps', float('inf'), 'attack.eps'),
    ('pretrain.learning_rate', float('nan'), 'pretrain.learning_rate'),
    ('eval.eps', (0.1, float('nan')), 'eval.eps'),
    ('data.magnitude_low', 0.0, 'data.magnitude_low'),
    ('data.magnitude_low', 1.5, 'data.magnitude_low'),
    ('data.dictionary', 'random', 'data.dictionary'),
    ('data.D', 128, 'data.dictionary'),     # orthonormal needs D <= d
    ('model.width', 0, 'model.width'),
    ('model.bias_init', -1.0, 'model.bias_init'),
    ('pretrain.modes', ('clean', 'fgsm'), 'pretrain.modes'),

    ('pretrain.steps', 0, 'pretrain.steps'),
    ('pretrain.batch_size', 0, 'pretrain.batch_size'),
    ('pretrain.optimizer', 'lbfgs', 'pretrain.optimizer'),
    ('pretrain.learning_rate', 0.0, 'pretrain.learning_rate'),
    ('attack.norm', 'l1', 'attack.norm'),
    ('attack.eps', -0.1, 'attack.eps'),
    ('attack.steps', 0, 'attack.steps'),
    ('attack.restarts', 0, 'attack.restarts'),
    ('downstream.num_tasks', 0, 'downstream.num_tasks'),
    ('downstream.references', ('end_to_end',), 'downstream.references'),
    ('eval.eps', (0.1, -0.2), 'eval.eps'),
    ('eval.attack_steps', 0, 'eval.attack_steps'),
    ('chunk_size', 0, 'chunk_size'),
]


def test_default_config_is_valid():
  sparse_coding.validate(sparse_coding_config.get_config())


@pytest.mark.parametrize('field,value,named', BAD)
def test_bad_field_is_named(field, value, named):
  cfg = sparse_coding_config.get_config()
  node = cfg
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=rf'^config\.{named}: must be '):
    sparse_coding.validate(cfg)


def test_nothing_to_run():
  cfg = sparse_coding_config.get_config('supervised')
  cfg.pretrain.modes = ()
  with pytest.raises(ConfigError, match='nothing to run'):
    sparse_coding.validate(cfg)


@pytest.mark.parametrize('variant', sparse_coding_config.VARIANTS)
def test_variants_are_valid(variant):
  cfg = sparse_coding_config.get_config(variant)
  if variant == 'downstream':
    cfg.stage = 'pretrain'  # the encoder_dir check needs a real run; see test_launch
  # Each variant is validated by the experiment that runs it (scaling: its own stage).
  importlib.import_module(f'robustjax.experiments.{cfg.experiment}').validate(cfg)


def test_downstream_stage_needs_encoders(tmp_path):
  cfg = sparse_coding_config.get_config('downstream')
  cfg.downstream.encoder_dir = str(tmp_path)
  with pytest.raises(ConfigError, match='downstream.encoder_dir'):
    sparse_coding.validate(cfg)


@pytest.mark.parametrize('args,named', [
    (['--config.attack.norm=l3'], 'config.attack.norm'),
    (['--config.data.k=100'], 'config.data.k'),
    (['--config.nonexistent=1'], 'nonexistent'),
    (['--config.pretrain.steps=abc'], 'pretrain.steps'),
    # a misspelt field: named, with the closest valid ones
    (['--config.atack.eps=0.3'], 'config.atack.eps; closest valid: config.attack.eps'),
    # a stray positional argument (a missing --): refused, not ignored
    (['config.num_seeds=1'], 'did you mean --config.num_seeds=1?'),
])
def test_cli_bad_config_exits_2_and_keeps_workdir(tmp_path, args, named):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'results.json').write_text(json.dumps({'keep': 1}))
  before = sorted(os.listdir(workdir))
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={workdir}', *args)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and named in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr and '\\' not in proc.stderr  # no escaped quote or newline
  assert sorted(os.listdir(workdir)) == before
  assert json.loads((workdir / 'results.json').read_text()) == {'keep': 1}


def test_cli_workdir_that_is_a_file(tmp_path):
  f = tmp_path / 'file'
  f.write_text('x')
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={f}')
  assert proc.returncode == 2 and 'error: --workdir: must be a directory' in proc.stderr
  assert f.read_text() == 'x'


def test_cli_missing_config_file():
  proc = launch('--config=configs/does_not_exist.py')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1
  assert 'does_not_exist.py' in proc.stderr
