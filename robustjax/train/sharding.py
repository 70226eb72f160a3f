"""Device meshes and the shardings of a training run.

One step function runs everywhere; only the mesh it is compiled for changes.
The mesh has two axes:

  data   batch parallelism: the vmapped seed/task axis is split over it when it
         divides evenly, otherwise each step's batch is (``constrain_batch``).
  model  wide layers: a parameter's widest dimension (hidden units) is split
         over it when it divides evenly; everything else is replicated.

``mesh_from_config`` returns None for a 1 x 1 mesh, so one device stays the
default and runs exactly the unsharded program.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'model')

# Set while a step is traced under a mesh whose data axis shards the batch
# (not the seeds); ``constrain_batch`` reads it, so losses stay mesh-agnostic.
_BATCH_SHARDING: contextvars.ContextVar[NamedSharding | None] = contextvars.ContextVar(
    'robustjax_batch_sharding', default=None)


def mesh_shape(data: int, model: int = 1, num_devices: int | None = None) -> tuple[int, int]:
  """Resolves ``data=-1`` (all devices left after ``model``) and checks the shape fits."""
  n = jax.device_count() if num_devices is None else num_devices
  if model < 1 or (data != -1 and data < 1):
    raise ValueError(f'mesh axes must be >= 1 (data may be -1), got data={data}, model={model}')
  if data == -1:
    if n % model:
      raise ValueError(f'mesh.model={model} does not divide the {n} devices')
    data = n // model
  if data * model > n:
    raise ValueError(f'mesh {data} x {model} needs {data * model} devices, {n} available')
  return data, model


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh over the first data * model devices."""
  devices = jax.devices() if devices is None else list(devices)
  data, model = mesh_shape(data, model, len(devices))
  return Mesh(np.asarray(devices[:data * model]).reshape(data, model), AXES)


def mesh_from_config(spec) -> Mesh | None:
  """A Mesh, a ``{'data': ., 'model': .}`` config block, or None -> Mesh or None.

  A 1 x 1 mesh is None: the single-device program, bit for bit today's.
  """
  if spec is None or isinstance(spec, Mesh):
    return spec
  data, model = mesh_shape(int(spec['data']), int(spec.get('model', 1)))
  return None if data * model == 1 else make_mesh(data, model)


def param_spec(shape: tuple[int, ...], model_size: int, lead: tuple = ()) -> P:
  """Rule for one parameter (or optimizer-state) leaf of ``shape``.

  The widest dimension goes over 'model' when ``model_size`` divides it
  (hidden units of a two-layer net, an MLP's wide kernels); scalars and leaves
  it does not divide are replicated. ``lead`` is the spec of leading batch
  axes (seeds) that are not part of the parameter itself.
  """
  spec = [None] * len(shape)
  if model_size > 1 and shape:
    widest = max(range(len(shape)), key=lambda i: (shape[i], i))
    if shape[widest] % model_size == 0:
      spec[widest] = 'model'
  return P(*lead, *spec)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where every input and output of a compiled chunk of steps lives."""
  mesh: Mesh
  seeds_sharded: bool   # the vmapped run axis is split over 'data'

  @property
  def lead(self) -> tuple:
    return ('data',) if self.seeds_sharded else (None,)

  def state(self, state, batched: bool):
    """Parameters and optimizer state by ``param_spec`` (same shape, same sharding)."""
    model = self.mesh.shape['model']
    lead = self.lead if batched else ()
    return jax.tree.map(lambda x: NamedSharding(
        self.mesh, param_spec(np.shape(x)[len(lead):], model, lead)), state)

  def runs(self, tree, batched: bool):
    """Per-run inputs (data worlds, keys): split with the seeds, else replicated."""
    spec = P('data') if batched and self.seeds_sharded else P()
    return jax.tree.map(lambda _: NamedSharding(self.mesh, spec), tree)

  def replicated(self, tree=None):
    return jax.tree.map(lambda _: NamedSharding(self.mesh, P()), tree) if tree is not None \
        else NamedSharding(self.mesh, P())

  def batch(self) -> NamedSharding | None:
    """The per-step batch's sharding, or None when the seeds already use 'data'."""
    if self.seeds_sharded or self.mesh.shape['data'] == 1:
      return None
    return NamedSharding(self.mesh, P('data'))


def layout(mesh: Mesh, num_runs: int | None) -> Layout:
  """Seeds go over 'data' when they split evenly (no communication at all)."""
  data = mesh.shape['data']
  return Layout(mesh, num_runs is not None and data > 1 and num_runs % data == 0)


def process_local(mesh: Mesh | None) -> Mesh | None:
  """The mesh evaluation runs on: ``mesh`` as is in one process; with several
  processes, this process's own devices.

  Evaluation (probe features and fits, attacks, distances) mixes jitted
  programs with eager host code (``np.asarray``, ``jax.debug.callback``,
  early stops on host), which cannot read arrays spanning other processes'
  devices. So under ``jax.distributed`` every process evaluates everything
  on its local devices: a ('data', 'model') mesh of
  ``jax.local_device_count()`` x 1 (evaluation splits points over 'data' and
  replicates parameters, so 'model' would only repeat work), or None for one
  local device. The processes repeat the same work from the same inputs and
  keys, and never communicate. One process (any mesh, or None): ``mesh``
  unchanged, so single-process programs and results stay as they are.
  Raises TypeError when ``mesh`` is neither a Mesh nor None.
  """
  if mesh is not None and not isinstance(mesh, Mesh):
    raise TypeError(f'mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}')
  if mesh is None or jax.process_count() == 1:
    return mesh
  local = jax.local_devices()
  return None if len(local) == 1 else make_mesh(len(local), 1, local)


def put(tree, shardings):
  """Host or device arrays -> global arrays with ``shardings``, always new buffers.

  ``make_array_from_callback`` also works when the mesh spans several hosts
  (each host fills its own shards from its identical copy), and the fresh
  buffers can be donated without invalidating the caller's arrays.
  """
  def one(x, s):
    # A private host copy: on CPU the new array may alias the host memory
    # it is built from, and donation then writes into it.
    x = np.array(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def global_arrays(tree):
  """``tree`` with every leaf an array that orbax can save from all processes at once.

  One process: ``tree`` as is (the saved checkpoint is unchanged). Several
  (``jax.distributed``): arrays that already span processes stay; host-local
  leaves (numpy, or a jax.Array on this process's devices, such as a
  sparse-coding world built on each host) become global arrays replicated over
  every device, built from this process's copy. Orbax 0.12.8 refuses host-local
  jax.Arrays in a multi-process save ("Cannot serialize host local jax.Array")
  and writes a replicated array once, from its primary replica. Every process
  must hold the same values (they are computed from the same keys) and call
  this together.
  """
  if jax.process_count() == 1:
    return tree
  replicated = NamedSharding(make_mesh(), P())

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated, lambda idx: x[idx])
  return jax.tree.map(one, tree)


def host_readable(tree):
  """``tree`` with every leaf readable on this host (``np.asarray`` works on it).

  One process: ``tree`` as is. Several: every array that spans other
  processes' devices becomes a host numpy array on every host, so the code
  after a fit (evaluation, jax.debug callbacks, ``np.asarray``) sees what it
  sees in one process: a replicated one is copied from a local device; one
  split over processes (seeds over 'data', units over 'model') is gathered
  (``multihost_utils.process_allgather``, a collective: every process calls
  it together). Arrays on this host's devices stay as they are.
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.is_fully_replicated:
      return np.asarray(x)
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(one, tree)


@contextlib.contextmanager
def batch_sharding(sharding: NamedSharding | None):
  """Makes ``constrain_batch`` shard over ``sharding`` while a step is traced."""
  token = _BATCH_SHARDING.set(sharding)
  try:
    yield
  finally:
    _BATCH_SHARDING.reset(token)


def constrain_batch(tree: Any) -> Any:
  """Splits the leading (example) axis of a freshly drawn batch over 'data'.

  A loss calls this on the batch it samples from its key. Outside a sharded
  trace, or when the seeds already occupy 'data', it returns ``tree`` as is;
  leaves whose leading axis 'data' does not divide stay replicated. Under
  vmap over seeds, jax keeps the seed axis unsharded and splits the batch.
  """
  sharding = _BATCH_SHARDING.get()
  if sharding is None:
    return tree
  size = sharding.mesh.shape['data']

  def one(x):
    if np.ndim(x) == 0 or np.shape(x)[0] % size:
      return x
    return jax.lax.with_sharding_constraint(x, sharding)
  return jax.tree.map(one, tree)
