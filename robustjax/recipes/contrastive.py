"""Contrastive pre-training of the two-layer encoder on sparse-coding pairs (Paper A).

The encoder is the hidden layer h(Z) = sigma_b(W^T Z) of ``TwoLayer``; a pair
(Z, Z') is scored s = scale * <h(Z), h(Z')> and trained with the logistic pair
loss on y * s (y = +1 similar, -1 dissimilar).

Adversarial variants perturb the pair (both views jointly, one l2/linf ball of
radius eps over the (2, d) pair) to maximise the pair loss, with the same
``robustjax.attacks.pgd`` as supervised training. ``attack_pairs`` chooses
which pairs are attacked: the others get radius 0 (per-example eps), so
the ablations cost the same compiled program.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from robustjax import losses
from robustjax.attacks import PGDSpec, pgd
from robustjax.data import sparse_coding as sc
from robustjax.train import sharding
from robustjax.models.apply import bind
from robustjax.models.two_layer import TwoLayer, purified_units
from robustjax.recipes.supervised import StaticLoss, model_from_config, train_two_layer

# Pre-training mode -> which pairs the attack perturbs (None: clean training).
MODES = {'clean': None, 'adversarial': 'both', 'adv_negatives_only': 'negatives',
         'adv_positives_only': 'positives'}
# The same as (attack similar pairs?, attack dissimilar pairs?): data, not code,
# so every adversarial mode runs in one vmapped compile.
TARGETS = {'both': (1.0, 1.0), 'negatives': (0.0, 1.0), 'positives': (1.0, 0.0)}


def pair_scores(model: TwoLayer, scale: float, params, pairs: jax.Array) -> jax.Array:
  """(n, 2, d) pairs -> (n,) scores scale * <h(Z), h(Z')>."""
  h = model.apply({'params': params}, pairs, features_only=True)
  return losses.pair_score(h[:, 0], h[:, 1], scale)


def pair_loss_of_input(score_fn, params, y, pairs):
  """Per-pair loss under fixed params: what the attack maximises.

  pairs: (n, 2, d); y: (n,) in {-1, +1}; ``score_fn(params, pairs)`` -> (n,).
  Returns the (n,) logistic pair losses log(1 + exp(-y s)).
  """
  return losses.pair_contrastive(score_fn(params, pairs), y)


def attack_pairs(score_fn, params, pairs, y, key, attack: PGDSpec, which):
  """PGD on the pair loss; pairs not selected keep radius 0.

  pairs: (n, 2, d), each pair perturbed jointly in one ball of radius
  ``attack.eps``; y: (n,) in {-1, +1}. ``which``: 'both', 'negatives',
  'positives', or a (2,) array of 0/1 flags (attack similar, attack
  dissimilar) as in ``TARGETS``. Returns the (n, 2, d) attacked pairs
  (unselected pairs unchanged).
  """
  targets = jnp.asarray(TARGETS[which] if isinstance(which, str) else which, y.dtype)
  eps = attack.eps * jnp.where(y > 0, targets[0], targets[1])
  loss = jax.tree_util.Partial(pair_loss_of_input, score_fn, params, y)
  return pgd(loss, pairs, eps=eps, norm=attack.norm, steps=attack.steps,
             step_size=attack.rel_step_size * eps, key=key, random_start=attack.random_start,
             restarts=attack.restarts)


def contrastive_loss(params, key, aux, *, model: TwoLayer, spec: sc.SparseCodingSpec,
                     ccfg, attack: PGDSpec | None):
  """Logistic pair loss on a fresh batch of ``ccfg.batch_size`` pairs, on their
  PGD points when ``attack`` is set.

  aux = (world, targets): targets as in ``TARGETS``, ignored without attack.
  Returns (scalar mean pair loss, {'accuracy': scalar share of pairs with
  y * s > 0}), the (loss, aux) pair ``loop.fit`` expects.
  """
  world, targets = aux
  k_data, k_attack = jax.random.split(key)
  pairs, y = sc.sample_pairs(k_data, ccfg.batch_size, world, spec,
                             negative_fraction=ccfg.negative_fraction, dropout=ccfg.dropout)
  pairs, y = sharding.constrain_batch((pairs, y))  # data parallel over the mesh, if any
  score_fn = bind(pair_scores, model, ccfg.score_scale)
  if attack is not None:
    pairs = jax.lax.stop_gradient(attack_pairs(
        score_fn, jax.lax.stop_gradient(params), pairs, y, k_attack, attack, targets))
  s = score_fn(params, pairs)
  return jnp.mean(losses.pair_contrastive(s, y)), {'accuracy': jnp.mean(y * s > 0)}


def train(cfg, worlds: sc.SparseCodingWorld, keys: jax.Array, *, modes, desc: str = 'contrastive',
          checkpoint_dir: str | None = None, fingerprint: dict | None = None):
  """Contrastive pre-training of one encoder per (mode, world, key).

  ``modes`` must be all clean or all adversarial (one program). Returns
  (params with a leading axis of len(modes) * seeds, mode-major; the last
  chunk's metrics). ``checkpoint_dir``, ``fingerprint``: as in
  ``supervised.train_two_layer``.
  """
  ccfg = cfg.contrastive
  adversarial = MODES[modes[0]] is not None
  if any((MODES[m] is not None) != adversarial for m in modes):
    raise ValueError(f'modes must be all clean or all adversarial, got {modes}')
  n = len(modes)
  # Tiled on the host (numpy): the copies are small and compile nothing.
  targets = np.repeat(np.asarray([TARGETS[MODES[m]] if adversarial else (0.0, 0.0)
                                  for m in modes], np.float32), keys.shape[0], axis=0)
  aux = (jax.tree.map(lambda a: np.concatenate([np.asarray(a)] * n), worlds), targets)
  loss_fn = StaticLoss.of(
      contrastive_loss, model=model_from_config(cfg),
      spec=sc.SparseCodingSpec.from_config(cfg.data), ccfg=ml_collections.FrozenConfigDict(ccfg),
      attack=PGDSpec.from_config(cfg.attack) if adversarial else None)
  return train_two_layer(cfg, aux, np.concatenate([np.asarray(keys)] * n), loss_fn,
                         opt_cfg=ccfg, desc=desc, checkpoint_dir=checkpoint_dir,
                         fingerprint=fingerprint)


def pair_logits(model_and_scale, params, pairs):
  """pair_scores with (model, scale) as one hashable static, for ``bind``."""
  model, scale = model_and_scale
  return pair_scores(model, scale, params, pairs)


def split_pair_losses(score_fn, params, pairs, y):
  """Mean pair loss over similar and over dissimilar pairs.

  pairs: (n, 2, d); y: (n,) in {-1, +1}. Returns (similar mean, dissimilar
  mean), two scalars in that order; a group with no pairs gives 0.
  """
  loss = losses.pair_contrastive(score_fn(params, pairs), y)
  pos = (y > 0).astype(loss.dtype)
  return (jnp.sum(loss * pos) / jnp.maximum(pos.sum(), 1),
          jnp.sum(loss * (1 - pos)) / jnp.maximum((1 - pos).sum(), 1))


SCALE_GRID = jnp.logspace(-2, 2, 41)


def controlled_purification(key, world, alpha, *, model: TwoLayer, spec: sc.SparseCodingSpec,
                            ccfg, attack: PGDSpec, num_examples: int):
  """Paper A, Fig. 4 (left): pair losses of units at purification level alpha.

  Units are ``purified_units(alpha)`` with threshold ``ccfg.sweep_bias``; the
  score scale is the one of ``SCALE_GRID`` with the lowest clean loss on
  fresh training pairs (so each alpha is scored at its best, not at an
  arbitrary scale). Returns clean and adversarial test losses on similar and
  dissimilar pairs, the adversarial ones under ``attack`` on both views.
  """
  k_units, k_fit, k_test, k_attack = jax.random.split(key, 4)
  params = {'w': purified_units(k_units, world.dictionary, model.width, alpha),
            'b': jnp.full((model.width,), ccfg.sweep_bias)}
  fit_pairs, fit_y = sc.sample_pairs(k_fit, num_examples, world, spec,
                                     negative_fraction=ccfg.negative_fraction)
  h = model.apply({'params': params}, fit_pairs, features_only=True)
  raw = jnp.sum(h[:, 0] * h[:, 1], axis=-1)
  fit_loss = jax.vmap(lambda c: jnp.mean(losses.pair_contrastive(c * raw, fit_y)))(SCALE_GRID)
  scale = SCALE_GRID[jnp.argmin(fit_loss)]
  pairs, y = sc.sample_pairs(k_test, num_examples, world, spec,
                             negative_fraction=ccfg.negative_fraction)
  score_fn = bind(pair_logits, (model, 1.0))
  scaled = {'w': params['w'] * jnp.sqrt(scale), 'b': params['b'] * jnp.sqrt(scale)}
  # h is 1-homogeneous in (w, b): scaling both by sqrt(c) scales the score by c.
  clean = split_pair_losses(score_fn, scaled, pairs, y)
  adv_pairs = attack_pairs(score_fn, scaled, pairs, y, k_attack, attack, 'both')
  adv = split_pair_losses(score_fn, scaled, adv_pairs, y)
  return {'similar_clean': clean[0], 'similar_adversarial': adv[0],
          'dissimilar_clean': clean[1], 'dissimilar_adversarial': adv[1], 'scale': scale}
