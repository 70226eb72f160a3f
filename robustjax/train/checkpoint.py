"""Training checkpoints: periodic, atomic, resumable (orbax CheckpointManager).

A checkpoint directory belongs to one ``fit`` call. Each saved step holds the
train state, the last chunk's metrics and a small record of the run (total
steps, the PRNG key) so a rerun can tell it is resuming the same run. Orbax
writes each step to a temporary directory and renames it when complete, so a
killed run leaves the previous step intact; a half-written step is ignored
(and cleaned up) on the next start. A step that lost an item afterwards is
skipped and deleted on resume, saying so; a folder named like a step that
orbax did not write is refused (orbax's pruning would delete it).

Two orbax-checkpoint 0.12.8 behaviours shape this module:

- It refuses zero-size arrays ("Cannot save arrays with zero size", disabled
  in google/orbax PR 1570, issue 2587 asks for it back). Optimizer states can
  hold them (the spectral penalty's placeholder vectors for unpenalized
  leaves), so ``save`` stores them as empty subtrees (None) and
  ``restore_latest`` takes them from the freshly built state.
- A multi-process save refuses host-local jax.Arrays ("Cannot serialize host
  local jax.Array"): a fit without a mesh keeps every process's state on its
  own device. ``save`` passes such leaves as replicated global arrays
  (``sharding.global_arrays``; the processes hold equal values) and
  ``restore_latest`` reads them back as host arrays onto the local device.
- By default it creates a step's directory in a background thread that the
  writer threads wait on. When a save then fails in its blocking part, those
  threads wait for a signal that never comes: the interpreter hangs at exit for
  the coordination timeout (300 s) and logs "cannot schedule new futures after
  shutdown". Creating the directory in the blocking part (cheap) makes a failed
  save raise at once and exit cleanly.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from robustjax.train import sharding

# 'metrics' is a name CheckpointManager reserves for its own best-checkpoint logic.
ITEMS = ('state', 'last_metrics', 'run')
KEEP = 2  # the newest complete step, and the one before it while a save is in flight


def key_record(key) -> list:
  """The run's PRNG key as plain ints (typed or raw uint32 keys)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).tolist()


def manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory), item_names=ITEMS,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=KEEP, cleanup_tmp_directories=True, create=True,
          async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))


def _without_empty(tree):
  """``tree`` with zero-size arrays as None (orbax saves None as an empty subtree)."""
  return jax.tree.map(lambda x: None if np.size(x) == 0 else x, tree)


def _with_empty(like, restored):
  """``restored`` (saved by ``_without_empty``) with like's zero-size leaves put back."""
  leaves, treedef = jax.tree.flatten(like)
  saved = iter(jax.tree.leaves(restored))
  return treedef.unflatten([x if np.size(x) == 0 else next(saved) for x in leaves])


def save(mngr: ocp.CheckpointManager, step: int, state, metrics, run: dict) -> None:
  """Starts an (async) save of ``step``; arrays are copied off-device before it returns."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(sharding.global_arrays(_without_empty(state))),
      last_metrics=ocp.args.StandardSave(jax.tree.map(np.asarray, metrics)),
      run=ocp.args.JsonSave(run)), force=True)


def _missing_items(mngr: ocp.CheckpointManager, step: int) -> list[str]:
  path = mngr.directory / str(step)
  return [i for i in ITEMS if not (path / i).exists()]


def _is_orbax_step(mngr: ocp.CheckpointManager, step: int) -> bool:
  """Whether the folder was written by a CheckpointManager (its metadata or one of our items)."""
  path = mngr.directory / str(step)
  return (path / '_CHECKPOINT_METADATA').exists() or len(_missing_items(mngr, step)) < len(ITEMS)


def restore_latest(mngr: ocp.CheckpointManager, like_state, run: dict):
  """(step, state, metrics) of the newest complete step, or None when there is none.

  ``like_state``: the freshly built state; its shapes, dtypes and shardings
  are the restore target (so a checkpoint restores onto any mesh).

  Steps newer than the newest complete one that lack an item (``state``,
  ``last_metrics`` or ``run`` deleted or never written) or fail to restore are
  deleted with one printed line each: they cannot be resumed, and the resumed
  run saves the same step numbers again. A folder named like a step that no
  CheckpointManager wrote (none of the items, no orbax metadata) is refused:
  orbax would count it as a step and delete it when pruning old steps.

  Raises:
    ValueError (one line, naming the directory) when the directory holds a
    folder that is not a checkpoint, or another run (other fingerprint, other
    key, or more steps).
  """
  directory = str(mngr.directory)
  strays = [s for s in mngr.all_steps() if not _is_orbax_step(mngr, s)]
  if strays:
    raise ValueError(f'{directory} holds folder(s) {sorted(strays)} named like checkpoint steps '
                     f'that are not checkpoints (none of {list(ITEMS)} inside); checkpoint_dir '
                     'belongs to one fit: move them out or use a fresh --workdir')
  for step in sorted(mngr.all_steps(), reverse=True):
    where = os.path.join(directory, str(step))
    missing = _missing_items(mngr, step)
    if missing:
      _drop(mngr, step, f'item(s) {missing} missing')
      continue
    try:
      saved = mngr.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']
    except (KeyError, ValueError, OSError) as e:
      _drop(mngr, step, f'its run record cannot be read ({type(e).__name__})')
      continue
    if saved.get('fingerprint') != run.get('fingerprint'):
      old, new = saved.get('fingerprint') or {}, run.get('fingerprint') or {}
      differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
      raise ValueError(f'{where} holds a run of another job (fingerprint differs'
                       + (f": {', '.join(differ[:3])}" if differ else '') +
                       '); use a fresh --workdir or delete it')
    if saved['key'] != run['key']:
      raise ValueError(f'{where} holds a run with another PRNG key (seed); '
                       'use a fresh --workdir or delete it')
    if step > run['steps']:
      raise ValueError(f'{where} is at step {step}, past this run\'s {run["steps"]} steps; '
                       'use a fresh --workdir or delete it')
    target = jax.tree.map(_restore_target, _without_empty(like_state))
    try:
      out = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), last_metrics=ocp.args.StandardRestore()))
    except (KeyError, ValueError, OSError) as e:
      _drop(mngr, step, f'it cannot be restored ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:200] if str(e) else ""})')
      continue
    state = out['state']
    if jax.process_count() > 1:  # host-local leaves back onto this process's device
      like = jax.tree.leaves(_without_empty(like_state))
      leaves, treedef = jax.tree.flatten(state)
      state = treedef.unflatten([_placed_like(l, r) for l, r in zip(like, leaves)])
    return (step, _with_empty(like_state, state),
            jax.tree.map(np.asarray, dict(out['last_metrics'])))
  return None


def _host_local(x) -> bool:
  """A leaf on this process's devices only, in a run of several processes."""
  return jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable


def _restore_target(x):
  """Restore onto ``x``'s sharding; a host-local leaf is read as a host array."""
  if _host_local(x):
    return np.empty(x.shape, x.dtype)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def _placed_like(like, restored):
  return jax.device_put(restored, like.sharding) if _host_local(like) else restored


def _drop(mngr: ocp.CheckpointManager, step: int, why: str) -> None:
  print(f'checkpoint: skipping and deleting incomplete step {step} in {mngr.directory}: {why}',
        flush=True)
  mngr.delete(step)
