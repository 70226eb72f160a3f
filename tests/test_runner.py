"""The experiments' runner: key streams, the training log (metrics.jsonl) while a
run goes and after it is killed, resume, process-0 files, results.json."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import optax

from robustjax import report
from robustjax.experiments import runner
from robustjax.train import loop, metric_log, state as state_lib

AUX = {'target': jnp.array([2.0, -1.0, 1.0])}


def quad_loss(params, key, aux):
  x = jax.random.normal(key, (16, 3))
  return jnp.mean((x @ (params['w'] - aux['target'])) ** 2), {'norm': jnp.linalg.norm(params['w'])}


def new_state(batched=False):
  st = state_lib.create({'w': jnp.zeros((3,))}, optax.adam(0.05))
  return jax.tree.map(lambda x: jnp.stack([x, x]), st) if batched else st


def cfg():
  return ml_collections.ConfigDict({'seed': 0, 'lr': 0.05})


def test_key_streams_are_per_seed_splits_and_independent_of_the_other_names():
  keys = runner.key_streams(3, 2, ('world', 'train', 'eval'))
  seeds = jax.random.split(jax.random.PRNGKey(3), 2)
  for s in range(2):
    chex.assert_trees_all_equal(keys['train'][s], jax.random.split(seeds[s], 3)[1])
  assert set(keys) == {'world', 'train', 'eval'}
  chex.assert_shape(keys['eval'], (2, 2))


def test_record_means_per_run_lists_and_no_nan():
  r = metric_log.record('fit', 8, {'loss': np.array([1.0, 3.0]), 'm': {'a': np.float32(np.nan)}},
                        4, 2.0)
  assert r == {'fit': 'fit', 'step': 8, 'loss': 2.0, 'loss_per_run': [1.0, 3.0], 'm/a': None,
               'steps_per_s': 2.0}
  json.dumps(r, allow_nan=False)


def test_fit_logs_one_line_per_chunk_under_the_job_and_curves_are_drawn(tmp_path, capsys):
  run = runner.Run(cfg(), str(tmp_path))
  with run.job('pretrain'):
    loop.fit(new_state(batched=True), jax.tree.map(lambda a: jnp.stack([a, a]), AUX),
             jax.random.split(jax.random.PRNGKey(0), 2), quad_loss, steps=10, chunk_size=4,
             batched=True, progress=False, desc='pre-train')
  loop.fit(new_state(), AUX, jax.random.PRNGKey(1), quad_loss, steps=4, progress=False)  # no job
  lines = runner.read_metrics(str(tmp_path / runner.METRICS))
  assert [(r['job'], r['fit'], r['step']) for r in lines] == [
      ('pretrain', 'pre-train', 4), ('pretrain', 'pre-train', 8), ('pretrain', 'pre-train', 10)]
  assert len(lines[0]['loss_per_run']) == 2 and lines[0]['steps_per_s'] > 0
  np.testing.assert_allclose(lines[-1]['loss'], np.mean(lines[-1]['loss_per_run']), rtol=1e-6)
  assert set(run.timings['pretrain']) >= {'wall', 'compile', 'run', 'cpu'}
  written = run.finish({'summary': {'a': 1}}, text=['the table'], plots=[])
  assert written == ['results.json', 'metrics.jsonl', 'training_curves.png']
  res = json.loads((tmp_path / 'results.json').read_text())
  assert res['summary'] == {'a': 1} and res['config'] == cfg().to_dict()
  assert res['plots'] == ['training_curves.png'] and 'pretrain' in res['timings']
  out = capsys.readouterr().out
  assert 'the table' in out and str(tmp_path / 'metrics.jsonl') in out


def test_the_log_reads_while_training_and_after_a_kill(tmp_path):
  """Each line is on disk when the next chunk starts (read from inside the
  loss's chunk via the sink), and a half-written last line is skipped."""
  run = runner.Run(cfg(), str(tmp_path))
  seen = []
  path = str(tmp_path / runner.METRICS)

  def spy(record):
    run._log('job', record)  # what the runner's sink does ...
    seen.append(len(runner.read_metrics(path)))  # ... and the file already holds it
  with metric_log.sink(spy):
    loop.fit(new_state(), AUX, jax.random.PRNGKey(0), quad_loss, steps=9, chunk_size=3,
             progress=False)
  assert seen == [1, 2, 3]
  with open(path, 'a') as f:
    f.write('{"job": "job", "fit": "tra')  # a writer killed mid-line
  assert len(runner.read_metrics(path)) == 3
  # The resumed run's lines start on a line of their own and are all read.
  run._log('job', metric_log.record('train', 12, {'loss': np.float32(1.0)}, 3, 1.0))
  assert [r['step'] for r in runner.read_metrics(path)] == [3, 6, 9, 12]


def test_resumed_fit_appends_and_curves_keep_the_last_record_per_step(tmp_path):
  run = runner.Run(cfg(), str(tmp_path))
  ckpt = run.checkpoint_dir('job')
  assert ckpt == os.path.join(str(tmp_path), 'train_checkpoints', 'job')
  kw = dict(chunk_size=3, progress=False, checkpoint_dir=ckpt, fingerprint=run.fingerprint)
  with run.job('job'):
    loop.fit(new_state(), AUX, jax.random.PRNGKey(0), quad_loss, steps=6, **kw)
  with run.job('job'):  # finished: returns at once, logs nothing
    loop.fit(new_state(), AUX, jax.random.PRNGKey(0), quad_loss, steps=6, **kw)
  with run.job('job'):  # longer: resumes from step 6
    loop.fit(new_state(), AUX, jax.random.PRNGKey(0), quad_loss, steps=9, **kw)
  steps = [r['step'] for r in runner.read_metrics(str(tmp_path / runner.METRICS))]
  assert steps == [3, 6, 9]


def test_only_process_0_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert not report.writer()
  run = runner.Run(cfg(), str(tmp_path / 'w'))
  with run.job('job'):
    loop.fit(new_state(), AUX, jax.random.PRNGKey(0), quad_loss, steps=3, progress=False)
  run.finish({'summary': {}})
  assert not os.path.exists(tmp_path / 'w')


def _curves_figure(tmp_path, monkeypatch, records):
  kept = []
  monkeypatch.setattr(report, 'save_figure', lambda fig, path, **kw: kept.append(fig))
  assert runner.plot_training_curves(records, str(tmp_path / 'c.png'))
  return kept[0]


def test_curves_mark_one_chunk_jobs_and_log_the_steps_of_unequal_jobs(tmp_path, monkeypatch):
  rec = lambda job, step, loss: {'job': job, 'fit': job, 'step': step, 'loss': loss}
  long = [rec('long', s, 1.0 / s) for s in (10000, 20000, 30000)]
  fig = _curves_figure(tmp_path, monkeypatch, long + [rec('short', 20, 0.5)])
  (ax,) = fig.axes
  lines = {l.get_label(): l for l in ax.get_lines()}
  # The one-chunk job is one point, visible through its marker; x is each job's own step.
  assert lines['short'].get_marker() == 'o' and list(lines['short'].get_xdata()) == [20]
  assert list(lines['long'].get_xdata()) == [10000, 20000, 30000]
  assert ax.get_xscale() == 'log' and 'log' in ax.get_xlabel()  # 30000 > 20 x 20
  fig = _curves_figure(tmp_path, monkeypatch, long + [rec('short', 2000, 0.5)])
  assert fig.axes[0].get_xscale() == 'linear'  # 30000 <= 20 x 2000
  plt.close('all')
