"""Both papers on images: pre-train encoders of every kind, probe them, compare.

    python launch.py --config=configs/cifar10_supervised.py:digits
    python launch.py --config=configs/cifar10_ssl.py:digits
    python launch.py --config=configs/transfer.py:digits

Per kind (clean, adversarial, rep, ll; ``image_pretrain.KINDS``) the encoder
is pre-trained over ``num_seeds`` seeds in one compile, then each seed gets a
linear probe on the probe data (``probe``). The table and results.json
report, with spreads over seeds:

- Paper A, robustness inheritance: the probe's robust accuracy on an
  adversarially pre-trained encoder against a clean one;
- Paper B: the probe's adversarial distance for clean (no penalty) / rep / ll,
  and the accuracy each costs;
- the first-layer filters of every kind (``filters.png``) and their
  roughness (relative energy of their finite differences; smoother filters
  after adversarial training is Paper A's image-side observation).

Claims are checked as "the mean over seeds is higher by more than the
seeds' spread" and printed as holds / does not hold.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import config_blocks as blocks
from robustjax import config_validation as cv
from robustjax import report
from robustjax.attacks import ensemble
from robustjax.data import images
from robustjax.experiments import runner
from robustjax.models.ssl import encoder_variables
from robustjax.recipes import image_pretrain, probe
from robustjax.train import sharding

KINDS = tuple(image_pretrain.KINDS)
CHECKPOINTS = 'checkpoints'  # <workdir>/checkpoints/<kind>: each kind's pre-training


# --- config --------------------------------------------------------------------

def _classes(cfg, field):
  v = cfg[field.split('.')[0]][field.split('.')[1]]
  if isinstance(v, str) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                   for c in v):
    raise cv.ConfigError(field, 'a list of class ids >= 0 (() = all)', v)


def _data_dir_ok(cfg, name: str):
  if name != 'digits' and not os.path.isdir(cfg.data.data_dir or '/nonexistent'):
    raise cv.ConfigError(
        'data.data_dir', f'a tfds data_dir holding a prepared {name!r} (preparing needs '
        'TensorFlow, which robustjax does not install; with internet access run '
        f'`{images.prepare_commands(name)}`; offline: the \':digits\' variant)',
        cfg.data.data_dir)


def validate(cfg) -> None:
  """Returns None for a config the run can use; raises ConfigError (one line
  naming the field and what is allowed) on the first field it cannot."""
  blocks.run(cfg)
  cv.positive_int(cfg, 'pretrain.steps', 'pretrain.batch_size',
                  'spectral.every_k', 'spectral.iters', 'spectral.warmup_iters',
                  'probe.max_iter', 'eval.num_points',
                  'eval.n_iter', 'eval.n_target_classes', 'eval.distance_points',
                  'eval.fmn_steps', 'eval.batch_size')
  cv.one_of(cfg, 'data.name', images.DATASETS)
  _classes(cfg, 'data.classes')
  _data_dir_ok(cfg, cfg.data.name)
  cv.one_of(cfg, 'probe_data.name', ('',) + images.DATASETS)
  _classes(cfg, 'probe_data.classes')
  if cfg.probe_data.name:
    _data_dir_ok(cfg, cfg.probe_data.name)
  cv.number(cfg, 'data.test_fraction', low=0, high=1, strict_low=True)
  for f in ('max_train', 'max_test'):
    v = cfg.data[f]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise cv.ConfigError(f'data.{f}', 'an integer >= 0 (0 = all)', v)
  cv.one_of(cfg, 'model.name', image_pretrain.MODELS)
  cv.one_of(cfg, 'model.padding', ('SAME', 'CIRCULAR'))
  cv.positive_int(cfg, 'model.width')
  w = cfg.model.cnn_widths
  if isinstance(w, str) or not w or not all(isinstance(v, int) and v >= 1 for v in w):
    raise cv.ConfigError('model.cnn_widths', 'a non-empty list of integers >= 1', w)
  p = cfg.pretrain
  cv.one_of(cfg, 'pretrain.method', image_pretrain.METHODS)
  cv.subset_of(cfg, 'pretrain.kinds', KINDS)
  blocks.optimizer(cfg, 'pretrain')
  cv.one_of(cfg, 'pretrain.schedule', ('cosine', 'constant'))
  v = p.seeds_at_once
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise cv.ConfigError('pretrain.seeds_at_once', 'an integer >= 0 (0 = all seeds at once)', v)
  if p.method != 'supervised':
    cv.number(cfg, 'ssl.temperature', low=0, strict_low=True)
    cv.number(cfg, 'ssl.barlow_lambda', low=0)
    cv.number(cfg, 'ssl.adv_weight', low=0)
    cv.boolean(cfg, 'ssl.projector_bias')
    d = cfg.ssl.projector_dims
    if isinstance(d, str) or not d or not all(isinstance(v, int) and v >= 1 for v in d):
      raise cv.ConfigError('ssl.projector_dims', 'a non-empty list of integers >= 1', d)
  pad = cfg.augment.crop_padding
  if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
    raise cv.ConfigError('augment.crop_padding', 'an integer >= 0 (0 = no crop)', pad)
  for f in ('jitter_strength', 'jitter_p', 'grayscale_p', 'min_scale'):
    cv.number(cfg, f'augment.{f}', low=0, high=None if f == 'jitter_strength' else 1)
  blocks.attack(cfg)
  cv.number(cfg, 'spectral.lam', low=0)
  cv.number(cfg, 'spectral.burn_in', low=0, high=1)
  cv.number(cfg, 'spectral.tol', low=0)
  cv.number(cfg, 'probe.l2', low=0)
  cv.one_of(cfg, 'eval.norm', ('l2', 'linf'))
  cv.nonnegative_list(cfg, 'eval.eps')
  if not cfg.eval.eps:
    raise cv.ConfigError('eval.eps', 'a non-empty list of radii', cfg.eval.eps)
  cv.subset_of(cfg, 'eval.attacks', ensemble.ATTACKS)
  blocks.mesh(cfg)


# --- data ----------------------------------------------------------------------

def load(cfg, name: str, classes) -> dict:
  """Dataset ``name`` (``classes`` only, relabelled 0..K-1; () = all) with
  ``cfg.data``'s split and caps, on the device: ``{'x_train': (n, H, W, C)
  float32 in [0, 1], 'y_train': (n,) int32 in [0, K), 'x_test', 'y_test'
  (likewise), 'num_classes': K}``. Raises ValueError for labels outside [0, K)."""
  d = cfg.data
  x_tr, y_tr, x_te, y_te = images.load(
      name, data_dir=d.data_dir, test_fraction=d.test_fraction, split_seed=d.split_seed,
      max_train=d.max_train or None, max_test=d.max_test or None, classes=tuple(classes) or None)
  # The class count is the dataset's (or the filter's), not the largest label
  # seen: a cap or a filter can leave the top classes out of a split.
  k = images.num_classes(name, tuple(classes) or None)
  for split, y in (('train', y_tr), ('test', y_te)):
    images.check_labels(y, k, f'{name} {split} labels')
  return dict(x_train=jnp.asarray(x_tr), y_train=jnp.asarray(y_tr), x_test=jnp.asarray(x_te),
              y_test=jnp.asarray(y_te), num_classes=k)


def probe_spec(cfg) -> tuple[str, tuple]:
  """``(dataset name, classes tuple)`` of the probe: its own when given, else the
  pre-training data's (() = all classes)."""
  explicit = cfg.probe_data.name or cfg.probe_data.classes
  return (cfg.probe_data.name or cfg.data.name,
          tuple(cfg.probe_data.classes) if explicit else tuple(cfg.data.classes))


# --- filters -------------------------------------------------------------------

def first_conv_kernel(params) -> np.ndarray:
  """The first conv kernel met in the parameter tree's order of definition (the
  stem), as a numpy array (kh, kw, c_in, c_out); ``params``: one seed's
  parameters. Raises ValueError when the tree holds no 4-d leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if np.ndim(leaf) == 4:
      return np.asarray(leaf)
  raise ValueError('no conv kernel in the parameters')


def roughness(kernel) -> np.ndarray:
  """Per output filter: (||d_h K||^2 + ||d_w K||^2) / ||K||^2 over its taps and
  input channels (finite differences inside the filter), as a float64 array
  (c_out,) of ``kernel`` (kh, kw, c_in, c_out); unitless, in [0, 8]. 0 for a
  constant filter; larger for filters dominated by high spatial frequencies."""
  k = np.asarray(kernel, np.float64)
  dh, dw = np.diff(k, axis=0), np.diff(k, axis=1)
  num = (dh ** 2).sum(axis=(0, 1, 2)) + (dw ** 2).sum(axis=(0, 1, 2))
  return num / np.maximum((k ** 2).sum(axis=(0, 1, 2)), 1e-30)


def plot_filters(kernels: dict, path: str, max_filters: int = 32, *, cfg=None) -> None:
  """One block per kind: the first layer's filters (``kernels``: kind -> (kh, kw,
  c_in, c_out) of seed 0), at most ``max_filters``, 16 to a row, each scaled to
  its own [min, max]; the block's title gives the kind's mean ``roughness``.
  ``cfg`` (optional) names the pre-training and data in the title. Process 0
  writes ``path``; returns None."""
  import matplotlib.pyplot as plt
  n = min(max_filters, next(iter(kernels.values())).shape[-1])
  ncols = min(n, 16)
  nrows = -(-n // ncols)
  fig = plt.figure(figsize=(0.5 * ncols + 0.4, (0.55 * nrows + 0.35) * len(kernels) + 0.6),
                   layout='constrained')
  blocks = np.atleast_1d(fig.subfigures(len(kernels), 1))
  rgb = next(iter(kernels.values())).shape[2] == 3
  for block, (kind, k) in zip(blocks, kernels.items()):
    axes = block.subplots(nrows, ncols, squeeze=False)
    for j, ax in enumerate(axes.flat):
      ax.set_xticks([]), ax.set_yticks([])
      if j >= n:
        ax.set_visible(False)
        continue
      f = np.asarray(k[..., j], np.float64)
      f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
      ax.imshow(f if rgb else f[..., 0], cmap=None if rgb else 'gray', interpolation='nearest')
    block.suptitle(f'{kind}: roughness {roughness(k)[:n].mean():.2f}', fontsize=9, x=0.02,
                   ha='left')
  what = (f'{cfg.pretrain.method} pre-training on {cfg.data.name}: ' if cfg is not None else '')
  channel = '' if rgb or next(iter(kernels.values())).shape[2] == 1 else ', input channel 0'
  fig.suptitle(f'{what}first-layer filters per kind\n(seed 0{channel}), each scaled to its '
               'own range;\nroughness: mean ||finite differences||^2 / ||K||^2\n'
               '(higher = more high-frequency)', fontsize=9)
  report.save_figure(fig, path, dpi=110, bbox_inches='tight')


# --- summary -------------------------------------------------------------------

def _ms(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return (float(v.mean()), float(v.std())) if v.size else (float('nan'), float('nan'))


def summarize(results: dict) -> dict:
  """``run``'s per-kind results as the summary results.json holds, per kind:
  'probe_acc', 'robust_acc' {str(eps): ...}, 'distance' (l2; per seed the mean
  over the points FMN broke) and 'roughness', each a (mean, std) over seeds of
  the finite values ((nan, nan) when none), with the per-seed lists beside
  them ('<name>_per_seed'); 'distance_failed' (points with no adversarial
  example found, all seeds) and 'train_metrics' ({name: per seed}, the last
  chunk's means)."""
  out = {}
  for kind, r in results.items():
    per_seed_dist = [float(np.mean(d[np.isfinite(d)])) if np.isfinite(d).any() else float('nan')
                     for d in r['distances']]
    s = {'probe_acc': _ms(r['probe_acc']), 'probe_acc_per_seed': list(map(float, r['probe_acc'])),
         'robust_acc': {str(e): _ms(v) for e, v in r['robust_acc'].items()},
         'robust_acc_per_seed': {str(e): list(map(float, v)) for e, v in r['robust_acc'].items()},
         'distance': _ms(per_seed_dist), 'distance_per_seed': per_seed_dist,
         'distance_failed': int(sum((~np.isfinite(d)).sum() for d in r['distances'])),
         'roughness': _ms(r['roughness']), 'roughness_per_seed': list(map(float, r['roughness'])),
         'train_metrics': r['train_metrics']}
    out[kind] = s
  return out


def _better(summary, a: str, b: str, field, name: str, higher=True) -> report.Claim | None:
  """a beats b when mean_a - mean_b exceeds both seeds' std (or the reverse with higher=False)."""
  if a not in summary or b not in summary:
    return None
  get = (lambda k: summary[k][field[0]][field[1]]) if isinstance(field, tuple) else \
      (lambda k: summary[k][field])
  (ma, sa), (mb, sb) = get(a), get(b)
  diff = (ma - mb) if higher else (mb - ma)
  return report.Claim(
      name, bool(diff > max(sa, sb)),
      f"mean over seeds {'higher' if higher else 'lower'} by more than either kind's "
      'std over seeds', {a: (ma, sa), b: (mb, sb)})


def claims(summary: dict, cfg) -> list[report.Claim]:
  """The papers' claims this run can check (``report.Claim``: name, holds, rule,
  numbers {kind: (mean, std)}), in order: Paper A's per eps of ``eval.eps`` and
  on roughness, then Paper B's; a claim whose kinds did not run is left out."""
  out = []
  for e in cfg.eval.eps:
    out.append(_better(summary, 'adversarial', 'clean', ('robust_acc', str(float(e))),
                       f'A: probe robust acc at eps {float(e):g}, adversarial > clean encoder'))
  out.append(_better(summary, 'adversarial', 'clean', 'roughness',
                     'A: first-layer filters smoother, adversarial < clean roughness',
                     higher=False))
  for other in ('clean', 'll'):
    out.append(_better(summary, 'rep', other, 'distance',
                       f'B: adversarial distance, rep > {other}'))
  out.append(_better(summary, 'rep', 'll', 'probe_acc', 'B: probe accuracy, rep > ll'))
  return [c for c in out if c is not None]


def table(summary: dict, cfg) -> str:
  """The printed table: one row per kind (probe accuracy, robust accuracy at
  each eps, l2 adversarial distance, filter roughness as mean +- std over
  seeds) and a line saying what was trained, probed and attacked."""
  pm = lambda t, f='.3f': f'{t[0]:{f}} +- {t[1]:{f}}'
  eps = [str(float(e)) for e in cfg.eval.eps]
  head = ['kind', 'probe acc'] + [f'robust acc {cfg.eval.norm} {float(e):.4g}' for e in eps] + [
      'adv distance l2 (fmn)', 'filter roughness']
  rows = [[k, pm(s['probe_acc'])] + [pm(s['robust_acc'][e]) for e in eps] +
          [pm(s['distance'], '.4f'), pm(s['roughness'], '.2f')] for k, s in summary.items()]
  lines = report.format_table(head, rows)
  name = lambda d, c: d + (f' classes {tuple(c)}' if c else '')
  lines += f'\nmean +- std over {cfg.num_seeds} seeds; pre-training: {cfg.pretrain.method} on ' \
           f'{name(cfg.data.name, cfg.data.classes)}; probe: logistic regression on frozen ' \
           f'features of {name(*probe_spec(cfg))}; ' \
           f'robust acc: {"+".join(cfg.eval.attacks)} ' \
           f'on {cfg.eval.num_points} test points; distances: first {cfg.eval.distance_points} ' \
           'correctly classified'
  return lines


# --- entry point -----------------------------------------------------------------

def key_streams(seed: int, num_seeds: int) -> dict[str, jax.Array]:
  """The run's named keys, each (num_seeds, 2) uint32, one row per seed:
  'pretrain' (``image_pretrain.pretrain``'s keys: it initialises with
  fold_in 0 and draws batches with fold_in 1 of them) and 'eval' (fold_in 2
  of the same seed keys: the probe evaluation's attacks). Every kind reads
  the same rows, so a kind's numbers do not depend on which other kinds run;
  the seed keys are ``split(PRNGKey(seed), num_seeds)``."""
  seeds = jax.random.split(jax.random.PRNGKey(seed), num_seeds)
  return {'pretrain': seeds, 'eval': jax.vmap(lambda k: jax.random.fold_in(k, 2))(seeds)}


def checkpoint_dir(workdir: str, kind: str) -> str:
  """``<workdir>/checkpoints/<kind>``: where ``kind``'s pre-training resumes from
  (the name every images workdir has used, so older workdirs resume)."""
  return os.path.join(workdir, CHECKPOINTS, kind)


def run(cfg, job_run: runner.Run) -> dict:
  """Pre-trains and probes every kind of ``cfg.pretrain.kinds``, each part a
  job of ``job_run`` (``data``, then ``pretrain_<kind>`` and ``probe_<kind>``
  per kind: timed, training chunks logged to metrics.jsonl).

  Returns ``{'results': {kind: {'probe_acc': (seeds,) fractions, 'robust_acc':
  {eps: [per seed]}, 'distances': [(m,) per seed], 'roughness': [per seed],
  'train_metrics': {name: [per seed]}}}, 'kernels': {kind: seed 0's first conv
  kernel (kh, kw, c_in, c_out)}}`` (``summarize`` turns the results into the
  summary)."""
  keys = key_streams(cfg.seed, cfg.num_seeds)
  with job_run.job('data'):
    pre = load(cfg, cfg.data.name, cfg.data.classes)
    spec = probe_spec(cfg)
    post = pre if spec == (cfg.data.name, tuple(cfg.data.classes)) else load(cfg, *spec)
  net = image_pretrain.network_from_config(cfg, pre['num_classes'])
  encoder = net if cfg.pretrain.method == 'supervised' else net.encoder
  results, kernels = {}, {}
  for kind in cfg.pretrain.kinds:
    variables, metrics = job_run.timed(
        f'pretrain_{kind}', image_pretrain.pretrain, cfg, kind, net, pre, keys['pretrain'],
        checkpoint_dir=checkpoint_dir(job_run.workdir, kind), fingerprint=job_run.fingerprint)
    if cfg.pretrain.method != 'supervised':
      variables = encoder_variables(variables)
    with job_run.job(f'probe_{kind}'):
      probes, acc = probe.fit_probes(cfg, encoder, variables, post)
      ev = probe.evaluate(cfg, encoder, variables, probes, post, keys['eval'],
                          desc=f'evaluate {kind}')
    first = [first_conv_kernel(jax.tree.map(lambda a: a[s], variables['params']))
             for s in range(cfg.num_seeds)]
    kernels[kind] = first[0]
    results[kind] = dict(ev, probe_acc=acc, roughness=[float(roughness(k).mean()) for k in first],
                         train_metrics={k: np.asarray(v).tolist() for k, v in metrics.items()})
  return dict(results=results, kernels=kernels)


def main(cfg, workdir: str) -> dict:
  """Pre-trains, probes and compares every kind; prints the table, the claims and
  the files written; writes results.json, metrics.jsonl, filters.png and
  training_curves.png into ``workdir`` (``runner.Run.finish``).

  Returns the summary (``summarize``: ``{kind: {'probe_acc': (mean, std),
  'robust_acc': {str(eps): (mean, std)}, 'distance': (mean, std) l2, ...}}``).
  results.json holds it under 'summary', next to 'config', 'seeds' ([seed,
  num_seeds]), 'timings' (seconds per job, ``timing.record``), 'claims',
  'distances' ({kind: per seed, per point}), 'plots', 'devices' and 'mesh'.
  """
  job_run = runner.Run(cfg, workdir)
  with job_run.job('total'):
    out = run(cfg, job_run)
    summary = summarize(out['results'])
    checks = claims(summary, cfg)
    plot_filters(out['kernels'], job_run.path('filters.png'), cfg=cfg)
  job_run.finish({
      'seeds': [cfg.seed, cfg.num_seeds], 'summary': summary,
      'distances': {k: [d.tolist() for d in r['distances']] for k, r in out['results'].items()},
      'devices': [str(d) for d in jax.devices()],
      'mesh': dict(cfg.mesh) if sharding.mesh_from_config(cfg.get('mesh')) else None},
      text=[table(summary, cfg)], claims=checks, plots=['filters.png'], files=[CHECKPOINTS + '/'])
  return summary
