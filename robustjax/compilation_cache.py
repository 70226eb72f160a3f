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
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# jax caches only programs that took at least this long to compile (its default
# is 1 s). Most of a run's programs compile in well under 1 s and on a CPU they
# add up: caching all of them took a warm tiny pipeline's compile time from
# 12.2 s (0.1 s threshold) to 8.7 s, for a 2.5 MB cache (148 entries).
MIN_COMPILE_SECS = 0.0


def directory(given=None, environ=None) -> str:
  """The cache directory, absolute (``~`` expanded): ``given`` (a str or
  os.PathLike), else jax's own variable JAX_COMPILATION_CACHE_DIR, else a
  per-user directory under XDG_CACHE_HOME (default ~/.cache):
  ``<that>/robustjax/jax``. Absolute because jax reads the path at its first
  compile, relative to the working directory of that moment."""
  environ = os.environ if environ is None else environ
  if given:
    path = os.fspath(given)
  elif environ.get('JAX_COMPILATION_CACHE_DIR'):
    path = environ['JAX_COMPILATION_CACHE_DIR']
  else:
    base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    path = os.path.join(base, 'robustjax', 'jax')
  return os.path.abspath(os.path.expanduser(path))


def enable(path=None, *, environ=None) -> str:
  """Points jax's persistent compilation cache at :func:`directory` (``path``:
  None, a str or os.PathLike) and caches every program (``MIN_COMPILE_SECS``;
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, keeps its value).
  Returns the directory. Call it before the first compile you want cached; it
  changes jax's process-wide config. Called again with another directory, it
  moves the cache there (jax would otherwise keep the one it opened first).

  Raises TypeError (naming ``path``) when ``path`` is not None, a str or
  os.PathLike, and ValueError when it exists and is not a directory.
  """
  if path is not None and not isinstance(path, (str, os.PathLike)):
    raise TypeError(f'path: a directory name (str or os.PathLike) or None, got '
                    f'{type(path).__name__} {path!r}')
  environ = os.environ if environ is None else environ
  path = directory(path, environ)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'path: must be a directory (or a path that does not exist yet), '
                     f'got the file {path!r}')
  if jax.config.jax_compilation_cache_dir not in (None, path):
    # jax opens its cache once, at the first compile, and keeps that directory.
    jax_cache.reset_cache()
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
  return path


def disable() -> None:
  """Turns jax's persistent compilation cache off for this process."""
  jax.config.update('jax_enable_compilation_cache', False)
