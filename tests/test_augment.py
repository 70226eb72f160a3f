"""Batched augmentations: known answers, [0, 1] range, per-example randomness, one trace."""
import chex
import jax
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.data import augment

RGB, GRAY = (3, 5, 5, 3), (3, 5, 5, 1)  # few shapes: each is one compile per function


def batch(shape, seed=0):  # numpy: test data costs no compiles
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def luma(x):
  return np.asarray(x) @ augment.LUMA


def test_flip_known_answers():
  x, key = batch(RGB), jax.random.key(1)
  np.testing.assert_array_equal(augment.random_flip(key, x, 1.0), x[:, :, ::-1])
  np.testing.assert_array_equal(augment.random_flip(key, x, 0.0), x)
  half = augment.random_flip(key, x, 0.5)  # same key, same choices: flipping twice undoes it
  np.testing.assert_array_equal(augment.random_flip(key, half, 0.5), x)
  flipped = [bool(np.array_equal(h, f)) for h, f in zip(half, x[:, :, ::-1])]
  same = [bool(np.array_equal(h, f)) for h, f in zip(half, x)]
  assert all(a != b for a, b in zip(flipped, same))  # each example either flipped or not


def test_pad_crop_known_answers():
  x = batch(GRAY)
  np.testing.assert_array_equal(augment.pad_crop(x, np.full((3, 2), 2), 2), x)  # offset = padding
  top_left = augment.pad_crop(x, np.zeros((3, 2), int), 2)  # shifted down-right by 2, zeros in
  np.testing.assert_array_equal(top_left[:, 2:, 2:], x[:, :-2, :-2])
  assert np.all(np.asarray(top_left[:, :2]) == 0) and np.all(np.asarray(top_left[:, :, :2]) == 0)
  reflect = augment.pad_crop(x, np.array([[0, 4]] * 3), 2, 'reflect')
  want = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')[:, :5, 4:]
  np.testing.assert_array_equal(reflect, want)
  with pytest.raises(ValueError, match='mode must be one of'):
    augment.pad_crop(x, np.zeros((3, 2), int), 2, 'wrap')


def test_random_crop_is_a_shift_drawn_per_example():
  x = batch(GRAY)
  out = np.asarray(augment.random_crop(jax.random.key(3), x, 1))
  shifts = {(dy, dx): np.asarray(augment.pad_crop(x, np.array([[dy, dx]] * 3), 1))
            for dy in range(3) for dx in range(3)}
  for i in range(3):  # each example is one of the 9 shifted copies of itself
    assert any(np.array_equal(out[i], s[i]) for s in shifts.values())
  again = augment.random_crop(jax.random.key(3), x, 1)
  np.testing.assert_array_equal(again, out)


def test_grayscale_equal_channels_same_luma():
  x, key = batch(RGB), jax.random.key(4)
  g = np.asarray(augment.random_grayscale(key, x, 1.0))
  np.testing.assert_array_equal(g[..., 0], g[..., 1])
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  np.testing.assert_allclose(luma(g), luma(x), atol=1e-6)
  np.testing.assert_array_equal(augment.random_grayscale(key, x, 0.0), x)
  gray = batch(GRAY)
  np.testing.assert_array_equal(augment.random_grayscale(key, gray, 1.0), gray)


def test_color_jitter_known_answers():
  x, key = batch(RGB), jax.random.key(5)
  np.testing.assert_array_equal(augment.color_jitter(key, x, 0.0, 0.0, 0.0, 0.0, p=1.0), x)
  np.testing.assert_array_equal(augment.color_jitter(key, x, 0.8, 0.8, 0.8, 0.2, p=0.0), x)
  # brightness alone scales each image by its own factor in [0.5, 1.5] (inputs kept unclipped)
  small = 0.5 * x + 0.1
  b = np.asarray(augment.color_jitter(key, small, 0.5, 0.0, 0.0, 0.0, p=1.0)) / np.asarray(small)
  factors = b.reshape(3, -1)
  np.testing.assert_allclose(factors, factors[:, :1] * np.ones_like(factors), rtol=1e-5)
  assert np.all((0.5 <= factors) & (factors <= 1.5)) and np.ptp(factors[:, 0]) > 0
  # hue alone turns the chrominance: colours change, luma does not
  mid = 0.2 * x + 0.4
  h = augment.color_jitter(key, mid, 0.0, 0.0, 0.0, 0.5, p=1.0)
  np.testing.assert_allclose(luma(h), luma(mid), atol=1e-5)
  assert np.abs(np.asarray(h) - np.asarray(mid)).max() > 0.01
  # one channel: saturation and hue do not apply
  gray = batch(GRAY)
  np.testing.assert_array_equal(augment.color_jitter(key, gray, 0.0, 0.0, 0.9, 0.5, p=1.0), gray)


@settings(deadline=None, max_examples=12, derandomize=True)
@given(shape=st.sampled_from([RGB, GRAY]), seed=st.integers(0, 2**31 - 1),
       strength=st.floats(0.0, 2.0), p=st.floats(0.0, 1.0))
def test_views_keep_shape_and_unit_range(shape, seed, strength, p):
  x = batch(shape, seed % 7)
  keys = jax.random.split(jax.random.key(seed), 4)
  outs = [augment.random_crop(keys[0], x, 2), augment.random_flip(keys[1], x, p),
          augment.color_jitter(keys[2], x, strength, strength, strength, strength / 4, p),
          augment.random_grayscale(keys[3], x, p)]
  for out in outs:
    chex.assert_shape(out, shape)
    assert out.dtype == x.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_resized_crop_full_box_is_identity_and_views_vary():
  x, key = batch(RGB), jax.random.key(6)
  np.testing.assert_allclose(augment.random_resized_crop(key, x, 1.0, (1.0, 1.0)), x, atol=1e-6)
  v = augment.random_resized_crop(key, x, 0.3)  # min_scale is traced: the same program
  assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
  assert all(not np.allclose(v[i], x[i], atol=1e-3) for i in range(3))


def test_simclr_view_one_trace_and_per_key_views():
  spec = augment.AugmentSpec(crop_padding=2)
  view = jax.jit(chex.assert_max_traces(lambda k, x: augment.simclr_view(k, x, spec), n=1))
  x = batch(RGB)
  a, b, a2 = view(jax.random.key(0), x), view(jax.random.key(1), x), view(jax.random.key(0), x)
  chex.assert_shape(a, RGB)
  np.testing.assert_array_equal(a, a2)  # same key, same views; a new key: no new trace
  assert not np.allclose(a, b)
  assert not any(np.allclose(a[i], a[j]) for i in range(3) for j in range(i))  # own transforms


@pytest.mark.slow
def test_simclr_view_resized_crop_spec():
  spec = augment.AugmentSpec(resized_crop=True, min_scale=0.3, jitter_strength=1.0)
  x = batch(RGB)
  v = augment.simclr_view(jax.random.key(7), x, spec)
  chex.assert_shape(v, RGB)
  assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0 and not np.allclose(v, x)
  np.testing.assert_array_equal(augment.simclr_view(jax.random.key(7), x, spec), v)


def test_augment_spec_config_and_validation():
  cfg = ml_collections.ConfigDict(dict(crop_padding=2, jitter_strength=1.0, grayscale_p=0.0))
  spec = augment.AugmentSpec.from_config(cfg)
  assert spec.crop_padding == 2 and spec.flip and spec.jitter_p == 0.8
  assert spec.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
  assert augment.AugmentSpec.from_config(None) == augment.AugmentSpec()
  with pytest.raises(ValueError, match='unknown'):
    augment.AugmentSpec.from_config(dict(padding=4))
  with pytest.raises(ValueError, match='pad_mode must be one of'):
    augment.AugmentSpec(pad_mode='edge')
  with pytest.raises(ValueError, match='grayscale_p'):
    augment.AugmentSpec(grayscale_p=1.5)
  with pytest.raises(ValueError, match='min_scale'):
    augment.AugmentSpec(min_scale=0.0)
