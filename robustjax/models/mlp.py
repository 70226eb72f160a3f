"""Paper B's MLPs: GELU hidden layers, readout scaled by 1/sqrt(width).

Follows the authors' PyTorch models (``Pehlevan-Group/rep-spectral``): every
layer after the first multiplies its output (bias included) by
1/sqrt(fan_in), so the readout of a width-m net is (W h + b) / sqrt(m); the
GELU is the exact (erf) one, as torch's ``nn.GELU()``.

Layers are named ``hidden_0 .. hidden_{L-1}`` and ``readout``;
``feature_layers`` names the ones up to the feature map (what rep-spectral
penalises and what a re-fitted readout sees through).

Init (``init_scheme``): ``'normal'`` draws every kernel AND bias from N(0, init_std^2),
the authors' ``weights_init`` (src/model/architectures/MLP.py: INIT_STD = 0.01
since their commit ab0c9a7, April 2024, "shrink MLP initialization scale";
applied to every nn.Linear by their MNIST and XOR training scripts).
``'fan_in'`` draws kernels from N(0, init_std^2 / fan_in) and sets biases to 0.

Each hidden layer's pre-activations (n, width) are sown as ``z_i`` into the
``'preactivations'`` collection (``model.apply({'params': p}, x,
mutable=['preactivations'])``; ``model.init(...)['params']`` drops it), for penalties
that depend on the activation's slope along the batch (rep-spectral's eig-ub
term, ``robustjax.spectral.activation_slope_penalty``).
"""
from __future__ import annotations

import math
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

# sup_z |phi'(z)| of each activation: the slope bound of a Lipschitz constant.
# GELU: phi'(z) = Phi(z) + z phi(z) peaks at z = sqrt(2) (phi'' = phi(z) (2 - z^2)).
ACTIVATION_SLOPES = {
    'gelu': 0.5 * (1.0 + math.erf(1.0)) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(2 * math.pi),
    'relu': 1.0,
    'tanh': 1.0,
    'sigmoid': 0.25,
}
INITS = ('fan_in', 'normal')


def normal_init(std: float, fan_in_scaled: bool):
  """N(0, std^2), or N(0, std^2 / fan_in) when fan_in_scaled (kernels only)."""
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
  init_scheme: str = 'fan_in'     # 'fan_in' | 'normal' (see the module docstring)
  init_std: float = 1.0           # fan_in: kernels N(0, init_std^2 / fan_in), biases 0;
                                  # normal: kernels and biases N(0, init_std^2)
  scale_by_width: bool = True     # layers after the first: output / sqrt(fan_in)

  def __post_init__(self):
    if self.init_scheme not in INITS:
      raise ValueError(f'init_scheme must be one of {INITS}, got {self.init_scheme!r}')
    if not self.init_std > 0:
      raise ValueError(f'init_std must be > 0, got {self.init_std!r}')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}')
    super().__post_init__()

  @property
  def feature_layers(self) -> tuple[str, ...]:
    return tuple(f'hidden_{i}' for i in range(len(self.widths)))

  @property
  def readout_layer(self) -> str:
    return 'readout'

  def _dense(self, features: int, name: str):
    normal = self.init_scheme == 'normal'
    return nn.Dense(features, name=name,
                    kernel_init=normal_init(self.init_std, not normal),
                    bias_init=normal_init(self.init_std, False) if normal
                    else nn.initializers.zeros)

  @nn.compact
  def __call__(self, x: jax.Array, features_only: bool = False) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    h = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths):
      fan_in = h.shape[-1]
      h = self._dense(width, f'hidden_{i}')(h)
      if i > 0 and self.scale_by_width:
        h = h / jnp.sqrt(fan_in)
      self.sow('preactivations', f'z_{i}', h)
      h = act(h)
    if features_only:
      return h
    out = self._dense(self.num_classes, self.readout_layer)(h)
    return out / jnp.sqrt(h.shape[-1]) if self.scale_by_width else out


def features(model: MLP, params, x):
  """phi(x) on plain params (for ``robustjax.models.apply.bind``)."""
  return model.apply({'params': params}, x, features_only=True)
