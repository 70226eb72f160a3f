"""Robust accuracy under PGD equals the exact one on affine models."""
import jax
import jax.numpy as jnp
import numpy as np

from robustjax.metrics.robustness import accuracy, robust_accuracy


def test_binary_affine_model_exact_robust_accuracy():
  key = jax.random.PRNGKey(0)
  w, b = jnp.array([1.0, -0.5, 2.0]), 0.3
  x = jax.random.normal(key, (400, 3))
  y = jnp.where(jax.random.uniform(jax.random.PRNGKey(1), (400,)) < 0.5, -1.0, 1.0)
  logits = lambda x: x @ w + b
  eps = [0.0, 0.2, 0.5, 1.0, 3.0]
  got = robust_accuracy(logits, x, y, eps=eps, norm='l2', steps=10, rel_step_size=0.5, restarts=1,
                        key=key)
  dist = y * logits(x) / jnp.linalg.norm(w)  # signed l2 distance to the boundary
  exact = [float(jnp.mean(dist > e)) for e in eps]
  np.testing.assert_allclose(np.asarray(got), exact, atol=1 / 400)
  assert float(got[0]) == float(accuracy(logits(x), y))


def test_multiclass_affine_model_exact_linf_robust_accuracy():
  k_w, k_x, k_y = jax.random.split(jax.random.PRNGKey(2), 3)
  w = jax.random.normal(k_w, (5, 4))
  x = jax.random.normal(k_x, (300, 5))
  y = jax.random.randint(k_y, (300,), 0, 4)
  logits = lambda x: x @ w
  eps = [0.05, 0.2]
  got = robust_accuracy(logits, x, y, eps=eps, norm='linf', steps=20, rel_step_size=0.25,
                        restarts=1, key=k_x)
  # Exact linf distance of an affine classifier: min_k (z_y - z_k) / ||w_y - w_k||_1.
  z = logits(x)
  diff = w[:, y].T[:, None, :] - w.T[None]          # (n, C, d)
  gap = (z[jnp.arange(300), y][:, None] - z) / jnp.abs(diff).sum(-1)
  dist = jnp.min(jnp.where(jax.nn.one_hot(y, 4, dtype=bool), jnp.inf, gap), axis=1)
  exact = [float(jnp.mean(dist > e)) for e in eps]
  np.testing.assert_allclose(np.asarray(got), exact, atol=2 / 300)
