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


def test_init_scales():
  small = MLP(widths=(2000,), num_classes=10, init_std=1.0, fan_in_init=True)
  p = small.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  np.testing.assert_allclose(np.std(p['hidden_0']['kernel']), 1 / np.sqrt(784), rtol=0.02)
  np.testing.assert_allclose(np.std(p['readout']['kernel']), 1 / np.sqrt(2000), rtol=0.05)
  assert np.all(p['hidden_0']['bias'] == 0)
  paper_xor = MLP(widths=(3,), num_classes=2, init_std=1.0, fan_in_init=False, bias_init_std=1.0)
  q = paper_xor.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))['params']
  chex.assert_shape(q['hidden_0']['kernel'], (2, 3))
  assert np.any(q['hidden_0']['bias'] != 0)
  big = MLP(widths=(4000,), num_classes=1, init_std=1.0, fan_in_init=False, bias_init_std=1.0)
  r = big.init(jax.random.PRNGKey(1), jnp.zeros((1, 2)))['params']
  np.testing.assert_allclose(np.std(r['hidden_0']['kernel']), 1.0, rtol=0.05)
  np.testing.assert_allclose(np.std(r['hidden_0']['bias']), 1.0, rtol=0.05)
