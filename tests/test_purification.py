"""Purity and participation ratio on constructed units."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from robustjax.metrics import purification


def test_known_values():
  c = jnp.array([[0.0, 3.0, 0.0, 0.0],    # one feature
                 [1.0, 1.0, 0.0, 0.0],    # two, equal
                 [1.0, -1.0, 1.0, -1.0],  # all four, equal
                 [3.0, 4.0, 0.0, 0.0]])
  chex.assert_trees_all_close(purification.purity(c), jnp.array([1.0, 2 ** -0.5, 0.5, 0.8]),
                              rtol=1e-6)
  chex.assert_trees_all_close(purification.participation_ratio(c),
                              jnp.array([1.0, 2.0, 4.0, 625 / 337]), rtol=1e-6)


def test_loadings_read_units_through_the_dictionary():
  m = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (10, 6)))[0]
  w = m[:, [2, 5]] * jnp.array([2.0, -0.5])
  c = purification.loadings(w, m)
  chex.assert_shape(c, (2, 6))
  chex.assert_trees_all_close(c, jnp.zeros((2, 6)).at[0, 2].set(2.0).at[1, 5].set(-0.5),
                              atol=1e-5)
  rep = purification.unit_report(w, m)
  chex.assert_trees_all_close(rep['purity'], jnp.ones(2), atol=1e-5)
  chex.assert_trees_all_close(rep['participation_ratio'], jnp.ones(2), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, (3, 8), elements=st.floats(-10, 10, width=32)),
       st.floats(0.01, 100.0))
def test_bounds_and_scale_invariance(c, scale):
  c = c + np.eye(3, 8, dtype=np.float32)  # no all-zero unit
  p, pr = purification.purity(c), purification.participation_ratio(c)
  assert np.all(p >= 8 ** -0.5 - 1e-5) and np.all(p <= 1 + 1e-6)
  assert np.all(pr >= 1 - 1e-4) and np.all(pr <= 8 + 1e-3)
  # sum c^4 <= max c^2 * sum c^2, so PR >= 1 / purity^2.
  assert np.all(pr >= 1 / p ** 2 - 1e-3)
  chex.assert_trees_all_close(purification.purity(c * scale), p, rtol=1e-4)
  chex.assert_trees_all_close(purification.participation_ratio(c * scale), pr, rtol=1e-4)
