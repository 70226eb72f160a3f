"""Run a stage's training: compiled chunks of steps, a progress bar, a NaN guard,
sharding over a mesh and resumable checkpoints."""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from tqdm.auto import tqdm

from robustjax.progress import Interrupted, deferred_interrupts
from robustjax.train import checkpoint, metric_log, sharding
from robustjax.train.steps import FINITE, LossFn, train_steps


class DivergedError(FloatingPointError):
  """A training step produced NaN or inf; the message names what (see ``steps.FINITE``)."""


# What each finiteness flag of train_step means when it is the first to fail.
_SOURCES = {
    'loss': 'the loss is not finite (the run diverged: lower the learning rate or the attack '
            'radius)',
    'grads': 'the task gradient is not finite although the loss is (a point where the model or '
             'the loss has no derivative, e.g. sqrt or log at 0)',
    'penalty': 'the spectral penalty (sigma_max^2 or its gradient) is not finite although the '
               'loss and the task gradient are (a kernel whose sigma_max^2 overflows)',
    'params': 'the parameters are not finite after the optimizer update although the loss, the '
              'task gradient and the penalty are (the update overflowed)',
}


def _divergence(finite: dict, first: int, desc: str) -> str | None:
  """The error message for a chunk's per-step flags ((steps,) or (runs, steps)
  each), naming the first step and source that failed; None when all held."""
  flags = {k: np.asarray(finite[k], bool) for k in FINITE}
  ok = np.logical_and.reduce([flags[k] for k in FINITE])
  if ok.all():
    return None
  bad_steps = ~ok.reshape(-1, ok.shape[-1]).all(axis=0)
  t = int(np.argmax(bad_steps))
  source = next(k for k in FINITE if not flags[k][..., t].all())
  runs = ''
  if flags[source].ndim > 1:
    runs = f', run(s) {np.flatnonzero(~flags[source][..., t].reshape(-1)).tolist()}'
  return f'{desc}: {_SOURCES[source]} at step {first + t} (counting from 0{runs}).'


def _chunk(state, key, aux, first_step, num_steps, *, loss_fn, batched, shared_aux,
           batch_sharding):
  run = functools.partial(train_steps, num_steps=num_steps, loss_fn=loss_fn)
  if batched:
    run = jax.vmap(run, in_axes=(0, 0, None if shared_aux else 0, None))
  # The body runs only while jax traces it, so the loss sees the batch
  # sharding exactly then.
  with sharding.batch_sharding(batch_sharding):
    return run(state, key, aux, first_step)


def _own_copy(state):
  """Fresh device buffers (Python scalars become arrays): they get donated.
  ``device_put`` copies without compiling a program per leaf shape."""
  return jax.tree.map(lambda x: jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x),
                                               may_alias=False), state)


@functools.lru_cache(maxsize=32)
def _single_device_chunks(loss_fn: LossFn, batched: bool, shared_aux: bool):
  """The jitted chunk for one device, one per (loss_fn, batched, shared_aux):
  fits with equal (value-hashable) loss functions share its compiles, a
  second run in the same process included. Bounded, so closures that hash
  by identity do not pile up."""
  chunk = functools.partial(_chunk, loss_fn=loss_fn, batched=batched, shared_aux=shared_aux,
                            batch_sharding=None)
  return jax.jit(chunk, static_argnums=4, donate_argnums=0)


def compile_chunks(loss_fn: LossFn, state, aux, key, *, batched: bool, mesh=None,
                   shared_aux: bool = False):
  """(run, state, aux, key): ``run(state, key, aux, first_step, n)``
  is the jit-compiled scan of n steps; the inputs come back placed for it.

  Without a mesh it is the plain single-device program, shared by every
  call with an equal ``loss_fn`` (a frozen dataclass compares by value, e.g.
  ``robustjax.recipes.supervised.StaticLoss``; a closure or a
  ``functools.partial`` by identity). With one, state,
  per-run inputs and outputs carry the ``sharding.Layout`` shardings as
  jit in/out shardings. The state's buffers are donated either way: each
  chunk updates them in place.
  """
  if mesh is None:
    return _single_device_chunks(loss_fn, batched, shared_aux), _own_copy(state), aux, key
  lay = sharding.layout(mesh, key.shape[0] if batched else None)
  state_sh = lay.state(state, batched)
  aux_sh, key_sh = lay.runs(aux, batched and not shared_aux), lay.runs(key, batched)
  chunk = functools.partial(_chunk, loss_fn=loss_fn, batched=batched, shared_aux=shared_aux,
                            batch_sharding=lay.batch())
  run = jax.jit(chunk, static_argnums=4, donate_argnums=0,
                in_shardings=(state_sh, key_sh, aux_sh, lay.replicated()),
                out_shardings=(state_sh, lay.replicated()))
  return (run, sharding.put(state, state_sh), sharding.put(aux, aux_sh),
          sharding.put(key, key_sh))


def fit(state: train_state.TrainState, aux, key: jax.Array, loss_fn: LossFn, *,
        steps: int, chunk_size: int = 250, batched: bool = False, desc: str = 'train',
        progress: bool = True, mesh=None, checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None, shared_aux: bool = False,
        fused_steps: bool = True, fingerprint: dict | None = None):
  """Trains for ``steps`` steps; returns (state, metrics of the last chunk).

  ``batched=True`` vmaps everything over the leading axis of ``state``, ``aux``
  and ``key`` (seeds, tasks): one compile trains them all; with
  ``shared_aux=True`` every run reads the same ``aux`` (one copy of a dataset,
  not one per seed). ``fused_steps=False`` compiles one step and calls it
  once per step instead of compiling a chunk's steps into one ``lax.scan``:
  XLA:CPU runs the weight gradients of convolutions ~17x slower inside a loop
  body (jax-ml/jax#12868), so conv nets train on a CPU this way; the steps,
  keys and results are the same. After every chunk the step's finiteness
  flags (``steps.FINITE``: loss, task gradient, spectral penalty, parameters
  after the update) are checked; the first non-finite one raises
  ``DivergedError`` naming that step and source (and the runs, when batched).

  ``mesh``: a ``jax.sharding.Mesh``, a ``{'data', 'model'}`` config block or
  None (one device, the default); see ``robustjax.train.sharding``.

  ``checkpoint_dir``: this fit's own directory. The state is saved at the end
  of the first chunk at or past every ``checkpoint_every`` steps (every chunk
  when None) and at the end; a rerun with the same directory and key resumes
  from the newest complete checkpoint, and a finished one returns at once.
  ``fingerprint`` (a JSON-able ``{name: value}`` of what determines the job,
  e.g. ``run_record.fingerprint(cfg.to_dict())``) is saved with every
  checkpoint; a rerun whose fingerprint differs is refused (ValueError naming
  the differing names), so a changed loss never resumes the old parameters.
  Under several processes (``jax.distributed``) every process calls ``fit``
  with the same arguments and gets the whole trained state back, as host
  arrays (``sharding.host_readable``). Each chunk's mean metrics go to the open ``metric_log`` sink, if any (the
  runner's ``metrics.jsonl``). Step t always uses fold_in(key, t), so a
  resumed run replays exactly the
  steps an uninterrupted one would have taken. Ctrl-C raises
  ``progress.Interrupted`` naming ``desc``, the steps done and the checkpoint
  kept. A chunk with a non-finite value
  is never saved: the last good checkpoint stays where the error says.
  """
  # Read on the host before the key becomes a (possibly multi-host) global array.
  record = {'steps': int(steps), 'key': checkpoint.key_record(key)}
  if fingerprint is not None:
    record['fingerprint'] = fingerprint
  mesh = sharding.mesh_from_config(mesh)
  run, state, aux, key = compile_chunks(loss_fn, state, aux, key, batched=batched, mesh=mesh,
                                        shared_aux=shared_aux)

  mngr, start, metrics = None, 0, {}
  if checkpoint_dir:
    mngr = checkpoint.manager(checkpoint_dir)
    restored = checkpoint.restore_latest(mngr, state, record)
    if restored is not None:
      start, state, metrics = restored
      print(f'{desc}: resuming from step {start}/{steps} ({os.path.abspath(checkpoint_dir)})',
            flush=True)

  saved = start if mngr is not None and start else None
  first = start
  try:
    with tqdm(total=steps, initial=start, desc=desc, disable=not progress, leave=False) as bar:
      while first < steps:
        # Chunks end on multiples of chunk_size wherever the run (re)started,
        # so an interrupted run compiles and runs the same chunks.
        end = min((first // chunk_size + 1) * chunk_size, steps)
        t0 = time.perf_counter()
        if fused_steps:
          state, chunk_metrics = run(state, key, aux, np.int32(first), end - first)
        else:
          per_step = []
          for t in range(first, end):
            state, m = run(state, key, aux, np.int32(t), 1)
            per_step.append(m)
          chunk_metrics = jax.tree.map(lambda *ms: jnp.concatenate(ms, axis=-1), *per_step)
        diverged = _divergence(chunk_metrics.pop('finite'), first, desc)
        if diverged:
          raise DivergedError(f'{diverged} {_kept(mngr, saved)}')
        metrics = jax.tree.map(lambda m: np.asarray(m).mean(axis=-1), chunk_metrics)
        if metric_log.active():  # the metrics are on the host: the chunk has finished
          metric_log.emit(metric_log.record(desc, end, metrics, end - first,
                                            time.perf_counter() - t0))
        if mngr is not None and (end == steps or checkpoint_every is None
                                 or end // checkpoint_every > (saved or 0) // checkpoint_every):
          with deferred_interrupts():  # Ctrl-C waits for the save to start cleanly
            checkpoint.save(mngr, end, state, metrics, record)
            saved = end
        bar.update(end - first)
        bar.set_postfix(loss=f"{np.mean(metrics['loss']):.4f}")
        first = end
  except Interrupted:
    raise
  except KeyboardInterrupt:  # Ctrl-C: say where, and what a rerun resumes from
    done = max(first, saved or 0)  # a chunk just saved is done, though first lags
    raise Interrupted(f'{desc} at step {done}/{steps}', _on_disk(mngr, saved)) from None
  finally:
    if mngr is not None:
      with deferred_interrupts():  # the last save completes before Ctrl-C lands
        mngr.wait_until_finished()
        mngr.close()
  return sharding.host_readable(state), metrics


def _on_disk(mngr, saved: int | None) -> str:
  if mngr is None:
    return 'no checkpoint of this fit (no checkpoint_dir)'
  if saved is None:
    return f'no checkpoint of it yet in {mngr.directory}'
  return f'its last checkpoint, step {saved}, is kept in {mngr.directory}'


def _kept(mngr, saved: int | None) -> str:
  if mngr is None:
    return 'No checkpoint kept (no checkpoint_dir).'
  if saved is None:
    return f'No checkpoint was saved yet in {mngr.directory}.'
  return (f'Last good checkpoint: step {saved} in {mngr.directory}; rerunning with the same '
          'workdir resumes from it.')
