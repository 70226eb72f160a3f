"""Test helpers: run launch.py in a subprocess; count compiles; compare a run's numbers
to golden ones. (The tests' tiny configs: ``:tiny`` in configs/*.py.)"""
import os
import subprocess
import sys

import numpy as np

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


def assert_same_numbers(got, want, path: str = 'results', rtol: float = 1e-6):
  """``got`` has ``want``'s structure (dict keys in order, list lengths) and every
  number within ``rtol`` of it (atol 0; bools and strings equal): the check of a
  run's results.json against golden numbers recorded in tests/data."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
    for k in want:
      assert_same_numbers(got[k], want[k], f'{path}.{k}', rtol)
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), (path, got, want)
    for i, (g, w) in enumerate(zip(got, want)):
      assert_same_numbers(g, w, f'{path}[{i}]', rtol)
  elif isinstance(want, (int, float)) and not isinstance(want, bool):
    assert isinstance(got, (int, float)) and not isinstance(got, bool), (path, got, want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=path)
  else:
    assert got == want, (path, got, want)
