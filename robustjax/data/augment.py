"""Batched image augmentations for SSL and supervised training, in JAX.

Every function takes a PRNG key and a batch ``x`` of shape (N, H, W, C) with
values in [0, 1], draws each example's randomness separately (vectorized
draws from one key), and returns a batch of the same shape, still in [0, 1].
They are jit-compiled; arguments that change shapes or control flow
(``padding``, ``mode``, the ``AugmentSpec``) are static, strengths and
probabilities are traced, so sweeping them does not recompile.

``simclr_view`` composes them as SimCLR does: (resized) crop, horizontal
flip, colour jitter with probability ``jitter_p``, grayscale with probability
``grayscale_p``. Colour jitter follows torchvision's ``ColorJitter``
(brightness, contrast, saturation, hue in a random order per example,
clipping to [0, 1] after each), except the hue shift: it rotates the
chrominance plane of YIQ by ``2 pi h`` (h ~ U[-hue, hue]) instead of shifting
H in HSV. The rotation keeps luma exactly and is one 3 x 3 matrix per example;
it matches the HSV shift closely for moderate saturation.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

PAD_MODES = ('constant', 'reflect')
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale; the first row of RGB -> YIQ.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ.astype(np.float64)).astype(np.float32)


def _per_example(key: jax.Array, x: jax.Array, p) -> jax.Array:
  """A (N, 1, 1, 1) bool mask: True with probability p for each example."""
  return (jax.random.uniform(key, (x.shape[0],)) < p)[:, None, None, None]


def _check_batch(x):
  if x.ndim != 4:
    raise ValueError(f'x must be a batch (N, H, W, C), got shape {x.shape}')


# --- geometry ------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=('padding', 'mode'))
def pad_crop(x: jax.Array, offsets: jax.Array, padding: int, mode: str = 'constant') -> jax.Array:
  """Pads H and W by ``padding`` and crops H x W at int (N, 2) ``offsets`` (row, col).

  Offsets run over [0, 2 * padding]; ``offsets == padding`` is the identity.
  """
  _check_batch(x)
  if mode not in PAD_MODES:
    raise ValueError(f'mode must be one of {PAD_MODES}, got {mode!r}')
  if padding < 0:
    raise ValueError(f'padding must be >= 0, got {padding}')
  _, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, jnp.asarray(offsets, jnp.int32))


@functools.partial(jax.jit, static_argnames=('padding', 'mode'))
def random_crop(key: jax.Array, x: jax.Array, padding: int, mode: str = 'constant') -> jax.Array:
  """Pad by ``padding`` (zeros or reflection) and crop back at a uniform random offset.

  CIFAR's standard is ``padding=4``, zeros.
  """
  offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * padding + 1)
  return pad_crop(x, offsets, padding, mode)


@jax.jit
def random_flip(key: jax.Array, x: jax.Array, p=0.5) -> jax.Array:
  """Mirrors each image left-right with probability ``p``."""
  _check_batch(x)
  return jnp.where(_per_example(key, x, p), x[:, :, ::-1, :], x)


@functools.partial(jax.jit, static_argnames=('ratio',))
def random_resized_crop(key: jax.Array, x: jax.Array, min_scale=0.2,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Crops a random box (area fraction ~ U[min_scale, 1], log aspect ~ U[log ratio])
  and resizes it back to H x W, bilinear with antialiasing (as torchvision's
  RandomResizedCrop, but a box too large for the image is clipped, not redrawn).
  """
  _check_batch(x)
  n, h, w, c = x.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (n,), minval=min_scale, maxval=1.0)
  log_r = jax.random.uniform(k_ratio, (n,), minval=np.log(ratio[0]), maxval=np.log(ratio[1]))
  ch = jnp.clip(jnp.sqrt(area / jnp.exp(log_r)) * h, 1.0, h)  # box height and width (pixels)
  cw = jnp.clip(jnp.sqrt(area * jnp.exp(log_r)) * w, 1.0, w)
  y0 = jax.random.uniform(k_y, (n,)) * (h - ch)
  x0 = jax.random.uniform(k_x, (n,)) * (w - cw)

  def one(img, y0, x0, ch, cw):
    scale = jnp.stack([h / ch, w / cw])  # output = input * scale + translation
    return jax.image.scale_and_translate(img, (h, w, c), (0, 1), scale, -jnp.stack([y0, x0]) * scale,
                                         method='linear', antialias=True)

  return jnp.clip(jax.vmap(one)(x, y0, x0, ch, cw), 0.0, 1.0)


# --- colour --------------------------------------------------------------------

def _gray(x: jax.Array) -> jax.Array:
  """(N, H, W, 1) luma of RGB (or the single channel itself)."""
  return x if x.shape[-1] == 1 else jnp.einsum('nhwc,c->nhw', x, LUMA)[..., None]


@jax.jit
def random_grayscale(key: jax.Array, x: jax.Array, p=0.2) -> jax.Array:
  """Replaces each RGB image by its luma in all channels with probability ``p``.

  Luma weights sum to 1, so the luma of the result equals the input's.
  One-channel images are returned unchanged.
  """
  _check_batch(x)
  if x.shape[-1] == 1:
    return x
  return jnp.where(_per_example(key, x, p), jnp.broadcast_to(_gray(x), x.shape), x)


def _hue_matrices(h: jax.Array) -> jax.Array:
  """(N, 3, 3) RGB maps rotating YIQ chrominance by 2 pi h; exactly I at h = 0."""
  ang = 2 * jnp.pi * h
  cos, sin, zero = jnp.cos(ang) - 1, jnp.sin(ang), jnp.zeros_like(h)
  # R - I, so that the map is I + A^-1 (R - I) A: no round-off away from identity at h = 0.
  rot = jnp.stack([jnp.stack([zero, zero, zero], -1), jnp.stack([zero, cos, -sin], -1),
                   jnp.stack([zero, sin, cos], -1)], -2)
  delta = jnp.einsum('ij,njk,kl->nil', _YIQ_TO_RGB, rot, _RGB_TO_YIQ)
  return jnp.eye(3) + delta


@jax.jit
def color_jitter(key: jax.Array, x: jax.Array, brightness=0.4, contrast=0.4, saturation=0.4,
                 hue=0.1, p=0.8) -> jax.Array:
  """SimCLR / torchvision colour jitter, applied to each image with probability ``p``.

  Factors per example: brightness b ~ U[max(0, 1 - brightness), 1 + brightness]
  (x * b), contrast c ~ U[max(0, 1 - contrast), 1 + contrast] (blend with the
  image's mean luma), saturation s likewise (blend with the luma image), hue
  h ~ U[-hue, hue] turns of the YIQ chrominance plane. The four run in a random
  order per example, each clipped to [0, 1]. One-channel images get only
  brightness and contrast. A strength of 0 leaves its operation the identity.
  """
  _check_batch(x)
  n = x.shape[0]
  k_apply, k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 6)
  factor = lambda k, s: jax.random.uniform(k, (n, 1, 1, 1), minval=jnp.maximum(0.0, 1 - s),
                                           maxval=1 + s)
  b, c, s = factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation)
  hue_maps = _hue_matrices(jax.random.uniform(k_h, (n,), minval=-hue, maxval=hue))
  blend = lambda f, img, other: jnp.clip(f * img + (1 - f) * other, 0.0, 1.0)
  ops = [lambda img: jnp.clip(img * b, 0.0, 1.0),
         lambda img: blend(c, img, jnp.mean(_gray(img), axis=(1, 2, 3), keepdims=True))]
  if x.shape[-1] == 3:
    ops += [lambda img: blend(s, img, _gray(img)),
            lambda img: jnp.clip(jnp.einsum('nhwc,ndc->nhwd', img, hue_maps), 0.0, 1.0)]
  order = jax.vmap(lambda k: jax.random.permutation(k, len(ops)))(jax.random.split(k_order, n))

  def position(pos, img):  # every example takes the op its order names at this position
    return jnp.stack([op(img) for op in ops])[order[:, pos], jnp.arange(n)]

  out = jax.lax.fori_loop(0, len(ops), position, x)  # a loop: the ops compile once, not 4 times
  return jnp.where(_per_example(k_apply, x, p), out, x)


# --- composition ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """One SimCLR view. Jitter strength s gives SimCLR's (0.8s, 0.8s, 0.8s, 0.2s)."""
  crop_padding: int = 4  # pad-and-crop when resized_crop is False; 0 = no crop
  pad_mode: str = 'constant'
  flip: bool = True
  jitter_strength: float = 0.5  # SimCLR uses 0.5 on CIFAR-10, 1.0 on ImageNet
  jitter_p: float = 0.8
  grayscale_p: float = 0.2
  resized_crop: bool = False
  min_scale: float = 0.2

  def __post_init__(self):
    if self.crop_padding < 0:
      raise ValueError(f'crop_padding must be >= 0, got {self.crop_padding}')
    if self.pad_mode not in PAD_MODES:
      raise ValueError(f'pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}')
    if self.jitter_strength < 0:
      raise ValueError(f'jitter_strength must be >= 0, got {self.jitter_strength}')
    for name in ('jitter_p', 'grayscale_p'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')
    if not 0.0 < self.min_scale <= 1.0:
      raise ValueError(f'min_scale must be in (0, 1], got {self.min_scale}')

  @property
  def jitter(self) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue)."""
    s = self.jitter_strength
    return 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s

  @classmethod
  def from_config(cls, cfg: Mapping | None) -> AugmentSpec:
    """From a config block (ConfigDict or dict) naming some of the fields."""
    if cfg is None:
      return cls()
    cfg = dict(cfg.items())
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
      raise ValueError(f'augment fields must be among {sorted(fields)}, got unknown {unknown}')
    return cls(**cfg)


@functools.partial(jax.jit, static_argnames=('spec',))
def simclr_view(key: jax.Array, x: jax.Array, spec: AugmentSpec = AugmentSpec()) -> jax.Array:
  """One random view of each image: crop, flip, colour jitter, grayscale (SimCLR's order)."""
  k_crop, k_flip, k_jit, k_gray = jax.random.split(key, 4)
  if spec.resized_crop:
    x = random_resized_crop(k_crop, x, spec.min_scale)
  elif spec.crop_padding:
    x = random_crop(k_crop, x, spec.crop_padding, spec.pad_mode)
  if spec.flip:
    x = random_flip(k_flip, x)
  if spec.jitter_p > 0 and spec.jitter_strength > 0:
    x = color_jitter(k_jit, x, *spec.jitter, p=spec.jitter_p)
  if spec.grayscale_p > 0:
    x = random_grayscale(k_gray, x, spec.grayscale_p)
  return x
