"""Resume integrity: a workdir records its config; a rerun of another config refuses."""
import math

import pytest

from configs import mnist_spectral, sparse_coding
from robustjax import run_record
from tests.helpers import launch

ENV = {'versions': {}, 'devices': ['cpu'], 'process_count': 1}


def _config(**changes):
  cfg = sparse_coding.get_config()
  for field, value in changes.items():
    *parents, leaf = field.split('.')
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg.to_dict()


def test_fingerprint_leaves_out_what_does_not_change_training():
  fp = run_record.fingerprint(_config())
  assert fp['attack.eps'] == sparse_coding.get_config().attack.eps
  assert not any(k.split('.')[0] in run_record.UNRECORDED for k in fp)
  assert run_record.fingerprint(_config(progress=False, **{'eval.attack_steps': 7})) == fp
  assert run_record.fingerprint(_config(**{'model.width': 7})) != fp
  # Which jobs run, where each is a fit of its own: left out; stacked modes: kept.
  spec = mnist_spectral.get_config().to_dict()
  assert 'regularizer.lam' in run_record.fingerprint(spec)
  assert 'regularizer.kinds' not in run_record.fingerprint(spec)
  assert fp['pretrain.modes'] == ['clean', 'adversarial']
  # Tuples as JSON keeps them; non-finite floats as text (the record holds no NaN / inf).
  assert run_record.fingerprint({'a': (1, 2), 'b': {'c': math.inf}}) == {'a': [1, 2], 'b.c': 'inf'}


def test_new_or_matching_workdir_passes(tmp_path):
  run_record.check(str(tmp_path / 'new'), _config())
  run_record.write(str(tmp_path), _config(**{'data.d': 32}), ENV)
  run_record.check(str(tmp_path), _config(**{'data.d': 32, 'eval.attack_steps': 3}))


def test_changed_fields_are_named_first_three_then_a_count(tmp_path):
  run_record.write(str(tmp_path), _config(), ENV)
  with pytest.raises(run_record.ResumeError) as e:
    run_record.check(str(tmp_path), _config(**{'attack.eps': 0.1, 'data.d': 9, 'data.k': 3,
                                                'model.width': 5, 'seed': 4}))
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith('config.resume: ')
  assert "config.attack.eps 0.1 (recorded: 0.4)" in msg and 'and 2 more' in msg
  # Another experiment's config in the same workdir: the fields it lacks count too.
  with pytest.raises(run_record.ResumeError, match='holds a run of another config'):
    run_record.check(str(tmp_path), mnist_spectral.get_config().to_dict())


def test_checkpoints_without_a_record_or_a_broken_record_refuse(tmp_path):
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(run_record.ResumeError, match='holds checkpoints but no config.json'):
    run_record.check(str(tmp_path), _config())
  (tmp_path / 'config.json').write_text('{"config": {}}')
  with pytest.raises(run_record.ResumeError, match='not a robustjax run record'):
    run_record.check(str(tmp_path), _config())


def test_overwrite_clears_the_old_run_only(tmp_path):
  run_record.write(str(tmp_path), _config(), ENV)
  (tmp_path / 'checkpoints' / 'encoder_clean').mkdir(parents=True)
  (tmp_path / 'results.json').write_text('{"plots": ["robustness.png", "../outside.png"]}')
  (tmp_path / 'robustness.png').write_text('old figure')  # a new run may not draw it again
  (tmp_path / 'notes.txt').write_text('mine')
  run_record.clear(str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']
  run_record.check(str(tmp_path), _config(**{'attack.eps': 0.1}))  # nothing left to resume


def test_launch_refuses_a_bad_resume_value_before_any_work(tmp_path):
  # (A changed field through launch.py: tests/test_launch.py's tiny pipeline.)
  run_record.write(str(tmp_path), _config(), ENV)
  before = (tmp_path / 'config.json').read_text()
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={tmp_path}',
                '--config.resume=always')
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "config.resume: must be one of 'check', 'overwrite', got 'always'" in proc.stderr
  assert (tmp_path / 'config.json').read_text() == before


def test_overwrite_clears_the_training_checkpoints_too(tmp_path):
  # Found by review: sparse_coding's train_checkpoints/ survived an overwrite,
  # so the "fresh" run resumed encoders trained under the old config.
  (tmp_path / 'train_checkpoints' / 'pretrain_adversarial').mkdir(parents=True)
  with pytest.raises(run_record.ResumeError, match='holds checkpoints but no config.json'):
    run_record.check(str(tmp_path), _config())
  run_record.clear(str(tmp_path))
  assert not (tmp_path / 'train_checkpoints').exists()
