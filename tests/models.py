"""Small models the attack tests share: affine classifiers and a digits MLP."""
import jax
import jax.numpy as jnp
import numpy as np
import optax


def affine_logits(w, b, x):
  return x @ w + b


def random_affine(seed: int, d: int, c: int, n: int):
  """(f, w, b, x, labels = argmax f(x)) for a random affine classifier."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  w = jax.random.normal(k[0], (d, c))
  b = jax.random.normal(k[1], (c,))
  x = jax.random.normal(k[2], (n, d))
  f = jax.tree_util.Partial(affine_logits, w, b)
  return f, w, b, x, jnp.argmax(f(x), -1)


def mlp_logits(params, x):
  h = jax.nn.gelu(x @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def digits_mlp():
  """A 64-32-10 GELU MLP trained briefly on scikit-learn's 8x8 digits.

  Returns (logits Partial, 64 held-out inputs, their labels).
  """
  from sklearn.datasets import load_digits
  xs, ys = load_digits(return_X_y=True)
  xs = jnp.asarray(xs / 16.0, jnp.float32)
  ys = jnp.asarray(ys, jnp.int32)
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  params = {'w1': jax.random.normal(k1, (64, 32)) / 8.0, 'b1': jnp.zeros(32),
            'w2': jax.random.normal(k2, (32, 10)) / np.sqrt(32), 'b2': jnp.zeros(10)}
  opt = optax.adam(1e-2)

  @jax.jit
  def step(p, s):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        mlp_logits(p, xs[:1500]), ys[:1500]).mean()
    u, s = opt.update(jax.grad(loss)(p), s)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  for _ in range(200):
    params, state = step(params, state)
  return jax.tree_util.Partial(mlp_logits, params), xs[1500:1564], ys[1500:1564]
