"""A learnable image task that survives SimCLR / Barlow Twins views.

Four classes of stripe patterns: horizontal, vertical, both (a grid), and
diagonal (45 or 135 degrees at random, so a horizontal flip stays in the
class). Each image draws its stripe period (4 to 8 pixels at 32x32), phase,
two colours and pixel noise, so the class lives in the orientation alone:
crops, flips, colour jitter and grayscale keep it, and a probe on a useless
encoder sits near chance (0.25), on a trained one well above.
"""
import numpy as np

NUM_CLASSES = 4


def stripes(n: int, size: int = 32, channels: int = 3, seed: int = 0, noise: float = 0.1):
  """(images (n, size, size, channels) uint8, labels (n,) int32 in [0, 4))."""
  r = np.random.default_rng(seed)
  y = r.integers(0, NUM_CLASSES, n).astype(np.int32)
  i, j = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  period = r.uniform(4, 8, n)[:, None, None] * size / 32
  phase = r.uniform(0, 2 * np.pi, n)[:, None, None]
  wave = lambda u: np.sin(2 * np.pi * u / period + phase)
  diag = np.where(r.random(n) < 0.5, 1, -1)[:, None, None]
  pattern = np.select([y[:, None, None] == 0, y[:, None, None] == 1, y[:, None, None] == 2],
                      [wave(i), wave(j), np.maximum(wave(i), wave(j))],
                      wave((i + diag * j) / np.sqrt(2)))
  t = 0.5 + 0.5 * pattern[..., None]                      # in [0, 1]
  lo, hi = r.uniform(0, 0.4, (n, 1, 1, channels)), r.uniform(0.6, 1, (n, 1, 1, channels))
  x = lo + (hi - lo) * t + noise * r.standard_normal((n, size, size, channels))
  return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y
