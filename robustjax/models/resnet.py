"""CIFAR ResNets (He et al. 2016, the CIFAR variant) and a small CNN for CPU runs.

CIFAR ResNet: a 3x3 stride-1 stem conv (no max-pool), four stages of
BasicBlocks of widths w, 2w, 4w, 8w, stride 2 at the start of stages 2-4, a
1x1 projection shortcut (conv + BatchNorm) where the shape changes, global
average pooling and a Dense ``readout``. With w=64 and stages (2, 2, 2, 2)
this is the usual ResNet-18 for CIFAR (11,173,962 trainable parameters for
10 classes); convs carry no bias (BatchNorm follows each).

``padding='CIRCULAR'`` makes every 3x3 conv wrap around (Paper B): the
network is then equivariant to circular shifts by multiples of its total
stride, and each conv's operator norm is exact by FFT
(``robustjax.spectral.conv_norm``). 'SAME' is the usual zero padding.

BatchNorm uses the batch statistics only with ``train=True``; the default
(eval) mode reads the running averages, so an attack, which calls the model
in eval mode, never changes them. BatchNorm momentum 0.9 and epsilon 1e-5
are PyTorch's defaults (momentum 0.1 there counts the other way).

Layers are named; ``feature_layers`` names everything up to the pooled
feature vector (what rep-spectral penalises: its conv kernels), and
``readout_layer`` the final Dense.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PADDINGS = ('SAME', 'CIRCULAR')


def _check_padding(padding: str):
  if padding not in PADDINGS:
    raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')


def _batch_norm(train: bool, name: str, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=scale_init, name=name)


# He (fan_out) normal init, as torchvision's ResNets.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""
  features: int
  strides: int = 1
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, self.features, (3, 3), use_bias=False,
                             padding=self.padding, kernel_init=_conv_init)
    h = conv(strides=self.strides, name='conv_0')(x)
    h = nn.relu(_batch_norm(train, 'bn_0')(h))
    h = conv(name='conv_1')(h)
    h = _batch_norm(train, 'bn_1')(h)
    if self.strides != 1 or x.shape[-1] != self.features:
      # A 1x1 conv reads no neighbours: its padding is irrelevant.
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, padding='VALID',
                  kernel_init=_conv_init, name='shortcut_conv')(x)
      x = _batch_norm(train, 'shortcut_bn')(x)
    return nn.relu(h + x)


class ResNet(nn.Module):
  """x (n, H, W, C) -> logits (n, num_classes), or the pooled features (n, 8 width)."""
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  padding: str = 'SAME'          # 'SAME' (zeros) | 'CIRCULAR' (wrap around, Paper B)

  def _blocks(self):
    """(name, features, strides) of every block, in order."""
    out = []
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        out.append((f'stage{i + 1}_block{j}', self.width * 2 ** i, 2 if i > 0 and j == 0 else 1))
    return out

  @property
  def feature_layers(self) -> tuple[str, ...]:
    return ('stem_conv', 'stem_bn') + tuple(name for name, _, _ in self._blocks())

  @property
  def readout_layer(self) -> str:
    return 'readout'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False) -> jax.Array:
    _check_padding(self.padding)
    h = nn.Conv(self.width, (3, 3), use_bias=False, padding=self.padding,
                kernel_init=_conv_init, name='stem_conv')(x)
    h = nn.relu(_batch_norm(train, 'stem_bn')(h))
    for name, features, strides in self._blocks():
      h = BasicBlock(features, strides, self.padding, name=name)(h, train)
    h = jnp.mean(h, axis=(-3, -2))
    if features_only:
      return h
    return nn.Dense(self.num_classes, name=self.readout_layer)(h)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))


class SmallCNN(nn.Module):
  """A few conv3x3-BN-ReLU layers, one per width, each after the first with
  stride 2; global average pooling and a Dense ``readout``. Total stride
  2^(len(widths) - 1)."""
  widths: Sequence[int] = (16, 32)
  num_classes: int = 10
  padding: str = 'SAME'          # 'SAME' | 'CIRCULAR'
  # False: conv (with bias)-ReLU, no BatchNorm. A conv followed by BatchNorm
  # can shrink its kernel at no cost to the function (BatchNorm rescales it
  # back), so a spectral penalty on the kernels bounds the feature map's
  # Jacobian only without it.
  batch_norm: bool = True

  @property
  def feature_layers(self) -> tuple[str, ...]:
    kinds = ('conv', 'bn') if self.batch_norm else ('conv',)
    return tuple(f'{kind}_{i}' for i in range(len(self.widths)) for kind in kinds)

  @property
  def readout_layer(self) -> str:
    return 'readout'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False) -> jax.Array:
    _check_padding(self.padding)
    h = x
    for i, width in enumerate(self.widths):
      h = nn.Conv(width, (3, 3), 1 if i == 0 else 2, use_bias=not self.batch_norm,
                  padding=self.padding, kernel_init=_conv_init, name=f'conv_{i}')(h)
      h = nn.relu(_batch_norm(train, f'bn_{i}')(h) if self.batch_norm else h)
    h = jnp.mean(h, axis=(-3, -2))
    if features_only:
      return h
    return nn.Dense(self.num_classes, name=self.readout_layer)(h)


# Module-level functions, for robustjax.models.apply.bind (variables =
# {'params': ..., 'batch_stats': ...}). Compiled (the module is static):
# op-by-op eager ResNets are slow to the point of unusable; inside a caller's
# jit they inline.

@functools.partial(jax.jit, static_argnums=0)
def eval_logits(model: nn.Module, variables, x: jax.Array) -> jax.Array:
  """Logits in eval mode (running BatchNorm statistics, nothing updated)."""
  return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def eval_features(model: nn.Module, variables, x: jax.Array) -> jax.Array:
  """The pooled feature vector (the readout's input) in eval mode."""
  return model.apply(variables, x, train=False, features_only=True)


def init(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
  """(params, batch_stats) for inputs of ``input_shape``: one image (H, W, C)
  or a batch (n, H, W, C); initialised on a batch of one."""
  if len(input_shape) not in (3, 4):
    raise ValueError(f'input_shape must be (H, W, C) or (n, H, W, C), got {tuple(input_shape)}')
  variables = _init(model, key, (1, *input_shape[-3:]))
  return variables['params'], variables.get('batch_stats', {})  # {}: no BatchNorm


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model, key, shape):
  # The draws use an 'rbg' key made from key's bits: XLA CPU compiles many
  # threefry draws in one program superlinearly slowly (25 normals took
  # 200 s on 2 cores, a ResNet-18 init minutes), RngBitGenerator in seconds.
  # Still a deterministic function of key on a given backend.
  bits = jnp.resize(jax.random.key_data(key).reshape(-1), (4,))
  return model.init(jax.random.wrap_key_data(bits, impl='rbg'), jnp.zeros(shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=('model', 'features_only'))
def train_forward(model: nn.Module, params, batch_stats, x: jax.Array,
                  features_only: bool = False):
  """(logits or features, new batch_stats): the training forward pass, which
  normalises by the batch's statistics and updates the running ones."""
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                             features_only=features_only, mutable=['batch_stats'])
  return out, updates.get('batch_stats', {})
