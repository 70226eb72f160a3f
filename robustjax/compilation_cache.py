"""jax's persistent compilation cache: where robustjax keeps it, and turning it on.

A compiled XLA program is kept on disk under a key of its HLO, jax version and
device, so a later process that builds the same program (the same model
architecture and shapes, any weights and data) reads it back instead of
compiling it. ``launch.py`` turns it on for every run; a script or notebook
calls :func:`enable` once, before its first attack:

  import robustjax.compilation_cache
  robustjax.compilation_cache.enable()

On a CPU compiling is most of an evaluation's first call: the default
``evaluate_robust_accuracy`` on issue 17's digits MLP (linf 0.1, 2 CPU cores)
takes 5.4-6.5 s in a new process without the cache and 2.7-3.1 s with it
warm (the rest is tracing and lowering, which jax does not cache); the
'warm' column of ``python benchmarks/ensemble.py`` measures it per attack.
"""
from __future__ import annotations

import os

import jax

# jax caches only programs that took at least this long to compile (its default
# is 1 s). Most of a run's programs compile in well under 1 s and on a CPU they
# add up: caching all of them took a warm tiny pipeline's compile time from
# 12.2 s (0.1 s threshold) to 8.7 s, for a 2.5 MB cache (148 entries).
MIN_COMPILE_SECS = 0.0


def directory(given: str | None = None, environ=None) -> str:
  """The cache directory: ``given``, else jax's own variable
  JAX_COMPILATION_CACHE_DIR, else a per-user directory under XDG_CACHE_HOME
  (default ~/.cache): ``<that>/robustjax/jax``."""
  environ = os.environ if environ is None else environ
  if given:
    return given
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return environ['JAX_COMPILATION_CACHE_DIR']
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'robustjax', 'jax')


def enable(path: str | None = None, *, environ=None) -> str:
  """Points jax's persistent compilation cache at :func:`directory` (``path``)
  and caches every program (``MIN_COMPILE_SECS``; JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS,
  when set, keeps its value). Returns the directory. Call it before the first
  compile you want cached; it changes jax's process-wide config.

  Raises ValueError (naming ``path``) when the path exists and is not a directory.
  """
  environ = os.environ if environ is None else environ
  path = directory(path, environ)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'path: must be a directory (or a path that does not exist yet), '
                     f'got the file {path!r}')
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
  return path


def disable() -> None:
  """Turns jax's persistent compilation cache off for this process."""
  jax.config.update('jax_enable_compilation_cache', False)
