"""Config checks that run before any work: one clear line per mistake.

``validate`` raises ``ConfigError('field: what is allowed, got X')``; launch.py
prints that line and exits with status 2 before touching the workdir.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable


class ConfigError(ValueError):
  """A config field holds a value the run cannot use."""

  def __init__(self, field: str, allowed: str, got: Any):
    super().__init__(f'config.{field}: must be {allowed}, got {got!r}')


class Renamed(ConfigError):
  """A config names a field, or a value of it, by a name it no longer has (one
  name per concept across the experiments): ``field``'s ``old`` value is now
  ``new``, or, with ``old=None``, the field itself is now ``config.<new>``."""

  def __init__(self, field: str, new: str, why: str, old: str | None = None):
    what = f'{old!r} is now called {new!r}' if old is not None else (
        f'renamed config.{new}')
    ValueError.__init__(self, f'config.{field}: {what} ({why})')


# Fields an experiment renamed: (experiment, old dotted field) -> (new field, why).
# launch.py names the new field for an override of the old one; the
# experiment's validate refuses a config file that still has it.
RENAMED_FIELDS = {
    ('spectral', 'eval.attacks'): (
        'eval.distance_attacks', "minimal-distance methods; the image experiments' "
        'eval.attacks are fixed-radius attacks'),
}


def renamed_field(experiment: str | None, field: str) -> Renamed | None:
  """The ``Renamed`` error for ``field`` when ``experiment`` renamed it, else None."""
  hit = RENAMED_FIELDS.get((experiment, field))
  return None if hit is None else Renamed(field, *hit)


def no_renamed_fields(cfg, experiment: str) -> None:
  """Raises ``Renamed`` for the first old field name ``cfg`` still holds."""
  for exp, field in RENAMED_FIELDS:
    *blocks, leaf = field.split('.')
    node = cfg if exp == experiment else None
    for b in blocks:
      node = node.get(b) if hasattr(node, 'keys') else None
    if hasattr(node, 'keys') and leaf in node:
      raise renamed_field(exp, field)


def value(cfg, field: str):
  """``cfg``'s value at the dotted ``field``; ConfigError when it is missing."""
  node = cfg
  for part in field.split('.'):
    if part not in node:
      raise ConfigError(field, 'present in the config', 'missing')
    node = node[part]
  return node


def one_of(cfg, field: str, allowed: Iterable[str]):
  allowed = tuple(allowed)
  if value(cfg, field) not in allowed:
    raise ConfigError(field, f"one of {', '.join(map(repr, allowed))}", value(cfg, field))


def subset_of(cfg, field: str, allowed: Iterable[str], nonempty: bool = True):
  allowed, got = tuple(allowed), value(cfg, field)
  if isinstance(got, str) or any(v not in allowed for v in got) or (
      nonempty and not got):
    raise ConfigError(field, f"a {'non-empty ' if nonempty else ''}list from "
                      f"{', '.join(map(repr, allowed))}", got)


def positive_int(cfg, *fields: str):
  for field in fields:
    v = value(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(field, 'an integer >= 1', v)


def boolean(cfg, *fields: str):
  for field in fields:
    if not isinstance(value(cfg, field), bool):
      raise ConfigError(field, 'True or False', value(cfg, field))


def number(cfg, field: str, *, low: float | None = None, high: float | None = None,
           strict_low: bool = False):
  v = value(cfg, field)
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise ConfigError(field, 'a number', v)
  if not math.isfinite(v):  # nan passes every comparison below
    raise ConfigError(field, 'a finite number' + (f" {'>' if strict_low else '>='} {low}"
                                                  if low is not None else ''), v)
  if low is not None and (v < low or (strict_low and v == low)):
    raise ConfigError(field, f"{'>' if strict_low else '>='} {low}"
                      + (f' and <= {high}' if high is not None else ''), v)
  if high is not None and v > high:
    raise ConfigError(field, f'<= {high}', v)


def nonnegative_list(cfg, field: str):
  v = value(cfg, field)
  if isinstance(v, str) or not all(isinstance(e, (int, float)) and math.isfinite(e) and e >= 0
                                   for e in v):
    raise ConfigError(field, 'a list of finite numbers >= 0', v)


class FlagError(ConfigError):
  """A command-line flag (not a config field) the run cannot use: one line
  '--flag: must be ALLOWED, got VALUE'."""

  def __init__(self, flag: str, allowed: str, got: Any):
    ValueError.__init__(self, f'--{flag}: must be {allowed}, got {got!r}')


def workdir(path: str):
  """Refuses (FlagError) a --workdir that exists and is not a directory."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise FlagError('workdir', 'a directory (or a path that does not exist yet)', path)
