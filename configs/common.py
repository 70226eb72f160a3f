"""What every config file shares: its argument, its tiny test size, its common blocks.

A config's ``get_config(arg)`` takes the one string after the colon of
``--config=FILE:ARG`` (big_vision's convention, configs/common.py there):
comma-separated ``key=value`` pairs parsed by ``parse_arg``::

    --config=configs/mnist_spectral.py:variant=digits,tiny=True
    --config=configs/mnist_spectral.py:digits,tiny     # the same
    --config=configs/mnist_spectral.py:digits          # the old variant syntax

``tiny`` shrinks an offline variant to the size the tests run (seconds on a
CPU); each config file lists its tiny fields in a ``TINY`` dict.

The shared blocks (``optimizer`` fields, ``attack``, ``mesh``) are built here
once; ``robustjax.config_blocks`` holds their one validator each, which every
experiment's ``validate`` calls.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections


class ArgError(ValueError):
  """A ``--config=FILE:ARG`` argument a config cannot use (one line: the key and what is allowed)."""


_TRUE, _FALSE = ('true', '1', 'yes'), ('false', '0', 'no')


def _convert(key: str, text: str, default: Any, choices: tuple | None):
  """``text`` as the type of ``default`` (or one of ``choices``); ArgError naming ``key``."""
  if choices is not None:
    if text not in choices:
      raise ArgError(f"config argument {key}: must be one of {', '.join(choices)}, got {text!r}")
    return text
  if isinstance(default, bool):
    if text.lower() in _TRUE or text.lower() in _FALSE:
      return text.lower() in _TRUE
    raise ArgError(f'config argument {key}: must be True or False, got {text!r}')
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ArgError(f'config argument {key}: must be an integer, got {text!r}') from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ArgError(f'config argument {key}: must be a number, got {text!r}') from None
  return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """The ``key=value`` pairs of a config argument, typed like their defaults.

  Each keyword names an allowed key and gives its default: a bool, int, float
  or str value takes a value of that type (bools: True/False, true/false,
  1/0, yes/no); a tuple of strings is a choice, its first entry the default.
  In ``arg``, pairs are separated by commas; a bare token (no ``=``) is
  ``KEY=True`` when KEY is a bool key, and otherwise, first in ``arg`` only,
  the value of the first key (so ``:digits`` still means ``variant=digits``).

  Args:
    arg: the text after the colon of ``--config=FILE:ARG``; None or '' gives
      every default.
    **defaults: the allowed keys with their defaults, as above.

  Returns:
    A ConfigDict with one typed value per key (all keys present).

  Raises:
    ArgError (a ValueError), in one line naming the key and the allowed keys
    or values: an unknown key, a key given twice, a value of the wrong type or
    not among the choices.
    TypeError: a default of another type (a programming error in the config).
  """
  choices = {}
  for key, default in defaults.items():
    if isinstance(default, tuple):
      if not default or not all(isinstance(v, str) for v in default):
        raise TypeError(f'parse_arg: {key}: a choice must be a non-empty tuple of strings, '
                        f'got {default!r}')
      choices[key] = default
    elif not isinstance(default, (bool, int, float, str)):
      raise TypeError(f'parse_arg: {key}: a default must be a bool, int, float, str or a tuple '
                      f'of strings, got {default!r}')
  values = {k: (v[0] if k in choices else v) for k, v in defaults.items()}
  allowed = ', '.join(defaults) or 'none'
  given = set()
  tokens = [t.strip() for t in (arg or '').split(',')]
  for i, token in enumerate(tokens):
    if not token:
      if len(tokens) > 1:
        raise ArgError(f'config argument {arg!r}: an empty entry; use key=value pairs separated '
                       f'by single commas (keys: {allowed})')
      continue
    if '=' in token:
      key, text = (s.strip() for s in token.split('=', 1))
    elif isinstance(values.get(token), bool):
      key, text = token, 'True'
    elif i == 0 and defaults:
      key, text = next(iter(defaults)), token
    else:
      raise ArgError(f'config argument {token!r}: unknown; allowed keys: {allowed} '
                     '(key=value, or a bool key alone for True)')
    if key not in defaults:
      raise ArgError(f'config argument {key!r}: unknown key; allowed keys: {allowed}')
    if key in given:
      raise ArgError(f'config argument {key}: given twice in {arg!r}')
    given.add(key)
    values[key] = _convert(key, text, defaults[key], choices.get(key))
  return ml_collections.ConfigDict(values)


def override(cfg: ml_collections.ConfigDict, fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets each dotted ``field`` of ``cfg`` to its value, as ``--config.FIELD=VALUE`` does.

  Returns ``cfg`` (changed in place). Raises KeyError naming a field that is
  not in ``cfg`` (a tiny list must not add fields: it would change what the
  run records).
  """
  for field, value in fields.items():
    node = cfg
    *parents, leaf = field.split('.')
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f'override: config.{field} is not a field of this config')
    node[leaf] = value
  return cfg


def variant_arg(arg: str | None, variants: tuple, offline: tuple | None = None
                ) -> ml_collections.ConfigDict:
  """Every config's argument: ``parse_arg(arg, variant=variants, tiny=False)``,
  with ``tiny`` refused outside ``offline`` (``check_tiny``; None: every
  variant is offline). Returns the parsed ``{'variant', 'tiny'}``."""
  parsed = parse_arg(arg, variant=tuple(variants), tiny=False)
  if offline is not None:
    check_tiny(parsed, offline)
  return parsed


def check_tiny(arg: ml_collections.ConfigDict, offline: tuple) -> None:
  """ArgError when ``arg.tiny`` is set with a variant outside ``offline``:
  ``tiny`` shrinks the runs that need no data_dir (the tests' runs)."""
  if arg.tiny and arg.variant not in offline:
    raise ArgError(f"config argument tiny: only with an offline variant ({', '.join(offline)}), "
                   f'got variant {arg.variant!r}')


def optimizer(name: str, learning_rate: float, weight_decay: float = 0.0,
              momentum: float | None = None) -> dict:
  """The optimizer fields of a training block, to unpack into it:
  ``optimizer`` ('adam' | 'sgd'), ``learning_rate`` (> 0), ``momentum``
  (SGD's, in [0, 1]; only when given) and ``weight_decay`` (>= 0), in this
  order. Checked by ``robustjax.config_blocks.optimizer``."""
  fields = dict(optimizer=name, learning_rate=learning_rate)
  if momentum is not None:
    fields['momentum'] = momentum
  fields['weight_decay'] = weight_decay
  return fields


def attack(norm: str, eps: float, steps: int, rel_step_size: float, restarts: int = 1,
           random_start: bool = True) -> ml_collections.ConfigDict:
  """A training-time PGD block: ``norm`` ('l2' | 'linf'), radius ``eps``,
  ``steps``, step ``rel_step_size * eps``, ``restarts``, ``random_start``.
  Checked by ``robustjax.config_blocks.attack``."""
  return ml_collections.ConfigDict(dict(norm=norm, eps=eps, steps=steps,
                                        rel_step_size=rel_step_size, restarts=restarts,
                                        random_start=random_start))


def mesh(data: int = 1, model: int = 1) -> ml_collections.ConfigDict:
  """A device mesh block: ``data`` (>= 1, or -1 for every device left after
  ``model``) x ``model`` (>= 1). Checked by ``robustjax.config_blocks.mesh``."""
  return ml_collections.ConfigDict(dict(data=data, model=model))
