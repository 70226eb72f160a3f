"""Downstream stage: a linear head trained cleanly on a frozen encoder's units.

Only the head (a, c) is trained: logits = h(Z) @ a + c with h the frozen
hidden layer. Robustness of the composed model (encoder + head) is what the
downstream task inherits from pre-training.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from robustjax import losses
from robustjax.data import sparse_coding as sc
from robustjax.models.two_layer import TwoLayer
from robustjax.recipes.supervised import (StaticLoss, model_from_config, optimizer,
                                          require_fingerprint)
from robustjax.train import loop, sharding, state as state_lib


def head_logits(model: TwoLayer, params, z):
  """Logits h(z) @ a + c of the head on the frozen encoder's units.

  params = {'encoder': two-layer params (w, b used), 'head': {'a': (width,),
  'c': ()}}; z: (n, d) inputs. Returns (n,) logits (binary, y in {-1, +1}).
  """
  h = model.apply({'params': params['encoder']}, z, features_only=True)
  return h @ params['head']['a'] + params['head']['c']


def head_loss(head, key, aux, *, model: TwoLayer, spec: sc.SparseCodingSpec, batch_size: int):
  """Clean logistic loss of ``head`` {'a': (width,), 'c': ()} on a fresh batch
  of ``batch_size`` examples of task theta, through the frozen encoder.

  aux = (world, theta, encoder params). Returns (scalar mean logistic loss,
  {'accuracy': scalar share of the batch with margin > 0}), the (loss, aux)
  pair ``loop.fit`` expects.
  """
  world, theta, encoder = aux
  z, y, _ = sc.sample_task(key, batch_size, world, spec, theta)
  z, y = sharding.constrain_batch((z, y))  # data parallel over the mesh, if any
  # The encoder arrives through aux, so no gradient reaches it.
  logits = head_logits(model, {'encoder': encoder, 'head': head}, z)
  loss = jnp.mean(losses.logistic(logits, y))
  return loss, {'accuracy': jnp.mean(losses.margin(logits, y) > 0)}


def train_heads(cfg, encoders, worlds: sc.SparseCodingWorld, thetas: jax.Array,
                keys: jax.Array, desc: str = 'downstream heads', checkpoint_dir: str | None = None,
                fingerprint: dict | None = None):
  """One clean head per leading index of (encoders, worlds, thetas, keys);
  returns (heads {'a': (runs, width), 'c': (runs,)}, the last chunk's
  metrics). ``checkpoint_dir``, ``fingerprint``: as in
  ``supervised.train_two_layer``."""
  require_fingerprint(checkpoint_dir, fingerprint)
  dcfg = cfg.downstream
  spec = sc.SparseCodingSpec.from_config(cfg.data)
  model = model_from_config(cfg)
  tx = optimizer(dcfg.optimizer, float(dcfg.learning_rate), float(dcfg.weight_decay))
  states = _zero_heads(keys.shape[0], width=cfg.model.width, tx=tx)
  loss_fn = StaticLoss.of(head_loss, model=model, spec=spec, batch_size=dcfg.batch_size)
  states, metrics = loop.fit(states, (worlds, thetas, encoders), keys, loss_fn,
                             steps=dcfg.steps, chunk_size=cfg.chunk_size, batched=True,
                             desc=desc, progress=cfg.progress, mesh=cfg.get('mesh'),
                             checkpoint_dir=checkpoint_dir,
                             checkpoint_every=cfg.get('checkpoint_every'),
                             fingerprint=fingerprint)
  return states.params, metrics


@functools.partial(jax.jit, static_argnums=0, static_argnames=('width', 'tx'))
def _zero_heads(num: int, *, width: int, tx):
  """``num`` train states of zero heads {'a': (width,), 'c': ()}, one program."""
  head = {'a': jnp.zeros((width,)), 'c': jnp.zeros(())}
  return jax.vmap(lambda _: state_lib.create(head, tx))(jnp.arange(num))
