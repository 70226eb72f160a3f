"""Runs an experiment from an ml_collections config.

    python launch.py --config=configs/sparse_coding.py [--workdir=DIR] [--config.a.b=v]
    python launch.py --distributed --config=...     # on every host of a pod / cluster

The config is validated before any work: a bad field prints one line naming it
and exits with status 2, leaving the workdir untouched.

``--distributed`` calls ``jax.distributed.initialize()`` before anything else
touches jax. On a Cloud TPU pod, under SLURM or Open MPI it needs nothing
else (jax detects the cluster). Elsewhere set, on every host,
``JAX_COORDINATOR_ADDRESS`` (host:port of process 0, read by jax itself),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0 .. n-1, read here).
"""
import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from robustjax import config_validation
from robustjax.train.loop import DivergedError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory (default: runs/<config>)')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'multi-host: call jax.distributed.initialize() first (auto-detected on Cloud TPU pods, '
    'SLURM, Open MPI; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
    'JAX_PROCESS_ID on every host)')
EXPERIMENTS = ('sparse_coding', 'spectral', 'images')
DISTRIBUTED_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def distributed_args(distributed: bool, environ) -> dict | None:
  """Keyword arguments for ``jax.distributed.initialize`` (None: a single-process run).

  Raises ValueError, naming the flag or variable, for a combination that cannot
  work: coordinator variables without ``--distributed`` (every host would run
  the whole experiment alone into the same workdir), only one of
  JAX_NUM_PROCESSES / JAX_PROCESS_ID, or values out of range.
  """
  given = [v for v in DISTRIBUTED_ENV if environ.get(v)]
  if not distributed:
    if given:
      raise ValueError(f'{", ".join(given)} set but --distributed is not: pass --distributed '
                       '(multi-host) or unset them (one process)')
    return None
  n, i = environ.get('JAX_NUM_PROCESSES'), environ.get('JAX_PROCESS_ID')
  if n is None and i is None:
    return {}  # jax detects the cluster (TPU pod, SLURM, Open MPI)
  if n is None or i is None:
    raise ValueError('JAX_NUM_PROCESSES and JAX_PROCESS_ID: set both (with '
                     'JAX_COORDINATOR_ADDRESS) or neither (cluster auto-detection); got '
                     f'JAX_NUM_PROCESSES={n!r}, JAX_PROCESS_ID={i!r}')
  try:
    n, i = int(n), int(i)
  except ValueError:
    raise ValueError('JAX_NUM_PROCESSES and JAX_PROCESS_ID: integers with 0 <= '
                     f'JAX_PROCESS_ID < JAX_NUM_PROCESSES; got {n!r}, {i!r}') from None
  if not 0 <= i < n:
    raise ValueError(f'JAX_PROCESS_ID: an integer in [0, JAX_NUM_PROCESSES = {n}), got {i}')
  return dict(num_processes=n, process_id=i)


def start_distributed(distributed: bool) -> None:
  """``jax.distributed.initialize`` when asked; a bad set-up is one line and exit 2."""
  try:
    args = distributed_args(distributed, os.environ)
    if args is None:
      return
    import jax  # importing jax starts no backend; initialize must come before one does
    try:
      jax.distributed.initialize(**args)
    except (ValueError, RuntimeError) as e:
      raise ValueError(f'--distributed: jax.distributed.initialize() failed: {e} (where jax '
                       'detects no cluster, set ' + ', '.join(DISTRIBUTED_ENV) + ')') from None
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """absl flag parsing, but a bad flag or override is one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - includes errors in the config file itself
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if isinstance(e, (AttributeError, KeyError)):
      bad = [a for a in argv[1:] if a.startswith('--config.')]
      msg = f'unknown config field {msg} (overrides given: {" ".join(bad)})'
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    cfg = _CONFIG.value
    cfg.keys()  # a config file that failed to load raises on first use
  except Exception as e:  # noqa: BLE001 - any failure to load it is a bad --config
    print(f'error: --config: cannot load {flags.FLAGS["config"].config_filename}: '
          f'{str(e).strip().splitlines()[-1].strip()}', file=sys.stderr)
    sys.exit(2)
  # Before the stage is imported or the config validated: both start jax's backends.
  start_distributed(_DISTRIBUTED.value)
  workdir = _WORKDIR.value or os.path.join(
      'runs', os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0])
  try:
    config_validation.one_of(cfg, 'experiment', EXPERIMENTS)
    experiment = importlib.import_module(f'robustjax.stages.{cfg.experiment}')
    config_validation.workdir(workdir)
    experiment.validate(cfg)
  except config_validation.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  os.makedirs(workdir, exist_ok=True)
  try:
    experiment.main(cfg, workdir)
  except DivergedError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
