"""`pip install -e .` alone is enough for every config that runs offline.

Installs nothing: a fresh interpreter imports launch.py, each offline
config's experiment module and runs its data path (the lazy imports inside
the loaders included); every third-party distribution that brought a module
it imported must be in setup.cfg's install_requires or required by one of
them (the installed metadata's dependency closure).
"""
import configparser
import glob
import importlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys

from tests.helpers import ROOT

# Data names that need no download and no data_dir.
OFFLINE_IMAGES = ('digits',)
OFFLINE_SYNTHETIC = ('xor',)

# Runs in a fresh interpreter: prints the distributions behind every module
# the offline data paths import (standard library and the project excluded).
PROBE = r'''
import importlib, importlib.metadata as md, json, sys
experiments, images_needed, xor_needed = json.loads(sys.argv[1])
before = set(sys.modules)
import jax
import launch
for e in experiments:
  importlib.import_module(f'robustjax.experiments.{e}')
from robustjax.data import images, sparse_coding, toy
for name in images_needed:
  images.load(name, max_train=8, max_test=8)
if xor_needed:
  toy.noisy_xor(jax.random.PRNGKey(0), 2, 0.1)
if 'sparse_coding' in experiments:
  spec = sparse_coding.SparseCodingSpec(d=8, D=8, k=2)
  world = sparse_coding.make_world(jax.random.PRNGKey(0), spec)
  sparse_coding.sample_task(jax.random.PRNGKey(1), 4, world, spec, world.theta0)
tops = {m.split('.')[0] for m in set(sys.modules) - before}
tops -= set(sys.stdlib_module_names) | {'launch', 'robustjax', 'configs', 'tests'}
owners = md.packages_distributions()
print(json.dumps({t: owners.get(t, []) for t in sorted(tops) if not t.startswith('_')}))
'''


def _norm(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _requirement_names(requirements) -> list[str]:
  """Distribution names of requirement strings, leaving out extras-only ones."""
  out = []
  for r in requirements or ():
    if 'extra ==' in r.replace('"', ' ').replace("'", ' ') or 'extra==' in r:
      continue
    out.append(_norm(re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', r).group(1)))
  return out


def install_requires() -> list[str]:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  return _requirement_names(l for l in cfg['options']['install_requires'].splitlines()
                            if l.strip())


def closure(names) -> set[str]:
  """The names and everything their installed metadata requires, transitively."""
  seen, todo = set(), list(names)
  while todo:
    n = todo.pop()
    if n in seen:
      continue
    seen.add(n)
    try:
      todo += _requirement_names(md.requires(n))
    except md.PackageNotFoundError:
      pass  # an optional platform package (e.g. a CUDA plugin) not installed here
  return seen


def offline_configs():
  """(file:variant, config) of every config variant whose data needs no data_dir."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    mod = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
    if not hasattr(mod, 'get_config'):
      continue
    for variant in getattr(mod, 'VARIANTS', (None,)):
      cfg = mod.get_config() if variant is None else mod.get_config(variant)
      names = {cfg[b].get('name', '') for b in ('data', 'probe_data') if b in cfg} - {''}
      if cfg.experiment in ('sparse_coding', 'scaling') or (names and names <= set(
          OFFLINE_IMAGES + OFFLINE_SYNTHETIC)):
        out.append((f'{os.path.basename(path)}:{variant or ""}', cfg))
  return out


def test_offline_configs_need_only_install_requires():
  configs = offline_configs()
  names = {n for _, c in configs for b in ('data', 'probe_data') if b in c
           for n in [c[b].get('name', '')]}
  # Every experiment and both offline kinds of data are covered.
  assert {c.experiment for _, c in configs} == {'sparse_coding', 'scaling', 'spectral',
                                                'images'}, configs
  assert {'digits', 'xor'} <= names, names
  probe_args = json.dumps([sorted({c.experiment for _, c in configs}),
                           sorted(names & set(OFFLINE_IMAGES)), 'xor' in names])
  proc = subprocess.run([sys.executable, '-c', PROBE, probe_args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  imported = json.loads(proc.stdout.strip().splitlines()[-1])
  allowed = closure(install_requires())
  missing = {top: dists for top, dists in imported.items()
             if dists and not {_norm(d) for d in dists} & allowed}
  assert not missing, (f'imported by the offline data paths but not installed by '
                       f'`pip install -e .`: {missing}')
  assert imported.get('sklearn'), imported  # the digits path really ran
