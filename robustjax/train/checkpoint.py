"""Training checkpoints: periodic, atomic, resumable (orbax CheckpointManager).

A checkpoint directory belongs to one ``fit`` call. Each saved step holds the
train state, the last chunk's metrics and a small record of the run (total
steps, the PRNG key) so a rerun can tell it is resuming the same run. Orbax
writes each step to a temporary directory and renames it when complete, so a
killed run leaves the previous step intact; a half-written step is ignored
(and cleaned up) on the next start.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

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
      options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, cleanup_tmp_directories=True,
                                           create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, metrics, run: dict) -> None:
  """Starts an (async) save of ``step``; arrays are copied off-device before it returns."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      last_metrics=ocp.args.StandardSave(jax.tree.map(np.asarray, metrics)),
      run=ocp.args.JsonSave(run)), force=True)


def restore_latest(mngr: ocp.CheckpointManager, like_state, run: dict):
  """(step, state, metrics) of the newest complete step, or None when there is none.

  ``like_state``: the freshly built state; its shapes, dtypes and shardings
  are the restore target (so a checkpoint restores onto any mesh). Raises
  ValueError when the directory holds another run (other key, or more steps).
  """
  step = mngr.latest_step()
  if step is None:
    return None
  where = os.path.join(str(mngr.directory), str(step))
  saved = mngr.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']
  if saved['key'] != run['key']:
    raise ValueError(f'{where} holds a run with another PRNG key (seed); '
                     'use a fresh --workdir or delete it')
  if step > run['steps']:
    raise ValueError(f'{where} is at step {step}, past this run\'s {run["steps"]} steps; '
                     'use a fresh --workdir or delete it')
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), last_metrics=ocp.args.StandardRestore()))
  return step, out['state'], jax.tree.map(np.asarray, dict(out['last_metrics']))
