"""Shared fixtures, and one XLA compilation cache for the whole test session.

Many tests compile the same programs (the tiny pipeline, its variants, the
stage hand-off; subprocesses included): a persistent cache in a session
temporary directory compiles each once (shared by pytest-xdist's workers).
Set JAX_COMPILATION_CACHE_DIR to keep your own. launch.py, which the tests run
in subprocesses, reads the same variable before its per-user default, so no
test writes to ~/.cache/robustjax (test_launch checks both).
"""
import os
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # pytest-xdist workers of one run share a cache (the run id is common to them).
  run = os.environ.get('PYTEST_XDIST_TESTRUNUID')
  cache = (os.path.join(tempfile.gettempdir(), f'robustjax-xla-cache-{run}') if run
           else tempfile.mkdtemp(prefix='robustjax-xla-cache-'))
  os.makedirs(cache, exist_ok=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402


@pytest.fixture
def tiny_sparse_coding_config():
  """configs/sparse_coding.py:tiny, in-process."""
  from configs import sparse_coding
  return sparse_coding.get_config('tiny')
