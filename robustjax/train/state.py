"""Train states and optimizers built from config values."""
from __future__ import annotations

from typing import Any

import jax
import optax
from flax.training import train_state


def make_optimizer(name: str, learning_rate: float, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, trainable: Any = None) -> optax.GradientTransformation:
  """'adam' (AdamW when weight_decay > 0) or 'sgd' (momentum, coupled decay).

  ``trainable``: optional pytree of bools matching the params; False leaves
  freeze (their updates are zero, their optimizer state is empty).
  """
  if name == 'adam':
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  elif name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))
  else:
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
  if trainable is None:
    return tx
  labels = jax.tree.map(lambda t: 'train' if t else 'freeze', trainable)
  return optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)


class TrainState(train_state.TrainState):
  """flax's TrainState plus the model's non-trained state (BatchNorm running
  statistics); None for models without one."""
  batch_stats: Any = None


def create(params, tx: optax.GradientTransformation, batch_stats: Any = None) -> TrainState:
  return TrainState.create(apply_fn=None, params=params, tx=tx, batch_stats=batch_stats)
