"""Linear probes on frozen image encoders and what they inherit.

For every seed: the encoder's pooled features of the (clean) probe training
set, a multinomial logistic readout fitted on them by L-BFGS
(``heads.fit_logistic_regression``), and the composed model encoder + probe
evaluated on the probe test set: clean accuracy, robust accuracy under the
attack-suite ensemble at each radius, and the l2 adversarial distance of the
first correctly classified points (white-box FMN). The encoder runs in eval
mode throughout: nothing an attack does touches its BatchNorm statistics.

Memory and devices: every pass of the encoder over evaluation points runs in
batches of ``eval.batch_size`` (one compiled size, the last batch padded):
feature extraction, the distance attack and its clean pass, and the robust
accuracy ensemble when ``evaluate_robust_accuracy`` takes a ``batch_size``.
With a mesh (``cfg.mesh``), each batch of points is split over its 'data'
axis and the encoder and probe are replicated, so every device attacks its
share of the points whatever the number of seeds (seeds that do not divide
the axis used to make every device repeat the whole evaluation). Under
several processes (``jax.distributed``) each process evaluates everything on
its own devices (``sharding.process_local``): the attacks' host code reads
every array, and every process gets the same numbers.
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from robustjax import progress
from robustjax.attacks import evaluate_robust_accuracy
from robustjax.metrics import robustness
from robustjax.models import heads
from robustjax.models.apply import bind, in_batches
from robustjax.train import sharding

# Whether the ensemble attacks in batches of a given size (its batch_size
# argument arrives with the AutoAttack-versions work); without it the ensemble
# attacks all ``eval.num_points`` at once, in its own power-of-two sub-batches.
ROBUST_ACCURACY_BATCHED = 'batch_size' in inspect.signature(evaluate_robust_accuracy).parameters


def _eval_mesh(spec):
  """The mesh (or None) evaluation runs on for a Mesh, a config block or None:
  ``sharding.process_local`` of it (this process's devices under several
  processes, so eager host code never meets another process's shards)."""
  return sharding.process_local(sharding.mesh_from_config(spec))


def points_sharding(mesh) -> NamedSharding | None:
  """Where a batch of evaluation points goes: its leading axis split over the
  mesh's 'data' axis (None without a mesh, or with one device on 'data')."""
  mesh = _eval_mesh(mesh)
  if mesh is None or mesh.shape['data'] == 1:
    return None
  return NamedSharding(mesh, P('data'))


@functools.partial(jax.jit, static_argnums=0)
def split_features(spec, variables, x: jax.Array) -> jax.Array:
  """Eval-mode pooled features (n, F) of x (n, H, W, C) for ``spec`` = (encoder,
  points sharding or None): with a sharding the points are split over its
  devices (XLA pads a batch the devices do not divide)."""
  model, points = spec
  if points is not None:
    x = jax.lax.with_sharding_constraint(x, points)
  return model.apply(variables, x, train=False, features_only=True)


@functools.partial(jax.jit, static_argnums=0)
def _features_of_seeds(spec, variables, x):
  return jax.vmap(lambda v: split_features(spec, v, x))(variables)


def _replicated(tree, mesh):
  """Copies of ``tree`` on every device of ``mesh`` (as is without a mesh)."""
  return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))


def _data_size(mesh) -> int:
  return 1 if mesh is None else mesh.shape['data']


def features(model, variables, x: jax.Array, batch_size: int, mesh=None) -> jax.Array:
  """Eval-mode features (n, F) of x in batches of ``batch_size``, each split over
  ``mesh``'s 'data' axis when given (bounded memory, one compile)."""
  mesh = _eval_mesh(mesh)
  spec = (model, points_sharding(mesh))
  return in_batches(functools.partial(split_features, spec, _replicated(variables, mesh)), x,
                    batch_size, multiple_of=_data_size(mesh))


def features_per_seed(model, variables, x: jax.Array, batch_size: int, mesh=None) -> jax.Array:
  """``features`` for variables stacked over seeds: (seeds, n, F), every seed's
  features of a batch in one program."""
  mesh = _eval_mesh(mesh)
  spec = (model, points_sharding(mesh))
  return in_batches(functools.partial(_features_of_seeds, spec, _replicated(variables, mesh)), x,
                    batch_size, multiple_of=_data_size(mesh), axis=1)


def _seed(tree, s: int):
  return jax.tree.map(lambda a: a[s], tree)


def fit_probes(cfg, model, variables, data: dict):
  """One linear probe per seed on the frozen encoder's features: ``(probes,
  accuracies)``.

  ``variables``: the encoder's ``{'params', 'batch_stats'}`` stacked over
  seeds; ``data``: ``images.load``'s dict (x_train (n, H, W, C), y_train (n,),
  x_test, y_test, num_classes K). ``probes``: ``heads.fit_logistic_regression``'s
  readout stacked over seeds (a kernel (seeds, F, K) and bias (seeds, K));
  ``accuracies``: (seeds,) float32 numpy, each probe's clean accuracy (a
  fraction in [0, 1]) on the whole probe test set."""
  mesh, bs = _eval_mesh(cfg.get('mesh')), cfg.eval.batch_size
  feats = functools.partial(features_per_seed, model, variables, batch_size=bs, mesh=mesh)
  probes = jax.vmap(lambda f: heads.fit_logistic_regression(
      f, data['y_train'], num_classes=data['num_classes'], l2=cfg.probe.l2,
      max_iter=cfg.probe.max_iter))(feats(data['x_train']))
  logits = jax.vmap(heads.linear_head)(probes, feats(data['x_test']))
  return probes, np.asarray(jnp.mean(jnp.argmax(logits, -1) == data['y_test'], axis=-1))


def predict_fn(model, variables, probe, mesh=None) -> jax.tree_util.Partial:
  """encoder + probe as one predict function, x (n, H, W, C) -> logits (n, K),
  for one seed's variables and probe (a ``jax.tree_util.Partial``, so jitted
  attacks take it as an argument); with a mesh, points are split over its
  'data' axis."""
  mesh = _eval_mesh(mesh)
  feature_fn = bind(split_features, (model, points_sharding(mesh)),
                    _replicated(variables, mesh))
  return heads.readout_predict_fn(feature_fn, _replicated(probe, mesh))


def evaluate(cfg, model, variables, probes, data: dict, keys: jax.Array,
             desc: str = 'evaluate') -> dict:
  """Per-seed robust accuracy at each eps (first ``eval.num_points`` test points)
  and adversarial distances (first ``eval.distance_points`` correct ones).

  Returns ``{'robust_acc': {eps (float): [one fraction in [0, 1] per seed]},
  'distances': [one (m,) float64 array per seed]}``: the accuracy of encoder +
  probe under the ``eval.attacks`` ensemble at radius eps (``eval.norm``), and
  each point's l2 distance to the nearest adversarial example FMN found (inf
  where it found none; m <= ``eval.distance_points``). ``keys``: (seeds, 2),
  one per seed: the ensemble at the i-th eps uses ``fold_in(keys[s], i)``, FMN
  ``keys[s]``.

  A progress bar named ``desc`` (shown when ``cfg.progress``) counts the
  attacks: per seed, the ensemble at each eps, then the distance attack.
  """
  e = cfg.eval
  mesh = _eval_mesh(cfg.get('mesh'))
  d = _data_size(mesh)
  round_up = lambda b: -(-b // d) * d  # a batch the 'data' devices split evenly
  x_te, y_te = data['x_test'], data['y_test']
  n = min(e.num_points, x_te.shape[0])
  batched = dict(batch_size=round_up(e.batch_size)) if ROBUST_ACCURACY_BATCHED else {}
  out = {'robust_acc': {float(eps): [] for eps in e.eps}, 'distances': []}
  with progress.tracked(desc, keys.shape[0] * (len(e.eps) + 1), cfg.progress) as bar:
    for s in range(keys.shape[0]):
      predict = predict_fn(model, _seed(variables, s), _seed(probes, s), mesh)
      for i, eps in enumerate(e.eps):
        bar.set_postfix_str(f'seed {s}, {"+".join(e.attacks)} at eps {float(eps):g}')
        r = evaluate_robust_accuracy(predict, x_te[:n], y_te[:n], eps=float(eps), norm=e.norm,
                                     attacks=tuple(e.attacks), key=jax.random.fold_in(keys[s], i),
                                     bounds=(0.0, 1.0), n_iter=e.n_iter,
                                     n_target_classes=e.n_target_classes, warn=False, **batched)
        out['robust_acc'][float(eps)].append(r['robust_accuracy'])
        bar.update()
      bar.set_postfix_str(f'seed {s}, fmn distances')
      dist = robustness.adversarial_distance(
          predict, x_te, y_te, method='fmn', key=keys[s], max_points=e.distance_points,
          bounds=(0.0, 1.0), batch_size=round_up(min(e.batch_size, e.distance_points)),
          steps=e.fmn_steps, targets=e.n_target_classes)
      out['distances'].append(np.asarray(dist['distances'], np.float64))
      bar.update()
  return out
