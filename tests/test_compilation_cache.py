"""robustjax.compilation_cache: the directory it gives jax (absolute, any
path-like), its one-line refusals, and a second enable() that moves the cache."""
import os
import pathlib

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from robustjax import compilation_cache as cc

_NAMES = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
          'jax_persistent_cache_min_compile_time_secs')


@pytest.fixture
def restored_config():
  """jax's cache config as the session had it, and its cache reopened, afterwards."""
  before = {n: getattr(jax.config, n) for n in _NAMES}
  yield
  for n, v in before.items():
    jax.config.update(n, v)
  jax_cache.reset_cache()


def test_directory_is_absolute_and_takes_path_like(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert cc.directory('rel/cache', {}) == str(tmp_path / 'rel' / 'cache')
  assert cc.directory('~/c', {}) == str(tmp_path / 'home' / 'c')   # not a directory named '~'
  assert cc.directory(pathlib.Path('p'), {}) == str(tmp_path / 'p')
  assert cc.directory(None, {'JAX_COMPILATION_CACHE_DIR': 'j'}) == str(tmp_path / 'j')


def test_enable_refuses_what_is_not_a_path_in_one_line(tmp_path, restored_config):
  for bad in (123, b'/tmp/c', ['c']):
    with pytest.raises(TypeError, match=r'^path: a directory name \(str or os.PathLike\) or '
                                        r'None, got'):
      cc.enable(bad)
  assert cc.enable(pathlib.Path(tmp_path / 'c'), environ={}) == str(tmp_path / 'c')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'c')


def test_enable_again_moves_the_cache(tmp_path, restored_config):
  # jax opens its cache at the first compile; a second enable() with another
  # directory must be where the next programs go, as it returns.
  first = cc.enable(str(tmp_path / 'a'), environ={})
  jax.jit(lambda a: jnp.sin(a) * 3.0)(jnp.ones(5)).block_until_ready()
  assert os.listdir(first)
  second = cc.enable(str(tmp_path / 'b'), environ={})
  jax.jit(lambda a: jnp.cos(a) * 5.0)(jnp.ones(7)).block_until_ready()
  assert os.path.isdir(second) and os.listdir(second)
