"""Seconds per stage of a run, split into compile and run (results.json 'timings').

jax reports each compile's parts through ``jax.monitoring`` duration events
(jax 0.10.2, ``jax/_src/dispatch.py``): tracing a top-level jit to a jaxpr,
lowering it to MLIR, and the XLA compile, which includes reading the
executable back from the persistent compilation cache on a hit. The three
never overlap (tracing is reported only for a top-level trace), so their sum
is the time a stage spent compiling; the rest of its wall time is running.
Each stage also records the process's CPU seconds (all threads): on a machine
shared with other work the wall time stretches while the CPU time stays near
what the stage costs, and on idle cores the stage takes between cpu / cores
and cpu seconds.
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
_open: list[list[float]] = []  # one accumulator per open ``compile_seconds`` block
_listening = False


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    with _lock:
      for acc in _open:
        acc[0] += duration


@contextlib.contextmanager
def compile_seconds():
  """Yields a one-element list that holds, once the block ends, the seconds jax
  spent compiling inside it (all threads; nested blocks each count their own)."""
  global _listening
  acc = [0.0]
  with _lock:
    if not _listening:  # one listener for the process, registered on first use
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      _listening = True
    _open.append(acc)
  try:
    yield acc
  finally:
    with _lock:
      _open.remove(acc)


def record(wall: float, compile_s: float, cpu: float | None = None) -> dict:
  """{'wall', 'compile', 'run'} in seconds, rounded to 10 ms; run = wall - compile;
  with ``cpu`` also {'cpu'}: process CPU seconds over the same interval."""
  out = {'wall': round(wall, 2), 'compile': round(compile_s, 2),
         'run': round(max(wall - compile_s, 0.0), 2)}
  if cpu is not None:
    out['cpu'] = round(cpu, 2)
  return out


@contextlib.contextmanager
def stage(timings: dict, name: str):
  """Times the block into ``timings[name]`` (``record``, CPU seconds included). jax dispatches
  asynchronously: block on the block's results inside it
  (``jax.block_until_ready``) or their run time lands in a later stage."""
  t0, cpu0 = time.perf_counter(), time.process_time()
  with compile_seconds() as c:
    yield
  timings[name] = record(time.perf_counter() - t0, c[0], time.process_time() - cpu0)
