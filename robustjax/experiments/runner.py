"""What every experiment shares: key streams, timings, per-job checkpoints and
fingerprints, the training log, and the files and lines a run ends with.

An experiment (``robustjax.experiments.<name>``) is ``validate(cfg)`` plus a
``main(cfg, workdir)`` that opens a ``Run``, runs its named jobs inside
``run.job(name)`` (timed; every ``loop.fit`` chunk inside is logged under the
job's name), and ends with ``run.finish(...)``. The files of a run in
``workdir`` (process 0 writes them, ``report.writer``; the others compute
alongside and write nothing):

- ``config.json``: the resolved config, its fingerprint, versions, devices and
  process count, written by launch.py before any work (``run_record``);
- ``metrics.jsonl``: one JSON line per training chunk and job, appended and
  flushed as the run goes (``read_metrics`` reads it, mid-run included);
- ``train_checkpoints/<job>/``: each job's resumable fit (``checkpoint_dir``),
  saved with the config's fingerprint;
- ``results.json``, ``training_curves.png`` and the experiment's plots at the end.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from robustjax import report, run_record, timing
from robustjax.train import metric_log

METRICS = 'metrics.jsonl'
CURVES = 'training_curves.png'
RESULTS = 'results.json'
TRAIN_CHECKPOINTS = 'train_checkpoints'


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def key_streams(seed: int, num_seeds: int, names: tuple[str, ...]) -> dict[str, jax.Array]:
  """``{name: (num_seeds, 2) uint32 keys}``: seed s's stream ``names[i]`` is
  ``split(split(PRNGKey(seed), num_seeds)[s], len(names))[i]``.

  ``names`` is the experiment's fixed tuple of streams (what is drawn from
  each: the world, the tasks, training, evaluation), never the list of jobs
  a config selects, so a job's draws do not depend on which other jobs run.
  One compiled program (jit, static arguments).
  """
  seeds = jax.random.split(jax.random.PRNGKey(seed), num_seeds)
  k = jax.vmap(lambda s: jax.random.split(s, len(names)))(seeds)
  return {name: k[:, i] for i, name in enumerate(names)}


def read_metrics(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` (one dict per line: ``job``, ``fit``,
  ``step``, each metric's mean over runs and ``<metric>_per_run``,
  ``steps_per_s``), in the order written. A line cut short by a killed run
  is skipped (the records a resumed run appended after it are kept); a
  missing file reads as []."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:  # only a killed writer leaves half a line
        continue
  return out


# Jobs whose lengths differ more than this share a log-step axis, where a
# 20-step job is not squashed against x = 0 beside a 30000-step one.
LOG_STEPS_RATIO = 20


def plot_training_curves(records: Sequence[dict], path: str) -> bool:
  """Small multiples, one panel per metric, of each job's training curve
  (x: the job's own step; line with a small marker per logged chunk, so a
  one-chunk job shows as a point: mean over the job's runs; band: their min
  to max). The step axis is logarithmic when the longest job's last step is
  more than ``LOG_STEPS_RATIO`` times the shortest's. A resumed job logs the
  replayed chunks again: the last record per step counts. Returns whether
  there was anything to plot (and a file written)."""
  import matplotlib.pyplot as plt
  curves: dict[str, dict[int, dict]] = {}
  for r in records:
    curves.setdefault(f"{r['job']}: {r['fit']}" if r['fit'] != r['job'] else r['job'],
                      {})[r['step']] = r
  skip = {'job', 'fit', 'step', 'steps_per_s'}
  metrics = sorted({k for r in records for k in r if k not in skip and not k.endswith('_per_run')},
                   key=lambda k: (k != 'loss', k))
  if not metrics:
    return False
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 2.5, 3.4),
                           squeeze=False)
  last = [max(by_step) for by_step in curves.values()]
  log_x = min(last) > 0 and max(last) > LOG_STEPS_RATIO * min(last)
  for ax, m in zip(axes[0], metrics):
    for label, by_step in curves.items():
      steps = sorted(s for s in by_step if by_step[s].get(m) is not None)
      if not steps:
        continue
      mean = [by_step[s][m] for s in steps]
      line, = ax.plot(steps, mean, marker='o', ms=3, label=label)
      runs = [by_step[s].get(f'{m}_per_run') for s in steps]
      if all(runs) and len(runs[0]) > 1:
        a = np.array([[np.nan if v is None else v for v in r] for r in runs], np.float64)
        ax.fill_between(steps, np.nanmin(a, 1), np.nanmax(a, 1), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set_title(m)
    if log_x:
      ax.set_xscale('log')
    ax.set_xlabel('step (log scale)' if log_x else 'step')
  axes[0][0].set_ylabel('chunk mean (band: runs min to max)')
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.suptitle('training curves per job (metrics.jsonl)')
  fig.tight_layout()
  report.save_figure(fig, path, dpi=110, bbox_inches='tight')
  return True


class Run:
  """One experiment run in ``workdir``: its timings, fingerprint and files.

  ``timings``: ``{name: timing.record}`` of every ``job`` / ``stage`` block.
  ``fingerprint``: ``run_record.fingerprint`` of the config, saved with every
  checkpoint (``loop.fit(fingerprint=...)``), so a job never resumes a
  checkpoint another config wrote.
  """

  def __init__(self, cfg, workdir: str):
    self.cfg, self.workdir = cfg, workdir
    self.timings: dict[str, dict] = {}
    self.fingerprint = run_record.fingerprint(cfg.to_dict())
    if report.writer():
      os.makedirs(workdir, exist_ok=True)

  def path(self, name: str) -> str:
    """``<workdir>/<name>``: the path (a str) of a file or folder of this run."""
    return os.path.join(self.workdir, name)

  def checkpoint_dir(self, job: str) -> str:
    """``<workdir>/train_checkpoints/<job>``: the job's own fit checkpoints."""
    return os.path.join(self.workdir, TRAIN_CHECKPOINTS, job)

  def _log(self, job: str, record: dict) -> None:
    if report.writer():  # one line per chunk, flushed: a run in progress can be followed
      with open(self.path(METRICS), 'a+b') as f:
        f.seek(0, os.SEEK_END)
        cut = f.tell() > 0 and (f.seek(-1, os.SEEK_END) or f.read(1) != b'\n')
        line = json.dumps({'job': job, **record}, allow_nan=False) + '\n'
        f.write((('\n' + line) if cut else line).encode())  # after a killed run's half line

  @contextlib.contextmanager
  def job(self, name: str):
    """Times the block into ``timings[name]`` and logs every fit chunk inside
    to ``metrics.jsonl`` under ``job: name``. Block on the block's results
    inside it (``jax.block_until_ready``), or their run time lands later."""
    with timing.stage(self.timings, name), metric_log.sink(functools.partial(self._log, name)):
      yield

  def timed(self, name: str, fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` inside ``job(name)``, blocked on its result."""
    with self.job(name):
      out = fn(*args, **kwargs)
      jax.block_until_ready(out)
    return out

  def finish(self, results: dict, *, text: Sequence[str] = (), claims: Sequence = (),
             plots: Sequence[str] = (), files: Sequence[str] = ()) -> list[str]:
    """Ends the run: draws ``training_curves.png`` from the log, writes
    ``results.json`` (``results`` plus 'config', 'timings', 'claims' and
    'plots', the curves included), prints ``text`` blocks, the claims
    (``report.claims_text``) and the files written with the total time
    (``timings['total']`` when a ``job('total')`` ran). ``files``: other
    paths under ``workdir`` the run wrote (e.g. 'checkpoints/'). Process 0
    prints and writes; every process returns the names of the files written."""
    plots = list(plots)
    if plot_training_curves(read_metrics(self.path(METRICS)), self.path(CURVES)):
      plots.append(CURVES)
    report.write_json(self.path(RESULTS), {
        'config': self.cfg.to_dict(), **results, 'timings': self.timings,
        'claims': report.claims_json(claims), 'plots': plots})
    written = [RESULTS] + ([METRICS] if os.path.exists(self.path(METRICS)) else []) + plots + [
        f for f in files if os.path.exists(self.path(f))]
    if report.writer():  # one process prints, as one writes
      for block in text:
        if block:
          print(block)
      if claims:
        print(report.claims_text(claims))
      print(report.files_text(self.workdir, written, self.timings))
    return written
