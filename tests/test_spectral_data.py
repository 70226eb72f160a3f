"""The image loader: MNIST through tfds (mocked) and the offline digits split."""
import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from robustjax.data import images


def test_mnist_through_tfds_data_source_mocked():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    x_tr, y_tr, x_te, y_te = images.load('mnist', data_dir='/nonexistent', max_test=5)
  chex.assert_shape(x_tr, (12, 28, 28, 1))
  chex.assert_shape(x_te, (5, 28, 28, 1))
  assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
  assert y_tr.dtype == np.int32 and np.all((0 <= y_tr) & (y_tr < 10))


def test_digits_offline_split():
  x_tr, y_tr, x_te, y_te = images.load('digits')
  assert len(y_tr) + len(y_te) == 1797 and len(y_te) == 359
  chex.assert_shape(x_tr, (1438, 8, 8, 1))
  assert x_tr.max() == 1.0 and x_tr.min() == 0.0
  again = images.load('digits')
  np.testing.assert_array_equal(again[3], y_te)  # deterministic split
  other = images.load('digits', split_seed=1)
  assert not np.array_equal(other[3], y_te)
  with pytest.raises(ValueError, match='dataset'):
    images.load('svhn')
