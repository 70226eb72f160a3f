"""Shared timing for the benchmark scripts (run as `python benchmarks/<name>.py`)."""
import time

import jax


def timeit(fn, *args, repeats: int, cpu: bool = False):
  """Best wall time of ``repeats`` calls after one compile/warm-up call; with
  ``cpu``, (best wall, best process CPU time) in seconds. CPU time counts every
  thread, so wall < cpu shows the call ran on several cores, and on a shared
  machine it stays near what the call costs while the wall time stretches."""
  jax.block_until_ready(fn(*args))
  best, best_cpu = float('inf'), float('inf')
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
    best_cpu = min(best_cpu, time.process_time() - c0)
  return (best, best_cpu) if cpu else best
