"""Paper B: rep-spectral vs ll-spectral vs no spectral penalty.

    python launch.py --config=configs/xor_spectral.py
    python launch.py --config=configs/mnist_spectral.py            # offline digits
    python launch.py --config=configs/mnist_spectral.py:mnist --config.data.data_dir=DIR

Training follows the authors' protocol: one unregularised burn-in of
``regularizer.burn_in_epochs`` epochs over ``num_seeds`` seeds (vmapped: one
compile), shared by every kind; then, from that state (parameters AND
optimizer momentum), each kind in ``regularizer.kinds`` trains the remaining
epochs under its penalty ``lam * sum sigma_max(W)^2``:

- ``clean``: no penalty (the uninterrupted run; Paper B's "none");
- ``rep``: the layers up to the feature map (rep-spectral);
- ``ll``: every layer, readout included (Yoshida & Miyato; the authors'
  multi-layer MLPs and ResNets);
- ``ll_readout``: the readout only (what the authors' ll code reaches in
  their single-hidden-layer model);
- ``rep_eig_ub``: rep plus lam * the batch mean of max_j act'(z_j)^2 (their
  XOR ``eig-ub``); the slope term is added by the loss of the penalised phase
  (``spectral.activation_slope_penalty``), the sigma^2 terms by the optax
  transformation.

The authors restart the optimizer at the switch-on (their regularised runs
load the burn-in checkpoint into a fresh SGD); here the momentum carries on,
so that the kinds differ only in the penalty. ``sweep.lams`` (non-empty) runs
every penalised kind at each lam after the same burn-in ('clean' once). Then,
per seed:

- test accuracy of the trained net ("original" head) and of a logistic
  readout re-fitted on the frozen features ("refit" head, Paper B's protocol);
- the adversarial distance (smallest l2 perturbation that flips the
  prediction) of the first ``eval.max_points`` correctly classified test
  points, for each head and each attack in ``eval.distance_attacks`` (white-box FMN,
  hard-label TangentAttack, ...), via
  ``robustjax.metrics.robustness.adversarial_distance``;
- a certified lower bound on the same points' distances, per head
  (``robustjax.metrics.certify``: the margin over the feature map's Lipschitz
  bound from exact per-layer spectral norms), so that each row reads
  certified <= true distance <= attack distance; points where the bound
  exceeds an attack's distance (impossible unless something is wrong) are
  counted;
- sigma_max of every layer (exact SVD), and the pull-back geometry of the
  feature map (volume element, lambda_max) on the XOR plane or on the plane
  through three test images.

The run goes through ``robustjax.experiments.runner`` (``main``): each part
is a named job (timings; every training chunk in ``workdir/metrics.jsonl``).
The burn-in checkpoints to ``workdir/train_checkpoints/burn_in`` and each kind
to ``workdir/train_checkpoints/<kind>`` (``<kind>_lam<lam>`` in a sweep) every
``checkpoint_every`` steps (orbax, ``robustjax.train.loop.fit``, with the
config's fingerprint): rerunning the same command with the same ``--workdir``
resumes each where it stopped (and skips the training of finished ones); a
workdir from before the runner resumes from its ``workdir/checkpoints/``.

Batches: each step draws ``batch_size`` distinct training points at random
(the step key decides), so an "epoch" is ceil(n / batch_size) steps; PyTorch's
shuffled epochs visit each point exactly once per epoch instead.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import config_blocks as blocks
from robustjax import config_validation as cv
from robustjax import losses, progress, report, spectral
from robustjax.attacks import decision, registry
from robustjax.data import images, toy
from robustjax.experiments import runner
from robustjax.metrics import certify, geometry, robustness
from robustjax.models import heads
from robustjax.models.apply import bind, logits as logits_fn
from robustjax.models.mlp import ACTIVATIONS, INITS, MLP, features as features_fn
from robustjax.train import loop, state as state_lib

KINDS = spectral.KINDS
DATASETS = ('xor',) + images.DATASETS
HEADS = ('original', 'refit')
ACC_SLACK = 0.01   # claims: rep's accuracy may fall at most 1 point below clean's
ATTACKS = registry.names('minimal')  # eval.distance_attacks: the minimal-distance methods
KIND_WORDS = {
    'clean': 'no penalty',
    'rep': 'hidden layers (up to the features)',
    'rep_eig_ub': 'hidden layers + activation slope (eig-ub)',
    'll': 'every layer incl. readout',
    'll_readout': 'readout only (authors\' 1-hidden-layer ll)',
}


# --- config ------------------------------------------------------------------

def validate(cfg) -> None:
  """Raises ConfigError on the first field the run cannot use."""
  blocks.run(cfg)
  blocks.mesh(cfg)
  cv.positive_int(cfg, 'train.batch_size', 'train.epochs', 'regularizer.every_k', 'regularizer.iters',
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
  cv.one_of(cfg, 'model.init', INITS)
  cv.number(cfg, 'model.init_std', low=0, strict_low=True)
  blocks.optimizer(cfg, 'train')
  r = cfg.regularizer
  if not isinstance(r.kinds, str) and 'none' in r.kinds:
    raise cv.Renamed('regularizer.kinds', 'clean', 'the unregularised baseline, one name in '
                     'every experiment', old='none')
  cv.subset_of(cfg, 'regularizer.kinds', KINDS)
  if len(set(r.kinds)) != len(r.kinds):
    raise cv.ConfigError('regularizer.kinds', 'a list without repeats', r.kinds)
  cv.number(cfg, 'regularizer.lam', low=0)
  lams = cfg.sweep.lams
  if isinstance(lams, str) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in lams) or (
      len(set(lams)) != len(lams)):
    raise cv.ConfigError('sweep.lams', 'a list of distinct numbers > 0 (empty: no sweep)', lams)
  if 'rep_eig_ub' in r.kinds and r.every_k != 1:
    raise cv.ConfigError('regularizer.every_k', "1 with kind 'rep_eig_ub' (its slope term is "
                         'in the loss of every penalised step)', r.every_k)
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
  cv.no_renamed_fields(cfg, 'spectral')
  cv.subset_of(cfg, 'eval.distance_attacks', ATTACKS)
  cv.one_of(cfg, 'eval.primary_head', tuple(cfg.eval.heads))
  cv.one_of(cfg, 'eval.primary_attack', tuple(cfg.eval.distance_attacks))
  cv.subset_of(cfg, 'eval.skip', [f'{h}/{a}' for h in HEADS for a in ATTACKS], nonempty=False)
  primary = f'{cfg.eval.primary_head}/{cfg.eval.primary_attack}'
  if primary in cfg.eval.skip:
    raise cv.ConfigError('eval.skip', f'a list without the primary {primary!r}', cfg.eval.skip)
  if 'tangent' in cfg.eval and 'starts' in cfg.eval.tangent:
    cv.one_of(cfg, 'eval.tangent.starts', decision.STARTS)
    if cfg.eval.tangent.starts == 'gaussian':
      cv.number(cfg, 'eval.tangent.start_std', low=0, strict_low=True)
      cv.positive_int(cfg, 'eval.tangent.start_tries')
  cv.number(cfg, 'eval.refit_l2', low=0)
  cv.positive_int(cfg, 'eval.refit_max_iter')


def model_from_config(cfg, num_classes: int) -> MLP:
  """The ``MLP`` of ``cfg.model`` with ``num_classes`` logits."""
  m = cfg.model
  return MLP(widths=tuple(m.widths), num_classes=num_classes, activation=m.activation,
             init_scheme=m.init, init_std=float(m.init_std), scale_by_width=m.scale_by_width)


# --- data ----------------------------------------------------------------------

def load_data(cfg, keys: jax.Array) -> dict:
  """Train/test arrays; 'per_seed' says whether they carry a leading seed axis.

  Returns ``{'x_train': (n, d) float32, 'y_train': (n,) integer labels, 'x_test',
  'y_test', 'num_classes': int, 'bounds': (low, high) or None (unbounded),
  'image_shape': (h, w[, c]) or None, 'per_seed': bool}``; ``keys``:
  (num_seeds, 2), the 'data' stream (XOR only). XOR draws a new set per seed
  (``per_seed=True``: arrays (seeds, n, 2)); an image dataset is one set that
  every seed reads (``per_seed=False``: one copy, not one per seed). Inputs
  are flattened to (n, d); 'bounds' is the input domain for attacks.
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
  # The dataset's class count, not the largest label + 1 (a capped split may lack the top class).
  k = images.num_classes(d.name)
  images.check_labels(y_tr, k, 'train labels')
  images.check_labels(y_te, k, 'test labels')
  return dict(x_train=flat(x_tr), y_train=jnp.asarray(y_tr), x_test=flat(x_te),
              y_test=jnp.asarray(y_te), num_classes=k,
              bounds=(0.0, 1.0), image_shape=x_tr.shape[1:], per_seed=False)


def seed_axis(data: dict):
  """The vmap in_axis of the data arrays: 0 when each seed has its own set, else None."""
  return 0 if data['per_seed'] else None


def of_seed(data: dict, name: str, s: int):
  """``data[name]`` as seed ``s`` sees it."""
  return data[name][s] if data['per_seed'] else data[name]


# --- training ------------------------------------------------------------------

def batch_loss(params, key, aux, *, model: MLP, batch_size: int, slope_lam: float = 0.0):
  """Cross-entropy on ``batch_size`` distinct random training points: returns
  (scalar loss, ``{'accuracy'[, 'slope_term']}`` scalars), ``loop.fit``'s loss
  form; ``aux`` = (x (n, d), y (n,)).

  ``slope_lam > 0`` (rep_eig_ub's penalised phase) adds ``slope_lam`` times the
  batch's activation-slope term (``spectral.activation_slope_penalty``).
  """
  x, y = aux
  idx = jax.random.choice(key, x.shape[0], (min(batch_size, x.shape[0]),), replace=False)
  if slope_lam > 0:
    logits, inter = model.apply({'params': params}, x[idx], mutable=['preactivations'])
    zs = [v[0] for v in inter['preactivations'].values()]
    slope = spectral.activation_slope_penalty(zs, ACTIVATIONS[model.activation])
  else:
    logits, slope = model.apply({'params': params}, x[idx]), jnp.zeros(())
  ce = jnp.mean(losses.cross_entropy(logits, y[idx]))
  metrics = {'accuracy': jnp.mean(jnp.argmax(logits, -1) == y[idx])}
  if slope_lam > 0:
    metrics['slope_term'] = slope
  return ce + slope_lam * slope, metrics


def steps_per_epoch(cfg, n_train: int) -> int:
  """ceil(n_train / batch size): the steps of one "epoch" (batch capped at n_train)."""
  return -(-n_train // min(cfg.train.batch_size, n_train))


def _optimizer(cfg):
  t = cfg.train
  return state_lib.make_optimizer(t.optimizer, t.learning_rate, weight_decay=t.weight_decay,
                                  momentum=t.momentum)


def _fit(cfg, states, data, keys, loss_fn, steps, desc, checkpoint_dir, fingerprint):
  return loop.fit(states, (data['x_train'], data['y_train']), keys, loss_fn, steps=steps,
                  chunk_size=cfg.chunk_size, batched=True, desc=desc, progress=cfg.progress,
                  mesh=cfg.get('mesh'), shared_aux=not data['per_seed'],
                  checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                  fingerprint=fingerprint)


def burn_in(cfg, model: MLP, data: dict, keys: jax.Array, checkpoint_dir: str | None = None,
            fingerprint: dict | None = None):
  """The shared unregularised phase. Returns (TrainState stacked over seeds,
  metrics ``{name: (num_seeds,) last chunk's mean}``, {} for zero epochs).

  ``keys``: (num_seeds, 2), the 'train' stream. Initialises one net per seed
  (fold_in(key, 0)) and trains ``burn_in_epochs * steps_per_epoch`` steps
  (step keys from fold_in(key, 1)); zero epochs return the initial state.
  ``checkpoint_dir`` / ``fingerprint``: as ``loop.fit`` (resume, and refuse a
  checkpoint of another config).
  """
  x_train = of_seed(data, 'x_train', 0)
  p0 = jax.vmap(lambda k: model.init(jax.random.fold_in(k, 0), x_train[:1])['params'])(keys)
  states = jax.vmap(lambda p: state_lib.create(p, _optimizer(cfg)))(p0)
  steps = cfg.regularizer.burn_in_epochs * steps_per_epoch(cfg, x_train.shape[0])
  if steps == 0:
    return states, {}
  loss_fn = functools.partial(batch_loss, model=model, batch_size=cfg.train.batch_size)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  return _fit(cfg, states, data, train_keys, loss_fn, steps, 'burn-in', checkpoint_dir,
              fingerprint)


def train(cfg, kind: str, model: MLP, data: dict, keys: jax.Array, burned,
          lam: float | None = None, desc: str = '', checkpoint_dir: str | None = None,
          fingerprint: dict | None = None):
  """Continues the burned-in states under penalty ``kind`` at strength ``lam``
  (default ``regularizer.lam``) for the remaining epochs. Returns (params
  stacked over seeds, metrics ``{name: (num_seeds,) last chunk's mean}``:
  'loss', 'accuracy', 'slope_term' for rep_eig_ub).

  The optimizer state (momentum) carries on from the burn-in; the penalty's
  power-iteration vectors are warmed up at the first step (the switch-on).
  Step keys come from fold_in(key, 2), the same for every kind.
  ``checkpoint_dir``: this kind's own directory; the fit saves there every
  ``cfg.checkpoint_every`` steps and a rerun resumes from it (``loop.fit``;
  ``fingerprint`` is saved with each checkpoint, and one of another config is
  refused).
  """
  r = cfg.regularizer
  lam = float(r.lam if lam is None else lam)
  x_train = of_seed(data, 'x_train', 0)
  spe = steps_per_epoch(cfg, x_train.shape[0])
  one = jax.tree.map(lambda a: a[0], burned.params)
  mask = spectral.layer_mask(one, kind, feature_layers=model.feature_layers,
                             layers=tuple(r.layers), readout_layers=(model.readout_layer,))
  spec = dataclasses.replace(spectral.SpectralSpec.from_config(r, kind, spe), lam=lam,
                             burn_in_steps=0)
  pen = spectral.penalize(spec, mask)
  tx = optax.chain(pen, _optimizer(cfg))
  # chain's state is the tuple of its parts' states: a fresh penalty state in
  # front of the burn-in's optimizer state.
  states = jax.vmap(lambda p, o: state_lib.create(p, tx).replace(opt_state=(pen.init(p), o)))(
      burned.params, burned.opt_state)
  loss_fn = functools.partial(batch_loss, model=model, batch_size=cfg.train.batch_size,
                              slope_lam=lam if kind == 'rep_eig_ub' else 0.0)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  steps = (cfg.train.epochs - r.burn_in_epochs) * spe
  states, metrics = _fit(cfg, states, data, train_keys, loss_fn, steps, desc or f'train {kind}',
                         checkpoint_dir, fingerprint)
  return states.params, metrics


# --- evaluation ----------------------------------------------------------------

def first_correct(predict_fn, x, y, n: int):
  """Indices of the first ``n`` correctly classified points, padded to exactly n.

  Padding repeats the first index, so every seed, kind and head hands the
  attacks a batch of one shape and they compile once (the number of correct
  points differs from model to model). Returns (padded indices, how many are real).
  """
  # Strictly correct (margin > 0, as adversarial_distance counts them): a tie is
  # not a point to attack, and each head's attacks and bound see the same points.
  idx = np.nonzero(np.asarray(losses.margin(predict_fn(x), y) > 0))[0][:n]
  if idx.size == 0:
    return idx, 0
  return np.concatenate([idx, np.full(n - idx.size, idx[0])]), idx.size


def attack_kwargs(cfg, attack: str) -> dict:
  """The keyword arguments of ``attack`` from its ``cfg.eval`` block (ddn reads
  ``fmn``'s, hopskipjump ``tangent``'s), {} when there is none."""
  block = {'ddn': 'fmn', 'hopskipjump': 'tangent'}.get(attack, attack)
  return dict(cfg.eval[block]) if block in cfg.eval else {}


def evaluate(cfg, model: MLP, params, data: dict, keys: jax.Array, desc: str = 'evaluate') -> dict:
  """Accuracies, re-fitted heads, adversarial distances and sigmas for every seed
  (a progress bar ``desc`` counts the attack runs, one per head, attack and seed).

  ``params``: stacked over seeds; ``keys``: (num_seeds, 2), the 'eval' stream.
  Returns ``{'test_acc': (S,), 'refit_test_acc': (S,)`` (with the refit head),
  ``'distances': {'head/attack' and 'head/certified': [S arrays (n_s,) of l2
  distances, non-finite where an attack failed]}, 'certified_violations':
  {'head/attack': [S ints]}, 'sigma_max': {'layer/kernel': (S,)}}``, n_s <=
  ``eval.max_points`` the seed's correctly classified test points.
  """
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
  # The points per head and seed: the first max_points it classifies correctly.
  n = min(e.max_points, x_te.shape[-2])
  points = {h: [first_correct(predict[h][s], of_seed(data, 'x_test', s),
                              of_seed(data, 'y_test', s), n) for s in range(S)]
            for h in e.heads}
  out['distances'], out['certified_violations'] = {}, {}
  runs = sum(f'{h}/{a}' not in e.skip for h in e.heads for a in e.distance_attacks) * S
  with progress.tracked(desc, runs, cfg.progress) as bar:
    for h in e.heads:
      for a in e.distance_attacks:
        if f'{h}/{a}' in e.skip:
          continue
        per_seed = []
        for s in range(S):
          x, y = of_seed(data, 'x_test', s), of_seed(data, 'y_test', s)
          idx, real = points[h][s]
          bar.set_postfix_str(f'{h}/{a} seed {s}')
          if real == 0:
            per_seed.append(np.zeros((0,)))
          else:
            # All points handed over are correct, so max_points=None keeps them all.
            r = robustness.adversarial_distance(
                predict[h][s], x[idx], y[idx], method=a,
                key=jax.random.fold_in(keys[s], len(out['distances'])), max_points=None,
                bounds=data['bounds'], **attack_kwargs(cfg, a))
            per_seed.append(np.asarray(r['distances'], np.float64)[:real])
          bar.update()
        out['distances'][f'{h}/{a}'] = per_seed
      cert = []
      for s in range(S):
        x, y = of_seed(data, 'x_test', s), of_seed(data, 'y_test', s)
        idx, real = points[h][s]
        p_s = jax.tree.map(lambda a: a[s], params)
        if h == 'refit':
          kernel = jax.tree.map(lambda a: a[s], head)['kernel']
        else:
          kernel = p_s[model.readout_layer]['kernel']
          kernel = kernel / jnp.sqrt(kernel.shape[0]) if model.scale_by_width else kernel
        r = certify.certified_radius(predict[h][s](x[idx]), y[idx], kernel,
                                     certify.mlp_feature_lipschitz(model, p_s)) if real else []
        cert.append(np.asarray(r, np.float64)[:real])
      out['distances'][f'{h}/certified'] = cert
      for a in e.distance_attacks:
        if f'{h}/{a}' in out['distances']:
          # certified <= true <= attack: a point above an attack's distance is a bug.
          out['certified_violations'][f'{h}/{a}'] = [
              int(np.sum(c > d * (1 + 1e-5)))
              for c, d in zip(cert, out['distances'][f'{h}/{a}'])]
  mask = spectral.layer_mask(jax.tree.map(lambda a: a[0], params), 'll')
  out['sigma_max'] = {k: np.asarray(v) for k, v in
                      jax.vmap(lambda p: spectral.sigma_max(p, mask))(params).items()}
  return out


def geometry_maps(cfg, model: MLP, params_seed0, data: dict) -> dict:
  """Volume element, lambda_max and the decision function on a 2-D slice (seed 0).

  Returns ``{'log_volume', 'log10_lambda_max', 'boundary' (0 on the decision
  boundary), 'argmax': (grid_size, grid_size) arrays, 'extent': (x0, x1, y0,
  y1), 'anchors': the three images' plane coordinates or None}``.

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


def _nan_stats(values) -> tuple[float, float]:
  """(nanmean, nanstd) of per-seed statistics; (nan, nan) without numpy's
  warnings when every seed's is nan (every attack failed: an expected outcome,
  which the table prints as such)."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'Mean of empty slice', RuntimeWarning)
    warnings.filterwarnings('ignore', 'Degrees of freedom <= 0', RuntimeWarning)
    return float(np.nanmean(values)), float(np.nanstd(values))


def summarize(cfg, evals: dict) -> dict:
  """summary[label]: headline numbers (primary head and attack) plus every combination.

  Per label: 'test_acc', 'test_acc_std', 'test_acc_per_seed' (and 'refit_*'
  alike), 'adv_distance_mean' / '_median' (mean over seeds of the per-seed
  mean / median finite l2 distance, primary head/attack) with '_std' and
  '_per_seed', 'distances' {'head/attack': mean, median, their stds and
  per-seed lists, num_points_per_seed, num_failed_per_seed},
  'certified_violations_per_seed', 'sigma_max_per_seed' {'layer/kernel': [S]}.
  """
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
      (mean, mean_std), (median, median_std) = _nan_stats(means), _nan_stats(medians)
      s['distances'][name] = dict(
          mean=mean, mean_std=mean_std, median=median, median_std=median_std,
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
    s['certified_violations_per_seed'] = ev['certified_violations']
    s['sigma_max_per_seed'] = {k: v.tolist() for k, v in ev['sigma_max'].items()}
    summary[kind] = s
  return summary


def claims(cfg, summary: dict, runs: dict) -> list[report.Claim]:
  """Paper B's claim, tested at each lam: rep (and rep_eig_ub) against clean and the ll kinds.

  On the primary distance (mean over seeds of the per-seed mean): the gap must
  exceed the larger of the two seed standard deviations, and rep's refit
  accuracy (the original head's when there is no refit) must be at least
  clean's minus ``ACC_SLACK`` (1 point). ``holds``: above clean and above
  ll_readout (when run) at that accuracy; the gap to ll (every layer) is
  reported beside it, not required (the authors' single-hidden-layer ll is
  the readout only). Returns one ``report.Claim`` per rep kind and lam (none
  without a clean run), its numbers the (mean, std) distances and accuracies.
  """
  by = {(r['kind'], r['lam']): label for label, r in runs.items()}
  acc_key = 'refit_test_acc' if cfg.eval.primary_head == 'refit' else 'test_acc'
  primary = f'{cfg.eval.primary_head}/{cfg.eval.primary_attack}'
  clean = next((label for label, r in runs.items() if r['kind'] == 'clean'), None)
  dist = lambda q: (q['adv_distance_mean'], q['adv_distance_mean_std'])
  out = []
  for (kind, lam), label in by.items():
    if kind not in spectral.REP_KINDS or clean is None:
      continue
    r = summary[label]
    numbers, above = {kind: dist(r)}, {}
    for other in ['clean', 'll_readout', 'll']:
      o = clean if other == 'clean' else by.get((other, lam))
      if o is not None:
        numbers[other] = dist(summary[o])
        above[other] = bool(r['adv_distance_mean'] - summary[o]['adv_distance_mean'] >
                            max(r['adv_distance_mean_std'], summary[o]['adv_distance_mean_std']))
    numbers[f'{acc_key} {kind}'] = r[acc_key]
    numbers[f'{acc_key} clean'] = summary[clean][acc_key]
    acc_ok = bool(r[acc_key] >= summary[clean][acc_key] - ACC_SLACK)
    holds = above['clean'] and above.get('ll_readout', True) and acc_ok
    vs = ', '.join(o for o in ('clean', 'll_readout') if o in above)
    out.append(report.Claim(
        f'B: {kind} raises the {primary} adversarial distance (lam {lam:g})', holds,
        f'mean over seeds above {vs} by more than the larger seed std, at {acc_key} >= '
        f"clean's - {ACC_SLACK:g}" + (f" (vs ll: {'above' if above['ll'] else 'not above'}, "
                                    'not required)' if 'll' in above else ''),
        numbers))
  return out


def table(summary: dict, cfg) -> str:
  """The printed table: one row per label (accuracies, each head/attack's mean
  +- std (median) distance, 'all N failed' where the attack broke none of
  the N points of any seed, each layer's sigma_max) and the lines saying how
  to read it. Returns one string."""
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
      if np.isfinite(d['mean']):
        row.append(f"{pm(d['mean'], d['mean_std'], '.4f')} ({d['median']:.4f})")
      else:  # no finite distance in any seed
        failed = sum(d['num_failed_per_seed'])
        row.append(f'all {failed} failed' if failed else 'no points')
    row += [pm(np.mean(v), np.std(v), '.2f') for v in s['sigma_max_per_seed'].values()]
    rows.append(row)
  kinds = [k for k in KINDS if any(label.split()[0] == k for label in summary)]
  lam = (f"lam = {cfg.regularizer.lam:g}" if not tuple(cfg.sweep.lams) else
         f"lam in {', '.join(f'{v:g}' for v in cfg.sweep.lams)}")
  bad = {label: v for label, s in summary.items()
         for v in [sum(sum(c) for c in s['certified_violations_per_seed'].values())] if v}
  return report.format_table(head, rows) + (
      f'\nmean +- std over {cfg.num_seeds} seeds of per-seed statistics; distances: l2, '
      f'first {cfg.eval.max_points} correctly classified test points per head, '
      f'failed attacks excluded; certified = margin / (Lipschitz bound of the features x '
      f'||w_y - w_k||), a lower bound on the true distance'
      + (f' (ABOVE an attack distance on {bad} points: a bug)' if bad else
         ' (never above an attack distance here)')
      + f'; {lam}, burn-in {cfg.regularizer.burn_in_epochs} of {cfg.train.epochs} epochs'
      + '\nkinds: ' + '; '.join(f'{k} = {KIND_WORDS[k]}' for k in kinds))


def _combo_title(name: str) -> str:
  head, method = name.split('/')
  return f"{head} head: {'certified lower bound' if method == 'certified' else method}"


def plot_distances(evals: dict, path: str, *, cfg=None) -> None:
  """Box plots of per-point distances (all seeds pooled), one panel per
  head/attack, one box per run (kind, lam); dots: each seed's mean. A run
  whose attack failed on every point is marked 'all failed' at its place, a
  panel where every run's did says 'every attack failed'. One legend below
  the panels (beside them it would share the title's band). ``cfg``
  (optional) names the data in the title."""
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D
  from matplotlib.patches import Patch
  kinds = list(evals)
  names = list(next(iter(evals.values()))['distances'])
  seeds = len(next(iter(evals.values()))['distances'][names[0]])
  long = len(kinds) > 4 or max(len(k) for k in kinds) > 8
  ncols = min(len(names), 2)  # a grid, not a strip, when there are many head/attack pairs
  nrows = -(-len(names) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.2, 0.75 * len(kinds) + 1.2) * ncols + 2.0,
                                                  3.4 * nrows + 0.6), squeeze=False,
                           layout='constrained')
  for ax in axes.flat[len(names):]:
    ax.set_visible(False)
  for ax, n in zip(axes.flat, names):
    data = [np.concatenate([_finite(d) for d in evals[k]['distances'][n]]) for k in kinds]
    ax.boxplot(data, showfliers=False, widths=0.5)
    if not any(d.size for d in data):
      ax.text(0.5, 0.5, 'every attack failed', transform=ax.transAxes, ha='center',
              va='center', fontsize=9, color='0.3')
      ax.set_yticks([])  # no distance to read
    else:
      for i, d in enumerate(data):
        if not d.size:  # at the box's x, halfway up the panel
          ax.text(i + 1, 0.5, 'all failed', transform=ax.get_xaxis_transform(), ha='center',
                  va='center', rotation=90, fontsize=8, color='0.3')
    for i, k in enumerate(kinds):  # per-seed means as dots, beside the box
      ax.scatter(np.full(len(evals[k]['distances'][n]), i + 1.35),
                 [_stat(d, np.mean) for d in evals[k]['distances'][n]], s=12, c='k', zorder=3)
    ax.set_xticks(range(1, len(kinds) + 1), kinds, rotation=30 if long else 0,
                  ha='right' if long else 'center', fontsize=8)
    ax.set_title(_combo_title(n), fontsize=9)
    ax.grid(alpha=0.3, axis='y')
  for row in axes:
    row[0].set_ylabel('l2 distance to the nearest\nadversarial point (input units)', fontsize=9)
  fig.legend([Patch(facecolor='w', edgecolor='k'), Line2D([], [], color='C1'),
              Line2D([], [], ls='', marker='o', ms=4, color='k')],
             ['quartiles, whiskers 1.5 IQR (points of all seeds)', 'median', "one seed's mean"],
             loc='outside lower center', ncols=3 if ncols > 1 else 1, fontsize=8)
  data = f' on {cfg.data.name}' if cfg is not None else ''
  fig.suptitle(f'adversarial distance per regulariser kind{data}: {seeds} seeds,\n'
               'correctly classified test points, failed attacks left out', fontsize=9)
  report.save_figure(fig, path, dpi=110, bbox_inches='tight')


def plot_sweep(cfg, summary: dict, runs: dict, path: str) -> None:
  """Primary distance and accuracy against lam per kind (mean +- seed std); clean as a band."""
  import matplotlib.pyplot as plt
  acc_key = 'refit_test_acc' if cfg.eval.primary_head == 'refit' else 'test_acc'
  fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9), layout='constrained')
  lams = sorted({r['lam'] for r in runs.values() if r['kind'] != 'clean'})
  penalised = [k for k in cfg.regularizer.kinds if k != 'clean']
  for ax, (key, std, title, ylabel) in zip(axes, [
      ('adv_distance_mean', 'adv_distance_mean_std',
       f'adversarial distance ({cfg.eval.primary_head} head, {cfg.eval.primary_attack})',
       'mean l2 distance (input units)'),
      (acc_key, acc_key + '_std', f"test accuracy ({acc_key.split('_')[0]} head)"
       if acc_key != 'test_acc' else 'test accuracy (trained readout)', 'accuracy (fraction)')]):
    for kind in cfg.regularizer.kinds:
      labels = [next(l for l, r in runs.items() if r['kind'] == kind and
                     (kind == 'clean' or r['lam'] == lam)) for lam in lams]
      m = np.array([summary[l][key] for l in labels])
      sd = np.array([summary[l][std] for l in labels])
      if kind == 'clean':
        ax.axhline(m[0], color='k', lw=1, label='clean (no penalty): mean +- std')
        ax.axhspan(m[0] - sd[0], m[0] + sd[0], color='k', alpha=0.1)
      else:
        # Kinds side by side around each lam (a few % apart on the log axis), so
        # equal values do not hide each other's bars.
        i = penalised.index(kind)
        shift = 1.06 ** (i - (len(penalised) - 1) / 2)
        ax.errorbar(np.asarray(lams) * shift, m, yerr=sd, marker='o', ms=4, capsize=3,
                    color=f'C{i % 10}', label=kind)
    ax.set_xscale('log')
    ax.set_xticks(lams, [f'{v:g}' for v in lams])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel('lam (penalty weight)')
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  report.fig_legend_outside(fig, handles, labels, title='regulariser', title_fontsize=8)
  fig.suptitle(f'{cfg.data.name}: penalised kinds against lam vs no penalty; mean +- std over '
               f'{cfg.num_seeds} seeds', fontsize=9)
  report.save_figure(fig, path, dpi=110, bbox_inches='tight')


def plot_geometry(maps: dict, data: dict, workdir: str, *, cfg=None) -> list[str]:
  """Decision boundaries and volume-element / lambda_max maps, one panel per
  kind, written to ``<workdir>/{log_volume,log10_lambda_max,boundary}.png``;
  returns their paths. ``cfg`` (optional) names the data in the titles."""
  extent = next(iter(maps.values()))['extent']
  pts = lbl = None
  if data['image_shape'] is None:
    pts, lbl = np.asarray(of_seed(data, 'x_train', 0)), np.asarray(of_seed(data, 'y_train', 0))
    where = 'the input plane; dots: training points'
    axis_labels = ('input x1', 'input x2')
  else:
    pts = next(iter(maps.values()))['anchors']
    where = 'the plane through 3 test images of different classes (dots)'
    axis_labels = tuple(f'plane coordinate {i} (l2, input units)' for i in (1, 2))
  two_classes = all(np.nanmin(m['boundary']) < 0 for m in maps.values())
  contour = {k: m['boundary'] for k, m in maps.items()}
  name = f'{cfg.data.name}, ' if cfg is not None else ''
  files = []
  for key, title, label in (
      ('log_volume', "log volume element of the features' pullback metric g",
       'log sqrt(det g)'),
      ('log10_lambda_max', 'largest eigenvalue of g (squared local stretch of the features)',
       'log10 lambda_max(g)'),
      ('boundary', 'decision function; white: the decision boundary',
       'logit 1 - logit 0' if two_classes else 'top logit - runner-up (0 on a boundary)')):
    path = os.path.join(workdir, f'{key}.png')
    geometry.plot_maps({k: m[key] for k, m in maps.items()}, extent, path,
                       suptitle=f'{title}\nper regulariser kind ({name}seed 0), on {where}',
                       points=pts, labels=lbl, contour=contour,
                       cmap=('viridis' if key != 'boundary' else
                             'coolwarm' if two_classes else 'Reds'),
                       colorbar_label=label, centered=key == 'boundary',
                       axis_labels=axis_labels)
    files.append(path)
  return files


# --- plan and entry point ---------------------------------------------------------

# The key streams of a run: stream i of seed s is fold_in(split(PRNGKey(seed),
# num_seeds)[s], i). 'data' draws XOR's sets; 'train' every run's init and
# batches (one stream for all kinds: they differ only in the penalty); 'eval'
# the attacks. Fixed streams, not one per job, so a job's draws never depend
# on which other jobs a config selects. fold_in, where the runner's
# ``key_streams`` splits: the numbers of runs made before the runner stay.
STREAMS = ('data', 'train', 'eval')
LEGACY_CHECKPOINTS = 'checkpoints'  # <workdir>/checkpoints/<name>: runs before the runner


def key_streams(seed: int, num_seeds: int) -> dict[str, jax.Array]:
  """``{stream: (num_seeds, 2) uint32 keys}`` for each name in ``STREAMS``."""
  keys = jax.random.split(jax.random.PRNGKey(seed), num_seeds)
  return {name: jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
          for i, name in enumerate(STREAMS)}


def runs_of(cfg) -> list[tuple[str, str, float, str]]:
  """``(label, kind, lam, job)`` of every trained run, in training order: each
  kind at regularizer.lam, or, with sweep.lams, 'clean' once and each
  penalised kind at each lam. ``label`` keys the summary and table ('rep',
  'rep lam=0.01'); ``job`` names the run's checkpoints ('rep', 'rep_lam0.01')."""
  lams = tuple(cfg.sweep.lams)
  if not lams:
    return [(k, k, float(cfg.regularizer.lam), k) for k in cfg.regularizer.kinds]
  out = [('clean', 'clean', 0.0, 'clean')] if 'clean' in cfg.regularizer.kinds else []
  return out + [(f'{k} lam={lam:g}', k, float(lam), f'{k}_lam{lam:g}') for lam in lams
                for k in cfg.regularizer.kinds if k != 'clean']


def checkpoint_dir(r: runner.Run, job: str) -> str:
  """Where ``job`` saves and resumes its fit: ``r.checkpoint_dir(job)``, or the
  ``<workdir>/checkpoints/<job>`` of a workdir made before the runner when it
  exists there ('none' for 'clean'), so that such a run resumes."""
  old = os.path.join(r.workdir, LEGACY_CHECKPOINTS, 'none' if job == 'clean' else job)
  return old if os.path.isdir(old) else r.checkpoint_dir(job)


def run(cfg, r: runner.Run) -> dict:
  """Trains and evaluates every run of ``runs_of(cfg)`` as jobs of ``r``: 'data',
  'burn_in', then per run 'train_<label>', 'eval_<label>' and (eval.geometry)
  'geometry_<label>', each timed into ``r.timings``, the fits logged to
  metrics.jsonl and checkpointed (``checkpoint_dir``) with ``r.fingerprint``.

  Returns ``{'data': load_data(...), 'runs': {label: {'kind', 'lam'}},
  'evals': {label: evaluate(...)}, 'maps': {label: geometry_maps(...)}`` (empty
  without eval.geometry), ``'train_metrics': {label: {metric: [last chunk's
  mean per seed]}}}``.
  """
  keys = key_streams(cfg.seed, cfg.num_seeds)
  with r.job('data'):
    data = load_data(cfg, keys['data'])
  model = model_from_config(cfg, data['num_classes'])
  burned, _ = r.timed('burn_in', burn_in, cfg, model, data, keys['train'],
                      checkpoint_dir=checkpoint_dir(r, 'burn_in'), fingerprint=r.fingerprint)
  out = dict(data=data, runs={}, evals={}, maps={}, train_metrics={})
  for label, kind, lam, job in runs_of(cfg):
    out['runs'][label] = dict(kind=kind, lam=lam)
    params, metrics = r.timed(f'train_{label}', train, cfg, kind, model, data, keys['train'],
                              burned, lam=lam, desc=f'train {label}',
                              checkpoint_dir=checkpoint_dir(r, job), fingerprint=r.fingerprint)
    out['train_metrics'][label] = {k: np.asarray(v).tolist() for k, v in metrics.items()}
    with r.job(f'eval_{label}'):
      out['evals'][label] = evaluate(cfg, model, params, data, keys['eval'],
                                     desc=f'evaluate {label}')
    if cfg.eval.geometry:
      with r.job(f'geometry_{label}'):
        out['maps'][label] = geometry_maps(cfg, model, jax.tree.map(lambda a: a[0], params), data)
  return out


def main(cfg, workdir: str) -> dict:
  """Runs the experiment in ``workdir`` (``run``), prints the table, the claims
  and the files written, and writes results.json (keys 'config', 'seeds'
  [seed, num_seeds], 'runs', 'summary', 'claims', 'final_train_metrics',
  'distances' {label: {head/attack: [per-seed lists of l2 distances]}},
  'timings' {job: timing.record, seconds}, 'plots'), the plots and
  training_curves.png. Returns ``summarize``'s summary."""
  r = runner.Run(cfg, workdir)
  with r.job('total'):
    out = run(cfg, r)
    summary = summarize(cfg, out['evals'])
    found = claims(cfg, summary, out['runs'])
    plots = ['adv_distance_box.png']
    plot_distances(out['evals'], r.path(plots[0]), cfg=cfg)
    if tuple(cfg.sweep.lams):
      plots.append('sweep.png')
      plot_sweep(cfg, summary, out['runs'], r.path(plots[-1]))
    if out['maps']:
      plots += [os.path.basename(p)
                for p in plot_geometry(out['maps'], out['data'], workdir, cfg=cfg)]
  r.finish({'seeds': [cfg.seed, cfg.num_seeds], 'runs': out['runs'], 'summary': summary,
            'final_train_metrics': out['train_metrics'],
            'distances': {k: {n: [d.tolist() for d in v] for n, v in ev['distances'].items()}
                          for k, ev in out['evals'].items()}},
           text=[table(summary, cfg)], claims=found, plots=plots,
           files=[runner.TRAIN_CHECKPOINTS + '/'])
  return summary
