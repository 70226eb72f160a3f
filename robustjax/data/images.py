"""Image classification data as (x_train, y_train, x_test, y_test) arrays in [0, 1].

- ``mnist``, ``cifar10``, ``cifar100``: through ``tfds.data_source``
  (array_record, no TensorFlow) from a ``data_dir`` the user prepared
  (``download=False``: no machine here reaches the internet). Pixels are
  uint8 scaled to [0, 1]; CIFAR-100 uses its 100 fine labels (``label``).
  Preparing needs TensorFlow (the tfds builders and the ``tfds`` command
  encode images with it), which robustjax does not install: prepare once
  in a separate environment, on a machine with internet access
  (``prepare_commands``), then read without it.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 real images, no
  download), pixel values 0..16 scaled to [0, 1], images (8, 8, 1), split
  into train/test by a fixed permutation (``test_fraction``, ``split_seed``).

Which examples a call returns, for each split (digits after its split):

1. ``shard=(i, c)``: this host looks only at records i, i + c, i + 2c, ...
   (shards of one split are disjoint and together cover it; after the
   class filter their lengths usually differ, which ``global_array`` refuses);
2. ``classes``: keeps examples whose label is in it, relabelled 0..k-1 in the
   given order (the offline transfer: pre-train on digits 0-4, probe on 5-9);
3. ``max_train`` / ``max_test``: a global cap, split between hosts as
   ``range(max)[i::c]`` is, so the hosts together keep ``max`` examples. With
   no ``classes`` a host gets exactly records ``range(max)[i::c]``.

Reading stops as soon as the cap is met; records are decoded by a thread pool
a chunk at a time, the next chunks in flight while the current one is copied.

Training batches come from device-resident arrays: ``epoch_batch_indices``
gives the shuffled indices of any global step (jit/vmap friendly, resumable),
and ``global_array`` assembles per-host shards into one array sharded over a
mesh's 'data' axis.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int


INFO = {
    'digits': DatasetInfo((8, 8, 1), 10),
    'mnist': DatasetInfo((28, 28, 1), 10),
    'cifar10': DatasetInfo((32, 32, 3), 10),
    'cifar100': DatasetInfo((32, 32, 3), 100),
}
DATASETS = tuple(INFO)
TFDS_DATASETS = ('mnist', 'cifar10', 'cifar100')
CHUNK = 1024  # records per decode task: big enough to amortize, small enough to stop early


def info(name: str) -> DatasetInfo:
  """Image shape (H, W, C) and number of classes of ``name``."""
  if name not in INFO:
    raise ValueError(f'dataset must be one of {DATASETS}, got {name!r}')
  return INFO[name]


def num_classes(name: str, classes: Sequence[int] | None = None) -> int:
  """The number of classes a ``load(name, classes=classes)`` has: ``len(classes)``
  with a class filter (relabelled 0..k-1), else the dataset's own count
  (``info``), whatever labels a capped or filtered split happens to hold.
  ValueError on an unknown name or bad ``classes`` (as ``load``)."""
  k = info(name).num_classes
  table = _check_classes(classes, k)
  return k if table is None else int((table >= 0).sum())


def check_labels(y, k: int, name: str = 'labels') -> None:
  """ValueError (one line) unless every label is an integer in [0, k): the
  class count taken from the dataset must cover the labels it holds."""
  y = np.asarray(y)
  if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
    raise ValueError(f'{name}: must be integers in [0, {k}) (the number of classes of the '
                     f'dataset), got {y.dtype} labels in [{y.min()}, {y.max()}]')


def prepare_commands(name: str, data_dir: str = '') -> str:
  """The shell commands that prepare ``name`` for ``load`` under ``data_dir``.

  The tfds builders of MNIST / CIFAR (and the ``tfds`` command itself) import
  TensorFlow, so they run in an environment of their own with TensorFlow and
  the same tensorflow-datasets version (the dataset versions match); robustjax
  then reads the array_record files without TensorFlow.
  """
  import tensorflow_datasets as tfds
  where = data_dir or 'DIR'
  return (f'python -m venv tfds-prep && tfds-prep/bin/pip install tensorflow '
          f'tensorflow-datasets=={tfds.__version__} && tfds-prep/bin/tfds build {name} '
          f'--data_dir={where} --file_format=array_record')


def host_shard() -> tuple[int, int]:
  """(this process's index, number of processes): the ``shard`` of a multi-host run."""
  return jax.process_index(), jax.process_count()


# --- choosing and reading records ----------------------------------------------

def _check_shard(shard) -> tuple[int, int]:
  if shard is None:
    return 0, 1
  index, count = (int(s) for s in shard)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f'shard must be (index, count) with 0 <= index < count, got {shard!r}')
  return index, count


def _check_classes(classes, num_classes: int) -> np.ndarray | None:
  """The label -> new label table (-1 = dropped), or None to keep all."""
  if classes is None:
    return None
  classes = [int(c) for c in classes]
  if not classes or len(set(classes)) != len(classes) or not all(
      0 <= c < num_classes for c in classes):
    raise ValueError(f'classes must be distinct class ids in [0, {num_classes}), got {classes!r}')
  table = np.full(num_classes, -1, np.int32)
  table[classes] = np.arange(len(classes), dtype=np.int32)
  return table


def _quota(cap: int | None, index: int, count: int) -> int | None:
  """This host's share of a global cap: len(range(cap)[index::count])."""
  return None if cap is None else len(range(cap)[index::count])


def _chunks_in_order(read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                     indices: np.ndarray, num_workers: int) -> Iterator[tuple]:
  """``read`` of consecutive chunks of ``indices``, in order, up to ``num_workers`` in flight."""
  chunks = (indices[s:s + CHUNK] for s in range(0, len(indices), CHUNK))
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    pending = [pool.submit(read, c) for c in itertools.islice(chunks, max(1, num_workers))]
    try:
      while pending:
        out = pending.pop(0).result()
        nxt = next(chunks, None)
        if nxt is not None:  # keep the pool busy while the caller copies this chunk
          pending.append(pool.submit(read, nxt))
        yield out
    finally:  # the caller stopped early (cap met): don't decode what nobody reads
      for f in pending:
        f.cancel()


def _select(read, n: int, *, shard, table, cap, num_workers: int, divisor: float, image_shape):
  """Reads this host's records of one split: shard, then class filter, then its quota."""
  index, count = shard
  quota = _quota(cap, index, count)
  candidates = np.arange(index, n, count)
  if table is None and quota is not None:
    candidates = candidates[:quota]  # no filter: the quota is a prefix, read nothing more
  xs, ys, have = [np.zeros((0,) + image_shape, np.float32)], [np.zeros((0,), np.int32)], 0
  with contextlib.closing(_chunks_in_order(read, candidates, num_workers)) as chunks:
    for x, y in chunks:
      if table is not None:
        keep = table[y] >= 0
        x, y = x[keep], table[y[keep]]
      if quota is not None:
        x, y = x[:quota - have], y[:quota - have]
      xs.append(x.reshape((-1,) + image_shape))
      ys.append(y)
      have += len(y)
      if quota is not None and have >= quota:
        break
  x = np.concatenate(xs).astype(np.float32)
  x /= np.float32(divisor)
  return x, np.concatenate(ys).astype(np.int32)


def _tfds_reader(source) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Decoded (uint8 images, labels) of some record indices of a tfds data source."""
  def read(idx: np.ndarray):
    keys = [int(i) for i in idx]
    try:  # one batched read from array_record
      records = source.__getitems__(keys)
    except (AttributeError, TypeError):  # sources without it (tfds's mock) read one by one
      records = [source[i] for i in keys]
    x = np.stack([np.asarray(r['image'], np.uint8) for r in records])
    y = np.asarray([int(r['label']) for r in records], np.int32)
    return x, y
  return read


def _tfds_source(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # tfds says 'TFRECORD not supported' etc. when nothing is there
    where = data_dir or "tfds's default data_dir (~/tensorflow_datasets)"
    raise FileNotFoundError(
        f'dataset {name!r} (split {split!r}) is not prepared in array_record format under '
        f'{where}: preparing needs TensorFlow, which robustjax does not install; on a machine '
        f'with internet access run `{prepare_commands(name, data_dir)}` and pass that '
        f"data_dir (reading needs no TensorFlow), or use the offline dataset 'digits'. "
        f'({type(e).__name__}: {(str(e).splitlines() or [""])[0]})') from e


def load_tfds(name: str, data_dir: str = '', *, max_train=None, max_test=None, classes=None,
              shard=None, num_workers: int = 8):
  """(x_train, y_train, x_test, y_test) of a prepared tfds image dataset.

  Any dataset with an ``image`` feature and a ``ClassLabel`` ``label`` works
  (shape and class count come from its features); see the module docstring.
  """
  shard = _check_shard(shard)
  sources = {split: _tfds_source(name, split, data_dir) for split in ('train', 'test')}
  features = sources['train'].dataset_info.features
  image_shape = tuple(int(d) for d in features['image'].shape)
  table = _check_classes(classes, features['label'].num_classes)
  out = []
  for split, cap in (('train', max_train), ('test', max_test)):
    source = sources[split]
    out += _select(_tfds_reader(source), len(source), shard=shard, table=table, cap=cap,
                   num_workers=num_workers, divisor=255.0, image_shape=image_shape)
  return tuple(out)


def load_mnist(data_dir: str, *, max_train: int | None = None, max_test: int | None = None):
  return load_tfds('mnist', data_dir, max_train=max_train, max_test=max_test)


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
         max_train: int | None = None, max_test: int | None = None,
         classes: Sequence[int] | None = None, shard: tuple[int, int] | None = None,
         num_workers: int = 8):
  """(x_train, y_train, x_test, y_test): images (n, H, W, C) float32 in [0, 1], int32 labels.

  ``test_fraction`` and ``split_seed`` split ``digits`` (the tfds datasets
  have their own test split). ``classes``, ``shard`` and the caps are
  described in the module docstring; ``num_workers`` threads decode records.
  """
  if name == 'digits':
    table = _check_classes(classes, 10)
    shard = _check_shard(shard)
    x_tr, y_tr, x_te, y_te = load_digits(test_fraction=test_fraction, split_seed=split_seed)
    out = []
    for x, y, cap in ((x_tr, y_tr, max_train), (x_te, y_te, max_test)):
      out += _select(lambda i, x=x, y=y: (x[i], y[i]), len(y), shard=shard, table=table,
                     cap=cap, num_workers=1, divisor=1.0, image_shape=INFO['digits'].image_shape)
    return tuple(out)
  if name in TFDS_DATASETS:
    return load_tfds(name, data_dir, max_train=max_train, max_test=max_test, classes=classes,
                     shard=shard, num_workers=num_workers)
  raise ValueError(f'dataset must be one of {DATASETS}, got {name!r}')


# --- device-side shuffling, batching and multi-host assembly ---------------------

@functools.partial(jax.jit, static_argnames=('num_examples', 'batch_size'))
def epoch_batch_indices(key: jax.Array, step, num_examples: int, batch_size: int) -> jax.Array:
  """int32 (batch_size,) example indices of global step ``step`` (may be traced).

  Epoch ``e = step // steps_per_epoch`` (``num_examples // batch_size`` steps,
  the remainder dropped) is ``permutation(fold_in(key, e))``; the step takes
  its slice. So each epoch visits every example at most once (exactly once
  when ``batch_size`` divides ``num_examples``), epochs are shuffled
  differently, and the batches depend only on (key, step): resuming at step t
  reproduces them. The permutation is recomputed per step (a sort of
  ``num_examples`` keys on device), which keeps the step free of state.
  In a multi-host run pass every host the same ``num_examples`` (the smallest
  shard) so all hosts agree on the epoch boundaries.
  """
  if batch_size < 1 or num_examples < batch_size:
    raise ValueError(f'batch_size must be in [1, num_examples={num_examples}], got {batch_size}')
  steps_per_epoch = num_examples // batch_size
  step = jnp.asarray(step, jnp.int32)
  perm = jax.random.permutation(jax.random.fold_in(key, step // steps_per_epoch), num_examples)
  start = (step % steps_per_epoch) * batch_size
  return jax.lax.dynamic_slice_in_dim(perm, start, batch_size).astype(jnp.int32)


def check_equal_rows(counts) -> None:
  """Refuses per-host leading-axis row counts that differ.

  ``counts``: (num_processes, num_leaves) ints, row p = process p's row count
  of each leaf (as ``global_array`` gathers them). Raises ValueError in one line
  naming every process's count and the common count to cut to (the smallest).
  """
  counts = np.asarray(counts).reshape(np.shape(counts)[0], -1)
  if np.all(counts == counts[:1]):
    return
  per_host = ', '.join(f'process {p}: {"/".join(str(int(c)) for c in row)}'
                       for p, row in enumerate(counts))
  raise ValueError(f'global_array: hosts hold different numbers of rows ({per_host}); every '
                   f'host must pass the same count: cut each to {int(counts.min())} rows '
                   '(a[:n]) before assembling')


def global_array(local, mesh: Mesh):
  """One global array (or pytree of them) from each host's leading-axis shard.

  Every host passes its own rows (``load(shard=host_shard())``, or a batch of
  them); the result is sharded along the leading axis over ``mesh``'s 'data'
  axis and replicated over any other axis. All hosts must pass the same
  number of rows, divisible by their number of devices on 'data'.

  With several processes the hosts' row counts are all-gathered first (a few
  ints): shards of a filtered split (``classes``) usually differ in length,
  and ``jax.make_array_from_process_local_data`` would let each host infer its
  own global shape (151 and 143 rows of digits classes [0, 1] gave global
  shapes (302,) and (286,) and different means). Unequal counts raise
  ValueError on every host, naming them (``check_equal_rows``); ``load`` does
  not cut, so a caller chooses what to drop.
  """
  if 'data' not in mesh.axis_names:
    raise ValueError(f"mesh must have a 'data' axis, got axes {mesh.axis_names}")
  leaves = [np.asarray(a) for a in jax.tree.leaves(local)]
  if any(a.ndim == 0 for a in leaves):
    raise ValueError('global_array: every leaf needs a leading (rows) axis, got a scalar')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    mine = np.asarray([a.shape[0] for a in leaves], np.int32)
    check_equal_rows(multihost_utils.process_allgather(mine))
  sharding = NamedSharding(mesh, P('data'))
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
                      local)
