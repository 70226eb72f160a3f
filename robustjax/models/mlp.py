"""Paper B's MLPs: GELU hidden layers, readout scaled by 1/sqrt(width).

Follows the authors' PyTorch models (``Pehlevan-Group/rep-spectral``): every
layer after the first multiplies its output (bias included) by
1/sqrt(fan_in), so the readout of a width-m net is (W h + b) / sqrt(m); the
GELU is the exact (erf) one, as torch's ``nn.GELU()``.

Layers are named ``hidden_0 .. hidden_{L-1}`` and ``readout``;
``feature_layers`` names the ones up to the feature map (what rep-spectral
penalises and what a re-fitted readout sees through).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'relu': jax.nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': jax.nn.sigmoid,
}


def normal_init(std: float, fan_in_scaled: bool):
  """N(0, std^2), or N(0, std^2 / fan_in) when fan_in_scaled (the 'small' init)."""
  def init(key, shape, dtype=jnp.float32):
    s = std / jnp.sqrt(shape[0]) if fan_in_scaled and len(shape) > 1 else std
    return s * jax.random.normal(key, shape, dtype)
  return init


class MLP(nn.Module):
  """x (n, ...) -> logits (n, num_classes); inputs are flattened.

  ``features_only=True`` returns the feature map phi(x): the last hidden
  layer's activations (n, widths[-1]).
  """
  widths: Sequence[int]           # hidden widths, e.g. (2000,) or (3,)
  num_classes: int
  activation: str = 'gelu'
  init_std: float = 1.0           # kernels ~ N(0, init_std^2 [/ fan_in])
  fan_in_init: bool = True        # divide the kernel std by sqrt(fan_in)
  bias_init_std: float = 0.0      # biases ~ N(0, bias_init_std^2)
  scale_by_width: bool = True     # layers after the first: output / sqrt(fan_in)

  @property
  def feature_layers(self) -> tuple[str, ...]:
    return tuple(f'hidden_{i}' for i in range(len(self.widths)))

  @property
  def readout_layer(self) -> str:
    return 'readout'

  def _dense(self, features: int, name: str):
    return nn.Dense(features, name=name,
                    kernel_init=normal_init(self.init_std, self.fan_in_init),
                    bias_init=normal_init(self.bias_init_std, False))

  @nn.compact
  def __call__(self, x: jax.Array, features_only: bool = False) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    h = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths):
      fan_in = h.shape[-1]
      h = self._dense(width, f'hidden_{i}')(h)
      if i > 0 and self.scale_by_width:
        h = h / jnp.sqrt(fan_in)
      h = act(h)
    if features_only:
      return h
    out = self._dense(self.num_classes, self.readout_layer)(h)
    return out / jnp.sqrt(h.shape[-1]) if self.scale_by_width else out


def features(model: MLP, params, x):
  """phi(x) on plain params (for ``robustjax.models.apply.bind``)."""
  return model.apply({'params': params}, x, features_only=True)
