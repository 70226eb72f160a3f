"""The spectral penalty on conv layers: recorded operators, warm-started power
iteration through the conv against the exact FFT norm, and ResNet masks."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import spectral
from robustjax.models import resnet
from robustjax.spectral import ConvLayer
from robustjax.train import state as state_lib
from robustjax.train.steps import train_step

RNG = np.random.default_rng(0)   # numpy draws: no per-shape jax.random compiles
TINY = resnet.ResNet(stage_sizes=(1, 1), num_classes=3, width=4, padding='CIRCULAR')
X = jnp.asarray(RNG.standard_normal((2, 8, 8, 3)), jnp.float32)


def _tiny():
  params, stats = resnet.init(TINY, jax.random.PRNGKey(0), X.shape)
  variables = {'params': params, 'batch_stats': stats}
  return params, stats, spectral.conv_layers(TINY, variables, X[:1])


def test_conv_layers_records_each_operator():
  _, _, layers = _tiny()
  assert layers == {
      'stem_conv/kernel': ConvLayer((8, 8, 3), (1, 1), 'CIRCULAR'),
      'stage1_block0/conv_0/kernel': ConvLayer((8, 8, 4), (1, 1), 'CIRCULAR'),
      'stage1_block0/conv_1/kernel': ConvLayer((8, 8, 4), (1, 1), 'CIRCULAR'),
      'stage2_block0/conv_0/kernel': ConvLayer((8, 8, 4), (2, 2), 'CIRCULAR'),
      'stage2_block0/conv_1/kernel': ConvLayer((4, 4, 8), (1, 1), 'CIRCULAR'),
      # 1x1: no padding at all, so the same map as circular.
      'stage2_block0/shortcut_conv/kernel': ConvLayer((8, 8, 4), (2, 2), 'CIRCULAR'),
  }
  same = resnet.SmallCNN((4, 8), 3, padding='SAME')
  v = jax.eval_shape(lambda: dict(zip(('params', 'batch_stats'),
                                      resnet.init(same, jax.random.PRNGKey(0), (6, 6, 3)))))
  assert spectral.conv_layers(same, v, jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)) == {
      'conv_0/kernel': ConvLayer((6, 6, 3), (1, 1), 'SAME'),
      'conv_1/kernel': ConvLayer((6, 6, 4), (2, 2), 'SAME')}


def test_conv_layers_refuses_what_it_cannot_iterate():
  x = jax.ShapeDtypeStruct((1, 6, 6, 2), jnp.float32)
  for conv, what in ((nn.Conv(3, (3, 3), kernel_dilation=2), 'kernel_dilation'),
                     (nn.Conv(4, (3, 3), feature_group_count=2), 'feature_group_count'),
                     (nn.Conv(3, (3, 3), padding='REFLECT'), 'padding')):
    v = jax.eval_shape(conv.init, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=what):
      spectral.conv_layers(conv, v, x)
  with pytest.raises(ValueError, match='padding'):
    ConvLayer((4, 4, 1), (1, 1), 'same')


def test_resnet_masks_select_conv_kernels_and_the_readout():
  params, _, layers = _tiny()
  conv_paths = set(layers)
  rep = spectral.layer_mask(params, 'rep', feature_layers=TINY.feature_layers,
                            conv_layers=layers)
  ll = spectral.layer_mask(params, 'll', conv_layers=layers)
  chosen = lambda mask: {k for k in spectral.sigma_max(params, mask)}
  assert chosen(rep) == conv_paths  # no BatchNorm scale, no readout
  assert chosen(ll) == conv_paths | {'readout/kernel'}
  # Conv kernels carry their operator, the readout True, the rest False.
  for path, m in jax.tree_util.tree_leaves_with_path(ll):
    key = '/'.join(p.key for p in path)
    assert m == (layers.get(key) or key == 'readout/kernel'), key
  with pytest.raises(ValueError, match='conv_layers'):
    spectral.layer_mask(params, 'rep', feature_layers=TINY.feature_layers)


@pytest.mark.parametrize('strides', [1, 2])
def test_carried_vectors_converge_to_the_fft_norm(strides):
  """One power iteration per update, vectors carried: sigma -> the exact norm."""
  kernel = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 2, 3)), jnp.float32)
  params = {'conv': {'kernel': kernel}}
  layer = ConvLayer((6, 6, 2), (strides, strides), 'CIRCULAR')
  mask = spectral.layer_mask(params, 'll', conv_layers={'conv/kernel': layer})
  exact = spectral.conv_operator_norm(kernel, (6, 6, 2), strides=strides, method='fft')[0]
  chex.assert_trees_all_close(spectral.sigma_max(params, mask)['conv/kernel'], exact)
  spec = spectral.SpectralSpec(kind='ll', lam=1.0, iters=1, warmup_iters=1, tol=0.0)
  tx = spectral.penalize(spec, mask, jax.random.PRNGKey(1))
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit
  def updates(state):
    return jax.lax.scan(lambda s, _: (tx.update(zeros, s, params)[1], s.value), state,
                        None, length=1000)

  state, values = updates(tx.init(params))
  chex.assert_shape(state.vectors['conv']['kernel'], (6, 6, 2))
  sigmas = np.sqrt(np.asarray(values[1:]))
  assert np.all(np.diff(sigmas) >= -1e-5)  # power iteration only climbs
  np.testing.assert_allclose(np.sqrt(state.value), exact, rtol=1e-4)


def test_gradient_of_sigma_squared_is_the_fft_norms():
  kernel = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 2, 2)), jnp.float32)
  params = {'conv': {'kernel': kernel}}
  layer = ConvLayer((4, 4, 2), (1, 1), 'CIRCULAR')
  mask = spectral.layer_mask(params, 'll', conv_layers={'conv/kernel': layer})
  vecs = spectral.init_vectors(params, mask, jax.random.PRNGKey(0))
  ours = jax.grad(lambda p: spectral.penalty(p, vecs, mask, iters=2000, tol=0.0)[0])(params)
  exact = jax.grad(lambda k: spectral.conv_operator_norm(k, (4, 4), method='fft')[0] ** 2)(kernel)
  g = np.asarray(ours['conv']['kernel'])
  assert np.linalg.norm(g - exact) <= 1e-3 * np.linalg.norm(exact)


def test_penalize_a_resnet_under_jit():
  """A jitted train step with the penalty: at the switch-on (warm-up) the
  logged penalty is the sum of the exact (FFT) sigma_max^2 of the rep convs,
  and the carried vectors have each conv's input shape."""
  params, stats, layers = _tiny()
  mask = spectral.layer_mask(params, 'rep', feature_layers=TINY.feature_layers,
                             conv_layers=layers)
  spec = spectral.SpectralSpec(kind='rep', lam=0.5, warmup_iters=500, tol=0.0)
  tx = optax.chain(spectral.penalize(spec, mask), optax.sgd(1.0))
  y = jnp.array([0, 2])

  def loss_fn(params, key, aux, batch_stats):
    logits, new = resnet.train_forward(TINY, params, batch_stats, aux[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, aux[1]).mean(), ({}, new)

  state = state_lib.create(params, tx, batch_stats=stats)
  step = jax.jit(lambda st: train_step(st, jax.random.PRNGKey(0), (X, y), loss_fn))
  new, _ = step(state)
  exact = spectral.sigma_max(params, mask)
  assert set(exact) == set(layers)
  np.testing.assert_allclose(new.opt_state[0].value, sum(s ** 2 for s in exact.values()),
                             rtol=1e-3)
  for path, layer in layers.items():
    vec = new.opt_state[0].vectors
    for part in path.split('/'):
      vec = vec[part]
    chex.assert_shape(vec, layer.input_shape)
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(new.params))
