"""Losses: per example over logits and labels, and the self-supervised losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from robustjax import checks


def logistic(logits: jax.Array, y: jax.Array) -> jax.Array:
  """log(1 + exp(-y f)) for scalar logits f and labels y in {-1, +1}."""
  return jax.nn.softplus(-y * logits)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Classification margin: positive iff the prediction is correct.

  Binary (logits (n,), y in {-1, +1}): y f. Multi-class (logits (n, C), y
  integer): z_y - max_{k != y} z_k.
  """
  if logits.ndim == 1:
    return y * logits
  y = y.astype(jnp.int32)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return z_y - jnp.max(others, axis=-1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy for integer labels, or logistic for binary scalar logits."""
  if logits.ndim == 1:
    return logistic(logits, y)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))


def pair_score(h: jax.Array, h2: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
  """s = scale * <h, h'> per pair: positive means "same latent features"."""
  return scale * jnp.sum(h * h2, axis=-1)


def pair_contrastive(score: jax.Array, y: jax.Array) -> jax.Array:
  """Paper A's pair loss: logistic on y * s, y = +1 similar, -1 dissimilar."""
  return logistic(score, y)


# Self-supervised losses (SimCLR, Barlow Twins) and the instance-wise attack's
# objective. Embeddings are compared by cosine similarity: each row is
# l2-normalised, a zero row stays zero (its similarities are 0), never NaN.


def _unit_rows(z: jax.Array) -> jax.Array:
  # Clamping the squared norm before the root keeps the gradient at a zero
  # row finite (sqrt's derivative at 0 is not).
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))


def _check_pair(z1, z2, name1='z1', name2='z2'):
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f'{name1} and {name2} must both have shape (n, d), got '
                     f'{z1.shape} and {z2.shape}')


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """SimCLR's NT-Xent (Chen et al. 2020), per anchor: shape (2n,).

  The 2n embeddings are ``concat([z1, z2])``; anchor a (row a of that) has
  as positive its other view p(a) (a +- n) and as negatives the 2n - 2
  embeddings of the other examples:

    l_a = -s_{a,p(a)} / T + log sum_{b != a} exp(s_{a,b} / T),

  s = cosine similarity. SimCLR's loss is the mean of the (2n,) result. Rows
  0..n-1 are the z1 anchors, n..2n-1 the z2 anchors, so swapping the views
  swaps the halves. With n = 1 there are no negatives and the loss is 0.
  Invariant to positive rescaling of any embedding. ``temperature`` T must be
  finite and > 0 (ValueError otherwise, checked when concrete).
  """
  _check_pair(z1, z2)
  checks.temperature(temperature)
  n = z1.shape[0]
  z = _unit_rows(jnp.concatenate([z1, z2], axis=0))
  logits = z @ z.T / temperature
  # Masking the self-similarity with where (not by subtracting a constant)
  # keeps its gradient exactly zero.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return jax.nn.logsumexp(logits, axis=-1) - logits[jnp.arange(2 * n), pos]


def barlow_twins(z1: jax.Array, z2: jax.Array, lambd: float | jax.Array,
                 eps: float = 1e-5) -> jax.Array:
  """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021), a scalar.

  Each dimension is standardised over the batch (mean 0, biased variance 1,
  as the authors' affine-free BatchNorm; ``eps`` is added to the variance as
  there), C = z1n^T z2n / n (d, d), and

    loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

  A batch statistic by construction: it is not a per-example loss (so not
  something to attack example by example). The paper uses lambd = 5.1e-3.
  """
  _check_pair(z1, z2)

  def standardise(z):
    mu = jnp.mean(z, axis=0)
    var = jnp.mean(jnp.square(z - mu), axis=0)
    return (z - mu) * jax.lax.rsqrt(var + eps)

  c = standardise(z1).T @ standardise(z2) / z1.shape[0]
  on = jnp.diagonal(c)
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(on))
  return jnp.sum(jnp.square(1.0 - on)) + lambd * off


def instance_contrastive(z_anchor: jax.Array, z_pos: jax.Array, z_neg: jax.Array,
                         temperature: float | jax.Array,
                         neg_mask: jax.Array | None = None) -> jax.Array:
  """NT-Xent of each anchor against FIXED targets, per example: shape (n,).

    l_i = -s(a_i, p_i) / T + log( exp(s(a_i, p_i) / T)
                                  + sum_{j: mask_ij} exp(s(a_i, q_j) / T) ),

  with s the cosine similarity, anchors a (n, d), their positives p (n, d) and
  a bank of negatives q (m, d). ``neg_mask`` (n, m) bool says which negatives
  each anchor uses (None: all), e.g. to leave out an anchor's own views. l_i
  depends on a_i alone given the targets, so examples are independent and the
  loss can be maximised by PGD example by example (the instance-wise attack,
  ``robustjax.attacks.instance``). The targets should carry no gradient there:
  stop them (``jax.lax.stop_gradient``) or compute them outside the attack.
  ``temperature`` T must be finite and > 0 (ValueError otherwise, checked when
  concrete).
  """
  _check_pair(z_anchor, z_pos, 'z_anchor', 'z_pos')
  checks.temperature(temperature)
  if z_neg.ndim != 2 or z_neg.shape[1] != z_anchor.shape[1]:
    raise ValueError(f'z_neg must have shape (m, {z_anchor.shape[1]}), got {z_neg.shape}')
  if neg_mask is not None and neg_mask.shape != (z_anchor.shape[0], z_neg.shape[0]):
    raise ValueError(f'neg_mask must have shape {(z_anchor.shape[0], z_neg.shape[0])}, '
                     f'got {neg_mask.shape}')
  a, p, q = _unit_rows(z_anchor), _unit_rows(z_pos), _unit_rows(z_neg)
  pos = jnp.sum(a * p, axis=-1) / temperature
  neg = a @ q.T / temperature
  if neg_mask is not None:
    neg = jnp.where(neg_mask, neg, -jnp.inf)
  return jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], axis=-1), axis=-1) - pos
