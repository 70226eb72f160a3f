"""SIGKILL a launch.py run in the middle of training, rerun the same command:
it resumes from its last checkpoint and ends with the uninterrupted results.
States with zero-size leaves (orbax refuses those) round-trip too."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax.numpy as jnp
import numpy as np

from robustjax.train import checkpoint
from tests.helpers import ROOT, launch

STEPS = 300
# Adversarial pre-training only (stage 'pretrain'): 10 chunks of 30 steps, a
# checkpoint after each; the run is killed as soon as the first one is on disk.
ARGS = ['--config=configs/sparse_coding.py:supervised,tiny', '--config.stage=pretrain',
        "--config.pretrain.modes=('adversarial',)", f'--config.pretrain.steps={STEPS}',
        '--config.chunk_size=30', '--config.checkpoint_every=30']
CKPT = os.path.join('train_checkpoints', 'pretrain_adversarial')


def complete_steps(workdir):
  """Finished checkpoint steps of the pre-training fit (orbax renames a step's
  temporary directory to its number only once it is fully written)."""
  path = os.path.join(workdir, CKPT)
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def numbers(tree):
  """The results' numbers, flattened in a fixed order (timings excluded)."""
  if isinstance(tree, dict):
    return [x for k in sorted(tree) if k != 'timings' for x in numbers(tree[k])]
  if isinstance(tree, list):
    return [x for v in tree for x in numbers(v)]
  return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_sigkill_then_rerun_resumes_and_matches(tmp_path):
  ref_dir, dir_ = str(tmp_path / 'ref'), str(tmp_path / 'killed')
  env = dict(os.environ, PYTHONPATH=ROOT)
  start = lambda workdir, out: subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}', *ARGS],
      cwd=ROOT, env=env, stdout=out, stderr=out, text=True)
  # The uninterrupted reference runs alongside (each run is mostly one thread).
  ref = start(ref_dir, subprocess.PIPE)
  proc = start(dir_, subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not complete_steps(dir_) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the first checkpoint is on disk: kill mid-training
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  at_kill = complete_steps(dir_)
  assert at_kill and max(at_kill) < STEPS, at_kill  # killed before pre-training finished
  assert not os.path.exists(os.path.join(dir_, 'results.json'))

  again = launch(f'--workdir={dir_}', *ARGS)
  assert again.returncode == 0, again.stderr[-3000:]
  # Resumed (not restarted) from a checkpoint at or after the one seen at the kill.
  line = next(l for l in again.stdout.splitlines() if 'pre-train adversarial: resuming' in l)
  step = int(line.split('resuming from step ')[1].split('/')[0])
  assert max(at_kill) <= step < STEPS, line

  ref_out, ref_err = ref.communicate(timeout=600)
  assert ref.returncode == 0, ref_err[-3000:]
  assert 'resuming' not in ref_out
  want = json.loads(open(os.path.join(ref_dir, 'results.json')).read())
  got = json.loads(open(os.path.join(dir_, 'results.json')).read())
  want.pop('config'), got.pop('config')
  a, b = numbers(want), numbers(got)
  assert len(a) == len(b) > 50
  np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
  print(f'killed with checkpoints {at_kill} on disk; rerun: {line.strip()}; '
        f'{len(a)} numbers in results.json, max |diff| {np.max(np.abs(np.subtract(a, b)))}')


def test_zero_size_leaves_round_trip(tmp_path):
  # As the spectral penalty's optimizer state: placeholder (seeds, 0) vectors
  # beside real ones. orbax refuses zero-size arrays; they come back from the target.
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'vectors': {'bias': jnp.zeros((2, 0)),
                                                            'kernel': jnp.ones((2, 3))},
           'count': jnp.array([5, 5], jnp.int32), 'empty': jnp.zeros((0,), jnp.int32)}
  run = {'steps': 10, 'key': [0, 1]}
  mngr = checkpoint.manager(str(tmp_path / 'fit'))
  try:
    checkpoint.save(mngr, 7, state, {'loss': np.array([0.5, 0.25])}, run)
    mngr.wait_until_finished()
    like = {'w': jnp.zeros((2, 3)), 'vectors': {'bias': jnp.zeros((2, 0)),
                                                'kernel': jnp.zeros((2, 3))},
            'count': jnp.zeros((2,), jnp.int32), 'empty': jnp.zeros((0,), jnp.int32)}
    step, restored, metrics = checkpoint.restore_latest(mngr, like, run)
  finally:
    mngr.close()
  assert step == 7
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(restored, state)
  np.testing.assert_array_equal(metrics['loss'], [0.5, 0.25])
