"""NT-Xent, Barlow Twins and the fixed-target instance loss: numpy references,
closed forms, invariances."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from robustjax import losses

SEEDS = st.integers(0, 2 ** 16)
# Jitted once per shape: op-by-op dispatch compiles every small op separately.
nt_xent = jax.jit(losses.nt_xent)
barlow_twins = jax.jit(losses.barlow_twins, static_argnames='eps')
instance_contrastive = jax.jit(losses.instance_contrastive)
ntxent_optax = jax.jit(optax.losses.ntxent)


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cos(a, b):
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def nt_xent_loop(z1, z2, t):
  """SimCLR's l(i, j), written out anchor by anchor."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  n2 = len(z)
  out = []
  for a in range(n2):
    p = (a + n2 // 2) % n2
    denom = sum(np.exp(_cos(z[a], z[b]) / t) for b in range(n2) if b != a)
    out.append(-np.log(np.exp(_cos(z[a], z[p]) / t) / denom))
  return np.array(out)


def barlow_twins_loop(z1, z2, lambd):
  std = lambda z: (z - z.mean(0)) / z.std(0)  # biased std, as BatchNorm
  c = std(z1.astype(np.float64)).T @ std(z2.astype(np.float64)) / len(z1)
  d = c.shape[0]
  return sum((1 - c[i, i]) ** 2 for i in range(d)) + lambd * sum(
      c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)


# An orthogonal design: columns of a 4x4 Hadamard matrix without the constant
# one have mean 0, biased std 1 and are mutually orthogonal, so C = I exactly.
HADAMARD = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], np.float32)


# ---------------------------------------------------------------- NT-Xent


@settings(max_examples=15, deadline=None)
@given(n=st.sampled_from([1, 3]), t=st.sampled_from([0.1, 0.5, 1.0]), seed=SEEDS)
def test_nt_xent_matches_loop(n, t, seed):
  z1, z2 = _normal(seed, (n, 3)), _normal(seed + 1, (n, 3))
  got = nt_xent(jnp.asarray(z1), jnp.asarray(z2), t)
  chex.assert_shape(got, (2 * n,))
  np.testing.assert_allclose(got, nt_xent_loop(z1, z2, t), rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(got) >= -1e-6)  # l_a >= 0: the positive is in the sum
  if n > 1:  # optax's mean over positive pairs (no negatives at n = 1)
    labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    ref = ntxent_optax(jnp.concatenate([z1, z2]), labels, t)
    np.testing.assert_allclose(jnp.mean(got), ref, rtol=1e-5)


def test_nt_xent_single_example_is_zero():
  z1, z2 = jnp.array([[1.0, 2.0]]), jnp.array([[-3.0, 0.5]])
  chex.assert_trees_all_close(nt_xent(z1, z2, 0.5), jnp.zeros(2))


@pytest.mark.parametrize('n,t', [(2, 0.5), (3, 0.1), (4, 1.0)])
def test_nt_xent_closed_form_aligned_orthogonal(n, t):
  # Views agree (s = 1) and all other examples are orthogonal (s = 0):
  # l = -1/T + log(e^{1/T} + (2n - 2)) = log(1 + (2n - 2) e^{-1/T}).
  z = 3.0 * jnp.eye(n, 5)
  expected = np.log1p((2 * n - 2) * np.exp(-1.0 / t))
  # atol: float32 resolution of l = logsumexp - 1/T at 1/T = 10.
  chex.assert_trees_all_close(nt_xent(z, z, t), jnp.full(2 * n, expected), rtol=1e-6, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS)
def test_nt_xent_invariances(seed):
  n = 3
  z1, z2 = jnp.asarray(_normal(seed, (n, 4))), jnp.asarray(_normal(seed + 1, (n, 4)))
  base = nt_xent(z1, z2, 0.5)
  scales = jnp.asarray(np.random.default_rng(seed).uniform(0.1, 10.0, (2, n, 1)), jnp.float32)
  chex.assert_trees_all_close(nt_xent(scales[0] * z1, scales[1] * z2, 0.5), base,
                              rtol=1e-5, atol=1e-6)
  # Swapping the views swaps the halves.
  chex.assert_trees_all_close(nt_xent(z2, z1, 0.5), jnp.roll(base, n), rtol=1e-6)
  # Permuting examples permutes both halves.
  perm = np.random.default_rng(seed).permutation(n)
  chex.assert_trees_all_close(nt_xent(z1[perm], z2[perm], 0.5),
                              jnp.concatenate([base[:n][perm], base[n:][perm]]), rtol=1e-6)


def test_nt_xent_gradient_finite_with_masked_self_and_zero_row():
  z1 = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])  # a zero embedding
  z2 = jnp.array([[0.8, 0.1], [0.0, 1.0], [-1.0, 0.3]])
  g = jax.jit(jax.grad(lambda a, b: jnp.mean(nt_xent(a, b, 0.2)), argnums=(0, 1)))(z1, z2)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def test_nt_xent_bad_shapes():
  with pytest.raises(ValueError, match='z1 and z2'):
    nt_xent(jnp.ones((3, 2)), jnp.ones((2, 2)), 0.5)


# ---------------------------------------------------------- Barlow Twins


@settings(max_examples=10, deadline=None)
@given(nd=st.sampled_from([(5, 1), (4, 3)]), lambd=st.sampled_from([0.0, 5.1e-3, 1.0]),
       seed=SEEDS)
def test_barlow_twins_matches_loop(nd, lambd, seed):
  n, d = nd
  z1, z2 = _normal(seed, (n, d)), _normal(seed + 1, (n, d))
  got = barlow_twins(jnp.asarray(z1), jnp.asarray(z2), lambd, eps=0.0)
  chex.assert_shape(got, ())
  np.testing.assert_allclose(got, barlow_twins_loop(z1, z2, lambd), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('lambd', [5.1e-3, 1.0])
def test_barlow_twins_known_answers(lambd):
  z = jnp.asarray(HADAMARD)
  d = z.shape[1]
  # Identical, decorrelated views: C = I.
  chex.assert_trees_all_close(barlow_twins(z, z, lambd, eps=0.0), 0.0, atol=1e-6)
  # The default eps (1e-5, BatchNorm's) shrinks C_ii to 1 / (1 + eps).
  chex.assert_trees_all_close(barlow_twins(z, z, lambd), d * (1e-5 / (1 + 1e-5)) ** 2,
                              atol=1e-9)
  # Opposite views: C = -I, (1 - (-1))^2 = 4 per dimension.
  chex.assert_trees_all_close(barlow_twins(z, -z, lambd, eps=0.0), 4.0 * d, rtol=1e-6)
  # A redundant second view dimension: z2 = [h1, h1, h3] gives C_12 = <h1, h1>
  # / n = 1 (off-diagonal, weighted by lambd) and C_22 = <h2, h1> / n = 0.
  z2 = z.at[:, 1].set(z[:, 0])
  chex.assert_trees_all_close(barlow_twins(z, z2, lambd, eps=0.0), 1.0 + lambd,
                              rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS)
def test_barlow_twins_invariant_to_positive_affine_maps_per_dimension(seed):
  rng = np.random.default_rng(seed)
  z1, z2 = jnp.asarray(_normal(seed, (6, 3))), jnp.asarray(_normal(seed + 1, (6, 3)))
  scale, shift = rng.uniform(0.2, 5.0, (2, 3)), rng.normal(size=(2, 3))
  moved = barlow_twins(z1 * scale[0] + shift[0], z2 * scale[1] + shift[1], 0.3, eps=0.0)
  chex.assert_trees_all_close(moved, barlow_twins(z1, z2, 0.3, eps=0.0),
                              rtol=1e-4, atol=1e-5)


# ------------------------------------------------ instance (fixed targets)


@settings(max_examples=10, deadline=None)
@given(n=st.sampled_from([1, 3]), seed=SEEDS)
def test_instance_contrastive_is_nt_xent_with_frozen_others(n, seed):
  z1, z2 = jnp.asarray(_normal(seed, (n, 3))), jnp.asarray(_normal(seed + 1, (n, 3)))
  others = ~jnp.eye(n, dtype=bool)
  got = instance_contrastive(z1, z2, jnp.concatenate([z1, z2]), 0.5,
                                    jnp.concatenate([others, others], axis=1))
  chex.assert_shape(got, (n,))
  chex.assert_trees_all_close(got, nt_xent(z1, z2, 0.5)[:n], rtol=1e-5, atol=1e-6)


def test_instance_contrastive_closed_form_and_no_negatives():
  # Anchors on their positives (s = 1), m orthogonal negatives (s = 0).
  a = jnp.eye(2, 6)
  q = jnp.eye(6)[2:]  # m = 4
  chex.assert_trees_all_close(instance_contrastive(2 * a, a, q, 0.25),
                              jnp.full(2, np.log1p(4 * np.exp(-4.0))), rtol=1e-5)
  # Every negative masked out: only the positive is left, the loss is 0.
  chex.assert_trees_all_close(
      instance_contrastive(a, -a, q, 0.25, jnp.zeros((2, 4), bool)), jnp.zeros(2))


def test_instance_contrastive_examples_are_independent():
  z = jnp.asarray(_normal(0, (4, 3)))
  pos, neg = jnp.asarray(_normal(1, (4, 3))), jnp.asarray(_normal(2, (5, 3)))
  jac = jax.jit(jax.jacobian(lambda a: instance_contrastive(a, pos, neg, 0.5)))(z)  # (4, 4, 3)
  off = jac * (1 - jnp.eye(4))[:, :, None]
  chex.assert_trees_all_close(off, jnp.zeros_like(off))
  assert np.all(np.abs(np.asarray(jnp.einsum('iid->id', jac))).sum(-1) > 0)


def test_instance_contrastive_bad_shapes():
  a = jnp.ones((2, 3))
  with pytest.raises(ValueError, match='z_neg'):
    instance_contrastive(a, a, jnp.ones((4, 2)), 0.5)
  with pytest.raises(ValueError, match='neg_mask'):
    instance_contrastive(a, a, jnp.ones((4, 3)), 0.5, jnp.ones((2, 3), bool))
  with pytest.raises(ValueError, match='z_anchor and z_pos'):
    instance_contrastive(a, jnp.ones((3, 3)), jnp.ones((4, 3)), 0.5)
