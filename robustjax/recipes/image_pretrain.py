"""Pre-training image encoders: supervised or self-supervised, clean, adversarial
or spectrally regularised; every seed in one compile.

A kind (``KINDS``) is a pair (adversarial?, spectral penalty or None): 'clean',
'adversarial' (Madry PGD for supervised; RoCL's instance-wise attack for
SSL), 'rep' and 'll' (Paper B). All kinds of a run share the data, the init
and the batch keys: they differ only in the attack and the penalty.

Training metrics: the loss (and its clean / adversarial parts for SSL, the
batch accuracy for supervised) and ``weight_norm``, the global l2 norm of all
parameters at the step (BatchNorm makes most layers scale-invariant, so a
runaway norm, not the loss, is what a too-large step shows).

Batches: each step draws ``batch_size`` distinct training images at random
(the step key decides) from the device-resident split, augments them on
device and, for the adversarial kind, attacks them with the model in eval
mode (running BatchNorm statistics, which the attack never updates); the
training forward pass then normalises by the batch's statistics and updates
the running ones (``TrainState.batch_stats``).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import losses, spectral
from robustjax.attacks import PGDSpec
from robustjax.attacks.instance import instance_attack
from robustjax.data import augment
from robustjax.models import resnet
from robustjax.models.apply import bind
from robustjax.models.ssl import SSLNet
from robustjax.spectral import capture
from robustjax.train import loop, sharding, state as state_lib

KINDS = {'clean': (False, None), 'adversarial': (True, None), 'rep': (False, 'rep'),
         'll': (False, 'll')}
METHODS = ('supervised', 'simclr', 'barlow_twins')
MODELS = ('resnet18', 'resnet34', 'small_cnn')
BOUNDS = (0.0, 1.0)


def encoder_from_config(cfg, num_classes: int):
  """The flax module ``cfg.model`` names (``MODELS``): a ``resnet.SmallCNN`` or a
  ResNet-18/34 with a ``num_classes``-way readout, whose ``apply(variables, x
  (n, H, W, C), train=..., features_only=...)`` gives logits (n, num_classes)
  or pooled features (n, F)."""
  m = cfg.model
  if m.name == 'small_cnn':
    return resnet.SmallCNN(widths=tuple(m.cnn_widths), num_classes=num_classes, padding=m.padding,
                           batch_norm=m.batch_norm)
  make = {'resnet18': resnet.ResNet18, 'resnet34': resnet.ResNet34}[m.name]
  return make(num_classes=num_classes, width=m.width, padding=m.padding)


def network_from_config(cfg, num_classes: int):
  """The trained network (a flax module): the classifier itself (supervised,
  ``encoder_from_config``) or an ``SSLNet`` of that encoder and an MLP
  projector of widths ``ssl.projector_dims`` whose output z (n, dims[-1]) the
  SSL losses compare."""
  encoder = encoder_from_config(cfg, num_classes)
  if cfg.pretrain.method == 'supervised':
    return encoder
  return SSLNet(encoder=encoder, projector_dims=tuple(cfg.ssl.projector_dims),
                projector_bias=cfg.ssl.projector_bias)


@dataclasses.dataclass(frozen=True)
class SSLSpec:
  """The self-supervised objective of ``pretrain.method`` and its constants."""
  method: str             # 'simclr' | 'barlow_twins'
  temperature: float      # NT-Xent
  barlow_lambda: float    # Barlow Twins' off-diagonal weight
  adv_weight: float       # RoCL: clean loss + adv_weight * loss(adversarial view, other view)

  @classmethod
  def from_config(cls, cfg) -> 'SSLSpec':
    """The spec of ``cfg.pretrain.method`` with ``cfg.ssl``'s constants."""
    s = cfg.ssl
    return cls(cfg.pretrain.method, float(s.temperature), float(s.barlow_lambda),
               float(s.adv_weight))

  def loss(self, z1, z2):
    """Scalar loss of two views' projections z1, z2 (B, D): SimCLR's NT-Xent
    (mean over the 2B anchors) or Barlow Twins' (Chen et al. 2020; Zbontar et al. 2021)."""
    if self.method == 'simclr':
      return jnp.mean(losses.nt_xent(z1, z2, self.temperature))
    return losses.barlow_twins(z1, z2, self.barlow_lambda)


def _batch(key, x_all, batch_size: int) -> jax.Array:
  """``batch_size`` distinct random indices into the split."""
  return jax.random.choice(key, x_all.shape[0], (batch_size,), replace=False)


def _ce_of_input(apply, variables, y, x):
  return losses.cross_entropy(apply(variables, x), y)


def supervised_loss(params, key, aux, batch_stats, *, model, batch_size: int,
                    aug: augment.AugmentSpec, attack: PGDSpec | None):
  """Cross-entropy on an augmented (and, with ``attack``, adversarial) batch.

  Returns ``(loss, (metrics, new_batch_stats))``: the batch's mean cross-entropy
  (scalar), ``{'accuracy', 'weight_norm'}`` (scalars: the batch's accuracy on
  the inputs trained on, the parameters' global l2 norm) and the updated
  BatchNorm statistics (``loop.fit``'s loss with state). ``aux``: (x_train (n,
  H, W, C) in [0, 1], y_train (n,) int)."""
  x_all, y_all = aux
  k_idx, k_aug, k_att = jax.random.split(key, 3)
  idx = _batch(k_idx, x_all, batch_size)
  x, y = augment.simclr_view(k_aug, x_all[idx], aug), y_all[idx]
  x, y = sharding.constrain_batch((x, y))
  if attack is not None:
    frozen = {'params': jax.lax.stop_gradient(params), 'batch_stats': batch_stats}
    loss_of_input = jax.tree_util.Partial(_ce_of_input, bind(resnet.eval_logits, model), frozen, y)
    x = jax.lax.stop_gradient(attack(loss_of_input, x, k_att, bounds=BOUNDS))
  logits, new_stats = resnet.train_forward(model, params, batch_stats, x)
  loss = jnp.mean(losses.cross_entropy(logits, y))
  return loss, ({'accuracy': jnp.mean(jnp.argmax(logits, -1) == y),
                 'weight_norm': optax.global_norm(params)}, new_stats)


def ssl_loss(params, key, aux, batch_stats, *, net: SSLNet, batch_size: int,
             aug: augment.AugmentSpec, ssl: SSLSpec, attack: PGDSpec | None):
  """SimCLR / Barlow Twins on two views; adversarial: RoCL's instance-wise attack.

  The attacked view is the first view pushed (in the eps-ball, model in eval
  mode) to maximise its contrastive loss against the other views; the loss
  is then ``L(z1, z2) + adv_weight * L(z_adv, z2)``. All views go through one
  training forward pass, so BatchNorm sees them as one batch.

  Returns ``(loss, (metrics, new_batch_stats))``: the scalar loss,
  ``{'clean_loss', 'weight_norm'}`` (+ ``'adversarial_loss'`` with an attack;
  scalars) and the updated BatchNorm statistics. ``aux``: (x_train (n, H, W,
  C) in [0, 1], ...); labels are not used.
  """
  x_all = aux[0]
  k_idx, k1, k2, k_att = jax.random.split(key, 4)
  x = x_all[_batch(k_idx, x_all, batch_size)]
  v1, v2 = augment.simclr_view(k1, x, aug), augment.simclr_view(k2, x, aug)
  v1, v2 = sharding.constrain_batch((v1, v2))
  views = [v1, v2]
  if attack is not None:
    frozen = {'params': jax.lax.stop_gradient(params), 'batch_stats': batch_stats}
    embed = bind(resnet.eval_logits, net, frozen)  # eval mode: the projection z
    views.append(jax.lax.stop_gradient(instance_attack(
        embed, v1, v2, key=k_att, spec=attack, temperature=ssl.temperature, bounds=BOUNDS)))
  z, new_stats = resnet.train_forward(net, params, batch_stats, jnp.concatenate(views))
  z = z.reshape(len(views), batch_size, -1)
  clean = ssl.loss(z[0], z[1])
  # The weight norm shows a recipe that blows up (Barlow Twins at SimCLR's lr
  # went 85 -> 8952 in 6 steps) where the loss of scale-invariant layers cannot.
  metrics = {'clean_loss': clean, 'weight_norm': optax.global_norm(params)}
  loss = clean
  if attack is not None:
    adv = ssl.loss(z[2], z[1])
    loss = clean + ssl.adv_weight * adv
    metrics['adversarial_loss'] = adv
  return loss, (metrics, new_stats)


def _schedule(p):
  if p.schedule == 'cosine':
    return optax.cosine_decay_schedule(p.learning_rate, p.steps)
  return p.learning_rate


def spectral_tx(cfg, kind: str, net, params, batch_stats, example: jax.Array):
  """The rep/ll penalty as an ``optax.GradientTransformation`` (``optax.identity()``
  for the kinds without one), chained before the optimizer.

  rep: the conv (and dense) kernels up to the feature map (the encoder's
  feature layers; the whole backbone for SSL); ll: every kernel, readout or
  projector included. Conv layers use their true operator norm on the input
  size they see (recorded by one forward pass on ``example``).
  """
  _, penalty = KINDS[kind]
  if penalty is None:
    return optax.identity()
  s = cfg.spectral
  convs = capture.conv_layers(net, {'params': params, 'batch_stats': batch_stats}, example)
  mask = spectral.layer_mask(params, penalty, feature_layers=net.feature_layers,
                             conv_layers=convs)
  spec = spectral.SpectralSpec(kind=penalty, lam=float(s.lam),
                               burn_in_steps=int(s.burn_in * cfg.pretrain.steps),
                               every_k=int(s.every_k), iters=int(s.iters),
                               warmup_iters=int(s.warmup_iters), tol=float(s.tol))
  return spectral.penalize(spec, mask)


def seed_groups(num_seeds: int, at_once: int) -> list[range]:
  """Consecutive groups of at most ``at_once`` seeds (0 = all seeds in one group),
  as ranges of seed indices: ``seed_groups(5, 2) == [range(0, 2), range(2, 4),
  range(4, 5)]``. Raises ValueError for ``at_once`` not an integer >= 0."""
  if isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 0:
    raise ValueError(f'at_once must be an integer >= 0 (0 = all seeds), got {at_once!r}')
  size = at_once or num_seeds
  return [range(a, min(a + size, num_seeds)) for a in range(0, num_seeds, size)]


def pretrain(cfg, kind: str, net, data: dict, keys: jax.Array, *,
             checkpoint_dir: str | None = None, fingerprint: dict | None = None,
             desc: str = '') -> tuple[dict, dict]:
  """Trains one network per seed key: ``({'params', 'batch_stats'}, metrics)``.

  Returns the variables stacked over seeds (every leaf's leading axis is
  ``keys.shape[0]``) and the last chunk's training metrics, ``{name:
  (num_seeds,) float32}`` (``loss``, ``weight_norm`` and ``accuracy``
  (supervised) or ``clean_loss`` / ``adversarial_loss`` (SSL); module
  docstring). ``keys``: (num_seeds, 2) uint32, one per seed; seed s
  initialises with ``fold_in(keys[s], 0)`` and draws its batches from
  ``fold_in(keys[s], 1)``. ``data``: ``x_train`` (n, H, W, C) in [0, 1] and
  ``y_train`` (n,) int labels (``images.load``).

  The seeds train vmapped, ``pretrain.seeds_at_once`` of them per compiled
  step (0 = all): a step's activation memory grows with the seeds it holds,
  so fewer at once fit a smaller accelerator (configs/cifar10_ssl.py has the
  figures). Each group is its own resumable fit, in ``checkpoint_dir``
  (one group) or ``<checkpoint_dir>/seeds_<a>-<b>`` (several; no checkpoints
  when None), saved with ``fingerprint`` (``loop.fit``: a rerun with another
  refuses); its seeds get the same keys, so the same results, as in one
  group. Raises ValueError for a ``kind`` not in ``KINDS`` or ``keys`` not
  (num_seeds, 2).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {tuple(KINDS)}, got {kind!r}')
  if keys.ndim != 2 or keys.shape[1] != 2:
    raise ValueError(f'keys must be (num_seeds, 2) raw PRNG keys, got shape {keys.shape}')
  p = cfg.pretrain
  adversarial, _ = KINDS[kind]
  x_train = data['x_train']
  params, stats = jax.vmap(lambda k: resnet.init(net, jax.random.fold_in(k, 0),
                                                 x_train.shape[1:]))(keys)
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  tx = optax.chain(spectral_tx(cfg, kind, net, first(params), first(stats), x_train[:1]),
                   state_lib.make_optimizer(p.optimizer, _schedule(p),
                                            weight_decay=p.weight_decay, momentum=p.momentum))
  states = jax.vmap(lambda pa, bs: state_lib.create(pa, tx, bs))(params, stats)
  aug = augment.AugmentSpec.from_config(cfg.augment)
  attack = PGDSpec.from_config(cfg.attack) if adversarial else None
  if p.method == 'supervised':
    loss_fn = functools.partial(supervised_loss, model=net, batch_size=p.batch_size, aug=aug,
                                attack=attack)
  else:
    loss_fn = functools.partial(ssl_loss, net=net, batch_size=p.batch_size, aug=aug,
                                ssl=SSLSpec.from_config(cfg), attack=attack)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  groups = seed_groups(keys.shape[0], p.seeds_at_once)
  label = desc or f'pretrain {kind}'
  done = []
  for g in groups:
    take = lambda t, g=g: jax.tree.map(lambda a: a[g.start:g.stop], t)
    where = checkpoint_dir if checkpoint_dir is None or len(groups) == 1 else os.path.join(
        checkpoint_dir, f'seeds_{g.start}-{g.stop - 1}')
    done.append(loop.fit(
        take(states), (x_train, data['y_train']), take(train_keys), loss_fn, steps=p.steps,
        chunk_size=cfg.chunk_size, batched=True, shared_aux=True,
        desc=label if len(groups) == 1 else f'{label} seeds {g.start}-{g.stop - 1}',
        progress=cfg.progress, mesh=cfg.get('mesh'), checkpoint_dir=where,
        checkpoint_every=cfg.get('checkpoint_every'), fingerprint=fingerprint,
        fused_steps=jax.default_backend() != 'cpu'))
  if len(done) == 1:
    states, metrics = done[0]
  else:
    states = jax.tree.map(lambda *a: jnp.concatenate(a), *[s for s, _ in done])
    metrics = jax.tree.map(lambda *m: np.concatenate([np.atleast_1d(v) for v in m]),
                           *[m for _, m in done])
  return {'params': states.params, 'batch_stats': states.batch_stats}, metrics
