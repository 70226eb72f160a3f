"""Image data: tfds builders with mocked records, digits, class selection,
host sharding, device-side epoch batches and the global array of a mesh."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from robustjax.data import images


def mocked(num_examples):
  """Real builders, records made by tfds from their features (deterministic per index)."""
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def as_set(x):
  """Images as a multiset of bytes, to compare selections ignoring order."""
  return sorted(a.tobytes() for a in x)


@pytest.mark.parametrize('name', ['mnist', 'cifar10', 'cifar100'])
def test_tfds_datasets_through_mocked_data_source(name):
  with mocked(12):
    x_tr, y_tr, x_te, y_te = images.load(name, data_dir='/nonexistent', max_test=5)
  shape, k = images.info(name).image_shape, images.info(name).num_classes
  chex.assert_shape(x_tr, (12, *shape))
  chex.assert_shape(x_te, (5, *shape))
  chex.assert_shape(y_te, (5,))
  for x, y in ((x_tr, y_tr), (x_te, y_te)):
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == np.int32 and np.all((0 <= y) & (y < k))
  # uint8 / 255: every value is a multiple of 1/255, and the images are not constant
  np.testing.assert_allclose(x_tr * 255, np.round(x_tr * 255), atol=1e-4)
  assert x_tr.std() > 0.1
  if name == 'cifar100':  # fine labels: 100 classes, and the mock draws from all of them
    assert y_tr.max() >= 20


def test_classes_keep_and_relabel_in_given_order():
  with mocked(40):
    _, y_all, _, _ = full = images.load('cifar10', data_dir='/x')
    counts = np.bincount(y_all, minlength=10)
    a, b = np.argsort(counts)[-2:]  # the two commonest labels, so both are present
    x_tr, y_tr, x_te, y_te = images.load('cifar10', data_dir='/x', classes=[b, a])
  keep = (y_all == a) | (y_all == b)
  np.testing.assert_array_equal(x_tr, full[0][keep])
  np.testing.assert_array_equal(y_tr, np.where(y_all[keep] == b, 0, 1))
  assert set(y_te) <= {0, 1} and len(y_te) == np.isin(full[3], [a, b]).sum()


def test_shards_partition_the_records(monkeypatch):
  monkeypatch.setattr(images, 'CHUNK', 3)  # several decode chunks in flight, and early stops
  with mocked(11):
    full = images.load('mnist', data_dir='/x', num_workers=3)
    s0 = images.load('mnist', data_dir='/x', shard=(0, 2), num_workers=3)
    s1 = images.load('mnist', data_dir='/x', shard=(1, 2), num_workers=3)
    capped = [images.load('mnist', data_dir='/x', shard=(i, 2), max_train=7) for i in (0, 1)]
    classes = [1, 7, 3]
    fc = images.load('mnist', data_dir='/x', classes=classes)
    sc = [images.load('mnist', data_dir='/x', classes=classes, shard=(i, 2)) for i in (0, 1)]
    cc = [images.load('mnist', data_dir='/x', classes=classes, shard=(i, 2), max_train=3)
          for i in (0, 1)]
  for part in (0, 1, 2, 3):  # host i reads exactly records i::2
    np.testing.assert_array_equal(s0[part], full[part][0::2])
    np.testing.assert_array_equal(s1[part], full[part][1::2])
  np.testing.assert_array_equal(capped[0][0], full[0][:7][0::2])  # cap: range(7)[i::2]
  np.testing.assert_array_equal(capped[1][1], full[1][:7][1::2])
  # with a class filter the shards still partition the filtered records ...
  assert as_set(np.concatenate([sc[0][0], sc[1][0]])) == as_set(fc[0])
  # ... and a cap of 3 is split 2 + 1, each host's taken from its own records
  assert [len(c[1]) for c in cc] == [2, 1]
  assert set(as_set(cc[0][0])) <= set(as_set(sc[0][0]))
  assert set(as_set(cc[1][0])) <= set(as_set(sc[1][0]))


class RobustjaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """A real array_record dataset, written here (Tensor images: no TensorFlow needed)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=5)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(23, 0), 'test': self._generate_examples(9, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {'image': rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 'label': i % 5}


def test_real_array_record_batched_threaded_reads(tmp_path, monkeypatch):
  RobustjaxTinyImages(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  name, d = 'robustjax_tiny_images', str(tmp_path)
  src = tfds.data_source(name, split='train', data_dir=d, download=False)
  want = np.stack([src[i]['image'] for i in range(23)]) / np.float32(255)
  labels = np.asarray([src[i]['label'] for i in range(23)], np.int32)
  monkeypatch.setattr(images, 'CHUNK', 4)  # 6 chunks through __getitems__, 3 in flight
  x_tr, y_tr, x_te, y_te = images.load_tfds(name, d, num_workers=3)
  np.testing.assert_array_equal(x_tr, want)
  np.testing.assert_array_equal(y_tr, labels)
  chex.assert_shape(x_te, (9, 4, 4, 3))
  x1, y1, _, _ = images.load_tfds(name, d, shard=(1, 3), classes=[4, 0], max_train=5)
  keep = np.flatnonzero(np.isin(labels, [4, 0]))
  mine = keep[np.isin(keep % 3, [1])]  # host 1 of 3 reads records 1, 4, 7, ...
  np.testing.assert_array_equal(y1, np.where(labels[mine] == 4, 0, 1)[:2])  # quota 2 of 5
  np.testing.assert_array_equal(x1, want[mine][:2])


def test_digits_transfer_halves_and_shards():
  lo = images.load('digits', classes=range(5))
  hi = images.load('digits', classes=range(5, 10))
  full = images.load('digits')
  assert len(lo[1]) + len(hi[1]) == len(full[1]) and len(lo[3]) + len(hi[3]) == len(full[3])
  np.testing.assert_array_equal(hi[1], full[1][full[1] >= 5] - 5)
  np.testing.assert_array_equal(hi[2], full[2][full[3] >= 5])
  s = [images.load('digits', shard=(i, 3), max_train=100) for i in range(3)]
  assert [len(p[1]) for p in s] == [34, 33, 33]
  np.testing.assert_array_equal(s[2][0], full[0][:100][2::3])


def test_missing_prepared_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)'cifar100'.*" + str(tmp_path) + ".*'digits'"):
    images.load('cifar100', data_dir=str(tmp_path))


def test_missing_data_names_the_preparation_commands(tmp_path):
  """Preparing needs TensorFlow (the tfds builders and the tfds command import
  it), reading does not: the error says so and gives the exact commands."""
  cmd = ('python -m venv tfds-prep && tfds-prep/bin/pip install tensorflow '
         f'tensorflow-datasets=={tfds.__version__} && tfds-prep/bin/tfds build cifar10 '
         f'--data_dir={tmp_path} --file_format=array_record')
  assert images.prepare_commands('cifar10', str(tmp_path)) == cmd
  with pytest.raises(FileNotFoundError) as err:
    images.load('cifar10', data_dir=str(tmp_path))
  text = str(err.value)
  assert f'`{cmd}`' in text and 'needs TensorFlow' in text and 'reading needs no TensorFlow' in text
  assert '\n' not in text  # one line
  assert 'tfds build mnist --data_dir=DIR' in images.prepare_commands('mnist')


def test_class_count_comes_from_the_dataset():
  assert [images.num_classes(n) for n in images.DATASETS] == [10, 10, 10, 100]
  assert images.num_classes('cifar100', classes=(5, 97, 3)) == 3
  with pytest.raises(ValueError, match='classes must be distinct class ids in'):
    images.num_classes('cifar10', classes=(10,))
  images.check_labels(np.array([0, 9, 3]), 10)
  with pytest.raises(ValueError, match=r'train labels: must be integers in \[0, 10\).*\[0, 10\]'):
    images.check_labels(np.array([0, 10]), 10, 'train labels')
  with pytest.raises(ValueError, match='must be integers'):
    images.check_labels(np.array([0.0, 1.0]), 10)


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='svhn'), 'dataset must be one of'),
    (dict(name='digits', classes=[1, 1]), 'classes'),
    (dict(name='digits', classes=[10]), 'classes'),
    (dict(name='digits', classes=[]), 'classes'),
    (dict(name='digits', shard=(2, 2)), 'shard'),
    (dict(name='cifar10', shard=(0, 0)), 'shard'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    images.load(**kwargs)


def test_info_table():
  assert images.DATASETS == ('digits', 'mnist', 'cifar10', 'cifar100')
  assert images.info('cifar100') == images.DatasetInfo((32, 32, 3), 100)
  assert images.info('mnist').image_shape == (28, 28, 1)
  with pytest.raises(ValueError, match='dataset'):
    images.info('imagenet')


# --- device-side batches -----------------------------------------------------------

N, B = 23, 5  # 4 steps per epoch, 3 examples dropped each epoch


def test_epoch_batches_visit_each_example_once_and_resume():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def epoch(key, first_step):  # the traced step: one program for every epoch
    return jax.vmap(lambda s: images.epoch_batch_indices(key, s, N, B))(first_step + jnp.arange(4))

  key = jax.random.key(0)
  e0, e1 = np.asarray(epoch(key, 0)), np.asarray(epoch(key, 4))
  for e in (e0, e1):
    chex.assert_shape(e, (4, B))
    assert e.dtype == np.int32
    flat = e.ravel()
    assert len(set(flat)) == 20 and flat.min() >= 0 and flat.max() < N  # no repeats
  assert not np.array_equal(e0, e1)  # a new shuffle each epoch
  # resuming at step 6 (mid-epoch 1) gives the same batch, eagerly or jitted
  np.testing.assert_array_equal(images.epoch_batch_indices(key, 6, N, B), e1[2])
  np.testing.assert_array_equal(epoch(key, 6)[0], e1[2])
  with pytest.raises(ValueError, match='batch_size'):
    images.epoch_batch_indices(key, 0, 4, 5)


def test_epoch_batches_vmap_over_keys():
  keys = jax.random.split(jax.random.key(1), 3)
  batches = jax.vmap(lambda k: images.epoch_batch_indices(k, 2, N, B))(keys)
  chex.assert_shape(batches, (3, B))
  np.testing.assert_array_equal(batches[1], images.epoch_batch_indices(keys[1], 2, N, B))
  assert not np.array_equal(batches[0], batches[1])
  # a whole epoch of a batch that divides N is a permutation of range(N)
  full = np.concatenate([images.epoch_batch_indices(keys[0], s, 20, 10) for s in (2, 3)])
  np.testing.assert_array_equal(np.sort(full), np.arange(20))


def test_global_array_single_process():
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
  local = dict(x=np.arange(12, dtype=np.float32).reshape(4, 3), y=np.arange(4, dtype=np.int32))
  out = images.global_array(local, mesh)
  chex.assert_trees_all_equal(jax.device_get(out), local)
  assert out['x'].sharding.spec == jax.sharding.PartitionSpec('data')
  with pytest.raises(ValueError, match="'data' axis"):
    images.global_array(local, Mesh(np.asarray(jax.devices()[:1]), ('batch',)))


@pytest.mark.slow
def test_global_array_and_batches_on_8_fake_devices():
  """Rows of one host spread over 8 devices; a jitted gather of a shuffled batch."""
  import subprocess
  import sys
  code = '''
import jax, numpy as np
from jax.sharding import Mesh
from robustjax.data import images
mesh = Mesh(np.asarray(jax.devices()).reshape(8, 1), ('data', 'model'))
x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
g = images.global_array(x, mesh)
assert len(g.addressable_shards) == 8 and {s.data.shape for s in g.addressable_shards} == {(2, 3)}
np.testing.assert_array_equal(g, x)
idx = jax.jit(lambda k, s: images.epoch_batch_indices(k, s, 16, 8))(jax.random.key(0), 3)
np.testing.assert_array_equal(jax.jit(lambda a, i: a[i])(g, idx), x[np.asarray(idx)])
print('ok')
'''
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-2000:]


def test_unequal_host_row_counts_are_refused_naming_them():
  images.check_equal_rows(np.array([[143, 143], [143, 143]]))   # equal: fine
  with pytest.raises(ValueError, match=r'^global_array: hosts hold different numbers of rows '
                     r'\(process 0: 151/151, process 1: 143/143\); .* cut each to 143 rows'):
    images.check_equal_rows(np.array([[151, 151], [143, 143]]))
  with pytest.raises(ValueError, match=r'process 0: 4, process 1: 4, process 2: 3\)'):
    images.check_equal_rows(np.array([[4], [4], [3]]))


_TWO_HOSTS = '''
import sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address='127.0.0.1:' + sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
import numpy as np
from jax.sharding import Mesh
from robustjax.data import images
x, y, _, _ = images.load('digits', classes=[0, 1], shard=images.host_shard())
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 1), ('data', 'model'))
try:
  images.global_array(y, mesh)
  print('assembled unequal shards')
except ValueError as e:
  print(e)
g = images.global_array({'x': x[:143], 'y': y[:143]}, mesh)
print('shape', g['y'].shape, 'mean', repr(float(jax.jit(lambda a: a.astype(np.float32).mean())(g['y']))))
'''


@pytest.mark.slow
def test_two_processes_refuse_unequal_shards_and_agree_on_equal_ones():
  """Two real JAX processes (gloo over loopback) holding 151 and 143 rows of digits
  classes [0, 1]: both refuse, naming the counts (they built global shapes (302,)
  and (286,) and jitted means 0.4768 vs 0.5035 before); cut to 143 rows both build
  (286,) with the same mean."""
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = str(s.getsockname()[1])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=root)
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_HOSTS, port, str(i)], env=env, cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  _, y0, _, _ = images.load('digits', classes=[0, 1], shard=(0, 2))
  _, y1, _, _ = images.load('digits', classes=[0, 1], shard=(1, 2))
  assert (len(y0), len(y1)) == (151, 143)
  mean = float(np.concatenate([y0[:143], y1[:143]]).mean())
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert ('global_array: hosts hold different numbers of rows (process 0: 151, process 1: 143)'
            in out), out
    shape, m = out.strip().splitlines()[-1].split(' mean ')
    assert shape == 'shape (286,)'
    np.testing.assert_allclose(float(m), mean, rtol=1e-6)
