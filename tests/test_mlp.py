import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from robustjax.models.mlp import MLP, features


def test_shapes_names_and_features():
  m = MLP(widths=(7, 5), num_classes=3)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2)))['params']
  assert set(p) == {'hidden_0', 'hidden_1', 'readout'}
  assert m.feature_layers == ('hidden_0', 'hidden_1') and m.readout_layer == 'readout'
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 2))  # flattened to 4 inputs
  chex.assert_shape(m.apply({'params': p}, x), (4, 3))
  chex.assert_shape(features(m, p, x), (4, 5))


def test_readout_scaled_by_inverse_sqrt_width_and_exact_gelu():
  m = MLP(widths=(9,), num_classes=2)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))['params']
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 3)), np.float64)
  pre = x @ np.asarray(p['hidden_0']['kernel']) + np.asarray(p['hidden_0']['bias'])
  h = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))  # torch nn.GELU(): the erf form
  logits = (h @ np.asarray(p['readout']['kernel']) + np.asarray(p['readout']['bias'])) / 3.0
  np.testing.assert_allclose(m.apply({'params': p}, jnp.asarray(x, jnp.float32)), logits,
                             rtol=1e-5, atol=1e-6)


def _assert_normal(a, std, name):
  """Entries i.i.d. N(0, std^2): mean, std and the share within one std, each
  within 5 standard errors of the normal's values (n entries)."""
  a = np.asarray(a, np.float64).ravel()
  n = a.size
  assert abs(a.mean()) <= 5 * std / np.sqrt(n), (name, a.mean())
  assert abs(a.std() / std - 1) <= 5 / np.sqrt(2 * n), (name, a.std())
  inside = np.mean(np.abs(a) <= std)   # 0.6827 for a normal
  assert abs(inside - 0.6827) <= 5 * np.sqrt(0.6827 * 0.3173 / n), (name, inside)


def test_normal_init_draws_kernels_and_biases_from_n_0_s2():
  # The authors' weights_init: every weight and bias N(0, 0.01^2), no fan-in scaling.
  m = MLP(widths=(4000,), num_classes=50, init_scheme='normal', init_std=0.01)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))['params']
  for layer in ('hidden_0', 'readout'):
    for leaf in ('kernel', 'bias'):
      _assert_normal(p[layer][leaf], 0.01, f'{layer}/{leaf}')
  chex.assert_shape(p['readout']['bias'], (50,))


def test_fan_in_init_scales_kernels_and_zeroes_biases():
  m = MLP(widths=(2000,), num_classes=10, init_scheme='fan_in', init_std=1.0)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  _assert_normal(p['hidden_0']['kernel'], 1 / np.sqrt(784), 'hidden_0/kernel')
  _assert_normal(p['readout']['kernel'], 1 / np.sqrt(2000), 'readout/kernel')
  for layer in ('hidden_0', 'readout'):
    assert np.all(p[layer]['bias'] == 0)


def test_bad_init_refused():
  for kw, match in [(dict(init_scheme='xavier'), 'init_scheme'), (dict(init_std=0.0), 'init_std'),
                    (dict(activation='elu'), 'activation')]:
    try:
      MLP(widths=(3,), num_classes=2, **kw)
    except ValueError as e:
      assert match in str(e)
    else:
      raise AssertionError(f'{kw} accepted')


def test_preactivations_are_sown_per_hidden_layer():
  m = MLP(widths=(7, 5), num_classes=3)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))['params']
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  logits, inter = m.apply({'params': p}, x, mutable=['preactivations'])
  z0, z1 = inter['preactivations']['z_0'][0], inter['preactivations']['z_1'][0]
  chex.assert_trees_all_close(z0, x @ p['hidden_0']['kernel'] + p['hidden_0']['bias'], rtol=1e-6)
  h0 = jax.nn.gelu(z0, approximate=False)
  chex.assert_trees_all_close(z1, (h0 @ p['hidden_1']['kernel'] + p['hidden_1']['bias'])
                              / np.sqrt(7), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(logits, m.apply({'params': p}, x))
