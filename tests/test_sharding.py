"""Meshes and shardings: rules, and 8 fake CPU devices agreeing with 1 device.

The equivalence runs in subprocesses because XLA_FLAGS (the fake device
count) must be set before jax starts.
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
from jax.sharding import PartitionSpec as P

from robustjax.train import sharding
from tests.helpers import ROOT

TOL = 1e-5

# Part (a) a loss that shards its batch, unbatched, (b) the sparse-coding
# supervised stage (adversarial, seeds vmapped), (c) a rep-spectral regularized
# MLP (power-iteration vectors in the optimizer state): each trains on one
# device and on 8 x 1 and 4 x 2 meshes and prints the max abs differences to
# one device, the shardings it got, and whether the batch-parallel step
# all-reduces.
SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from configs import sparse_coding as cfg_lib
from robustjax import spectral
from robustjax.data import sparse_coding as sc
from robustjax.models.mlp import MLP
from robustjax.recipes import supervised
from robustjax.train import loop, sharding, state as state_lib

assert jax.device_count() == 8, jax.devices()
MESHES = {'data8': {'data': 8, 'model': 1}, 'data4_model2': {'data': 4, 'model': 2}}


def maxdiff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x))


def specs(tree):
  return jax.tree.map(lambda x: str(x.sharding.spec), tree)


def mlp_loss(params, key, aux):
  kx, kn = jax.random.split(key)
  x = sharding.constrain_batch(jax.random.normal(kx, (64, 8)))
  y = jnp.sin(x @ aux) + 0.1 * jax.random.normal(kn, (64,))
  pred = jnp.tanh(x @ params['w']) @ params['a']
  return jnp.mean((pred - y) ** 2), {}


def part_batch(out):
  # (a) batch parallelism inside one run: 64 examples split over 'data'.
  p0 = {'w': jax.random.normal(jax.random.PRNGKey(1), (8, 32)) / 3, 'a': jnp.zeros((32,))}
  st = state_lib.create(p0, optax.adam(1e-2))
  aux = jax.random.normal(jax.random.PRNGKey(2), (8,))
  fit = lambda mesh: loop.fit(st, aux, jax.random.PRNGKey(3), mlp_loss, steps=30,
                              chunk_size=10, progress=False, mesh=mesh)
  ref = fit(None)
  for name, m in MESHES.items():
    s, met = fit(m)
    out[f'batch_{name}'] = {'params': maxdiff(s.params, ref[0].params),
                            'opt_state': maxdiff(s.opt_state, ref[0].opt_state),
                            'loss': maxdiff(met, ref[1]), 'specs': specs(s.params)}
  run, s8, aux8, key8 = loop.compile_chunks(mlp_loss, st, aux, jax.random.PRNGKey(3),
                                            batched=False, mesh=sharding.make_mesh(8, 1))
  hlo = run.lower(s8, key8, aux8, np.int32(0), 10).compile().as_text()
  out['batch_hlo_all_reduce'] = 'all-reduce' in hlo


def part_supervised(out):
  # (b) the sparse-coding supervised stage, adversarial: 4 seeds in one compile.
  cfg = cfg_lib.get_config()
  cfg.data.d = cfg.data.D = 8; cfg.data.k = 2; cfg.model.width = 16
  cfg.pretrain.steps = 30; cfg.pretrain.batch_size = 32; cfg.chunk_size = 10
  cfg.attack.steps = 2; cfg.progress = False
  spec = sc.SparseCodingSpec.from_config(cfg.data)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  worlds = jax.vmap(lambda k: sc.make_world(k, spec))(keys)
  cfg.mesh = {'data': 1, 'model': 1}
  ref = supervised.train(cfg, worlds, worlds.theta0, keys, adversarial=True)
  for name, m in MESHES.items():
    cfg.mesh = m
    p, met = supervised.train(cfg, worlds, worlds.theta0, keys, adversarial=True)
    out[f'supervised_{name}'] = {'params': maxdiff(p, ref[0]), 'loss': maxdiff(met, ref[1]),
                                 'specs': specs(p)}


def part_spectral(out):
  # (c) rep-spectral regularized MLP (Paper B): 2 seeds, power vectors carried.
  model = MLP(widths=(32, 32), num_classes=2)
  x = jax.random.normal(jax.random.PRNGKey(4), (64, 4))
  y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
  seeds = jax.random.split(jax.random.PRNGKey(5), 2)

  def xor_loss(params, key, aux):
    x, y = aux
    logits = model.apply({'params': params}, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), {}

  p0 = jax.vmap(lambda k: model.init(k, x[:1])['params'])(seeds)
  mask = spectral.layer_mask(jax.tree.map(lambda a: a[0], p0), 'rep',
                             feature_layers=model.feature_layers)
  # tol=-1: always the full iteration count. With tol >= 0 the iteration that
  # stops is a discrete decision (|sigma - prev| <= tol sigma) that last-bit
  # rounding flips; when the top two singular values are close, sigma has
  # converged while v has not, so v (and then the params) jump by ~1e-2.
  tx = optax.chain(spectral.penalize(spectral.SpectralSpec(
      kind='rep', lam=0.1, burn_in_steps=5, iters=5, warmup_iters=100, tol=-1.0), mask),
                   state_lib.make_optimizer('sgd', 0.1))
  states = jax.vmap(lambda p: state_lib.create(p, tx))(p0)
  aux = (jnp.stack([x, x]), jnp.stack([y, y]))
  fit = lambda mesh: loop.fit(states, aux, seeds, xor_loss, steps=20, chunk_size=10,
                              batched=True, progress=False, mesh=mesh)
  ref = fit(None)
  for name, m in MESHES.items():
    s, met = fit(m)
    out[f'spectral_{name}'] = {'params': maxdiff(s.params, ref[0].params),
                               'opt_state': maxdiff(s.opt_state, ref[0].opt_state),
                               'loss': maxdiff(met, ref[1])}


out = {}
globals()['part_' + sys.argv[1]](out)
print('RESULT ' + json.dumps(out))
'''
PARTS = ('batch', 'supervised', 'spectral')


@pytest.fixture(scope='module')
def fake_devices():
  """The three parts in parallel subprocesses (compiles are mostly single-threaded)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  procs = [subprocess.Popen([sys.executable, '-c', SCRIPT, part], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for part in PARTS]
  out = {}
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    line = [l for l in stdout.splitlines() if l.startswith('RESULT ')][-1]
    out.update(json.loads(line[len('RESULT '):]))
  return out


@pytest.mark.parametrize('mesh', ['data8', 'data4_model2'])
@pytest.mark.parametrize('run', PARTS)
def test_eight_fake_devices_match_one(fake_devices, run, mesh):
  r = fake_devices[f'{run}_{mesh}']
  assert r['params'] <= TOL and r['loss'] <= TOL, (run, mesh, r)
  if 'opt_state' in r:
    # Power-iteration vectors converge slowly when the top singular values are
    # close, so they carry rounding a little further than the params do.
    assert r['opt_state'] <= (1e-4 if run == 'spectral' else TOL), (run, mesh, r)


def test_fake_device_runs_are_really_sharded(fake_devices):
  # Batch parallelism: the gradient is summed across the data shards.
  assert fake_devices['batch_hlo_all_reduce']
  # Wide layers over 'model' (the widest dim), replicated over 'data'.
  assert fake_devices['batch_data4_model2']['specs'] == {
      'w': "P(None, 'model')", 'a': "P('model',)"}
  assert fake_devices['batch_data8']['specs'] == {'w': 'P(None, None)', 'a': 'P(None,)'}
  # 4 seeds split over data=4, hidden units over model=2; 4 seeds do not
  # split over data=8, so they are replicated there.
  assert fake_devices['supervised_data4_model2']['specs'] == {
      'w': "P('data', None, 'model')", 'b': "P('data', 'model')",
      'a': "P('data', 'model')"}
  assert fake_devices['supervised_data8']['specs']['w'] == 'P(None, None, None)'


def test_param_spec_rules():
  assert sharding.param_spec((64, 256), 2) == P(None, 'model')
  assert sharding.param_spec((784, 2000), 4) == P(None, 'model')
  assert sharding.param_spec((2000, 10), 4) == P('model', None)
  assert sharding.param_spec((256,), 2, lead=('data',)) == P('data', 'model')
  assert sharding.param_spec((7, 5), 2) == P(None, None)        # 2 divides neither
  assert sharding.param_spec((), 2) == P()                      # scalars (adam count)
  assert sharding.param_spec((64, 256), 1) == P(None, None)     # no model axis


def test_mesh_shape_resolves_and_checks():
  assert sharding.mesh_shape(-1, 1, num_devices=8) == (8, 1)
  assert sharding.mesh_shape(-1, 2, num_devices=8) == (4, 2)
  assert sharding.mesh_shape(2, 2, num_devices=8) == (2, 2)
  for bad in [(-1, 3), (4, 4), (0, 1), (2, 0)]:
    with pytest.raises(ValueError):
      sharding.mesh_shape(*bad, num_devices=8)


def test_one_device_is_the_default_program():
  assert sharding.mesh_from_config(None) is None
  assert sharding.mesh_from_config({'data': 1, 'model': 1}) is None
  assert sharding.mesh_from_config({'data': -1, 'model': 1}) is (
      None if jax.device_count() == 1 else sharding.mesh_from_config({'data': -1, 'model': 1}))
  x = jnp.arange(8.0)
  chex.assert_trees_all_equal(sharding.constrain_batch({'x': x}), {'x': x})


def test_put_copies_and_places():
  mesh = sharding.make_mesh(1, 1)
  x = jnp.arange(6.0).reshape(2, 3)
  y = sharding.put({'x': x}, {'x': jax.sharding.NamedSharding(mesh, P())})['x']
  chex.assert_trees_all_equal(np.asarray(y), np.asarray(x))
  assert y.unsafe_buffer_pointer() != x.unsafe_buffer_pointer()


def test_shared_aux_equals_a_per_seed_broadcast():
  # One dataset read by 3 vmapped seeds (shared_aux=True, not vmapped; on a
  # mesh, replicated) trains exactly as its per-seed broadcast copy does.
  import optax
  from robustjax.train import loop, state as state_lib

  def loss(params, key, aux):
    idx = jax.random.choice(key, aux['x'].shape[0], (8,), replace=False)
    x, y = aux['x'][idx], aux['y'][idx]
    return jnp.mean((jnp.tanh(x @ params['w']) - y) ** 2), {'w0': params['w'][0]}

  x = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
  aux = {'x': x, 'y': jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))}
  seeds = jax.random.split(jax.random.PRNGKey(1), 3)
  states = jax.vmap(lambda k: state_lib.create(
      {'w': jax.random.normal(k, (3,))}, optax.sgd(0.1, momentum=0.9)))(seeds)
  fit = lambda aux, **kw: loop.fit(states, aux, seeds, loss, steps=12, chunk_size=6,
                                   batched=True, progress=False, **kw)
  broadcast = fit(jax.tree.map(lambda a: jnp.broadcast_to(a, (3,) + a.shape), aux))
  assert not np.allclose(broadcast[0].params['w'][0], broadcast[0].params['w'][1])
  for mesh in (None, sharding.make_mesh(1, 1)):
    shared = fit(aux, shared_aux=True, mesh=mesh)
    chex.assert_trees_all_close(shared, broadcast, rtol=1e-6, atol=1e-6)


def test_config_mesh_and_checkpoint_interval_are_validated(tiny_sparse_coding_config):
  from robustjax import config_validation as cv
  from robustjax.experiments import sparse_coding
  cfg = tiny_sparse_coding_config
  cfg.mesh.data = -1
  sparse_coding.validate(cfg)  # all devices: always fits
  cfg.mesh.data = jax.device_count() + 1
  with pytest.raises(cv.ConfigError, match=r'config\.mesh: .*needs'):
    sparse_coding.validate(cfg)
  cfg.mesh.data, cfg.checkpoint_every = 1, 0
  with pytest.raises(cv.ConfigError, match=r'config\.checkpoint_every'):
    sparse_coding.validate(cfg)


def test_multi_process_helpers_leave_a_single_process_tree_alone():
  # One process: checkpoints and fit outputs stay exactly what they were
  # (tests/test_multihost.py covers two processes).
  tree = {'a': jnp.ones(3), 'b': np.zeros((2, 2), np.float32)}
  assert sharding.global_arrays(tree) is tree
  assert sharding.host_readable(tree) is tree
  # Evaluation keeps the run's mesh (same programs, same compiles, same bits).
  mesh = sharding.make_mesh()
  assert sharding.process_local(mesh) is mesh
  assert sharding.process_local(None) is None
  with pytest.raises(TypeError, match='mesh must be a jax.sharding.Mesh or None'):
    sharding.process_local({'data': -1, 'model': 1})
