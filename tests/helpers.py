"""Test helpers: run launch.py in a subprocess; a tiny sparse-coding config; count compiles."""
import contextlib
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--config.num_seeds=2', '--config.chunk_size=10', '--config.progress=False',
        '--config.data.d=8', '--config.data.D=8', '--config.data.k=2', '--config.model.width=16',
        '--config.pretrain.steps=20', '--config.pretrain.batch_size=32',
        '--config.attack.steps=2', '--config.downstream.num_tasks=2',
        '--config.downstream.steps=20', '--config.downstream.batch_size=32',
        '--config.eval.num_examples=64', '--config.eval.eps=(0.2,)',
        '--config.eval.attack_steps=3', '--config.contrastive.steps=20',
        '--config.contrastive.batch_size=32', '--config.contrastive.sweep_alphas=(0.0,1.0)']


def launch(*args, timeout=600):
  """Runs ``python launch.py ARGS`` from the repo root; returns the CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def count_compiles():
  """Yields a one-element list: the number of XLA programs compiled inside the
  block (jax's ``/jax/core/compile/backend_compile_duration`` events, one per
  program compiled or read back from the persistent cache; jax 0.10.2)."""
  n = [0]

  def on_duration(event, duration, **_):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      n[0] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  try:
    yield n
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
