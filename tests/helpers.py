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


def machine() -> dict:
  """What decides XLA:CPU's floats beside the code: the CPU model and its vector
  extensions (the kernels XLA emits), the core count (thread pools split
  reductions) and jax's version."""
  import jax  # pylint: disable=import-outside-toplevel
  model, isa = '', []
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and not model:
          model = value.strip()
        elif key.strip() == 'flags' and not isa:
          isa = sorted(v for v in value.split() if v.startswith(('avx', 'fma', 'sse4', 'amx')))
  except OSError:
    pass
  return {'cpu': model, 'isa': isa, 'cpu_count': os.cpu_count(), 'jax': jax.__version__}


# Golden numbers (tests/data) are bit-for-bit only on the machine that recorded
# them; elsewhere float reductions run in another order and a short training
# run amplifies it, so they are compared loosely there (summary numbers within
# these tolerances; per-point distances, claim verdicts and printed tables not
# compared).
GOLDEN_EXACT = dict(rtol=1e-6, atol=0.0)
GOLDEN_LOOSE = dict(rtol=0.05, atol=0.03)


def golden_exact(golden: dict) -> bool:
  """Whether ``golden`` (a tests/data fixture) was recorded on this machine."""
  return golden.get('machine') == machine()


def assert_same_numbers(got, want, path: str = 'results', rtol: float = 1e-6, atol: float = 0.0,
                        exact: bool = True):
  """``got`` has ``want``'s structure (dict keys in order, list lengths) and every
  number within ``rtol`` / ``atol`` of it; strings equal, and bools too when
  ``exact``: the check of a run's results.json against golden numbers."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
    for k in want:
      assert_same_numbers(got[k], want[k], f'{path}.{k}', rtol, atol, exact)
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), (path, got, want)
    for i, (g, w) in enumerate(zip(got, want)):
      assert_same_numbers(g, w, f'{path}[{i}]', rtol, atol, exact)
  elif isinstance(want, bool):
    assert isinstance(got, bool) and (got == want or not exact), (path, got, want)
  elif isinstance(want, (int, float)):
    assert isinstance(got, (int, float)) and not isinstance(got, bool), (path, got, want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=path)
  else:
    assert got == want, (path, got, want)
