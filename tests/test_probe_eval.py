"""Probe evaluation: batches of one compiled size, points split over devices.

Feature extraction, the probe's adversarial distances (and its clean pass)
run in batches of ``eval.batch_size`` and give the unbatched results; on 4
fake CPU devices with 3 seeds (not a multiple of the 'data' axis) every batch
is split over the devices and the results equal the 1-device run.
"""
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_supervised
from robustjax.models import resnet
from robustjax.models.apply import in_batches
from robustjax.recipes import probe
from tests.helpers import ROOT


def test_in_batches_one_shape_pads_and_drops():
  shapes = []

  def fn(xb):
    shapes.append(xb.shape)
    return jnp.stack([xb.sum(-1), -xb.sum(-1)])  # batch on axis 1

  x = jnp.arange(22.0).reshape(11, 2)
  out = in_batches(fn, x, 4, axis=1)
  np.testing.assert_array_equal(out, jnp.stack([x.sum(-1), -x.sum(-1)]))
  assert shapes == [(4, 2)] * 3  # 11 rows: 4 + 4 + 3 padded to 4
  shapes.clear()
  in_batches(fn, x, 5, multiple_of=4, axis=1)  # 5 rounded up to 8: the devices split it evenly
  assert shapes == [(8, 2)] * 2
  shapes.clear()
  in_batches(fn, x[:3], 100, axis=1)  # never more than the rows there are
  assert shapes == [(3, 2)]
  with pytest.raises(ValueError, match='batch_size must be an integer >= 1'):
    in_batches(fn, x, 0)


def tiny_setup(num_seeds=2, n_train=48, n_test=40):
  """A small CNN of each seed on 8x8 images of two learnable classes."""
  cfg = cifar10_supervised.get_config('digits')
  cfg.progress = False
  cfg.num_seeds = num_seeds
  cfg.probe.max_iter = 20
  cfg.eval.update(num_points=12, eps=(0.5,), attacks=('apgd-ce',), n_iter=3, n_target_classes=1,
                  distance_points=10, fmn_steps=4)
  model = resnet.SmallCNN(widths=(4, 8), num_classes=2, batch_norm=True)
  keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
  params, stats = jax.vmap(lambda k: resnet.init(model, k, (8, 8, 1)))(keys)
  variables = {'params': params, 'batch_stats': stats}
  r = np.random.default_rng(0)
  y = r.integers(0, 2, n_train + n_test).astype(np.int32)
  x = np.clip(0.3 + 0.4 * y[:, None, None, None] * np.eye(8)[None, :, :, None]
              + 0.1 * r.standard_normal((len(y), 8, 8, 1)), 0, 1).astype(np.float32)
  data = dict(x_train=jnp.asarray(x[:n_train]), y_train=jnp.asarray(y[:n_train]),
              x_test=jnp.asarray(x[n_train:]), y_test=jnp.asarray(y[n_train:]), num_classes=2)
  return cfg, model, variables, data, keys


def run_probe(cfg, model, variables, data, keys):
  probes, acc = probe.fit_probes(cfg, model, variables, data)
  ev = probe.evaluate(cfg, model, variables, probes, data, keys)
  return probes, acc, ev


@pytest.mark.slow  # the probe evaluation twice: ~95 s on the loaded 2-core machine
def test_batched_evaluation_equals_unbatched():
  cfg, model, variables, data, keys = tiny_setup()
  whole = probe.features_per_seed(model, variables, data['x_train'], 1000)
  chex.assert_shape(whole, (2, 48, 8))
  np.testing.assert_allclose(probe.features_per_seed(model, variables, data['x_train'], 7),
                             whole, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(probe.features(model, probe._seed(variables, 1), data['x_train'], 5),
                             whole[1], rtol=1e-6, atol=1e-6)
  cfg.eval.batch_size = 1000
  p1, a1, e1 = run_probe(cfg, model, variables, data, keys)
  cfg.eval.batch_size = 3  # 40 test points: 14 clean batches, 4 distance batches (last padded)
  p2, a2, e2 = run_probe(cfg, model, variables, data, keys)
  chex.assert_trees_all_close(p1, p2, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(a1, a2)
  assert e1['robust_acc'] == e2['robust_acc']
  for d1, d2 in zip(e1['distances'], e2['distances']):
    assert d1.shape == (10,) and np.isfinite(d1).sum() >= 5
    np.testing.assert_allclose(d1, d2, rtol=1e-4)


SCRIPT = r'''
import json
import jax, numpy as np
from robustjax.recipes import probe
from robustjax.models import resnet
from tests.test_probe_eval import tiny_setup, run_probe

assert jax.device_count() == 4, jax.devices()
shards = []


class Recording(resnet.SmallCNN):
  """Records the per-device batch shape of every input it is traced with."""
  def __call__(self, x, train=False, features_only=False):
    jax.debug.inspect_array_sharding(
        x, callback=lambda s, shape=x.shape: shards.append(
            [list(shape), list(s.shard_shape(shape)) if shape[0] % 4 == 0 else None,
             len(s.device_set)]))
    return super().__call__(x, train, features_only)


cfg, _, variables, data, keys = tiny_setup(num_seeds=3)
model = Recording(widths=(4, 8), num_classes=2, batch_norm=True)
cfg.eval.batch_size = 6   # rounded up to 8 on 4 devices
one = run_probe(cfg, model, variables, data, keys)
single = list(shards)
shards.clear()
cfg.mesh.data = 4
four = run_probe(cfg, model, variables, data, keys)
maxdiff = lambda a, b: max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
print(json.dumps(dict(
    probes=maxdiff(one[0], four[0]), acc=maxdiff(one[1], four[1]),
    robust=[one[2]['robust_acc'], four[2]['robust_acc']] and maxdiff(
        list(one[2]['robust_acc'].values()), list(four[2]['robust_acc'].values())),
    distances=maxdiff([np.where(np.isfinite(d), d, -1) for d in one[2]['distances']],
                      [np.where(np.isfinite(d), d, -1) for d in four[2]['distances']]),
    single=single, four=shards)))
'''


@pytest.mark.slow
def test_evaluation_split_over_four_devices_equals_one():
  """3 seeds on a 4 x 1 mesh: every traced encoder input is split over the 4
  devices (2 points each of a batch of 8), and probes, accuracies, robust
  accuracies and distances equal the 1-device run."""
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['probes'] < 1e-5 and out['acc'] == 0.0 and out['robust'] == 0.0
  assert out['distances'] < 1e-4
  # One device: whole batches on one device. Four: every batch of points
  # (features, clean passes, attacks) is split 4 ways; only init-time
  # single-example traces are not (shape[0] = 1).
  assert out['single'] and all(n == 1 for _, _, n in out['single'])
  batches = [(shape, shard) for shape, shard, n in out['four'] if shape[0] > 1]
  assert batches and all(shard == [shape[0] // 4] + shape[1:] for shape, shard in batches), \
      out['four']
  assert {shape[0] for shape, _ in batches} >= {8}
