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


def _get(cfg, field: str):
  node = cfg
  for part in field.split('.'):
    if part not in node:
      raise ConfigError(field, 'present in the config', 'missing')
    node = node[part]
  return node


def one_of(cfg, field: str, allowed: Iterable[str]):
  allowed = tuple(allowed)
  if _get(cfg, field) not in allowed:
    raise ConfigError(field, f"one of {', '.join(map(repr, allowed))}", _get(cfg, field))


def subset_of(cfg, field: str, allowed: Iterable[str], nonempty: bool = True):
  allowed, value = tuple(allowed), _get(cfg, field)
  if isinstance(value, str) or any(v not in allowed for v in value) or (
      nonempty and not value):
    raise ConfigError(field, f"a {'non-empty ' if nonempty else ''}list from "
                      f"{', '.join(map(repr, allowed))}", value)


def positive_int(cfg, *fields: str):
  for field in fields:
    v = _get(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(field, 'an integer >= 1', v)


def boolean(cfg, *fields: str):
  for field in fields:
    if not isinstance(_get(cfg, field), bool):
      raise ConfigError(field, 'True or False', _get(cfg, field))


def number(cfg, field: str, *, low: float | None = None, high: float | None = None,
           strict_low: bool = False):
  v = _get(cfg, field)
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
  v = _get(cfg, field)
  if isinstance(v, str) or not all(isinstance(e, (int, float)) and math.isfinite(e) and e >= 0
                                   for e in v):
    raise ConfigError(field, 'a list of finite numbers >= 0', v)


def workdir(path: str):
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError('workdir', 'a directory (or a path that does not exist yet)', path)
