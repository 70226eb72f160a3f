"""Seconds per stage of a run, split into compile and run (results.json 'timings').

jax reports each compile's parts through ``jax.monitoring`` duration events
(jax 0.10.2, ``jax/_src/dispatch.py``): tracing a top-level jit to a jaxpr,
lowering it to MLIR, and the XLA compile, which includes reading the
executable back from the persistent compilation cache on a hit. The three
never overlap (tracing is reported only for a top-level trace), so their sum
is the time a stage spent compiling; the rest of its wall time is running.
The XLA compile events also name their program: ``compiled_programs`` lists
them (the compile counter of tests and benchmarks).
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

BACKEND_COMPILE_EVENT = COMPILE_EVENTS[2]   # once per XLA program compiled (or read from cache)

_lock = threading.Lock()
_open: list[list[float]] = []  # one accumulator per open ``compile_seconds`` block
_programs: list[list[str]] = []  # one name list per open ``compiled_programs`` block
_listening = False


def _on_duration(event: str, duration: float, fun_name: str = '?', **_) -> None:
  if event in COMPILE_EVENTS:
    with _lock:
      for acc in _open:
        acc[0] += duration
      if event == BACKEND_COMPILE_EVENT:
        for names in _programs:
          names.append(fun_name)


def _listen() -> None:
  global _listening
  if not _listening:  # one listener for the process, registered on first use
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True


@contextlib.contextmanager
def compile_seconds():
  """Yields a one-element list that holds, once the block ends, the seconds jax
  spent compiling inside it (all threads; nested blocks each count their own)."""
  acc = [0.0]
  with _lock:
    _listen()
    _open.append(acc)
  try:
    yield acc
  finally:
    with _lock:  # by identity: list.remove compares values, and nested blocks may hold equal ones
      _open[:] = [a for a in _open if a is not acc]


@contextlib.contextmanager
def compiled_programs():
  """Yields a list that collects the name of every XLA program compiled inside
  the block (all threads), one entry per compile.

  jax reports each backend compile once, whether XLA builds the executable or
  reads it from the persistent compilation cache, so the count does not
  depend on that cache: it counts the programs the block could not find in
  jax's in-memory caches. Eager jax.numpy calls compile one small program
  per new operation and shape, and count too.
  """
  names: list[str] = []
  with _lock:
    _listen()
    _programs.append(names)
  try:
    yield names
  finally:
    with _lock:  # by identity, as compile_seconds
      _programs[:] = [n for n in _programs if n is not names]


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
