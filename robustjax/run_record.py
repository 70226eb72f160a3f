"""What a workdir was run with: ``<workdir>/config.json``, and the refusal to
continue a different config there.

A run's training checkpoints live under ``<workdir>/checkpoints`` and a rerun
resumes them. Resuming is only right when the rerun computes the same jobs, so
launch.py records the config the first time and, on every rerun, compares the
fields that determine the computation (its *fingerprint*: every field except
``UNRECORDED``, which change only what is evaluated, shown or how often a
checkpoint is written). A difference refuses the run in one line naming the
first differing fields and the two ways out: a fresh ``--workdir``, or
``--config.resume=overwrite``, which deletes the old checkpoints and results
and starts afresh. A workdir with checkpoints but no record (written before
records existed) is refused the same way: nothing says which config made it.
"""
from __future__ import annotations

import json
import math
import os
import shutil

from robustjax import config_validation as cv

RECORD = 'config.json'
# Top-level fields that do not change what training computes: evaluation
# settings and the image configs' linear probe (fitted and evaluated anew from
# the trained checkpoints on every run), the
# display, this switch, how often checkpoints are written (a resume is
# bit-identical to an uninterrupted run), and which jobs run where each job is
# a fit of its own with its own checkpoints: sparse_coding's stages, the
# spectral kinds and lams, the image kinds (sparse_coding's modes are not: they
# train stacked in one fit).
UNRECORDED = ('eval', 'probe', 'probe_data', 'progress', 'resume', 'checkpoint_every', 'stage',
              'regularizer.kinds', 'sweep.lams', 'pretrain.kinds')
RESUME = ('check', 'overwrite')
CHECKPOINTS = ('checkpoints', 'train_checkpoints')  # the experiments' checkpoint folders
# What a run writes, and overwrite clears.
_MADE = CHECKPOINTS + ('results.json', 'metrics.jsonl', 'training_curves.png', RECORD)


def fingerprint(config: dict) -> dict:
  """The dotted leaves of ``config`` (a nested dict, e.g. ``cfg.to_dict()``)
  that determine the computation: ``{'a.b': value}``, ``UNRECORDED`` left out
  (top-level blocks or dotted fields), tuples as lists (as JSON stores them)."""
  out = {}

  def walk(node, prefix):
    for k in sorted(node):
      v = node[k]
      if prefix + k in UNRECORDED:
        continue
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      else:
        out[prefix + k] = _plain(json.loads(json.dumps(v, default=str)))
  walk(config, '')
  return out


def _plain(v):
  """Non-finite floats as text, so the record (JSON, no NaN / inf) compares equal."""
  if isinstance(v, float) and not math.isfinite(v):
    return repr(v)
  return [_plain(e) for e in v] if isinstance(v, list) else v


class ResumeError(cv.ConfigError):
  """The workdir holds a run of a different (or unknown) config."""

  def __init__(self, message: str):
    ValueError.__init__(self, message)


def _way_out(workdir: str) -> str:
  return (f'use a fresh --workdir, or --config.resume=overwrite to delete the old run in '
          f'{workdir} and start afresh')


def check(workdir: str, config: dict) -> None:
  """Raises ``ResumeError`` (one line) when ``workdir`` holds checkpoints of a
  run whose recorded fingerprint differs from ``config``'s, or checkpoints with
  no record; returns silently for a new or matching workdir. Reads only."""
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    if any(os.path.isdir(os.path.join(workdir, c)) for c in CHECKPOINTS):
      raise ResumeError(f'config.resume: {workdir} holds checkpoints but no {RECORD} saying '
                        f'which config made them; {_way_out(workdir)}')
    return
  try:
    with open(path) as f:
      old = json.load(f)['fingerprint']
  except (OSError, ValueError, KeyError, TypeError):
    raise ResumeError(f'config.resume: {path} is not a robustjax run record; '
                      f'{_way_out(workdir)}') from None
  new = fingerprint(config)
  differ = [k for k in sorted(set(old) | set(new)) if old.get(k, '<absent>') != new.get(k, '<absent>')]
  if differ:
    shown = '; '.join(f"config.{k} {new.get(k, '<absent>')!r} (recorded: {old.get(k, '<absent>')!r})"
                      for k in differ[:3])
    more = f' and {len(differ) - 3} more' if len(differ) > 3 else ''
    raise ResumeError(f'config.resume: {workdir} holds a run of another config: {shown}{more}; '
                      f'{_way_out(workdir)}')


def clear(workdir: str) -> None:
  """``--config.resume=overwrite``: deletes what an earlier run wrote that a
  rerun would read or mistake for its own: checkpoints, results.json and the
  plots it lists (a new run may draw fewer), metrics.jsonl, the record.
  Other files in ``workdir`` stay."""
  try:
    with open(os.path.join(workdir, 'results.json')) as f:
      plots = json.load(f).get('plots', [])
  except (OSError, ValueError, AttributeError):
    plots = []
  for name in [p for p in plots if isinstance(p, str) and os.path.basename(p) == p] + list(_MADE):
    p = os.path.join(workdir, name)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)


def write(workdir: str, config: dict, environment: dict) -> None:
  """Writes ``<workdir>/config.json``: the resolved config, its fingerprint and
  ``environment`` (library versions, devices, process count), atomically."""
  from robustjax import report  # matplotlib: only when a run writes its record
  report.write_json(os.path.join(workdir, RECORD),
                    {'config': config, 'fingerprint': fingerprint(config), **environment})
