"""robustjax.threefry_cpu: the unrolled Threefry-2x32 lowering on CPU gives jax's bits."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from jax.extend.random import threefry_2x32

from robustjax import threefry_cpu

_hash = jax.jit(threefry_2x32)


def _reference(key, count):
  """Threefry-2x32, 20 rounds, in numpy uint32 (Salmon et al. 2011, Random123)."""
  rot = ((13, 15, 26, 6), (17, 29, 16, 24))
  k0, k1 = np.uint32(key[0]), np.uint32(key[1])
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  x0, x1 = count[0] + ks[0], count[1] + ks[1]
  for i in range(5):
    for r in rot[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def test_random123_known_answers():
  # Random123's kat_vectors for threefry2x32_20: (key, counter) -> output.
  for key, count, want in (((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                           ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
                           ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3),
                            (0xC4923A9C, 0x483DF7A0))):
    out = _hash(jnp.asarray(key, jnp.uint32), jnp.asarray(count, jnp.uint32))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want, np.uint32))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
       st.lists(st.integers(0, 2**32 - 1), min_size=10, max_size=10))
def test_matches_the_reference_on_any_key_and_counter(key, counts):
  count = np.asarray(counts, np.uint32).reshape(2, 5)
  out = _hash(jnp.asarray(key, jnp.uint32), jnp.asarray(count))
  with np.errstate(over='ignore'):
    want = np.stack(_reference(np.asarray(key, np.uint32), count))
  np.testing.assert_array_equal(np.asarray(out), want)


def test_draws_are_stock_jax():
  # Printed by stock jax 0.10.2 on CPU in a process that never imported robustjax.
  bits = jax.random.bits(jax.random.PRNGKey(0), (6,))
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(
      [0xF29A4FA7, 0xFA843692, 0x55110E28, 0x77FAA835, 0x91E43BB7, 0x2A5E6943], np.uint32))
  np.testing.assert_array_equal(
      np.asarray(jax.random.key_data(jax.random.split(jax.random.PRNGKey(7), 3))),
      np.asarray([[3625411723, 1954958720], [195045567, 4062205631], [966301609, 1948237315]],
                 np.uint32))
  chex.assert_trees_all_equal(
      jax.random.normal(jax.random.PRNGKey(42), (4,)),
      jnp.asarray([-0.02830461598932743, 0.4671318531036377, 0.2957029640674591,
                   0.15354591608047485], jnp.float32))


def test_cpu_programs_hash_without_a_loop():
  threefry_cpu.install()  # idempotent (robustjax's import installed it already)
  hlo = jax.jit(lambda k: jax.random.bits(k, (8,))).lower(jax.random.PRNGKey(0)).as_text()
  assert 'while' not in hlo  # jax's own CPU lowering is a rolled fori_loop
