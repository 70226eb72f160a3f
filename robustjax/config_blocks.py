"""One validator per config block that several experiments share.

Each raises ``config_validation.ConfigError`` (one line: the field, what is
allowed, what it got) on the first field a run cannot use. The blocks are
built by configs/common.py; every experiment's ``validate`` calls these
instead of repeating the checks (they had drifted: images never checked its
mesh).

  run        seed, num_seeds, chunk_size, checkpoint_every, progress (top level)
  optimizer  optimizer, learning_rate, weight_decay [, momentum] inside a training block
  attack     norm, eps, steps, rel_step_size, restarts, random_start (training PGD)
  pgd_eval   num_examples, attack_steps, rel_step_size, restarts (evaluation PGD)
  mesh       data (>= 1 or -1), model (>= 1), fitting the devices
"""
from __future__ import annotations

from typing import Iterable

from robustjax import config_validation as cv

OPTIMIZERS = ('adam', 'sgd')


def run(cfg, *, min_seeds: int = 1) -> None:
  """The top-level run fields: ``seed`` (an integer), ``num_seeds`` (>= min_seeds),
  ``chunk_size`` and ``checkpoint_every`` (steps, >= 1), ``progress`` (bool)."""
  seed = cv.value(cfg, 'seed')
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise cv.ConfigError('seed', 'an integer', seed)
  cv.positive_int(cfg, 'num_seeds', 'chunk_size', 'checkpoint_every')
  if cfg.num_seeds < min_seeds:
    raise cv.ConfigError('num_seeds', f"an integer >= {min_seeds} (the exponents' intervals are "
                         'over seeds)', cfg.num_seeds)
  cv.boolean(cfg, 'progress')


def optimizer(cfg, block: str) -> None:
  """The optimizer fields of the training block ``block`` (e.g. 'pretrain'):
  ``optimizer`` in OPTIMIZERS, ``learning_rate`` > 0, ``weight_decay`` >= 0,
  and ``momentum`` in [0, 1] where the block has one."""
  cv.one_of(cfg, f'{block}.optimizer', OPTIMIZERS)
  cv.number(cfg, f'{block}.learning_rate', low=0, strict_low=True)
  if 'momentum' in cv.value(cfg, block):
    cv.number(cfg, f'{block}.momentum', low=0, high=1)
  cv.number(cfg, f'{block}.weight_decay', low=0)


def attack(cfg, block: str = 'attack', *, norms: Iterable[str] = ('l2', 'linf'),
           eps: bool = True) -> None:
  """A training-time PGD block: ``norm`` in ``norms``, ``eps`` >= 0 (unless the
  run sets it itself, ``eps=False``: the scaling sweep's grid), ``steps`` and
  ``restarts`` >= 1, ``rel_step_size`` > 0 (the step is rel_step_size * eps),
  ``random_start`` a bool."""
  cv.one_of(cfg, f'{block}.norm', tuple(norms))
  if eps:
    cv.number(cfg, f'{block}.eps', low=0)
  cv.positive_int(cfg, f'{block}.steps', f'{block}.restarts')
  cv.number(cfg, f'{block}.rel_step_size', low=0, strict_low=True)
  cv.boolean(cfg, f'{block}.random_start')


def pgd_eval(cfg, block: str = 'eval') -> None:
  """The evaluation PGD fields: ``num_examples`` (test points per task),
  ``attack_steps`` and ``restarts`` >= 1, ``rel_step_size`` > 0."""
  cv.positive_int(cfg, f'{block}.num_examples', f'{block}.attack_steps', f'{block}.restarts')
  cv.number(cfg, f'{block}.rel_step_size', low=0, strict_low=True)


def mesh(cfg, block: str = 'mesh') -> None:
  """The device mesh: ``model`` >= 1, ``data`` >= 1 or -1 (every device left
  after ``model``), and data x model must fit the devices this process sees."""
  cv.positive_int(cfg, f'{block}.model')
  data = cv.value(cfg, f'{block}.data')
  if data != -1 and (isinstance(data, bool) or not isinstance(data, int) or data < 1):
    raise cv.ConfigError(f'{block}.data', f'an integer >= 1, or -1 (every device left after '
                         f'{block}.model)', data)
  from robustjax.train import sharding  # pylint: disable=import-outside-toplevel
  try:
    sharding.mesh_shape(data, cfg[block].model)
  except ValueError as e:
    raise cv.ConfigError(block, f'a data x model mesh that fits the devices ({e})',
                         cfg[block].to_dict()) from None
