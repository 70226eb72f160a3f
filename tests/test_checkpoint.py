"""loop.fit checkpoints: resume equals an uninterrupted run, finished fits
return at once, the NaN guard keeps the last good checkpoint, and a resume
after it."""
import os
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import spectral
from robustjax.train import loop, state as state_lib
from robustjax.train.steps import train_steps

KEY = jax.random.PRNGKey(0)


def quad_loss(params, key, aux):
  """A noisy quadratic: every step's batch comes from its key."""
  x = jax.random.normal(key, (16, 3))
  return jnp.mean((x @ (params['w'] - aux['target'])) ** 2), {'norm': jnp.linalg.norm(params['w'])}


def blowup_loss(params, key, aux):
  """Finite until ||w|| passes aux['limit'], then NaN (as a diverging run's loss)."""
  loss, metrics = quad_loss(params, key, aux)
  return jnp.where(jnp.linalg.norm(params['w']) > aux['limit'], jnp.nan, loss), metrics


def never_traced(params, key, aux):
  raise AssertionError('a finished fit must not train again')


def new_state(lr=0.05, batched=False):
  st = state_lib.create({'w': jnp.zeros((3,))}, optax.adam(lr))
  return jax.tree.map(lambda x: jnp.stack([x, x]), st) if batched else st


AUX = {'target': jnp.array([2.0, -1.0, 1.0]), 'limit': jnp.float32(1e9)}


def steps_saved(path):
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


@pytest.mark.parametrize('batched', [False, True])
def test_resumed_run_equals_uninterrupted(tmp_path, batched, capsys):
  key = jax.random.split(KEY, 2) if batched else KEY
  aux = jax.tree.map(lambda a: jnp.stack([a, a + 1]), AUX) if batched else AUX
  kw = dict(chunk_size=4, batched=batched, progress=False)
  ref, ref_m = loop.fit(new_state(batched=batched), aux, key, quad_loss, steps=14, **kw)
  ckpt = str(tmp_path / 'fit')
  # "Killed" after 9 steps: checkpoints at chunk ends 4 (>= every 3), 8 and the end 9.
  loop.fit(new_state(batched=batched), aux, key, quad_loss, steps=9, checkpoint_dir=ckpt,
           checkpoint_every=3, **kw)
  assert steps_saved(ckpt) == [8, 9]  # the last two kept
  out, m = loop.fit(new_state(batched=batched), aux, key, quad_loss, steps=14,
                    checkpoint_dir=ckpt, checkpoint_every=3, **kw)
  assert 'resuming from step 9/14' in capsys.readouterr().out
  chex.assert_trees_all_equal(out.params, ref.params)
  chex.assert_trees_all_equal(out.opt_state, ref.opt_state)
  chex.assert_trees_all_equal(m, ref_m)
  assert int(np.max(out.step)) == 14
  assert steps_saved(ckpt) == [12, 14]


def test_finished_fit_returns_saved_state_without_training(tmp_path):
  ckpt = str(tmp_path / 'fit')
  done, m = loop.fit(new_state(), AUX, KEY, quad_loss, steps=6, chunk_size=4, progress=False,
                     checkpoint_dir=ckpt)
  again, m2 = loop.fit(new_state(), AUX, KEY, never_traced, steps=6, chunk_size=4,
                       progress=False, checkpoint_dir=ckpt)
  chex.assert_trees_all_equal(again.params, done.params)
  chex.assert_trees_all_close(m2, m)


def test_checkpoint_of_another_run_is_refused(tmp_path):
  ckpt = str(tmp_path / 'fit')
  loop.fit(new_state(), AUX, KEY, quad_loss, steps=4, chunk_size=4, progress=False,
           checkpoint_dir=ckpt)
  with pytest.raises(ValueError, match='another PRNG key'):
    loop.fit(new_state(), AUX, jax.random.PRNGKey(1), quad_loss, steps=4, chunk_size=4,
             progress=False, checkpoint_dir=ckpt)
  with pytest.raises(ValueError, match='past this run'):
    loop.fit(new_state(), AUX, KEY, quad_loss, steps=2, chunk_size=4, progress=False,
             checkpoint_dir=ckpt)


def test_checkpoint_of_another_job_fingerprint_is_refused(tmp_path):
  # The case: the same directory, key and steps, another loss (here
  # another radius): without a fingerprint the old parameters came back.
  ckpt = str(tmp_path / 'fit')
  kw = dict(steps=4, chunk_size=4, progress=False, checkpoint_dir=ckpt)
  done, _ = loop.fit(new_state(), AUX, KEY, quad_loss, fingerprint={'attack.eps': 0.4}, **kw)
  with pytest.raises(ValueError, match=r'another job \(fingerprint differs: attack.eps\)'):
    loop.fit(new_state(), AUX, KEY, never_traced, fingerprint={'attack.eps': 0.1}, **kw)
  with pytest.raises(ValueError, match='fingerprint differs'):  # none given: not the same job
    loop.fit(new_state(), AUX, KEY, never_traced, **kw)
  again, _ = loop.fit(new_state(), AUX, KEY, never_traced, fingerprint={'attack.eps': 0.4}, **kw)
  chex.assert_trees_all_equal(again.params, done.params)


@pytest.mark.parametrize('item', ['state', 'run'])
def test_newest_step_missing_an_item_is_skipped_and_the_older_one_resumed(tmp_path, capsys, item):
  # Was a bare orbax KeyError ('Item "state" was not found in the checkpoint').
  ckpt = str(tmp_path / 'fit')
  kw = dict(chunk_size=4, progress=False)
  ref, ref_m = loop.fit(new_state(), AUX, KEY, quad_loss, steps=12, **kw)
  loop.fit(new_state(), AUX, KEY, quad_loss, steps=8, checkpoint_dir=ckpt, **kw)
  assert steps_saved(ckpt) == [4, 8]
  shutil.rmtree(os.path.join(ckpt, '8', item))
  capsys.readouterr()
  out, m = loop.fit(new_state(), AUX, KEY, quad_loss, steps=12, checkpoint_dir=ckpt, **kw)
  printed = capsys.readouterr().out
  assert f"skipping and deleting incomplete step 8 in {ckpt}: item(s) ['{item}'] missing" in printed
  assert 'resuming from step 4/12' in printed
  chex.assert_trees_all_equal(out.params, ref.params)
  chex.assert_trees_all_equal(m, ref_m)
  assert steps_saved(ckpt) == [8, 12]


def test_folder_that_is_not_a_checkpoint_is_refused_and_kept(tmp_path):
  # Was a bare orbax KeyError ('Item "run" was not found'); resuming past it would
  # let orbax's pruning of old steps delete the user's folder.
  ckpt = str(tmp_path / 'fit')
  loop.fit(new_state(), AUX, KEY, quad_loss, steps=8, chunk_size=4, progress=False,
           checkpoint_dir=ckpt)
  os.makedirs(os.path.join(ckpt, '3'))
  with open(os.path.join(ckpt, '3', 'notes.txt'), 'w') as f:
    f.write('not a checkpoint')
  with pytest.raises(ValueError, match=rf'^{ckpt} holds folder\(s\) \[3\] named like checkpoint '
                     'steps that are not checkpoints'):
    loop.fit(new_state(), AUX, KEY, quad_loss, steps=12, chunk_size=4, progress=False,
             checkpoint_dir=ckpt)
  assert steps_saved(ckpt) == [3, 4, 8]
  assert os.listdir(os.path.join(ckpt, '3')) == ['notes.txt']


def test_callers_state_survives_donation():
  st = new_state()
  loop.fit(st, AUX, KEY, quad_loss, steps=4, chunk_size=2, progress=False)
  chex.assert_trees_all_equal(st.params['w'], jnp.zeros((3,)))  # still readable, unchanged


def test_nan_guard_keeps_last_good_checkpoint_then_resumes(tmp_path, capsys):
  """lr 0.1 drives ||w|| towards ||target|| = 2.45, past 1.5 within 16 steps:
  that chunk is not saved, the error names the last good step, and a rerun
  with a larger limit resumes there and ends where a run that never hit the
  limit ends."""
  ckpt = str(tmp_path / 'fit')
  aux = dict(AUX, limit=jnp.float32(1.5))
  kw = dict(chunk_size=4, progress=False, checkpoint_every=4)
  ref, _ = loop.fit(new_state(lr=0.1), AUX, KEY, blowup_loss, steps=16, **kw)
  # Step t's loss sees the params before its update: the first bad step.
  _, per_step = train_steps(new_state(lr=0.1), KEY, AUX, 0, 16, blowup_loss)
  first_bad = int(np.argmax(np.asarray(per_step['norm']) > 1.5))
  last_good = (first_bad // 4) * 4
  assert 0 < last_good < 16

  with pytest.raises(loop.DivergedError, match=f'not finite.*Last good checkpoint: step '
                     f'{last_good} in .*fit'):
    loop.fit(new_state(lr=0.1), aux, KEY, blowup_loss, steps=16, checkpoint_dir=ckpt, **kw)
  assert max(steps_saved(ckpt)) == last_good
  capsys.readouterr()
  out, m = loop.fit(new_state(lr=0.1), AUX, KEY, blowup_loss, steps=16, checkpoint_dir=ckpt,
                    **kw)
  assert f'resuming from step {last_good}/16' in capsys.readouterr().out
  chex.assert_trees_all_equal(out.params, ref.params)
  assert np.isfinite(m['loss'])


def test_nan_guard_without_checkpoints_says_so():
  aux = dict(AUX, limit=jnp.float32(-1.0))  # NaN from the first step
  with pytest.raises(loop.DivergedError, match='No checkpoint kept'):
    loop.fit(new_state(), aux, KEY, blowup_loss, steps=4, chunk_size=2, progress=False)


@pytest.mark.parametrize('batched', [False, True])
def test_one_call_per_step_equals_the_fused_scan(batched):
  """fused_steps=False (conv nets on a CPU) takes the same steps with the same keys."""
  key = jax.random.split(KEY, 2) if batched else KEY
  kw = dict(steps=7, chunk_size=3, batched=batched, progress=False)
  fused, fm = loop.fit(new_state(batched=batched), AUX, key, quad_loss, shared_aux=True, **kw)
  single, sm = loop.fit(new_state(batched=batched), AUX, key, quad_loss, shared_aux=True,
                        fused_steps=False, **kw)
  chex.assert_trees_all_close(single.params, fused.params, rtol=1e-6)
  chex.assert_trees_all_close(sm, fm, rtol=1e-6)
  assert int(np.asarray(single.step).ravel()[0]) == 7


# --- the guard names the source of a non-finite step --------------------------

def probe_loss(params, key, aux):
  """-4c (so SGD at lr 0.25 makes c = t at step t) plus, from step aux['at']
  on, a NaN injected in the source aux['src'] names; the kernel is only seen
  by the spectral penalty."""
  c = params['c']
  on = (jax.lax.stop_gradient(c) > aux['at'] - 0.5)
  loss = -4.0 * c + jnp.where(on & (aux['src'] == 0), jnp.nan, 0.0)
  # sqrt at 0: a finite value with a NaN gradient (as where(x > 0, sqrt(x), 0)).
  loss = loss + jnp.sqrt(jnp.where(on & (aux['src'] == 1), 0.0, 1.0) + 0.0 * c)
  return loss, {}


SOURCES = {'loss': r'the loss is not finite \(the run diverged: lower the learning rate',
           'grads': 'the task gradient is not finite although the loss is',
           'penalty': r'the spectral penalty \(sigma_max\^2 or its gradient\) is not finite',
           'params': 'the parameters are not finite after the optimizer update'}


def probe_state(src, at):
  """A zero kernel under ll (finite throughout, see test_spectral_regularizers),
  or, for the penalty, 1e20 I: sigma^2 = 1e40 overflows float32 once the
  penalty switches on at step ``at``; for the parameters, a learning rate
  that makes the update overflow from step ``at`` on."""
  kernel = 1e20 * jnp.eye(2) if src == 'penalty' else jnp.zeros((2, 2))
  params = {'c': jnp.zeros(()), 'layer': {'kernel': kernel}}
  spec = spectral.SpectralSpec(kind='ll', lam=1e-3, burn_in_steps=at if src == 'penalty' else 0)
  lr = (lambda t: jnp.where(t >= at, 3e38, 0.25)) if src == 'params' else 0.25
  tx = optax.chain(spectral.penalize(spec, spectral.layer_mask(params, 'll')), optax.sgd(lr))
  return state_lib.create(params, tx)


@pytest.mark.parametrize('src', list(SOURCES))
def test_nan_guard_names_the_source_and_keeps_the_last_good_checkpoint(tmp_path, src):
  ckpt = str(tmp_path / 'fit')
  aux = {'at': jnp.float32(2), 'src': jnp.int32(list(SOURCES).index(src))}
  with pytest.raises(loop.DivergedError) as err:
    loop.fit(probe_state(src, 2), aux, KEY, probe_loss, steps=6, chunk_size=2, progress=False,
             checkpoint_dir=ckpt)
  msg = str(err.value)
  assert re.search(SOURCES[src] + r'.* at step 2 \(counting from 0\)\. Last good checkpoint: '
                   r'step 2 in .*fit', msg), msg
  assert ('learning rate' in msg) == (src == 'loss'), msg
  assert max(steps_saved(ckpt)) == 2


def test_nan_guard_names_the_run_of_a_batched_fit():
  aux = {'at': jnp.array([9.0, 3.0]), 'src': jnp.array([1, 1], jnp.int32)}
  st = jax.tree.map(lambda x: jnp.stack([x, x]), probe_state('grads', 3))
  with pytest.raises(loop.DivergedError, match=SOURCES['grads'] + r'.* at step 3 \(counting '
                     r'from 0, run\(s\) \[1\]\)\. No checkpoint kept'):
    loop.fit(st, aux, jax.random.split(KEY, 2), probe_loss, steps=6, chunk_size=2, batched=True,
             progress=False)
