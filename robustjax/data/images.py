"""Image classification data as (x_train, y_train, x_test, y_test) arrays in [0, 1].

- ``mnist``: through ``tfds.data_source`` (array_record, no TensorFlow) from a
  ``data_dir`` the user prepared (``download=False``: no machine here reaches
  the internet). Images (28, 28, 1) scaled to [0, 1].
- ``digits``: scikit-learn's bundled 8x8 digits (1797 real images, no
  download), pixel values 0..16 scaled to [0, 1], images (8, 8, 1), split
  into train/test by a fixed permutation (``test_fraction``, ``split_seed``).
"""
from __future__ import annotations

import numpy as np

DATASETS = ('digits', 'mnist')


def _stack(source, limit: int | None):
  n = len(source) if limit is None else min(limit, len(source))
  try:  # one batched read from array_record
    records = source.__getitems__(list(range(n)))
  except (AttributeError, TypeError):  # sources without it (tfds's mock) read one by one
    records = [source[i] for i in range(n)]
  x = np.stack([np.asarray(r['image']) for r in records]).astype(np.float32) / 255.0
  y = np.asarray([int(r['label']) for r in records], np.int32)
  return x, y


def load_mnist(data_dir: str, *, max_train: int | None = None, max_test: int | None = None):
  import tensorflow_datasets as tfds
  source = lambda split: tfds.data_source('mnist', split=split, data_dir=data_dir or None,
                                          download=False)
  x_tr, y_tr = _stack(source('train'), max_train)
  x_te, y_te = _stack(source('test'), max_test)
  return x_tr, y_tr, x_te, y_te


def load_digits(*, test_fraction: float = 0.2, split_seed: int = 0):
  from sklearn.datasets import load_digits as sk_digits
  d = sk_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(split_seed).permutation(len(y))
  n_test = int(round(test_fraction * len(y)))
  te, tr = perm[:n_test], perm[n_test:]
  return x[tr], y[tr], x[te], y[te]


def load(name: str, *, data_dir: str = '', test_fraction: float = 0.2, split_seed: int = 0,
         max_train: int | None = None, max_test: int | None = None):
  """(x_train, y_train, x_test, y_test); images (n, H, W, 1) float32 in [0, 1], int32 labels."""
  if name == 'digits':
    out = load_digits(test_fraction=test_fraction, split_seed=split_seed)
    x_tr, y_tr, x_te, y_te = out
    return x_tr[:max_train], y_tr[:max_train], x_te[:max_test], y_te[:max_test]
  if name == 'mnist':
    return load_mnist(data_dir, max_train=max_train, max_test=max_test)
  raise ValueError(f'dataset must be one of {DATASETS}, got {name!r}')
