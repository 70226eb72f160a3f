"""CIFAR ResNets and the small CNN: sizes, BatchNorm modes, circular padding.

ResNet-18 itself is only traced (jax.eval_shape): compiling it on CPU takes
too long for the default suite. Everything that runs uses width 4 on 8x8.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax.models import resnet
from robustjax.spectral import conv_norm

TINY = dict(stage_sizes=(1, 1, 1), num_classes=3, width=4)   # total stride 4
# numpy draws: each jax.random program costs a compile (~1 s on CPU).
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((4, 8, 8, 3)), jnp.float32)


def _n_params(model, shape=(1, 32, 32, 3)):
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v['params']))


def test_resnet18_and_34_parameter_counts():
  # The standard CIFAR ResNet-18/34 (e.g. kuangliu/pytorch-cifar): 11,173,962
  # and 21,282,122 trainable parameters for 10 classes.
  assert _n_params(resnet.ResNet18(num_classes=10)) == 11_173_962
  assert _n_params(resnet.ResNet34(num_classes=10)) == 21_282_122
  out = jax.eval_shape(lambda: resnet.ResNet18(num_classes=10).init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), features_only=True)[0])
  chex.assert_shape(out, (2, 512))


def test_layer_names():
  m = resnet.ResNet18(num_classes=10)
  assert m.readout_layer == 'readout'
  assert m.feature_layers == ('stem_conv', 'stem_bn') + tuple(
      f'stage{i}_block{j}' for i in range(1, 5) for j in range(2))
  params = jax.eval_shape(lambda: resnet.init(m, jax.random.PRNGKey(0), (32, 32, 3)))[0]
  assert set(params) == set(m.feature_layers) | {'readout'}
  small = resnet.SmallCNN(widths=(4, 8, 8), num_classes=3)
  params = jax.eval_shape(lambda: resnet.init(small, jax.random.PRNGKey(0), (8, 8, 3)))[0]
  assert set(params) == set(small.feature_layers) | {'readout'}


@pytest.mark.parametrize('model', [resnet.ResNet(**TINY), resnet.SmallCNN((4, 8), 3)])
def test_modes_shapes_and_batch_stats(model):
  params, stats = resnet.init(model, jax.random.PRNGKey(1), X.shape)
  variables = {'params': params, 'batch_stats': stats}
  logits = resnet.eval_logits(model, variables, X)
  chex.assert_shape(logits, (4, 3))
  # Eval mode: deterministic and per-example (no batch statistics): changing
  # the other examples of the batch leaves the first one's logits alone.
  others = X.at[1:].set(3.0 * X[1:] + 1.0)
  chex.assert_trees_all_close(resnet.eval_logits(model, variables, others)[0], logits[0],
                              atol=1e-5)
  # The features feed the readout exactly.
  feats = resnet.eval_features(model, variables, X)
  chex.assert_shape(feats, (4, (8 if isinstance(model, resnet.SmallCNN) else 16)))
  chex.assert_trees_all_close(feats @ params['readout']['kernel'] + params['readout']['bias'],
                              logits, atol=1e-5)
  # Train mode: batch statistics, and the running averages move.
  out, new_stats = resnet.train_forward(model, params, stats, X)
  chex.assert_shape(out, (4, 3))
  assert not np.allclose(out, logits, atol=1e-3)
  assert not np.allclose(resnet.train_forward(model, params, stats, others)[0][0], out[0],
                         atol=1e-3)  # train mode: the batch's statistics
  chex.assert_trees_all_equal_structs(new_stats, stats)
  for old, new in zip(jax.tree.leaves(stats), jax.tree.leaves(new_stats)):
    assert not np.allclose(old, new)


def test_eval_mode_never_changes_batch_stats():
  model = resnet.ResNet(**TINY)
  params, stats = resnet.init(model, jax.random.PRNGKey(1), X.shape)
  # Even asked to, eval mode has nothing to update.
  apply = jax.jit(lambda v, x: model.apply(v, x, mutable=['batch_stats']))
  _, updates = apply({'params': params, 'batch_stats': stats}, X)
  chex.assert_trees_all_equal(updates['batch_stats'], stats)


def test_train_steps_reduce_loss_and_update_stats():
  from robustjax.train import state as state_lib
  from robustjax.train.steps import train_step
  model = resnet.SmallCNN((4, 8), 3)
  params, stats = resnet.init(model, jax.random.PRNGKey(2), X.shape)
  y = jnp.array([0, 1, 2, 0])

  def loss_fn(params, key, aux, batch_stats):
    logits, stats = resnet.train_forward(model, params, batch_stats, aux[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, aux[1]).mean(), ({}, stats)

  state = state_lib.create(params, optax.sgd(0.1, momentum=0.9), batch_stats=stats)
  step = jax.jit(lambda s: train_step(s, jax.random.PRNGKey(0), (X, y), loss_fn))
  losses = []
  for _ in range(8):
    state, metrics = step(state)
    losses.append(float(metrics['loss']))
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses
  assert not np.allclose(state.batch_stats['bn_0']['mean'], stats['bn_0']['mean'])


@pytest.mark.parametrize('strides', [1, 2])
def test_flax_circular_conv_is_conv_norm_conv(strides):
  kernel = jnp.asarray(RNG.standard_normal((3, 3, 3, 5)), jnp.float32)
  layer = nn.Conv(5, (3, 3), strides, padding='CIRCULAR', use_bias=False)

  @jax.jit
  def both(kernel, x):
    theirs = jax.vmap(lambda x: conv_norm.conv(kernel, x, strides=strides, padding='CIRCULAR'))
    return layer.apply({'params': {'kernel': kernel}}, x), theirs(x)

  chex.assert_trees_all_close(*both(kernel, X), atol=1e-5)


def test_circular_padding_makes_the_net_shift_equivariant():
  """Circular padding + global pooling: rolling the image by a multiple of
  the total stride (4 here) leaves the logits unchanged; zero padding does not."""
  rolled = jnp.roll(X, (4, -4), axis=(1, 2))
  both = jnp.concatenate([X, rolled])
  for padding, equal in (('CIRCULAR', True), ('SAME', False)):
    model = resnet.ResNet(**TINY, padding=padding)
    params, stats = resnet.init(model, jax.random.PRNGKey(4), X.shape)
    # Random running statistics: a nontrivial eval-mode BatchNorm.
    rng = np.random.default_rng(5)
    perturb = {'mean': lambda s: s + 0.1 * rng.standard_normal(s.shape),
               'var': lambda s: s * rng.uniform(0.5, 1.5, s.shape)}
    stats = jax.tree_util.tree_map_with_path(
        lambda path, s: perturb[path[-1].key](s).astype(np.float32), stats)
    logits = resnet.eval_logits(model, {'params': params, 'batch_stats': stats}, both)
    assert float(jnp.std(logits[:4], axis=0).min()) > 1e-2  # not a constant net
    gap = float(jnp.max(jnp.abs(logits[:4] - logits[4:])))
    assert (gap < 1e-4) == equal, (padding, gap)


def test_bad_arguments():
  with pytest.raises(ValueError, match='padding'):
    resnet.init(resnet.ResNet(**TINY, padding='REFLECT'), jax.random.PRNGKey(0), (8, 8, 3))
  with pytest.raises(ValueError, match='input_shape'):
    resnet.init(resnet.SmallCNN(), jax.random.PRNGKey(0), (8, 8))
