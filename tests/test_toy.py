import chex
import jax
import numpy as np

from robustjax.data.toy import noisy_xor


def test_paper_xor_layout():
  x, y = noisy_xor(jax.random.PRNGKey(0))
  chex.assert_shape(x, (80, 2))
  chex.assert_shape(y, (80,))
  assert y.dtype == np.int32 and np.bincount(np.asarray(y)).tolist() == [40, 40]
  centers = np.asarray(x).reshape(4, 20, 2).mean(axis=1)
  np.testing.assert_allclose(centers, [[1, 1], [-1, -1], [-1, 1], [1, -1]], atol=0.15)
  spread = np.asarray(x).reshape(4, 20, 2) - centers[:, None]
  np.testing.assert_allclose(spread.std(), 0.2, rtol=0.2)


def test_xor_labels_and_keys():
  x, y = noisy_xor(jax.random.PRNGKey(1), n_per_blob=50, noise_std=0.05)
  # Class 0 <=> same-sign coordinates (the XOR rule), exact at this noise level.
  np.testing.assert_array_equal(np.asarray(y), (np.prod(np.sign(np.asarray(x)), 1) < 0).astype(int))
  x2, _ = noisy_xor(jax.random.PRNGKey(2), n_per_blob=50, noise_std=0.05)
  assert not np.allclose(x, x2)
  x3, _ = noisy_xor(jax.random.PRNGKey(1), n_per_blob=50, noise_std=0.05)
  np.testing.assert_array_equal(x, x3)
