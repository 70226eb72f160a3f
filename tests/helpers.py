"""Test helpers: run launch.py in a subprocess; a tiny sparse-coding config; count compiles."""
import os
import subprocess
import sys

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




def count_compiles(fn, *args, **kwargs):
  """(fn(*args, **kwargs), names of the XLA programs compiled during the call).

  Counts jax's backend-compile events (``robustjax.timing.compiled_programs``):
  one per program jax could not find in its in-memory caches, whether XLA
  builds it or reads it from the persistent compilation cache. Eager
  jax.numpy operations count too (one small program per new op and shape).
  """
  from robustjax import timing
  with timing.compiled_programs() as names:
    out = fn(*args, **kwargs)
  return out, list(names)
