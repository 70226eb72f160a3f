"""Shared timing for the benchmark scripts (run as `python benchmarks/<name>.py`)."""
import time

import jax


def timeit(fn, *args, repeats: int) -> float:
  """Best wall time of ``repeats`` calls after one compile/warm-up call."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best
