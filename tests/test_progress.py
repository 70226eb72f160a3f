"""Progress bars for evaluation, Ctrl-C reports, and the compile/run split of timings."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import progress, timing
from robustjax.train import checkpoint, loop, state as state_lib


def test_tracked_shows_a_bar_only_when_enabled(capsys):
  with progress.tracked('evaluate things', 2, enabled=True) as bar:
    bar.update()
    bar.update()
  assert 'evaluate things' in capsys.readouterr().err
  with progress.tracked('evaluate things', 2, enabled=False) as bar:
    bar.update(2)
  assert capsys.readouterr().err == ''
  with pytest.raises(ValueError, match='total: an integer >= 0'):
    with progress.tracked('x', -1):
      pass


def test_ctrl_c_in_a_phase_says_where_it_stopped():
  with pytest.raises(progress.Interrupted, match=r'^evaluate heads \(1/3 done\)$') as e:
    with progress.tracked('evaluate heads', 3, enabled=False) as bar:
      bar.update()
      raise KeyboardInterrupt
  assert isinstance(e.value, KeyboardInterrupt)
  # The innermost phase's report passes through the outer ones unchanged.
  with pytest.raises(progress.Interrupted, match='^inner$'):
    with progress.tracked('outer', 1, enabled=False):
      raise progress.Interrupted('inner')


def test_fit_reports_the_step_and_the_checkpoint_kept_on_ctrl_c(tmp_path, monkeypatch):
  saves = []

  def save_then_interrupt(mngr, step, *args):
    if saves:  # Ctrl-C lands in the chunk after the first save
      raise KeyboardInterrupt
    saves.append(step)
    return real_save(mngr, step, *args)

  real_save = checkpoint.save
  monkeypatch.setattr(checkpoint, 'save', save_then_interrupt)
  st = state_lib.create({'x': jnp.ones(())}, optax.sgd(0.1))
  loss = lambda params, key, aux: (jnp.sum(params['x'] ** 2), {})
  with pytest.raises(progress.Interrupted) as e:
    loop.fit(st, None, jax.random.PRNGKey(0), loss, steps=8, chunk_size=2, progress=False,
             desc='pre-train toy', checkpoint_dir=str(tmp_path / 'ck'))
  assert e.value.where == 'pre-train toy at step 2/8'
  assert e.value.kept == f"its last checkpoint, step 2, is kept in {tmp_path / 'ck'}"
  assert (tmp_path / 'ck' / '2').is_dir()


def test_compile_seconds_count_compiles_not_cached_calls():
  # A shape no other test compiles, so this process has not seen the program.
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
  x = jnp.ones((37, 29))
  timings = {}
  with timing.stage(timings, 'outer'):
    with timing.compile_seconds() as first:
      jax.block_until_ready(f(x))
    with timing.compile_seconds() as again:
      jax.block_until_ready(f(x))
  assert first[0] > 0 and again[0] == 0.0
  t = timings['outer']
  assert t['compile'] == pytest.approx(first[0], abs=0.01)  # nested blocks both count
  assert t['run'] == pytest.approx(t['wall'] - t['compile'], abs=0.011)
  assert t['cpu'] > 0  # compiling took CPU time
  assert timing.record(1.0, 0.25) == {'wall': 1.0, 'compile': 0.25, 'run': 0.75}
  assert timing.record(1.0, 0.25, 1.504) == {'wall': 1.0, 'compile': 0.25, 'run': 0.75,
                                             'cpu': 1.5}
  np.testing.assert_equal(timing.record(0.1, 0.2)['run'], 0.0)  # clock noise: never negative


def test_nested_blocks_with_equal_counts_each_keep_their_own():
  # Regression: blocks were removed by value, so an inner block that ended with
  # the same count as its outer one (both 0.0: nothing compiled yet) removed
  # the outer's accumulator; the outer's compiles then went uncounted and its
  # end raised ValueError (seen on a resumed run whose stages compile nothing).
  f = jax.jit(lambda x: jnp.sin(x @ x.T).sum())  # a shape no other test compiles
  with timing.compile_seconds() as outer:
    with timing.compile_seconds() as inner:
      pass
    jax.block_until_ready(f(jnp.ones((41, 23))))
  assert inner[0] == 0.0 and outer[0] > 0
