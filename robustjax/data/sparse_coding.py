"""The sparse-coding data model (Allen-Zhu & Li 2020; Paper A).

A world is a dictionary ``M`` (d x D) and a supervised direction ``theta0``
(D,). Latent features ``X`` are sparse with random signs; observations are
``Z = M X + xi`` with ``xi ~ N(0, sigma^2 / d I)`` (so ``||xi|| ~ sigma``).
Labels are ``sign(theta^T X)`` in {-1, +1} (a zero score, only possible when
no feature is active, maps to +1).

Every function is pure in an explicit PRNG key and jit-able; sizes and the
sampling choices are static (Python) values carried by ``SparseCodingSpec``.
"""
from __future__ import annotations

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SparseCodingSpec:
  """Static description of the data model (hashable: safe as a jit static)."""
  d: int = 64                    # observation dimension
  D: int = 64                    # number of latent features
  k: int = 4                     # expected (or exact) number of active features
  exact_k: bool = True           # exactly k active, else each active w.p. k/D
  magnitude_low: float = 1.0     # |X_i| ~ U[magnitude_low, 1]; 1.0 means fixed 1
  noise_std: float = 0.1         # sigma: ||xi|| is about sigma
  dictionary: str = 'orthonormal'  # 'orthonormal' (needs D <= d) or 'overcomplete'

  @classmethod
  def from_config(cls, cfg) -> 'SparseCodingSpec':
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


@flax.struct.dataclass
class SparseCodingWorld:
  """One draw of the data model's random parameters (a pytree: vmap-able)."""
  dictionary: jax.Array  # M, (d, D), unit-norm columns
  theta0: jax.Array      # supervised task direction, (D,)


def make_dictionary(key: chex.PRNGKey, d: int, D: int, kind: str) -> jax.Array:
  """Orthonormal columns (QR of a Gaussian) or unit-norm random columns."""
  g = jax.random.normal(key, (d, D))
  if kind == 'orthonormal':
    if D > d:
      raise ValueError(f'orthonormal dictionary needs D <= d, got D={D}, d={d}')
    q, r = jnp.linalg.qr(g)
    # Fix the signs so the result is Haar-distributed, not QR-convention biased.
    return q * jnp.sign(jnp.diag(r))[None, :]
  if kind == 'overcomplete':
    return g / jnp.linalg.norm(g, axis=0, keepdims=True)
  raise ValueError(f"dictionary must be 'orthonormal' or 'overcomplete', got {kind!r}")


def make_world(key: chex.PRNGKey, spec: SparseCodingSpec) -> SparseCodingWorld:
  k_dict, k_theta = jax.random.split(key)
  return SparseCodingWorld(
      dictionary=make_dictionary(k_dict, spec.d, spec.D, spec.dictionary),
      theta0=new_task(k_theta, spec))


def new_task(key: chex.PRNGKey, spec: SparseCodingSpec) -> jax.Array:
  """A task direction theta on the latent features, entries N(0, 1)."""
  return jax.random.normal(key, (spec.D,))


def sample_features(key: chex.PRNGKey, n: int, spec: SparseCodingSpec,
                    k: jax.Array | None = None) -> jax.Array:
  """Sparse latent features X, (n, D).

  ``k``: None uses ``spec.k``; a scalar integer in [1, spec.k] (may be
  traced; checked when concrete: TypeError / ValueError) overrides it, with
  ``spec.k`` then the largest k any run uses, so runs that differ only in k
  share one compiled program (vmap over k). Either way the same key gives
  the same X for the same number of active features.
  """
  if k is not None:
    if jnp.ndim(k) or not jnp.issubdtype(jnp.result_type(k), jnp.integer):
      raise TypeError(f'k must be a scalar integer (or None), got {k!r}')
    if not isinstance(k, jax.core.Tracer) and not 1 <= int(k) <= spec.k:
      raise ValueError(f'k must lie in [1, spec.k = {spec.k}], got {int(k)}')
  k_sup, k_sign, k_mag = jax.random.split(key, 3)
  if spec.exact_k:
    # The k largest of D iid uniforms pick a uniformly random k-subset
    # (top_k, not a full sort: this runs inside every training step).
    u = jax.random.uniform(k_sup, (n, spec.D))
    if k is None:
      _, idx = jax.lax.top_k(u, spec.k)
      support = jnp.sum(jax.nn.one_hot(idx, spec.D, dtype=jnp.int32), axis=1) > 0
    else:  # the same subset, as u >= the k-th largest (top_k to spec.k: a sort is ~3x slower)
      top, _ = jax.lax.top_k(u, spec.k)
      kth = jnp.take(top, jnp.asarray(k, jnp.int32) - 1, axis=-1)
      support = u >= kth[:, None]
  else:
    rate = spec.k / spec.D if k is None else jnp.asarray(k, jnp.float32) / spec.D
    support = jax.random.bernoulli(k_sup, rate, (n, spec.D))
  signs = jax.random.rademacher(k_sign, (n, spec.D), dtype=jnp.float32)
  if spec.magnitude_low < 1.0:
    signs = signs * jax.random.uniform(k_mag, (n, spec.D), minval=spec.magnitude_low)
  return jnp.where(support, signs, 0.0)


def observe(key: chex.PRNGKey, x: jax.Array, world: SparseCodingWorld,
            spec: SparseCodingSpec) -> jax.Array:
  """Z = M X + xi, xi ~ N(0, sigma^2/d I)."""
  noise = jax.random.normal(key, x.shape[:-1] + (spec.d,))
  return x @ world.dictionary.T + noise * (spec.noise_std / jnp.sqrt(spec.d))


def labels(x: jax.Array, theta: jax.Array) -> jax.Array:
  """sign(theta^T X) in {-1., +1.} (0 -> +1)."""
  return jnp.where(x @ theta >= 0, 1.0, -1.0)


def sample_task(key: chex.PRNGKey, n: int, world: SparseCodingWorld,
                spec: SparseCodingSpec, theta: jax.Array | None = None,
                k: jax.Array | None = None):
  """(Z, y, X) for the task theta (default: the supervised task theta0);
  ``k`` overrides ``spec.k`` as in :func:`sample_features`."""
  theta = world.theta0 if theta is None else theta
  k_x, k_noise = jax.random.split(key)
  x = sample_features(k_x, n, spec, k)
  return observe(k_noise, x, world, spec), labels(x, theta), x


def feature_dropout(key: chex.PRNGKey, x: jax.Array, rate: float) -> jax.Array:
  """Augmentation: drop each latent feature independently with probability rate."""
  if rate <= 0.0:
    return x
  return jnp.where(jax.random.bernoulli(key, rate, x.shape), 0.0, x)


def sample_pairs(key: chex.PRNGKey, n: int, world: SparseCodingWorld, spec: SparseCodingSpec,
                 *, negative_fraction: float = 0.5, dropout: float = 0.0):
  """Contrastive pairs: (pairs (n, 2, d), y (n,) in {-1, +1}).

  Similar (y = +1): two views of one X, each with its own noise and its own
  feature dropout. Dissimilar (y = -1): views of independent X and X'. Each
  pair is dissimilar with probability ``negative_fraction``.
  """
  k_x, k_x2, k_neg, k_drop, k_noise = jax.random.split(key, 5)
  x = sample_features(k_x, n, spec)
  negative = jax.random.bernoulli(k_neg, negative_fraction, (n,))
  x2 = jnp.where(negative[:, None], sample_features(k_x2, n, spec), x)
  views = jnp.stack([x, x2], axis=1)                       # (n, 2, D)
  views = feature_dropout(k_drop, views, dropout)
  return observe(k_noise, views, world, spec), jnp.where(negative, -1.0, 1.0)
