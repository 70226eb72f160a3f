"""Runs an experiment from an ml_collections config.

    python launch.py --config=configs/sparse_coding.py [--workdir=DIR] [--config.a.b=v]
    python launch.py --distributed --config=...     # on every host of a pod / cluster

The config is validated before any work: a bad field, a misspelt override or
a stray positional argument prints one line naming it and exits with status 2,
leaving the workdir untouched. Ctrl-C prints one line (where the run stopped,
what it kept, the command that resumes it) and exits with status 130.

A rerun in the same workdir resumes its checkpoints only when the config is
the one recorded in ``<workdir>/config.json`` (every field but evaluation and
display ones, ``robustjax.run_record``); otherwise it refuses in one line,
exit 2, nothing touched. ``--config.resume=overwrite`` starts afresh.

Compiled programs are kept in jax's persistent compilation cache, so a rerun
skips the compiles of the first: ``--compilation_cache_dir`` (default
``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustjax/jax``, else
``~/.cache/robustjax/jax``); ``--nocompilation_cache`` turns it off.

``--distributed`` calls ``jax.distributed.initialize()`` before anything else
touches jax. On a Cloud TPU pod, under SLURM or Open MPI it needs nothing
else (jax detects the cluster). Elsewhere set, on every host,
``JAX_COORDINATOR_ADDRESS`` (host:port of process 0, read by jax itself),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0 .. n-1, read here).
Processes whose devices are CPUs exchange their collectives (the gradient
all-reduce, the checkpoint barriers) over TCP with gloo: ``--distributed`` sets
``jax_cpu_collectives_implementation='gloo'`` before any backend starts, unless
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` (jax's own variable: gloo or mpi) says
otherwise. TPU and GPU devices use their own interconnect; the setting only
reaches jax's CPU client. ``python -m robustjax.launch_local -n 2 -- launch.py
...`` runs N such processes on this machine.
"""
import difflib
import importlib
import importlib.util
import os
import re
import shlex
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from robustjax import config_validation, run_record
from robustjax.progress import Interrupted
from robustjax.train.loop import DivergedError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory (default: runs/<config>)')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'multi-host: call jax.distributed.initialize() first (auto-detected on Cloud TPU pods, '
    'SLURM, Open MPI; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
    'JAX_PROCESS_ID on every host)')
_CACHE = flags.DEFINE_bool(
    'compilation_cache', True,
    "keep compiled programs in jax's persistent cache so reruns skip their compiles "
    '(--nocompilation_cache: off)')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', None,
    'the compilation cache directory (default: $JAX_COMPILATION_CACHE_DIR, else '
    '$XDG_CACHE_HOME/robustjax/jax, else ~/.cache/robustjax/jax)')
EXPERIMENTS = ('sparse_coding', 'spectral', 'images', 'scaling')
DISTRIBUTED_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
# Cross-process collectives of jax's CPU client (jax 0.10.2: config option
# jax_cpu_collectives_implementation, one of gloo / mpi / megascale; without
# one, CPU processes cannot run a program spanning several of them).
CPU_COLLECTIVES = 'gloo'


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


def cpu_collectives(environ) -> str:
  """The CPU collectives a multi-process run uses: JAX_CPU_COLLECTIVES_IMPLEMENTATION
  when set (jax reads it itself), else gloo (TCP, needs nothing installed)."""
  return environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION') or CPU_COLLECTIVES


def start_distributed(distributed: bool) -> None:
  """``jax.distributed.initialize`` when asked, CPU collectives by ``cpu_collectives``;
  a bad set-up is one line and exit 2."""
  try:
    args = distributed_args(distributed, os.environ)
    if args is None:
      return
    import jax  # importing jax starts no backend; initialize must come before one does
    # Read when the CPU client is created (after initialize): TPU/GPU runs are unaffected.
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives(os.environ))
    try:
      jax.distributed.initialize(**args)
    except (ValueError, RuntimeError) as e:
      raise ValueError(f'--distributed: jax.distributed.initialize() failed: {e} (where jax '
                       'detects no cluster, set ' + ', '.join(DISTRIBUTED_ENV) + ')') from None
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def enable_compilation_cache(enabled: bool, directory: str | None, environ) -> None:
  """jax's persistent compilation cache at ``directory`` (``robustjax.compilation_cache``
  picks the default), or off; a path that is a file is a bad --compilation_cache_dir."""
  from robustjax import compilation_cache  # importing jax and setting its config start no backend
  if not enabled:
    compilation_cache.disable()
    return
  try:
    compilation_cache.enable(directory, environ=environ)
  except ValueError:
    raise config_validation.FlagError(
        'compilation_cache_dir', 'a directory (or a path that does not exist yet)',
        compilation_cache.directory(directory, environ)) from None


_OVERRIDE_LIKE = re.compile(r'^-?(config\.)?([A-Za-z_][\w.]*=.*)$')


def stray_arguments(args) -> str:
  """The one-line error for positional arguments (launch.py takes flags only)."""
  first = args[0]
  listed = ('argument ' if len(args) == 1 else 'arguments ') + ', '.join(map(repr, args))
  m = _OVERRIDE_LIKE.match(first)
  if m:
    return (f'unexpected {listed}: launch.py takes flags only; '
            f'did you mean --config.{m.group(2)}?')
  return (f'unexpected {listed}: launch.py takes flags only '
          '(--config=FILE[:variant], --workdir=DIR, --config.FIELD=VALUE)')


def _load_config(argv):
  """The config that --config names, loaded as ml_collections does (None if it cannot be)."""
  path = None
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      path = a[len('--config='):]
    elif a == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  if not path:
    return None
  file, *variant = path.split(':', 1)
  try:
    spec = importlib.util.spec_from_file_location('_launch_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*variant)
  except Exception:  # noqa: BLE001 - the caller falls back to the parser's own message
    return None


def _leaves(node, prefix=''):
  """The dotted path of every value (not block) under a ConfigDict."""
  for k in node.keys():
    if hasattr(node[k], 'keys'):
      yield from _leaves(node[k], f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


def unknown_field(cfg, overrides) -> str | None:
  """The one-line error for the first override naming no field of ``cfg``:
  the new name of a renamed field (``config_validation.RENAMED_FIELDS``), else
  the closest valid ones (difflib), or the valid fields where it went wrong.
  None when every override names a field."""
  for field in overrides:
    renamed = config_validation.renamed_field(cfg.get('experiment'), field)
    if renamed is not None:
      return str(renamed)
    node, parts = cfg, field.split('.')
    for depth, part in enumerate(parts):
      if not hasattr(node, 'keys') or part not in node.keys():
        break
      node = node[part]
    else:
      continue
    where = '.'.join(parts[:depth])
    paths = list(_leaves(cfg))
    # Close as a whole, and close where it went wrong (not just a shared block name).
    close = [p for p in difflib.get_close_matches(field, paths, n=6, cutoff=0.6)
             if difflib.SequenceMatcher(None, (p.split('.') + [''])[depth],
                                        parts[depth]).ratio() >= 0.75][:3]
    same_name = [p for p in paths if p.split('.')[-1] == parts[-1]]  # a block left out
    best = list(dict.fromkeys(close + same_name))[:3]
    if best:
      return (f'unknown config field config.{field}; closest valid: '
              + ', '.join(f'config.{p}' for p in best))
    if not hasattr(node, 'keys'):
      return f'unknown config field config.{field}; config.{where} is a value, not a block'
    return (f'unknown config field config.{field}; config{"." if where else ""}{where} has: '
            + ', '.join(sorted(node.keys())))
  return None


# What a --config.FIELD override of each type must look like.
_TYPE_WORDS = ((bool, 'True or False'), (int, 'an integer'), (float, 'a number'),
               (tuple, 'a tuple such as (1, 2)'), (str, 'a string'))
_BAD_OVERRIDE = re.compile(r'^flag --config\.([\w.]+)=(.*?): ')
# A traceback's last line starts with the exception's (qualified) name; the
# one-line error keeps only its message.
_EXCEPTION_NAME = re.compile(r'^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit): ')


def bad_override(cfg, text: str) -> str | None:
  """The one-line error for an override absl could not convert to its field's
  type (``text``: absl's message, 'flag --config.FIELD=VALUE: ...'): the field,
  the type it takes and its default. None when ``text`` is another error."""
  m = _BAD_OVERRIDE.match(text)
  if m is None or cfg is None:
    return None
  node = cfg
  for part in m.group(1).split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return None
    node = node[part]
  words = next((w for t, w in _TYPE_WORDS if isinstance(node, t)), None)
  if words is None:
    return None
  return f'config.{m.group(1)}: must be {words} (default {node!r}), got {m.group(2)!r}'


def parse_flags(argv):
  """absl flag parsing, but a bad flag, override or stray argument is one line and exit 2."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - includes errors in the config file itself
    msg = None
    text = str(e.args[0]) if e.args else str(e)
    if isinstance(e, (AttributeError, KeyError)):
      overrides = [re.split(r'[= ]', a[len('--config.'):], maxsplit=1)[0]
                   for a in argv[1:] if a.startswith('--config.')]
      cfg = _load_config(argv)
      msg = unknown_field(cfg, overrides) if cfg is not None else None
    elif _BAD_OVERRIDE.match(text):
      msg = bad_override(_load_config(argv), text)
    if msg is None:  # the parser's own words, as one line without quoting artefacts
      line = ' '.join((text.strip().splitlines() or [type(e).__name__])[-1].split())
      msg = _EXCEPTION_NAME.sub('', line)
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(2)
  if len(rest) > 1:
    print(f'error: {stray_arguments(rest[1:])}', file=sys.stderr)
    sys.exit(2)
  return rest


def interrupted(e: KeyboardInterrupt, workdir: str, argv) -> str:
  """The one line Ctrl-C prints: where the run stopped, what it kept, how to resume."""
  where = e.where if isinstance(e, Interrupted) else 'between phases'
  kept = e.kept if isinstance(e, Interrupted) and e.kept else (
      f'finished training stages keep their checkpoints under {workdir}')
  return (f'interrupted: {where}; {kept}; the same command resumes from the last checkpoint: '
          f'python {shlex.join(argv)}')


def environment() -> dict:
  """What a run's record says it ran on: library versions, devices, processes."""
  import flax
  import optax
  import orbax.checkpoint
  import robustjax
  return {'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                       'optax': optax.__version__, 'orbax-checkpoint': orbax.checkpoint.__version__,
                       'robustjax': robustjax.__version__},
          'devices': [str(d) for d in jax.devices()], 'process_count': jax.process_count()}


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
    enable_compilation_cache(_CACHE.value, _CACHE_DIR.value, os.environ)
    config_validation.one_of(cfg, 'experiment', EXPERIMENTS)
    experiment = importlib.import_module(f'robustjax.experiments.{cfg.experiment}')
    config_validation.workdir(workdir)
    experiment.validate(cfg)
    resume = cfg.get('resume', 'check')  # a config file of one's own may not have the field
    if 'resume' in cfg:
      config_validation.one_of(cfg, 'resume', run_record.RESUME)
    if resume == 'check':
      run_record.check(workdir, cfg.to_dict())
  except config_validation.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:  # one writer; the other processes compute alongside
    if resume == 'overwrite':
      run_record.clear(workdir)
    os.makedirs(workdir, exist_ok=True)
    run_record.write(workdir, cfg.to_dict(), environment())
  try:
    experiment.main(cfg, workdir)
  except DivergedError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt as e:
    print(interrupted(e, workdir, sys.argv), file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
