"""Seconds per stage of a run, split into compile and run (results.json 'timings').

jax reports each compile's parts through ``jax.monitoring`` duration events
(jax 0.10.2, ``jax/_src/dispatch.py``): tracing a top-level jit to a jaxpr,
lowering it to MLIR, and the XLA compile, which includes reading the
executable back from the persistent compilation cache on a hit. The three
never overlap (tracing is reported only for a top-level trace), so their sum
is the time a stage spent compiling; the rest of its wall time is running.
jax compiles in the thread that calls the program, so a block counts the
compiles of its own thread (stages that run side by side on two threads,
``robustjax.lanes``, each count theirs), or of every thread with
``all_threads=True`` (a run's total).
"""
from __future__ import annotations

import contextlib
import threading
import time

import jax

COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')

_lock = threading.Lock()
# One (accumulator, thread id or None for all threads) per open block.
_open: list[tuple[list[float], int | None]] = []
_listening = False


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    me = threading.get_ident()
    with _lock:
      for acc, thread in _open:
        if thread is None or thread == me:
          acc[0] += duration


@contextlib.contextmanager
def compile_seconds(all_threads: bool = False):
  """Yields a one-element list that holds, once the block ends, the seconds jax
  spent compiling inside it: in this thread, or in every thread with
  ``all_threads`` (nested blocks each count their own)."""
  global _listening
  entry = ([0.0], None if all_threads else threading.get_ident())
  with _lock:
    if not _listening:  # one listener for the process, registered on first use
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      _listening = True
    _open.append(entry)
  try:
    yield entry[0]
  finally:
    with _lock:
      _open.remove(entry)


def record(wall: float, compile_s: float) -> dict:
  """{'wall', 'compile', 'run'} in seconds, rounded to 10 ms; run = wall - compile."""
  return {'wall': round(wall, 2), 'compile': round(compile_s, 2),
          'run': round(max(wall - compile_s, 0.0), 2)}


@contextlib.contextmanager
def stage(timings: dict, name: str, all_threads: bool = False):
  """Times the block into ``timings[name]`` (``record``), counting the compiles
  of this thread (of every thread with ``all_threads``). jax dispatches
  asynchronously: block on the block's results inside it
  (``jax.block_until_ready``) or their run time lands in a later stage."""
  t0 = time.perf_counter()
  with compile_seconds(all_threads) as c:
    yield
  timings[name] = record(time.perf_counter() - t0, c[0])
