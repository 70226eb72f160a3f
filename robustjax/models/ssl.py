"""An encoder with a projector on top, for self-supervised pre-training.

SimCLR and Barlow Twins train ``projector(encoder(x))`` and then throw the
projector away: the linear probe reads the encoder's pooled features. The
encoder is any module with ``__call__(x, train, features_only)`` (the ResNets
and the small CNN of ``robustjax.models.resnet``); its parameters and batch
statistics sit under ``'encoder'``, so ``variables['params']['encoder']`` is
a plain encoder for the probe, and rep-spectral selects the backbone by that
path. The projector is Dense-ReLU-...-Dense without BatchNorm (SimCLR's
CIFAR projector; Barlow Twins' BatchNorm layers are left out so that the
projector holds no running statistics). ``projector_bias=False`` drops its
biases (Paper B's Barlow Twins projector is one bias-free 512 -> 256 layer,
as in Pehlevan-Group/rep-spectral's ``BarlowTwins``).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class SSLNet(nn.Module):
  encoder: nn.Module
  projector_dims: Sequence[int] = (512, 128)
  projector_bias: bool = True

  @property
  def feature_layers(self) -> tuple[str, ...]:
    return ('encoder',)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False):
    h = self.encoder(x, train=train, features_only=True)
    if features_only:
      return h
    for i, d in enumerate(self.projector_dims):
      if i:
        h = nn.relu(h)
      h = nn.Dense(d, use_bias=self.projector_bias, name=f'projector_{i}')(h)
    return h


def encoder_variables(variables: dict) -> dict:
  """The encoder's own {'params', 'batch_stats'} out of an SSLNet's variables."""
  # An encoder without BatchNorm has an empty 'batch_stats'.
  return {k: v.get('encoder', {}) for k, v in variables.items()}
