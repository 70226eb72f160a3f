"""The image experiments (configs/cifar10_supervised.py, cifar10_ssl.py, transfer.py)."""
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10_ssl, cifar10_supervised, transfer
from robustjax import config_validation as cv
from robustjax.experiments import images
from robustjax.experiments import runner
from tests.helpers import (GOLDEN_EXACT, GOLDEN_LOOSE, assert_same_numbers, golden_exact,
                           launch)

# The first run of test_ssl_adversarial_and_rep_end_to_end_and_resume, recorded
# before images.py moved onto the experiments' runner: its results.json numbers
# and printed table must not change with the orchestration.
GOLDEN = pathlib.Path(__file__).parent / 'data' / 'golden_images_tiny.json'



def test_roughness_known_answers():
  const = np.ones((3, 3, 2, 1))
  assert images.roughness(const)[0] == 0.0
  # A checkerboard: every neighbouring pair differs by 2 over unit entries:
  # 2 * (3 * 2) differences of size 2 (rows and columns), ||K||^2 = 9.
  board = np.fromfunction(lambda i, j: (-1.0) ** (i + j), (3, 3))[:, :, None, None]
  np.testing.assert_allclose(images.roughness(board), [2 * 6 * 4 / 9])
  # Per output filter, and invariant to scale.
  both = np.concatenate([const, 5 * board[:, :, :1].repeat(2, 2)], axis=-1)
  np.testing.assert_allclose(images.roughness(both), [0.0, 48 / 9])


def test_claims_need_the_gap_to_exceed_the_spread():
  row = lambda acc, dist: {'robust_acc': {'0.5': acc}, 'distance': dist, 'probe_acc': (0.9, 0.0),
                           'roughness': (1.0, 0.1)}
  summary = {'clean': row((0.10, 0.02), (0.30, 0.01)), 'adversarial': row((0.40, 0.05),
                                                                          (0.5, 0.01)),
             'rep': row((0.1, 0.0), (0.32, 0.03)), 'll': row((0.1, 0.0), (0.2, 0.01))}
  cfg = cifar10_supervised.get_config('digits')
  cfg.eval.eps = (0.5,)
  c = {claim.name: claim for claim in images.claims(summary, cfg)}
  assert c['A: probe robust acc at eps 0.5, adversarial > clean encoder'].holds
  assert not c['B: adversarial distance, rep > clean'].holds      # 0.02 gap < 0.03 spread
  assert c['B: adversarial distance, rep > ll'].holds
  assert not c['A: first-layer filters smoother, adversarial < clean roughness'].holds
  assert c['B: adversarial distance, rep > clean'].numbers == {'rep': (0.32, 0.03),
                                                              'clean': (0.30, 0.01)}
  del summary['adversarial']
  assert not any(c.name.startswith('A: probe') for c in images.claims(summary, cfg))


@pytest.mark.parametrize('module,variant', [(cifar10_supervised, 'digits'),
                                            (cifar10_supervised, 'cifar10'),
                                            (cifar10_ssl, 'digits'), (cifar10_ssl, 'barlow'),
                                            (transfer, 'digits'), (transfer, 'cifar100')])
def test_every_variant_validates(module, variant, tmp_path):
  cfg = module.get_config(variant)
  if not cfg.data.name == 'digits':
    cfg.data.data_dir = str(tmp_path)  # any existing directory passes the check
  images.validate(cfg)


@pytest.mark.parametrize('field,value,match', [
    ('model.name', 'vgg', "config.model.name: must be one of 'resnet18'"),
    ('pretrain.kinds', ('clean', 'robust'), 'config.pretrain.kinds: must be a non-empty list'),
    ('pretrain.method', 'byol', "config.pretrain.method: must be one of 'supervised'"),
    ('eval.attacks', ('pgd',), 'config.eval.attacks'),
    ('data.classes', (0, -1), 'config.data.classes: must be a list of class ids'),
    ('spectral.burn_in', 1.5, 'config.spectral.burn_in: must be <= 1'),
    ('augment.crop_padding', -1, 'config.augment.crop_padding: must be an integer >= 0'),
])
def test_bad_fields_name_themselves(field, value, match):
  cfg = cifar10_supervised.get_config('digits')
  block, leaf = field.split('.')
  cfg[block][leaf] = value
  with pytest.raises(cv.ConfigError, match=match.replace('(', r'\(')):
    images.validate(cfg)


def test_cifar_without_data_dir_fails_before_work():
  proc = launch('--config=configs/cifar10_supervised.py', '--workdir=/tmp/never-written')
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: config.data.data_dir: must be')
  assert "'cifar10'" in line and ':digits' in line and 'needs TensorFlow' in line
  assert 'tfds-prep/bin/tfds build cifar10 --data_dir=DIR --file_format=array_record' in line


def test_class_count_from_the_dataset_not_the_largest_label(tmp_path):
  """12 mocked CIFAR-100 records hold a handful of labels: the count is still 100
  (97 came out of the largest label + 1), or the filter's length."""
  cfg = transfer.get_config('cifar100')
  cfg.data.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    full = images.load(cfg, 'cifar100', ())
    picked = images.load(cfg, 'cifar100', (int(full['y_train'][0]), 99))
  assert full['num_classes'] == 100 and int(full['y_train'].max()) < 99
  assert picked['num_classes'] == 2 and set(np.asarray(picked['y_train']).tolist()) <= {0, 1}


def _run(tmp_path, config, *extra):
  proc = launch(f'--config={config},tiny', f'--workdir={tmp_path}', *extra)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, json.loads((tmp_path / 'results.json').read_text())


def _check(res, kinds, num_seeds=2):
  s = res['summary']
  assert list(s) == list(kinds)
  for kind, row in s.items():
    assert len(row['probe_acc_per_seed']) == num_seeds
    assert 0.0 <= row['probe_acc'][0] <= 1.0
    for eps, (acc, _) in row['robust_acc'].items():
      assert 0.0 <= acc <= row['probe_acc'][0] + 1e-9, (kind, eps)  # attacks never help
    assert math.isfinite(row['distance'][0]) and row['distance'][0] > 0
    assert len(res['distances'][kind]) == num_seeds
    assert math.isfinite(row['train_metrics']['loss'][0])
  assert res['plots'] == ['filters.png', 'training_curves.png']
  assert set(res) >= {'config', 'seeds', 'timings', 'summary', 'claims', 'distances', 'plots',
                      'devices', 'mesh'}
  for name in ('total', 'data') + tuple(f'{p}_{k}' for k in kinds for p in ('pretrain', 'probe')):
    t = res['timings'][name]  # seconds: compile + run = wall
    assert t['compile'] >= 0 and t['run'] >= 0 and abs(t['compile'] + t['run'] - t['wall']) < 0.02


def _printed_table(stdout: str) -> str:
  return stdout[:stdout.index('files written:')].rstrip('\n')


def test_ssl_adversarial_and_rep_end_to_end_and_resume(tmp_path):
  """RoCL (adversarial SimCLR) and rep-spectral (conv operator norms) on digits,
  probes with the ensemble and FMN, numbers and table as recorded in GOLDEN;
  one metrics.jsonl line per chunk and job; a rerun resumes from the checkpoints."""
  kinds = ('adversarial', 'rep')
  proc, res = _run(tmp_path, 'configs/cifar10_ssl.py:digits',
                   f'--config.pretrain.kinds={kinds}', '--config.spectral.burn_in=0.5')
  _check(res, kinds)
  golden = json.loads(GOLDEN.read_text())
  exact = golden_exact(golden)  # else float drift: helpers.GOLDEN_LOOSE, no table
  tol = GOLDEN_EXACT if exact else GOLDEN_LOOSE
  for key in ('summary', 'claims', 'seeds') + (('distances',) if exact else ()):  # per point
    assert_same_numbers(res[key], golden[key], key, **tol, exact=exact)
  assert _printed_table(proc.stdout) == golden['printed'] or not exact
  # CPU: fused_steps=False, one compiled step per step; still one line per chunk.
  log = runner.read_metrics(str(tmp_path / runner.METRICS))
  assert [(r['job'], r['fit'], r['step']) for r in log] == [
      (f'pretrain_{k}', f'pretrain {k}', s) for k in kinds for s in (5, 10)]
  assert all(len(r['loss_per_run']) == 2 and r['steps_per_s'] > 0 for r in log)
  for k in kinds:  # the last chunk's line holds what the summary reports as train_metrics
    np.testing.assert_allclose([r for r in log if r['job'] == f'pretrain_{k}'][-1]['loss_per_run'],
                               res['summary'][k]['train_metrics']['loss'], rtol=1e-6)
  assert 'adv distance l2 (fmn)' in proc.stdout and 'filter roughness' in proc.stdout
  assert f'files written:\n  {tmp_path / "results.json"}\n' in proc.stdout
  assert (tmp_path / 'filters.png').stat().st_size > 1000
  assert res['config']['pretrain']['method'] == 'simclr'
  # The same command again: the encoder comes back from its checkpoint, not retrained.
  again, res2 = _run(tmp_path, 'configs/cifar10_ssl.py:digits',
                     "--config.pretrain.kinds=('adversarial',)", '--config.spectral.burn_in=0.5')
  assert 'pretrain adversarial: resuming from step 10/10' in again.stdout + again.stderr
  assert_same_numbers(res2['summary'], {'adversarial': golden['summary']['adversarial']}, **tol,
                      exact=exact)
  assert len(runner.read_metrics(str(tmp_path / runner.METRICS))) == len(log)  # nothing retrained


@pytest.mark.slow
@pytest.mark.parametrize('config', ['configs/cifar10_supervised.py:digits',
                                    'configs/transfer.py:digits',
                                    'configs/cifar10_ssl.py:digits_barlow'])
def test_every_kind_end_to_end(tmp_path, config):
  _, res = _run(tmp_path, config)
  _check(res, images.KINDS)
  assert len(res['claims']) == len(res['config']['eval']['eps']) + 4  # every claim checked
  assert all(set(c) == {'name', 'holds', 'rule', 'numbers'} for c in res['claims'])


@pytest.mark.slow  # two SimCLR pre-trainings: ~50 s on the loaded 2-core machine
def test_seeds_at_once_equals_all_seeds_at_once(tmp_path):
  """SimCLR trained one seed at a time gives every seed the
  parameters and metrics it gets when all seeds train together; each group is
  its own resumable fit."""
  import jax
  import chex
  from robustjax.recipes import image_pretrain
  cfg = cifar10_ssl.get_config('digits')
  cfg.update(dict(num_seeds=2, progress=False, chunk_size=2))
  cfg.pretrain.update(steps=2, batch_size=16)
  cfg.model.cnn_widths = (4, 8)
  cfg.ssl.projector_dims = (8,)
  cfg.attack.steps = 1
  data = images.load(cfg, 'digits', ())
  net = image_pretrain.network_from_config(cfg, data['num_classes'])
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  together, m_together = image_pretrain.pretrain(cfg, 'clean', net, data, keys)
  cfg.pretrain.seeds_at_once = 1
  apart, m_apart = image_pretrain.pretrain(cfg, 'clean', net, data, keys,
                                           checkpoint_dir=str(tmp_path / 'clean'))
  chex.assert_trees_all_close(apart, together, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m_apart, m_together, rtol=1e-5, atol=1e-6)
  assert sorted(p.name for p in (tmp_path / 'clean').iterdir()) == ['seeds_0-0', 'seeds_1-1']
  assert image_pretrain.seed_groups(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
  assert image_pretrain.seed_groups(3, 0) == [range(0, 3)]


def _barlow_steps(cfg, steps: int):
  """(fixed-batch loss, parameter norm) at init and after each of ``steps`` SGD
  steps of cfg's self-supervised recipe on stripe images."""
  import functools
  import jax
  import optax
  from robustjax.data import augment
  from robustjax.models import resnet
  from robustjax.recipes import image_pretrain
  from robustjax.train import state as state_lib, steps as steps_lib
  from tests.synthetic_images import stripes
  p = cfg.pretrain
  assert p.optimizer == 'sgd' and p.schedule == 'constant'
  x, y = stripes(256, seed=0)
  aux = (jnp.asarray(x / np.float32(255)), jnp.asarray(y))
  net = image_pretrain.network_from_config(cfg, 4)
  params, stats = resnet.init(net, jax.random.PRNGKey(0), x.shape[1:])
  tx = state_lib.make_optimizer('sgd', p.learning_rate, weight_decay=p.weight_decay,
                                momentum=p.momentum)
  state = state_lib.create(params, tx, stats)
  loss_fn = functools.partial(image_pretrain.ssl_loss, net=net, batch_size=p.batch_size,
                              aug=augment.AugmentSpec.from_config(cfg.augment),
                              ssl=image_pretrain.SSLSpec.from_config(cfg), attack=None)
  fixed = jax.jit(lambda s: loss_fn(s.params, jax.random.PRNGKey(7), aux, s.batch_stats)[0])
  step = jax.jit(lambda s, k: steps_lib.train_step(s, k, aux, loss_fn)[0])
  out = [(float(fixed(state)), float(optax.global_norm(state.params)))]
  for t in range(steps):
    state = step(state, jax.random.PRNGKey(100 + t))
    out.append((float(fixed(state)), float(optax.global_norm(state.params))))
  return np.asarray(out)


@pytest.mark.parametrize('recipe', ['barlow', pytest.param('simclr_sgd', marks=pytest.mark.slow)])
def test_barlow_recipe_reduces_the_loss_with_bounded_weights(recipe):
  """configs/cifar10_ssl.py:barlow (the authors' recipe) at a small width: ten
  steps lower the Barlow Twins loss of a fixed batch of views, and the weight
  norm stays within 2x of init. SimCLR's SGD (lr 0.3, 2048-2048 projector),
  the old :barlow, blows the weights up 10x and more in the same steps."""
  cfg = cifar10_ssl.get_config('barlow')
  cfg.model.update(name='small_cnn', cnn_widths=(8, 16))
  cfg.pretrain.batch_size = 64
  if recipe == 'simclr_sgd':
    cfg.pretrain.update(learning_rate=0.3, weight_decay=5e-4)
    cfg.ssl.update(projector_dims=(2048, 2048), projector_bias=True)
  trace = _barlow_steps(cfg, 10)
  loss, norm = trace[:, 0], trace[:, 1]
  assert np.isfinite(trace).all()
  if recipe == 'barlow':
    assert loss[-3:].mean() < 0.9 * loss[0], loss
    assert norm.max() < 2 * norm[0], norm
  else:
    assert norm[-1] > 10 * norm[0], norm


@pytest.mark.parametrize('kind,keys,match', [
    ('robust', np.zeros((2, 2), np.uint32), "kind must be one of \\('clean', 'adversarial'"),
    ('clean', np.zeros((2,), np.uint32), r'keys must be \(num_seeds, 2\) raw PRNG keys, got '
                                         r'shape \(2,\)'),
])
def test_pretrain_refuses_a_bad_kind_or_keys_before_any_work(kind, keys, match):
  from robustjax.recipes import image_pretrain
  cfg = cifar10_ssl.get_config('digits')
  with pytest.raises(ValueError, match=match):
    image_pretrain.pretrain(cfg, kind, None, {}, jnp.asarray(keys))
