"""Linear probes on frozen image encoders and what they inherit.

For every seed: the encoder's pooled features of the (clean) probe training
set, a multinomial logistic readout fitted on them by L-BFGS
(``heads.fit_logistic_regression``), and the composed model encoder + probe
evaluated on the probe test set: clean accuracy, robust accuracy under the
attack-suite ensemble at each radius, and the l2 adversarial distance of the
first correctly classified points (white-box FMN). The encoder runs in eval
mode throughout: nothing an attack does touches its BatchNorm statistics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import progress
from robustjax.attacks import evaluate_robust_accuracy
from robustjax.metrics import robustness
from robustjax.models import heads, resnet
from robustjax.models.apply import bind


def features(model, variables, x: jax.Array, batch_size: int) -> jax.Array:
  """Eval-mode features of x in batches of ``batch_size`` (bounded memory)."""
  return jax.lax.map(lambda xb: resnet.eval_features(model, variables, xb[None])[0], x,
                     batch_size=batch_size)


def _seed(tree, s: int):
  return jax.tree.map(lambda a: a[s], tree)


# Every seed's features in one program; compiled once per (model, shapes), so
# every kind of a run shares it.
_features_per_seed = jax.jit(jax.vmap(features, in_axes=(None, 0, None, None)),
                             static_argnums=(0, 3))


def fit_probes(cfg, model, variables, data: dict):
  """(probes, test accuracies), both stacked over seeds: one probe per seed."""
  feats, bs = _features_per_seed, cfg.eval.batch_size
  probes = jax.vmap(lambda f: heads.fit_logistic_regression(
      f, data['y_train'], num_classes=data['num_classes'], l2=cfg.probe.l2,
      max_iter=cfg.probe.max_iter))(feats(model, variables, data['x_train'], bs))
  logits = jax.vmap(heads.linear_head)(probes, feats(model, variables, data['x_test'], bs))
  return probes, np.asarray(jnp.mean(jnp.argmax(logits, -1) == data['y_test'], axis=-1))


def evaluate(cfg, model, variables, probes, data: dict, keys: jax.Array,
             desc: str = 'evaluate') -> dict:
  """Per-seed robust accuracy at each eps (first ``eval.num_points`` test points)
  and adversarial distances (first ``eval.distance_points`` correct ones).

  A progress bar named ``desc`` (shown when ``cfg.progress``) counts the
  attacks: per seed, the ensemble at each eps, then the distance attack.
  """
  e = cfg.eval
  x_te, y_te = data['x_test'], data['y_test']
  n = min(e.num_points, x_te.shape[0])
  out = {'robust_acc': {float(eps): [] for eps in e.eps}, 'distances': []}
  with progress.tracked(desc, keys.shape[0] * (len(e.eps) + 1), cfg.progress) as bar:
    for s in range(keys.shape[0]):
      predict = heads.readout_predict_fn(bind(resnet.eval_features, model, _seed(variables, s)),
                                         _seed(probes, s))
      for i, eps in enumerate(e.eps):
        bar.set_postfix_str(f'seed {s}, {"+".join(e.attacks)} at eps {float(eps):g}')
        r = evaluate_robust_accuracy(predict, x_te[:n], y_te[:n], eps=float(eps), norm=e.norm,
                                     attacks=tuple(e.attacks), key=jax.random.fold_in(keys[s], i),
                                     bounds=(0.0, 1.0), n_iter=e.n_iter,
                                     n_target_classes=e.n_target_classes, warn=False)
        out['robust_acc'][float(eps)].append(r['robust_accuracy'])
        bar.update()
      bar.set_postfix_str(f'seed {s}, fmn distances')
      d = robustness.adversarial_distance(predict, x_te, y_te, method='fmn', key=keys[s],
                                          max_points=e.distance_points, bounds=(0.0, 1.0),
                                          batch_size=min(e.batch_size, e.distance_points),
                                          steps=e.fmn_steps, targets=e.n_target_classes)
      out['distances'].append(np.asarray(d['distances'], np.float64))
      bar.update()
  return out
