"""Supervised training of the two-layer net on a sparse-coding task, clean or adversarial.

Used for pre-training (task theta0) and for the end-to-end downstream
references (a fresh task theta). Batches are drawn fresh from the data model
at every step (online learning), inside the compiled step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from robustjax import losses
from robustjax.attacks import PGDSpec
from robustjax.data import sparse_coding as sc
from robustjax.models.apply import bind, logits as logits_fn
from robustjax.models.two_layer import TwoLayer
from robustjax.train import loop, sharding, state as state_lib


@dataclasses.dataclass(frozen=True)
class StaticLoss:
  """``fn(params, key, aux, **statics)`` as a loss that compares by value.

  ``loop.fit`` reuses a compiled training chunk for an equal loss function,
  so two fits with equal statics (a pre-training mode and the reference that
  mirrors it, or the same stage run twice in one process) compile once. The
  statics must be hashable (flax modules, frozen dataclasses, numbers,
  ``ml_collections.FrozenConfigDict``).
  """
  fn: Callable
  statics: tuple  # ((name, value), ...), sorted by name

  @classmethod
  def of(cls, fn: Callable, **statics: Any) -> 'StaticLoss':
    """Returns the ``StaticLoss`` of ``fn`` with keyword arguments ``statics``
    (stored sorted by name, so the keyword order does not matter)."""
    return cls(fn, tuple(sorted(statics.items())))

  def __call__(self, params, key, aux):
    return self.fn(params, key, aux, **dict(self.statics))


@functools.lru_cache(maxsize=None)
def optimizer(name: str, learning_rate: float, weight_decay: float, trainable: tuple | None = None):
  """``state.make_optimizer``, one object per value (a train state carries its
  optimizer in its tree structure, so equal optimizers let fits share compiles).
  ``trainable``: None or ((param name, bool), ...)."""
  return state_lib.make_optimizer(name, learning_rate, weight_decay=weight_decay,
                                  trainable=None if trainable is None else dict(trainable))


def model_from_config(cfg) -> TwoLayer:
  """Returns the ``TwoLayer`` module of ``cfg.model`` (width, bias_init,
  init_scale, readout_init_scale); the module only, no parameters."""
  return TwoLayer(width=cfg.model.width, bias_init=cfg.model.bias_init,
                  init_scale=cfg.model.init_scale,
                  readout_init_scale=cfg.model.readout_init_scale)


def attack_loss(apply, params, y, z):
  """Per-example logistic loss of a batch under fixed params: what PGD maximises."""
  return losses.logistic(apply(params, z), y)


def supervised_loss(params, key, aux, *, model: TwoLayer, spec: sc.SparseCodingSpec,
                    batch_size: int, attack: PGDSpec | None):
  """Logistic loss on a fresh batch of task ``theta``; adversarial when attack is set.

  The inner maximisation sees the current parameters as constants and its
  result is a constant for the outer gradient (Madry et al.'s min-max).
  aux = (world, theta). Returns (scalar mean logistic loss, {'accuracy':
  scalar share of the (attacked) batch with margin > 0}), the (loss, aux)
  pair ``loop.fit`` expects.
  """
  world, theta = aux
  k_data, k_attack = jax.random.split(key)
  z, y, _ = sc.sample_task(k_data, batch_size, world, spec, theta)
  z, y = sharding.constrain_batch((z, y))  # data parallel over the mesh, if any
  apply = bind(logits_fn, model)
  if attack is not None:
    loss_of_input = jax.tree_util.Partial(attack_loss, apply, jax.lax.stop_gradient(params), y)
    z = jax.lax.stop_gradient(attack(loss_of_input, z, k_attack))
  logits = apply(params, z)
  loss = jnp.mean(losses.logistic(logits, y))
  return loss, {'accuracy': jnp.mean(losses.margin(logits, y) > 0)}


def train(cfg, worlds: sc.SparseCodingWorld, thetas: jax.Array, keys: jax.Array, *,
          adversarial: bool, opt_cfg=None, desc: str = 'supervised',
          checkpoint_dir: str | None = None, fingerprint: dict | None = None):
  """Trains one net per leading index of (worlds, thetas, keys); returns
  (params with leaves (runs, ...), the last chunk's metrics).

  All runs share one compile (vmap). ``opt_cfg`` defaults to ``cfg.pretrain``.
  ``checkpoint_dir``, ``fingerprint``: as in ``train_two_layer``.
  """
  opt_cfg = cfg.pretrain if opt_cfg is None else opt_cfg
  loss_fn = StaticLoss.of(
      supervised_loss, model=model_from_config(cfg),
      spec=sc.SparseCodingSpec.from_config(cfg.data), batch_size=opt_cfg.batch_size,
      attack=PGDSpec.from_config(cfg.attack) if adversarial else None)
  return train_two_layer(cfg, (worlds, thetas), keys, loss_fn, opt_cfg=opt_cfg, desc=desc,
                         checkpoint_dir=checkpoint_dir, fingerprint=fingerprint)


def train_two_layer(cfg, aux, keys: jax.Array, loss_fn, *, opt_cfg, desc: str,
                    checkpoint_dir: str | None = None, fingerprint: dict | None = None):
  """Initialises and trains one TwoLayer per key on ``loss_fn(params, key, aux)``;
  returns (params with leaves (runs, ...), the last chunk's metrics).

  Shared by every stage that trains the two-layer net (supervised,
  contrastive): init from the first half of each key, data and attacks from
  the second. ``checkpoint_dir``: the fit's own resumable directory; it needs
  the ``fingerprint`` of the config that determines the fit (the
  experiment's ``runner.Run.fingerprint``), saved with every checkpoint so a
  changed config never resumes it (``loop.fit``). Raises ValueError on a
  ``checkpoint_dir`` without a fingerprint.
  """
  require_fingerprint(checkpoint_dir, fingerprint)
  trainable = (('a', True), ('b', bool(cfg.model.train_bias)), ('w', True))
  tx = optimizer(opt_cfg.optimizer, float(opt_cfg.learning_rate), float(opt_cfg.weight_decay),
                 trainable)
  states, train_keys = _init(keys, model=model_from_config(cfg), tx=tx, d=cfg.data.d)
  states, metrics = loop.fit(states, aux, train_keys, loss_fn,
                             steps=opt_cfg.steps, chunk_size=cfg.chunk_size, batched=True,
                             desc=desc, progress=cfg.progress, mesh=cfg.get('mesh'),
                             checkpoint_dir=checkpoint_dir,
                             checkpoint_every=cfg.get('checkpoint_every'),
                             fingerprint=fingerprint)
  return states.params, metrics


def require_fingerprint(checkpoint_dir: str | None, fingerprint: dict | None) -> None:
  """Refuses (ValueError) a fit's ``checkpoint_dir`` without the config
  ``fingerprint`` that checks a resume; returns None."""
  if checkpoint_dir and fingerprint is None:
    raise ValueError('fingerprint: required with checkpoint_dir (the run\'s config '
                     'fingerprint, runner.Run.fingerprint), so a changed config never resumes')


@functools.partial(jax.jit, static_argnames=('model', 'tx', 'd'))
def _init(keys, *, model: TwoLayer, tx, d: int):
  """(train states, training keys), one per key: params from the key's first
  half, the training key its second half. One compiled program (not one per
  primitive, as the same vmap outside jit would be)."""
  def init(key):
    k_init, k_train = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1, d)))['params']
    return state_lib.create(params, tx), k_train

  return jax.vmap(init)(keys)
