"""Which linear operator each conv kernel of a model is: input size, stride, padding.

A dense kernel *is* its operator; a conv kernel is not: the same (kh, kw,
c_in, c_out) array is a different linear map on 32x32 and on 8x8 inputs, with
stride 1 or 2, wrapped or zero-padded. ``conv_layers`` runs the model once
(abstractly, under ``jax.eval_shape``: no FLOPs) with flax's
``nn.intercept_methods`` and records every ``nn.Conv`` call as a ``ConvLayer``
keyed by its kernel's parameter path; ``regularizers.layer_mask`` takes that
dict so the spectral penalty iterates through the true operator.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import flax.linen as nn
import jax
import numpy as np

from robustjax.spectral import conv_norm

Padding = Union[str, tuple[tuple[int, int], tuple[int, int]]]
STRING_PADDINGS = ('SAME', 'VALID', 'CIRCULAR')


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """A 2-D conv as an operator on one input: x (H, W, c_in) -> (H', W', c_out).

  Hashable and a pytree *leaf* (not a node), so a mask can hold it in place
  of True and jit can close over it.
  """
  input_shape: tuple[int, int, int]     # (H, W, c_in) of one input
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'             # 'SAME' | 'VALID' | 'CIRCULAR' | ((lo, hi), (lo, hi))

  def __post_init__(self):
    if len(self.input_shape) != 3:
      raise ValueError(f'input_shape must be (H, W, c_in), got {self.input_shape}')
    if isinstance(self.padding, str) and self.padding not in STRING_PADDINGS:
      raise ValueError(f'padding must be one of {STRING_PADDINGS} or ((lo, hi), (lo, hi)), '
                       f'got {self.padding!r}')

  @property
  def circular(self) -> bool:
    return self.padding == 'CIRCULAR'

  def __call__(self, kernel: jax.Array, x: jax.Array) -> jax.Array:
    """The layer (without bias) applied to one input x (H, W, c_in)."""
    return conv_norm.conv(kernel, x, strides=self.strides, padding=self.padding)


def _pair(x) -> tuple[int, int]:
  if x is None:
    return (1, 1)
  return (int(x), int(x)) if np.ndim(x) == 0 else tuple(int(v) for v in x)


def _padding(p) -> Padding:
  if isinstance(p, str):
    if p.upper() not in STRING_PADDINGS:
      raise ValueError(f'conv padding must be one of {STRING_PADDINGS} or explicit '
                       f'zero pads for the spectral penalty, got {p!r}')
    return p.upper()
  pads = nn.linear.canonicalize_padding(p, 2)
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def _spec(module: nn.Conv, x) -> ConvLayer:
  name = '/'.join(module.path)
  # flax reads an int kernel_size as a 1-D conv.
  ks = module.kernel_size
  if isinstance(ks, int) or len(ks) != 2:
    raise ValueError(f'{name}: only 2-D convs are supported, kernel_size={module.kernel_size}')
  for field in ('input_dilation', 'kernel_dilation'):
    if _pair(getattr(module, field)) != (1, 1):
      raise ValueError(f'{name}: {field} must be 1 for the spectral penalty, '
                       f'got {getattr(module, field)}')
  if module.feature_group_count != 1:
    raise ValueError(f'{name}: feature_group_count must be 1 for the spectral penalty, '
                     f'got {module.feature_group_count}')
  padding = _padding(module.padding)
  if tuple(ks) == (1, 1) and padding in STRING_PADDINGS:
    # A 1x1 conv reads no neighbours: 'SAME', 'VALID' and 'CIRCULAR' are the
    # same map (no padding at all), and 'CIRCULAR' lets the FFT norm apply.
    padding = 'CIRCULAR'
  return ConvLayer(tuple(int(d) for d in x.shape[-3:]), _pair(module.strides), padding)


def conv_layers(model: nn.Module, variables, x: jax.Array, **apply_kwargs) -> dict[str, ConvLayer]:
  """{'path/to/conv/kernel': ConvLayer} for every nn.Conv the model calls on x.

  Args:
    model: a flax module; run as ``model.apply(variables, x, **apply_kwargs)``
      (its default mode: eval for the ResNets here).
    variables: its variables ({'params': ...} plus e.g. 'batch_stats');
      arrays or ShapeDtypeStructs (only shapes are used).
    x: an example input batch with the training input's spatial size (one
      image in a batch of 1 is enough); an array or a ShapeDtypeStruct.

  Raises ValueError for convs the penalty cannot iterate through (dilated,
  grouped, 'REFLECT'/'CAUSAL' padding) and for one conv called on two
  different input shapes (then it is two operators sharing a kernel).
  """
  found: dict[str, ConvLayer] = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      spec = _spec(context.module, args[0])
      key = '/'.join(context.module.path) + '/kernel'
      if found.setdefault(key, spec) != spec:
        raise ValueError(f'{key} is called on two different inputs ({found[key]} and {spec}); '
                         'its operator norm is not one number')
    return next_fun(*args, **kwargs)

  def run(variables, x):
    with nn.intercept_methods(record):
      return model.apply(variables, x, **apply_kwargs)

  jax.eval_shape(run, variables, x)
  return found

