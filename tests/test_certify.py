"""Certified l2 radii: exact on affine models, below every attack on a trained MLP."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import minimal
from robustjax.attacks.exact import affine_min_distance
from robustjax.metrics import certify
from robustjax.models.mlp import ACTIVATION_SLOPES, MLP, features
from tests import models


@pytest.mark.parametrize('seed', [0, 1])
def test_affine_model_radius_is_the_exact_distance(seed):
  # phi = identity (Lipschitz 1): the bound is the exact minimal distance.
  _, w, b, x, _ = models.random_affine(seed, 7, 5, 40)
  y = jnp.argmax(x @ w + b, -1).at[:4].set(jnp.arange(4))  # some misclassified points
  r = certify.certified_radius(x @ w + b, y, w, 1.0)
  exact = affine_min_distance(w, b, x, y, 'l2')
  chex.assert_trees_all_close(r, exact, rtol=1e-5, atol=1e-6)
  # A Lipschitz bound twice too large halves the radius.
  chex.assert_trees_all_close(certify.certified_radius(x @ w + b, y, w, 2.0), exact / 2,
                              rtol=1e-5, atol=1e-6)


def test_never_above_fmn_on_a_trained_mlp():
  f, x, y = models.digits_mlp()   # 64-32-10 GELU, features gelu(x w1 + b1), head w2
  params = f.args[0]
  lip = certify.lipschitz_bound([jnp.linalg.svd(params['w1'], compute_uv=False)[0]],
                                ACTIVATION_SLOPES['gelu'])
  logits = f(x)
  correct = np.asarray(jnp.argmax(logits, -1) == y)
  r = np.asarray(certify.certified_radius(logits, y, params['w2'], lip))
  _, d = minimal.fmn(f, x, y, steps=100, bounds=(0.0, 1.0))
  d = np.asarray(d)
  assert correct.sum() >= 50
  assert np.all(r[~correct] == 0)
  assert np.all(r[correct] > 0)
  assert np.all(np.isfinite(d[correct]))
  assert np.all(r[correct] <= d[correct]), np.max(r[correct] / d[correct])


def test_mlp_feature_lipschitz_is_the_layer_product_and_bounds_the_jacobian():
  m = MLP(widths=(6, 5), num_classes=3)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))['params']
  s = [np.linalg.svd(np.asarray(p[n]['kernel'], np.float64), compute_uv=False)[0]
       for n in ('hidden_0', 'hidden_1')]
  want = ACTIVATION_SLOPES['gelu'] ** 2 * s[0] * s[1] / np.sqrt(6)  # hidden_1 scaled 1/sqrt(6)
  lip = certify.mlp_feature_lipschitz(m, p)
  np.testing.assert_allclose(lip, want, rtol=1e-5)
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  xs = 3 * jax.random.normal(k[0], (64, 4))
  vs = jax.random.normal(k[1], (64, 4))
  vs = vs / jnp.linalg.norm(vs, axis=-1, keepdims=True)
  # Rows are independent, so one batched jvp gives every J(x_i) v_i.
  jv = jax.jvp(lambda x: features(m, p, x), (xs,), (vs,))[1]
  assert float(jnp.max(jnp.linalg.norm(jv, axis=-1))) <= float(lip)


@pytest.mark.parametrize('call,match', [
    (lambda: certify.certified_radius(jnp.ones((3,)), jnp.zeros(3, jnp.int32),
                                      jnp.ones((2, 2)), 1.0), 'logits'),
    (lambda: certify.certified_radius(jnp.ones((3, 2)), jnp.zeros(3), jnp.ones((2, 2)), 1.0),
     'integer'),
    (lambda: certify.certified_radius(jnp.ones((3, 2)), jnp.array([0, 1, 2]), jnp.ones((2, 2)),
                                      1.0), r'\[0, 2\)'),
    (lambda: certify.certified_radius(jnp.ones((3, 2)), jnp.zeros(3, jnp.int32),
                                      jnp.ones((2, 3)), 1.0), 'head_kernel'),
    (lambda: certify.certified_radius(jnp.ones((3, 2)), jnp.zeros(3, jnp.int32),
                                      jnp.ones((2, 2)), 0.0), 'feature_lipschitz'),
    (lambda: certify.lipschitz_bound([], 1.0), 'layer_norms'),
    (lambda: certify.lipschitz_bound([1.0], -1.0), 'activation_slope'),
])
def test_bad_input_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()
