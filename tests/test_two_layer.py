"""The two-layer soft-threshold net and units of controlled purity."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from robustjax.metrics import purification
from robustjax.models.two_layer import TwoLayer, purified_units, soft_threshold


def test_soft_threshold_known_values():
  u = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
  chex.assert_trees_all_close(soft_threshold(u, 0.5), jnp.array([-1.5, 0.0, 0.0, 0.0, 1.0]))
  chex.assert_trees_all_close(soft_threshold(u, 0.0), u)  # b = 0 is the identity


def test_forward_is_sum_of_units():
  model = TwoLayer(width=5, bias_init=0.2)
  z = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
  params = model.init(jax.random.PRNGKey(1), z)['params']
  chex.assert_shape((params['w'], params['b'], params['a']), ((3, 5), (5,), (5,)))
  h = model.apply({'params': params}, z, features_only=True)
  chex.assert_shape(h, (7, 5))
  expected = jnp.sum(params['a'] * soft_threshold(z @ params['w'], 0.2), axis=-1)
  chex.assert_trees_all_close(model.apply({'params': params}, z), expected, rtol=1e-5)
  # The frozen representation needs only w and b.
  enc = {'w': params['w'], 'b': params['b']}
  chex.assert_trees_all_close(model.apply({'params': enc}, z, features_only=True), h)


def test_purified_units_endpoints():
  m = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (12, 12)))[0]
  pure = purified_units(jax.random.PRNGKey(1), m, 24, 0.0)
  chex.assert_shape(pure, (12, 24))
  c = purification.loadings(pure, m)
  chex.assert_trees_all_close(purification.purity(c), jnp.ones(24), atol=1e-5)
  chex.assert_trees_all_close(jnp.argmax(jnp.abs(c), axis=1), jnp.arange(24) % 12)
  mixed = purified_units(jax.random.PRNGKey(1), m, 24, 1.0)
  assert float(jnp.median(purification.purity(purification.loadings(mixed, m)))) < 0.7
  chex.assert_trees_all_close(jnp.linalg.norm(mixed, axis=0), jnp.ones(24), atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 0.9), st.floats(0.01, 0.1))
def test_pure_atom_share_decreases_with_alpha(alpha, step):
  # Unit j moves on the segment from its atom M e_{j mod D} towards a mixture,
  # so its (signed) cosine with that atom can only fall as alpha grows.
  m = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (16, 16)))[0]
  share = lambda a: (purification.loadings(
      purified_units(jax.random.PRNGKey(2), m, 32, a), m))[jnp.arange(32), jnp.arange(32) % 16]
  assert np.all(np.asarray(share(alpha + step)) <= np.asarray(share(alpha)) + 1e-6)


def test_median_purity_falls_along_alpha():
  m = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (16, 16)))[0]
  med = [float(jnp.median(purification.purity(purification.loadings(
      purified_units(jax.random.PRNGKey(3), m, 64, a), m)))) for a in np.linspace(0, 1, 6)]
  assert med[0] > 0.999 and all(b < a for a, b in zip(med, med[1:]))
