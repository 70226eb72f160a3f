"""The paper-scale configs' full code paths, at tiny sizes, on a learnable task.

Each config (configs/cifar10_supervised.py, cifar10_ssl.py with SimCLR and
:barlow, transfer.py) runs as it would on CIFAR, through its real data path
(``tfds.data_source``, mocked to serve records of ``tests.synthetic_images``:
four stripe orientations, which survive the SimCLR / Barlow Twins views),
its models (ResNet-18 with circular padding, at width 4), optimizer recipe,
attacks and every kind; only sizes shrink (steps, batch, points, budgets).
The probes must beat chance (0.25) by a margin: a recipe that diverges or
freezes its encoder (Barlow Twins at SimCLR's lr 0.3 did) fails here.
"""
import contextlib
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10_ssl, cifar10_supervised, transfer
from robustjax.stages import images
from tests.synthetic_images import NUM_CLASSES, stripes

SIZES = {'train': 384, 'test': 96}


class _Source:
  """A random-access tfds data source over arrays (``__len__``, ``__getitem__``)."""

  def __init__(self, info, x, y):
    self.dataset_info, self._x, self._y = info, x, y

  def __len__(self):
    return len(self._y)

  def __getitem__(self, i):
    return {'image': self._x[i], 'label': int(self._y[i])}


@contextlib.contextmanager
def stripes_as_tfds():
  """``tfds.data_source`` of any dataset serves stripe images (32x32x3, labels
  0..3 of its own class count); every (dataset, split) gets its own draw."""
  def as_data_source(builder, split=None, **kwargs):
    seed = zlib.crc32(f'{builder.name}/{split}'.encode())
    x, y = stripes(SIZES[split], seed=seed)
    return _Source(builder.info, x, y)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def tiny(cfg, data_dir: str, steps: int):
  """The config at test sizes: every model, recipe, attack and kind unchanged."""
  cfg.data.data_dir = data_dir
  cfg.num_seeds = 1
  cfg.progress = False
  cfg.chunk_size = steps
  cfg.checkpoint_every = steps
  cfg.model.width = 4
  cfg.pretrain.update(steps=steps, batch_size=32)
  cfg.attack.steps = 2
  cfg.spectral.update(warmup_iters=5)
  cfg.probe.max_iter = 100
  cfg.eval.update(num_points=32, n_iter=3, n_target_classes=2, distance_points=16, fmn_steps=5,
                  batch_size=16)
  return cfg


CONFIGS = {
    'cifar10_supervised': lambda: cifar10_supervised.get_config('cifar10'),
    'cifar10_ssl': lambda: cifar10_ssl.get_config('cifar10'),
    'cifar10_ssl:barlow': lambda: cifar10_ssl.get_config('barlow'),
    'transfer': lambda: transfer.get_config('cifar100'),
}


def run(name: str, workdir, steps: int = 30) -> dict:
  cfg = tiny(CONFIGS[name](), str(workdir), steps)
  images.validate(cfg)
  with stripes_as_tfds():
    return images.main(cfg, str(workdir))


@pytest.mark.slow
@pytest.mark.parametrize('name', list(CONFIGS))
def test_paper_scale_config_learns_the_task(name, tmp_path):
  summary = run(name, tmp_path)
  assert list(summary) == list(images.KINDS)
  for kind, row in summary.items():
    acc = row['probe_acc'][0]
    assert acc > 1 / NUM_CLASSES + 0.25, (kind, acc)
    assert np.isfinite(row['train_metrics']['loss']).all(), kind
    assert np.isfinite(row['distance'][0]) and row['distance'][0] > 0, kind
    for eps, (robust, _) in row['robust_acc'].items():
      assert 0.0 <= robust <= acc + 1e-9, (kind, eps)


if __name__ == '__main__':  # python tests/test_paper_scale.py NAME WORKDIR [STEPS]
  import sys
  print(run(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])))
