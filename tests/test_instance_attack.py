"""Instance-wise (RoCL) attack: a closed-form optimum in 2-D, ball/bounds and
loss increase on a linear embedding of images, the objective at x, no retrace."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax import losses
from robustjax.attacks import PGDSpec, instance_attack, instance_loss_fn


def linear_embed(w, x):
  return x.reshape(x.shape[0], -1) @ w


def _embed(w):
  return jax.tree_util.Partial(linear_embed, w)


@jax.jit
def loss_at(w, x, x_pos, x_eval, temperature=0.5):
  """The attack's objective for the linear embedding, evaluated at x_eval."""
  return instance_loss_fn(_embed(w), x, x_pos, temperature)(x_eval)


PHI = 3 * np.pi / 4
N, SHAPE = 4, (4, 2, 2, 1)  # four 2x2 grey images


def _unit(angle):
  return np.array([np.cos(angle), np.sin(angle)], np.float32)


def test_2d_closed_form_tangent_point():
  # z = 2 R x (cosines as in x-space). Example 0 sits at angle 0, example 1
  # at angle PHI, each its own positive, so 0's negatives are two copies of
  # unit(PHI) and vice versa. The loss of anchor 0 at angle theta is
  # log(1 + 2 exp((cos(theta - PHI) - cos(theta)) / T)), increasing in theta
  # on (-pi/2, pi/2): the best point of the disc of radius eps around unit(0)
  # is where the ray from the origin is tangent to the disc, at angle
  # arcsin(eps) and radius sqrt(1 - eps^2); for example 1, by symmetry, at
  # PHI - arcsin(eps). PGD's step there is along delta, a fixed point.
  eps, t = 0.6, 0.5
  rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]], np.float32)
  embed = _embed(jnp.asarray(2.0 * rot.T))
  x = jnp.asarray(np.stack([_unit(0.0), _unit(PHI)]))
  spec = PGDSpec(eps=eps, norm='l2', steps=50, rel_step_size=0.5, random_start=False)
  x_adv = instance_attack(embed, x, x, jax.random.PRNGKey(0), spec, temperature=t)
  a, r = np.arcsin(eps), np.sqrt(1 - eps ** 2)
  # Positions to ~sqrt(float32 eps): the loss is flat (quadratic) along the
  # ball's boundary at the optimum.
  np.testing.assert_allclose(x_adv, r * np.stack([_unit(a), _unit(PHI - a)]), atol=2e-3)
  best = np.log1p(2 * np.exp((np.cos(PHI - a) - np.cos(a)) / t))
  np.testing.assert_allclose(loss_at(embed.args[0], x, x, x_adv, t), [best, best], rtol=1e-5)
  # No point of a fine polar grid over the disc does better.
  rho, ang = np.meshgrid(np.linspace(0, eps, 60), np.linspace(0, 2 * np.pi, 360))
  grid = np.stack([rho.ravel() * np.cos(ang.ravel()), rho.ravel() * np.sin(ang.ravel())], -1)
  z = np.concatenate([np.asarray(x[0]) + grid, np.asarray(x[1]) + grid]) @ (2.0 * rot.T)
  pos = np.repeat(np.asarray(x) @ (2.0 * rot.T), len(grid), axis=0)
  neg = np.repeat(np.asarray(x[::-1]) @ (2.0 * rot.T), len(grid), axis=0)
  cos = lambda u, v: np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
  grid_best = np.max(np.log1p(2 * np.exp((cos(z, neg) - cos(z, pos)) / t)))
  assert best >= grid_best - 1e-6


def test_objective_at_x_is_simclr_per_anchor_loss():
  w = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), SHAPE)
  x_pos = jax.random.uniform(jax.random.PRNGKey(2), SHAPE)
  expected = jax.jit(losses.nt_xent)(linear_embed(w, x), linear_embed(w, x_pos), 0.5)[:N]
  chex.assert_trees_all_close(loss_at(w, x, x_pos, x), expected, rtol=1e-5, atol=1e-6)


EPS = {'l2': 0.5, 'linf': 0.1}


@pytest.mark.parametrize('norm', ['l2', 'linf'])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_linear_embedding_stays_in_ball_and_bounds_and_raises_loss(norm, seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  w = jax.random.normal(keys[0], (4, 3))  # new params each example: same compile
  x = jax.random.uniform(keys[1], SHAPE)
  x_pos = jnp.clip(x + 0.2 * jax.random.normal(keys[2], SHAPE), 0.0, 1.0)
  eps = EPS[norm]
  spec = PGDSpec(eps=eps, norm=norm, steps=5, rel_step_size=0.3, random_start=False)
  x_adv = instance_attack(_embed(w), x, x_pos, keys[3], spec, bounds=(0.0, 1.0))
  chex.assert_shape(x_adv, SHAPE)
  d = np.asarray(x_adv - x).reshape(N, -1)
  size = np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)
  assert np.all(size <= eps * (1 + 1e-5) + 1e-6)
  assert np.all((np.asarray(x_adv) >= 0.0) & (np.asarray(x_adv) <= 1.0))
  clean, adv = np.asarray(loss_at(w, x, x_pos, x)), np.asarray(loss_at(w, x, x_pos, x_adv))
  assert np.all(adv >= clean - 1e-6)  # best iterate includes the start, x
  assert np.mean(adv - clean) > 1e-3  # and the attack does move the loss


def test_no_retrace_with_new_params_and_output_carries_no_gradient():
  traces = []

  def embed(w, x):
    traces.append(1)  # runs only while tracing
    return linear_embed(w, x)

  spec = PGDSpec(eps=0.3, norm='l2', steps=2)
  x = jax.random.uniform(jax.random.PRNGKey(0), SHAPE)
  for seed in range(3):  # new params, data and keys: one compile
    w = jax.random.normal(jax.random.PRNGKey(seed), (4, 3))
    instance_attack(jax.tree_util.Partial(embed, w), jnp.clip(x + 0.01 * seed, 0.0, 1.0), x,
                    jax.random.PRNGKey(seed),
                    spec, bounds=(0.0, 1.0))
    if seed == 0:
      first = len(traces)
  assert len(traces) == first

  # As an SSL step uses it: inside an outer jit, traced once, and the
  # parameter gradient treats x_adv as data (it does not flow through PGD).
  def adversarial_loss(w, x, key):
    x_adv = instance_attack(jax.tree_util.Partial(linear_embed, w), x, x, key, spec)
    return jnp.sum(linear_embed(w, x_adv) ** 2), x_adv

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step_grad(w, x, key):
    return jax.grad(adversarial_loss, has_aux=True)(w, x, key)

  for seed in range(2):
    w = jax.random.normal(jax.random.PRNGKey(seed), (4, 3))
    g, x_adv = step_grad(w, x, jax.random.PRNGKey(seed))
    flat = np.asarray(x_adv).reshape(N, -1)
    chex.assert_trees_all_close(g, 2 * flat.T @ (flat @ np.asarray(w)), rtol=1e-5)


def test_bad_arguments():
  x = jnp.zeros(SHAPE)
  spec = PGDSpec(eps=0.1)
  embed = _embed(jnp.ones((4, 3)))
  key = jax.random.PRNGKey(0)
  with pytest.raises(TypeError, match='spec'):
    instance_attack(embed, x, x, key, {'eps': 0.1})
  with pytest.raises(ValueError, match='x_pos'):
    instance_attack(embed, x, x[:2], key, spec)
  with pytest.raises(ValueError, match='temperature'):
    instance_attack(embed, x, x, key, spec, temperature=0.0)
