"""Faster random bits on CPU: the Threefry-2x32 hash with its rounds unrolled.

jax lowers its default PRNG's hash (Threefry-2x32, 20 rounds; Salmon et al.,
*Parallel random numbers: as easy as 1, 2, 3*, SC 2011) on CPU as a rolled
``fori_loop`` of 5 four-round blocks, to keep compiles small (jax 0.10.2,
``jax/_src/random/threefry2x32.py``). On XLA:CPU that loop runs as a while
loop whose state is copied every iteration: drawing the sparse-coding batches
and PGD's random starts took about a quarter of a training step of the main
job. Other platforms get the unrolled form, which XLA fuses into one
elementwise kernel. ``install`` registers that unrolled form for CPU too.

The hash, and so every random number, is bit for bit the same (the tests
check Random123's known-answer vectors and a draw against stock jax); only
the compiled program changes.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant


def _rotate_left(x, d: int):
  return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def threefry2x32(key1, key2, x1, x2):
  """Threefry-2x32 with 20 rounds on uint32 arrays (broadcast together) -> (y1, y2)."""
  key1, key2, x1, x2 = jnp.broadcast_arrays(key1, key2, x1, x2)
  ks = (key1, key2, key1 ^ key2 ^ _PARITY)
  x = [x1 + ks[0], x2 + ks[1]]
  for i in range(5):  # 5 blocks of 4 rounds, a key injection after each
    for r in _ROTATIONS[i % 2]:
      x[0] = x[0] + x[1]
      x[1] = x[0] ^ _rotate_left(x[1], r)
    x[0] = x[0] + ks[(i + 1) % 3]
    x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x


_installed = False


def install() -> None:
  """Makes XLA:CPU programs compiled from now on use the unrolled hash (idempotent)."""
  global _installed
  if not _installed:
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True),
                           platform='cpu')
    _installed = True
