"""Where ``loop.fit`` sends each chunk's metrics while it trains.

A caller that wants a record of training (the experiments' runner writes
``<workdir>/metrics.jsonl``) opens ``sink(fn)`` around its fits; every chunk
of every fit inside then calls ``fn(record)`` with one JSON-able dict. With
no sink open nothing is recorded, so the recipes and the library stay free
of file handling. Sinks nest: the innermost receives.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np

_sinks: list[Callable[[dict], None]] = []


@contextlib.contextmanager
def sink(fn: Callable[[dict], None]):
  """Sends the records of the fits inside the block to ``fn`` (see ``record``)."""
  _sinks.append(fn)
  try:
    yield fn
  finally:
    _sinks.remove(fn)


def active() -> bool:
  """Whether a sink is open (``loop.fit`` skips building records otherwise)."""
  return bool(_sinks)


def _number(v: float) -> float | None:
  return float(v) if math.isfinite(v) else None  # JSON has no NaN / inf


def _flat(tree, prefix: str = '') -> dict:
  """Nested dicts of metrics -> {'a/b': leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def record(desc: str, step: int, metrics: dict, steps: int, seconds: float) -> dict:
  """One chunk's line: ``{'fit': desc, 'step': last step done + 1, name: mean,
  name + '_per_run': [...] (batched fits), 'steps_per_s': ...}``.

  ``metrics``: name (nested dicts as 'a/b') -> the chunk's mean per run, shape () or (runs,) (what
  ``loop.fit`` returns); non-finite values become None. ``steps_per_s``
  counts the chunk's steps over its wall time (of every run together; a
  fit's first chunk includes its compile, so it reads lower).
  """
  out = {'fit': desc, 'step': int(step)}
  for name, v in _flat(metrics).items():
    a = np.asarray(v, np.float64)
    out[name] = _number(float(a.mean()))
    if a.ndim:
      out[f'{name}_per_run'] = [_number(x) for x in a.reshape(-1)]
  out['steps_per_s'] = round(steps / seconds, 3) if seconds > 0 else None
  return out


def emit(record_: dict) -> None:
  """Hands ``record_`` to the innermost open sink (none open: dropped)."""
  if _sinks:
    _sinks[-1](record_)
