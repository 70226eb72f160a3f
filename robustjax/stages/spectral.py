"""Paper B: rep-spectral vs ll-spectral vs no spectral penalty.

    python launch.py --config=configs/xor_spectral.py
    python launch.py --config=configs/mnist_spectral.py            # offline digits
    python launch.py --config=configs/mnist_spectral.py:mnist --config.data.data_dir=DIR

For each kind in ``regularizer.kinds`` the same MLP is trained over
``num_seeds`` seeds (vmapped: one compile per kind), with the penalty
``lam * sum sigma_max(W)^2`` switched on after the burn-in (rep: the layers up
to the feature map; ll: all layers). Then, per seed:

- test accuracy of the trained net ("original" head) and of a logistic
  readout re-fitted on the frozen features ("refit" head, Paper B's protocol);
- the adversarial distance (smallest l2 perturbation that flips the
  prediction) of the first ``eval.max_points`` correctly classified test
  points, for each head and each attack in ``eval.attacks`` (white-box FMN,
  hard-label TangentAttack, ...), via
  ``robustjax.metrics.robustness.adversarial_distance``;
- sigma_max of every layer (exact SVD), and the pull-back geometry of the
  feature map (volume element, lambda_max) on the XOR plane or on the plane
  through three test images.

Each kind's training checkpoints to ``workdir/checkpoints/<kind>`` every
``checkpoint_every`` steps (orbax, ``robustjax.train.loop.fit``): rerunning the
same command with the same ``--workdir`` resumes each kind where it stopped
(and skips the training of finished kinds).

Batches: each step draws ``batch_size`` distinct training points at random
(the step key decides), so an "epoch" is ceil(n / batch_size) steps; PyTorch's
shuffled epochs visit each point exactly once per epoch instead.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import config_validation as cv
from robustjax import losses, report, spectral
from robustjax.data import images, toy
from robustjax.metrics import geometry, robustness
from robustjax.models import heads
from robustjax.models.apply import bind, logits as logits_fn
from robustjax.models.mlp import ACTIVATIONS, MLP, features as features_fn
from robustjax.train import loop, state as state_lib

KINDS = spectral.KINDS
DATASETS = ('xor',) + images.DATASETS
HEADS = ('original', 'refit')
ATTACKS = ('fmn', 'ddn', 'bisection', 'tangent', 'hopskipjump')


# --- config ------------------------------------------------------------------

def validate(cfg) -> None:
  """Raises ConfigError on the first field the run cannot use."""
  cv.positive_int(cfg, 'num_seeds', 'chunk_size', 'checkpoint_every', 'train.batch_size',
                  'train.epochs', 'regularizer.every_k', 'regularizer.iters',
                  'regularizer.warmup_iters', 'eval.max_points', 'eval.grid_size')
  cv.one_of(cfg, 'data.name', DATASETS)
  if cfg.data.name == 'xor':
    cv.positive_int(cfg, 'data.n_per_blob', 'data.test_per_blob')
    cv.number(cfg, 'data.noise_std', low=0)
  else:
    cv.number(cfg, 'data.test_fraction', low=0, high=1, strict_low=True)
    for f in ('max_train', 'max_test'):
      v = cfg.data[f]
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise cv.ConfigError(f'data.{f}', 'an integer >= 0 (0 = all)', v)
    if cfg.data.name == 'mnist' and not os.path.isdir(cfg.data.data_dir or '/nonexistent'):
      raise cv.ConfigError('data.data_dir', "a tfds data_dir holding a prepared 'mnist' "
                           "(offline: use data.name='digits')", cfg.data.data_dir)
  widths = cfg.model.widths
  if isinstance(widths, str) or not widths or not all(
      isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
    raise cv.ConfigError('model.widths', 'a non-empty list of integers >= 1', widths)
  cv.one_of(cfg, 'model.activation', tuple(ACTIVATIONS))
  cv.number(cfg, 'model.init_std', low=0, strict_low=True)
  cv.number(cfg, 'model.bias_init_std', low=0)
  cv.one_of(cfg, 'train.optimizer', ('sgd', 'adam'))
  cv.number(cfg, 'train.learning_rate', low=0, strict_low=True)
  cv.number(cfg, 'train.momentum', low=0, high=1)
  cv.number(cfg, 'train.weight_decay', low=0)
  r = cfg.regularizer
  cv.subset_of(cfg, 'regularizer.kinds', KINDS)
  cv.number(cfg, 'regularizer.lam', low=0)
  cv.number(cfg, 'regularizer.tol', low=0)
  if isinstance(r.burn_in_epochs, bool) or not isinstance(r.burn_in_epochs, int) or not (
      0 <= r.burn_in_epochs < cfg.train.epochs):
    raise cv.ConfigError('regularizer.burn_in_epochs',
                         f'an integer in [0, train.epochs = {cfg.train.epochs})', r.burn_in_epochs)
  if isinstance(r.layers, str) or not all(isinstance(p, str) and p for p in r.layers):
    raise cv.ConfigError('regularizer.layers', "a list of parameter paths like 'hidden_0'",
                         r.layers)
  known = {f'hidden_{i}' for i in range(len(widths))} | {'readout'}
  for p in r.layers:
    if p.split('/')[0] not in known:
      raise cv.ConfigError('regularizer.layers', f'paths under {sorted(known)}', r.layers)
  cv.subset_of(cfg, 'eval.heads', HEADS)
  cv.subset_of(cfg, 'eval.attacks', ATTACKS)
  cv.one_of(cfg, 'eval.primary_head', tuple(cfg.eval.heads))
  cv.one_of(cfg, 'eval.primary_attack', tuple(cfg.eval.attacks))
  cv.subset_of(cfg, 'eval.skip', [f'{h}/{a}' for h in HEADS for a in ATTACKS], nonempty=False)
  primary = f'{cfg.eval.primary_head}/{cfg.eval.primary_attack}'
  if primary in cfg.eval.skip:
    raise cv.ConfigError('eval.skip', f'a list without the primary {primary!r}', cfg.eval.skip)
  cv.number(cfg, 'eval.refit_l2', low=0)
  cv.positive_int(cfg, 'eval.refit_max_iter')


def model_from_config(cfg, num_classes: int) -> MLP:
  m = cfg.model
  return MLP(widths=tuple(m.widths), num_classes=num_classes, activation=m.activation,
             init_std=m.init_std, fan_in_init=m.fan_in_init, bias_init_std=m.bias_init_std,
             scale_by_width=m.scale_by_width)


# --- data ----------------------------------------------------------------------

def load_data(cfg, keys: jax.Array) -> dict:
  """Train/test arrays; 'per_seed' says whether they carry a leading seed axis.

  XOR draws a new set per seed (``per_seed=True``: arrays (seeds, n, 2)); an
  image dataset is one set that every seed reads (``per_seed=False``: one
  copy, not one per seed). Inputs are flattened to (n, d); 'bounds' is the
  input domain for attacks.
  """
  d = cfg.data
  if d.name == 'xor':
    tr = jax.vmap(lambda k: toy.noisy_xor(jax.random.fold_in(k, 0), d.n_per_blob, d.noise_std))(keys)
    te = jax.vmap(lambda k: toy.noisy_xor(jax.random.fold_in(k, 1), d.test_per_blob,
                                          d.noise_std))(keys)
    return dict(x_train=tr[0], y_train=tr[1], x_test=te[0], y_test=te[1], num_classes=2,
                bounds=None, image_shape=None, per_seed=True)
  x_tr, y_tr, x_te, y_te = images.load(d.name, data_dir=d.data_dir, test_fraction=d.test_fraction,
                                       split_seed=d.split_seed, max_train=d.max_train or None,
                                       max_test=d.max_test or None)
  flat = lambda a: jnp.asarray(a.reshape(a.shape[0], -1))
  return dict(x_train=flat(x_tr), y_train=jnp.asarray(y_tr), x_test=flat(x_te),
              y_test=jnp.asarray(y_te), num_classes=int(max(y_tr.max(), y_te.max()) + 1),
              bounds=(0.0, 1.0), image_shape=x_tr.shape[1:], per_seed=False)


def seed_axis(data: dict):
  """The vmap in_axis of the data arrays: 0 when each seed has its own set, else None."""
  return 0 if data['per_seed'] else None


def of_seed(data: dict, name: str, s: int):
  """``data[name]`` as seed ``s`` sees it."""
  return data[name][s] if data['per_seed'] else data[name]


# --- training ------------------------------------------------------------------

def batch_loss(params, key, aux, *, model: MLP, batch_size: int):
  """Cross-entropy on ``batch_size`` distinct random training points."""
  x, y = aux
  idx = jax.random.choice(key, x.shape[0], (min(batch_size, x.shape[0]),), replace=False)
  logits = model.apply({'params': params}, x[idx])
  loss = jnp.mean(losses.cross_entropy(logits, y[idx]))
  return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == y[idx])}


def steps_per_epoch(cfg, n_train: int) -> int:
  return -(-n_train // min(cfg.train.batch_size, n_train))


def train(cfg, kind: str, model: MLP, data: dict, keys: jax.Array, desc: str = '',
          checkpoint_dir: str | None = None):
  """Trains one net per seed under penalty ``kind``; returns (params, final train metrics).

  ``checkpoint_dir``: this kind's own directory; the fit saves there every
  ``cfg.checkpoint_every`` steps and a rerun resumes from it (``loop.fit``).
  """
  t, r = cfg.train, cfg.regularizer
  x_train = of_seed(data, 'x_train', 0)
  spe = steps_per_epoch(cfg, x_train.shape[0])
  init = lambda k: model.init(k, x_train[:1])['params']
  p0 = jax.vmap(lambda k: init(jax.random.fold_in(k, 0)))(keys)
  one = jax.tree.map(lambda a: a[0], p0)
  mask = spectral.layer_mask(one, kind, feature_layers=model.feature_layers, layers=tuple(r.layers))
  spec = spectral.SpectralSpec.from_config(r, kind, spe)
  tx = optax.chain(spectral.penalize(spec, mask),
                   state_lib.make_optimizer(t.optimizer, t.learning_rate,
                                            weight_decay=t.weight_decay, momentum=t.momentum))
  states = jax.vmap(lambda p: state_lib.create(p, tx))(p0)
  loss_fn = functools.partial(batch_loss, model=model, batch_size=t.batch_size)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  states, metrics = loop.fit(states, (data['x_train'], data['y_train']), train_keys, loss_fn,
                             steps=t.epochs * spe, chunk_size=cfg.chunk_size, batched=True,
                             desc=desc or f'train {kind}', progress=cfg.progress,
                             mesh=cfg.get('mesh'), shared_aux=not data['per_seed'],
                             checkpoint_dir=checkpoint_dir,
                             checkpoint_every=cfg.checkpoint_every)
  return states.params, metrics


# --- evaluation ----------------------------------------------------------------

def first_correct(predict_fn, x, y, n: int):
  """Indices of the first ``n`` correctly classified points, padded to exactly n.

  Padding repeats the first index, so every seed, kind and head hands the
  attacks a batch of one shape and they compile once (the number of correct
  points differs from model to model). Returns (padded indices, how many are real).
  """
  idx = np.nonzero(np.asarray(jnp.argmax(predict_fn(x), -1) == y))[0][:n]
  if idx.size == 0:
    return idx, 0
  return np.concatenate([idx, np.full(n - idx.size, idx[0])]), idx.size


def attack_kwargs(cfg, attack: str) -> dict:
  block = {'ddn': 'fmn', 'hopskipjump': 'tangent'}.get(attack, attack)
  return dict(cfg.eval[block]) if block in cfg.eval else {}


def evaluate(cfg, model: MLP, params, data: dict, keys: jax.Array) -> dict:
  """Accuracies, re-fitted heads, adversarial distances and sigmas for every seed."""
  e, S, ax = cfg.eval, keys.shape[0], seed_axis(data)
  x_te, y_te = data['x_test'], data['y_test']
  feats = jax.jit(jax.vmap(lambda p, x: features_fn(model, p, x), in_axes=(0, ax)))
  acc = lambda logits, y: jnp.mean(jnp.argmax(logits, -1) == y, axis=-1)
  out = {'test_acc': np.asarray(acc(jax.vmap(lambda p, x: model.apply({'params': p}, x),
                                             in_axes=(0, ax))(params, x_te), y_te))}
  predict = {'original': [bind(logits_fn, model, jax.tree.map(lambda a: a[s], params))
                          for s in range(S)]}
  if 'refit' in e.heads:
    fit = jax.vmap(lambda f, y: heads.fit_logistic_regression(
        f, y, num_classes=data['num_classes'], l2=e.refit_l2, max_iter=e.refit_max_iter),
        in_axes=(0, ax))
    head = fit(feats(params, data['x_train']), data['y_train'])
    out['refit_test_acc'] = np.asarray(acc(jax.vmap(heads.linear_head)(head, feats(params, x_te)),
                                           y_te))
    predict['refit'] = [heads.readout_predict_fn(
        bind(features_fn, model, jax.tree.map(lambda a: a[s], params)),
        jax.tree.map(lambda a: a[s], head)) for s in range(S)]
  out['distances'] = {}
  for h in e.heads:
    for a in e.attacks:
      if f'{h}/{a}' in e.skip:
        continue
      per_seed = []
      n = min(e.max_points, x_te.shape[-2])
      for s in range(S):
        x, y = of_seed(data, 'x_test', s), of_seed(data, 'y_test', s)
        idx, real = first_correct(predict[h][s], x, y, n)
        if real == 0:
          per_seed.append(np.zeros((0,)))
          continue
        # All points handed over are correct, so max_points=None keeps them all.
        r = robustness.adversarial_distance(predict[h][s], x[idx], y[idx], method=a,
                     key=jax.random.fold_in(keys[s], len(out['distances'])), max_points=None,
                     bounds=data['bounds'], **attack_kwargs(cfg, a))
        per_seed.append(np.asarray(r['distances'], np.float64)[:real])
      out['distances'][f'{h}/{a}'] = per_seed
  mask = spectral.layer_mask(jax.tree.map(lambda a: a[0], params), 'll')
  out['sigma_max'] = {k: np.asarray(v) for k, v in
                      jax.vmap(lambda p: spectral.sigma_max(p, mask))(params).items()}
  return out


def geometry_maps(cfg, model: MLP, params_seed0, data: dict) -> dict:
  """Volume element, lambda_max and the decision function on a 2-D slice (seed 0).

  XOR: the input square [-lim, lim]^2. Images: the plane through the first
  three test images of different classes.
  """
  n = cfg.eval.grid_size
  if data['image_shape'] is None:
    lim = cfg.eval.grid_limit
    pts, _ = geometry.grid_2d(-lim, lim, n)
    basis, extent, anchors = None, (-lim, lim, -lim, lim), None
  else:
    x, y = np.asarray(of_seed(data, 'x_test', 0)), np.asarray(of_seed(data, 'y_test', 0))
    first = [int(np.nonzero(y == c)[0][0]) for c in np.unique(y)[:3]]
    pts, basis, coords, anchors = geometry.plane_through(*(jnp.asarray(x[i]) for i in first), n=n)
    c = np.asarray(coords)
    extent = (c[..., 0].min(), c[..., 0].max(), c[..., 1].min(), c[..., 1].max())
    anchors = np.asarray(anchors)
  g = jax.jit(lambda p, x: geometry.pullback_metric(
      lambda z: features_fn(model, p, z), x, basis))(params_seed0, pts)
  logits = model.apply({'params': params_seed0}, pts)
  top2 = jnp.sort(logits, -1)[:, -2:]
  # 0 on the decision boundary: the top logit minus the runner-up, signed by class parity
  # for two classes (so the contour is the boundary), plain gap otherwise.
  boundary = (logits[:, 1] - logits[:, 0]) if logits.shape[-1] == 2 else top2[:, 1] - top2[:, 0]
  rs = lambda a: np.asarray(a).reshape(n, n)
  return dict(log_volume=rs(geometry.log_volume_element(g)),
              log10_lambda_max=rs(jnp.log10(geometry.lambda_max(g))),
              boundary=rs(boundary), argmax=rs(jnp.argmax(logits, -1)), extent=extent,
              anchors=anchors)


# --- summary, table, plots -------------------------------------------------------

def _finite(a):
  a = np.asarray(a, np.float64)
  return a[np.isfinite(a)]


def _stat(values, f):
  v = _finite(values)
  return float(f(v)) if v.size else float('nan')


def summarize(cfg, evals: dict) -> dict:
  """summary[kind]: headline numbers (primary head and attack) plus every combination."""
  primary = f'{cfg.eval.primary_head}/{cfg.eval.primary_attack}'
  summary = {}
  for kind, ev in evals.items():
    s = {'test_acc': float(np.mean(ev['test_acc'])), 'test_acc_std': float(np.std(ev['test_acc'])),
         'test_acc_per_seed': ev['test_acc'].tolist()}
    if 'refit_test_acc' in ev:
      s.update(refit_test_acc=float(np.mean(ev['refit_test_acc'])),
               refit_test_acc_std=float(np.std(ev['refit_test_acc'])),
               refit_test_acc_per_seed=ev['refit_test_acc'].tolist())
    s['distances'] = {}
    for name, per_seed in ev['distances'].items():
      means = [_stat(d, np.mean) for d in per_seed]
      medians = [_stat(d, np.median) for d in per_seed]
      s['distances'][name] = dict(
          mean=float(np.nanmean(means)), mean_std=float(np.nanstd(means)),
          median=float(np.nanmean(medians)), median_std=float(np.nanstd(medians)),
          mean_per_seed=means, median_per_seed=medians,
          num_points_per_seed=[int(len(d)) for d in per_seed],
          num_failed_per_seed=[int(np.sum(~np.isfinite(d))) for d in per_seed])
    p = s['distances'][primary]
    s.update(adv_distance='mean over seeds of the per-seed mean/median finite distance, '
                          f'{primary}',
             adv_distance_mean=p['mean'], adv_distance_mean_std=p['mean_std'],
             adv_distance_median=p['median'], adv_distance_median_std=p['median_std'],
             adv_distance_mean_per_seed=p['mean_per_seed'],
             adv_distance_median_per_seed=p['median_per_seed'])
    s['sigma_max_per_seed'] = {k: v.tolist() for k, v in ev['sigma_max'].items()}
    summary[kind] = s
  return summary


def table(summary: dict, cfg) -> str:
  names = list(next(iter(summary.values()))['distances'])
  head = ['kind', 'test acc', 'refit acc'] + [f'{n} mean (median)' for n in names] + [
      'sigma_max ' + k.split('/')[0] for k in next(iter(summary.values()))['sigma_max_per_seed']]
  pm = lambda m, sd, f='.3f': f'{m:{f}} +- {sd:{f}}'
  rows = []
  for kind, s in summary.items():
    row = [kind, pm(s['test_acc'], s['test_acc_std']),
           pm(s['refit_test_acc'], s['refit_test_acc_std']) if 'refit_test_acc' in s else '-']
    for n in names:
      d = s['distances'][n]
      row.append(f"{pm(d['mean'], d['mean_std'], '.4f')} ({d['median']:.4f})")
    row += [pm(np.mean(v), np.std(v), '.2f') for v in s['sigma_max_per_seed'].values()]
    rows.append(row)
  return report.format_table(head, rows) + (
      f'\nmean +- std over {cfg.num_seeds} seeds of per-seed statistics; distances: l2, '
      f'first {cfg.eval.max_points} correctly classified test points per head, '
      f"failed attacks excluded; lam = {cfg.regularizer.lam:g}, burn-in "
      f'{cfg.regularizer.burn_in_epochs} of {cfg.train.epochs} epochs')


def plot_distances(evals: dict, path: str) -> None:
  """Box plots of per-point distances (all seeds pooled), one panel per head/attack."""
  import matplotlib.pyplot as plt
  names = list(next(iter(evals.values()))['distances'])
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
  for ax, n in zip(axes[0], names):
    data = [np.concatenate([_finite(d) for d in evals[k]['distances'][n]]) for k in evals]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(evals) + 1), list(evals))
    for i, k in enumerate(evals):  # per-seed means as dots
      ax.scatter(np.full(len(evals[k]['distances'][n]), i + 1.25),
                 [_stat(d, np.mean) for d in evals[k]['distances'][n]], s=12, c='k')
    ax.set_title(n)
    ax.set_ylabel('adversarial distance (l2)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_geometry(maps: dict, data: dict, workdir: str) -> list[str]:
  """Decision boundaries and volume-element / lambda_max maps, one panel per kind."""
  extent = next(iter(maps.values()))['extent']
  pts = lbl = None
  if data['image_shape'] is None:
    pts, lbl = np.asarray(of_seed(data, 'x_train', 0)), np.asarray(of_seed(data, 'y_train', 0))
  else:
    pts = next(iter(maps.values()))['anchors']
  contour = {k: m['boundary'] for k, m in maps.items()}
  files = []
  for key, title in (('log_volume', 'log volume element log sqrt(det g)'),
                     ('log10_lambda_max', 'log10 lambda_max(g)'),
                     ('boundary', 'decision function (white: boundary)')):
    path = os.path.join(workdir, f'{key}.png')
    geometry.plot_maps({k: m[key] for k, m in maps.items()}, extent, path, suptitle=title,
                       points=pts, labels=lbl, contour=contour,
                       cmap='coolwarm' if key == 'boundary' else 'viridis')
    files.append(path)
  return files


# --- entry point -----------------------------------------------------------------

def run(cfg, workdir: str) -> dict:
  timings = {}
  keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.num_seeds)
  data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  t0 = time.perf_counter()
  data = load_data(cfg, data_keys)
  timings['data'] = round(time.perf_counter() - t0, 2)
  model = model_from_config(cfg, data['num_classes'])
  # Same init and batch keys for every kind: the kinds differ only in the penalty.
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  evals, maps, train_metrics = {}, {}, {}
  for kind in cfg.regularizer.kinds:
    t0 = time.perf_counter()
    params, metrics = train(cfg, kind, model, data, train_keys,
                            checkpoint_dir=os.path.join(workdir, 'checkpoints', kind))
    jax.block_until_ready(params)
    timings[f'train_{kind}'] = round(time.perf_counter() - t0, 2)
    train_metrics[kind] = {k: np.asarray(v).tolist() for k, v in metrics.items()}
    t0 = time.perf_counter()
    evals[kind] = evaluate(cfg, model, params, data, eval_keys)
    timings[f'eval_{kind}'] = round(time.perf_counter() - t0, 2)
    if cfg.eval.geometry:
      t0 = time.perf_counter()
      maps[kind] = geometry_maps(cfg, model, jax.tree.map(lambda a: a[0], params), data)
      timings[f'geometry_{kind}'] = round(time.perf_counter() - t0, 2)
  return dict(evals=evals, maps=maps, data=data, timings=timings, train_metrics=train_metrics)


def main(cfg, workdir: str) -> dict:
  """Trains and evaluates every kind; prints the table, writes results.json and plots."""
  t0 = time.perf_counter()
  out = run(cfg, workdir)
  summary = summarize(cfg, out['evals'])
  timings = dict(out['timings'], total=round(time.perf_counter() - t0, 2))
  print(table(summary, cfg))
  plots = [os.path.join(workdir, 'adv_distance_box.png')]
  plot_distances(out['evals'], plots[0])
  if out['maps']:
    plots += plot_geometry(out['maps'], out['data'], workdir)
  report.write_json(os.path.join(workdir, 'results.json'), {
      'config': cfg.to_dict(), 'seeds': [cfg.seed, cfg.num_seeds], 'timings': timings,
      'summary': summary, 'final_train_metrics': out['train_metrics'],
      'distances': {k: {n: [d.tolist() for d in v] for n, v in ev['distances'].items()}
                    for k, ev in out['evals'].items()},
      'plots': [os.path.basename(p) for p in plots]})
  print(f'results: {os.path.join(workdir, "results.json")} (total {timings["total"]:.1f} s)')
  return summary
