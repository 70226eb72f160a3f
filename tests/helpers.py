"""Test helpers: run launch.py in a subprocess; count compiles. (The tests' tiny configs:
``:tiny`` in configs/*.py.)"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



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
