"""Runs an experiment from an ml_collections config.

    python launch.py --config=configs/sparse_coding.py [--workdir=DIR] [--config.a.b=v]

The config is validated before any work: a bad field prints one line naming it
and exits with status 2, leaving the workdir untouched.
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
EXPERIMENTS = ('sparse_coding', 'spectral', 'images')


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
