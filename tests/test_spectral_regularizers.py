"""rep / rep_eig_ub / ll / ll_readout / clean: layer choice, the penalty gradient, the schedule, and training."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import spectral
from robustjax.models.mlp import ACTIVATION_SLOPES, MLP
from robustjax.train import loop, state as state_lib

MODEL = MLP(widths=(6, 5), num_classes=3)


def _params(key=0):
  return MODEL.init(jax.random.PRNGKey(key), jnp.zeros((1, 4)))['params']


def _svd_top(w):
  u, s, vt = np.linalg.svd(np.asarray(w, np.float64))
  return s[0], u[:, 0], vt[0]


def _masked_paths(mask):
  return {'/'.join(k.key for k in path) for path, m in jax.tree_util.tree_leaves_with_path(mask)
          if m}


def test_layer_choice():
  p = _params()
  flat = lambda m: {k: v for k, v in spectral.sigma_max(p, m).items()}
  rep = spectral.layer_mask(p, 'rep', feature_layers=MODEL.feature_layers)
  assert set(flat(rep)) == {'hidden_0/kernel', 'hidden_1/kernel'}
  ll = spectral.layer_mask(p, 'll')
  assert set(flat(ll)) == {'hidden_0/kernel', 'hidden_1/kernel', 'readout/kernel'}
  assert not any(jax.tree.leaves(spectral.layer_mask(p, 'clean')))
  by_path = spectral.layer_mask(p, 'rep', layers=('hidden_1/kernel',))
  assert set(flat(by_path)) == {'hidden_1/kernel'}
  with pytest.raises(ValueError, match='no kernel'):
    spectral.layer_mask(p, 'rep', layers=('hiden_0',))
  with pytest.raises(ValueError, match='kind'):
    spectral.layer_mask(p, 'all')


@pytest.mark.parametrize('kind,paths', [
    ('rep', {'hidden_0/kernel', 'hidden_1/kernel'}),          # hidden only
    ('rep_eig_ub', {'hidden_0/kernel', 'hidden_1/kernel'}),   # its sigma^2 terms: as rep
    ('ll_readout', {'readout/kernel'}),                       # the authors' 1-hidden-layer ll
    ('ll', {'hidden_0/kernel', 'hidden_1/kernel', 'readout/kernel'}),  # every layer
    ('clean', set()),
])
def test_each_kind_masks_the_kernels_on_its_paths(kind, paths):
  p = _params()
  mask = spectral.layer_mask(p, kind, feature_layers=MODEL.feature_layers,
                             readout_layers=(MODEL.readout_layer,))
  assert _masked_paths(mask) == paths  # never a bias
  if kind == 'clean':
    return  # penalize is the identity (test_clean_is_identity)
  spec = spectral.SpectralSpec(kind=kind, lam=1.0, warmup_iters=50)
  g, _ = _one_update(spec, p, mask, 0)
  moved = {f'{layer}/{leaf}' for layer in g for leaf in g[layer]
           if bool(jnp.any(g[layer][leaf] != 0))}
  assert moved == paths


def test_ll_readout_needs_readout_layers():
  p = _params()
  with pytest.raises(ValueError, match='readout_layers'):
    spectral.layer_mask(p, 'll_readout')
  with pytest.raises(ValueError, match='no kernel'):
    spectral.layer_mask(p, 'll_readout', readout_layers=('head',))


def test_activation_slope_penalty_known_values_and_gradient():
  gelu = lambda z: jax.nn.gelu(z, approximate=False)
  s2 = float(np.sqrt(2.0))
  peak = 0.5 * (1 + math.erf(1.0)) + s2 * math.exp(-1.0) / math.sqrt(2 * math.pi)
  # Row maxima of gelu'(z)^2: gelu'(0) = 1/2; gelu'(sqrt 2) is the global peak.
  z = jnp.array([[0.0, -3.0], [s2, 0.0]])
  np.testing.assert_allclose(spectral.activation_slope_penalty([z], gelu),
                             (0.25 + peak ** 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(ACTIVATION_SLOPES['gelu'], peak, rtol=1e-12)
  # ReLU: row maxima of relu'^2 are 0 and 1 in z (relu'(0) = 0), 1 and 0 in -z; layers add.
  relu = spectral.activation_slope_penalty([z, -z], jax.nn.relu)
  np.testing.assert_allclose(relu, 0.5 + 0.5, rtol=1e-6)
  # Differentiable in z: d/dz of gelu'(z)^2 at the row maximum (z = 0 in row 0).
  g = jax.grad(lambda z: spectral.activation_slope_penalty([z], gelu))(z)
  want = 2 * 0.5 * (2 / math.sqrt(2 * math.pi)) / 2   # 2 gelu' gelu'' / n_rows, gelu''(0)
  np.testing.assert_allclose(g[0, 0], want, rtol=1e-5)
  np.testing.assert_allclose(g[1, 0], 0.0, atol=1e-6)  # gelu''(sqrt 2) = 0
  with pytest.raises(ValueError, match='preactivations'):
    spectral.activation_slope_penalty([], gelu)
  with pytest.raises(ValueError, match=r'preactivations\[0\]'):
    spectral.activation_slope_penalty([jnp.ones(3)], gelu)


def test_penalty_value_and_gradient_is_two_sigma_u_vT():
  p = _params(1)
  mask = spectral.layer_mask(p, 'll')
  vecs = spectral.init_vectors(p, mask, jax.random.PRNGKey(0))
  fn = lambda p: spectral.penalty(p, vecs, mask, iters=3000, tol=0.0)[0]
  value, grads = jax.value_and_grad(fn)(p)
  expected = 0.0
  for name in ('hidden_0', 'hidden_1', 'readout'):
    s, u, v = _svd_top(p[name]['kernel'])
    expected += s ** 2
    g, want = np.asarray(grads[name]['kernel']), 2 * s * np.outer(u, v)
    # float32 power iteration on random inits (gaps unknown): 1e-3 of the norm.
    assert np.linalg.norm(g - want) <= 1e-3 * np.linalg.norm(want), name
    chex.assert_trees_all_close(grads[name]['bias'], jnp.zeros_like(grads[name]['bias']))
  np.testing.assert_allclose(value, expected, rtol=1e-4)


def _one_update(spec, params, mask, count):
  """The penalty transform's update of zero task gradients at update index ``count``."""
  tx = spectral.penalize(spec, mask)
  st = tx.init(params)
  st = st._replace(count=jnp.asarray(count, jnp.int32))
  zeros = jax.tree.map(jnp.zeros_like, params)
  return tx.update(zeros, st, params)


def test_transform_adds_lam_times_gradient_only_after_burn_in():
  p = _params(2)
  mask = spectral.layer_mask(p, 'rep', feature_layers=MODEL.feature_layers)
  spec = spectral.SpectralSpec(kind='rep', lam=0.3, burn_in_steps=5, iters=10,
                               warmup_iters=3000, tol=0.0)
  before, st = _one_update(spec, p, mask, 4)
  chex.assert_trees_all_close(before, jax.tree.map(jnp.zeros_like, p))
  assert int(st.count) == 5
  after, st = _one_update(spec, p, mask, 5)  # switch-on: warm-up to convergence
  for name in ('hidden_0', 'hidden_1'):
    s, u, v = _svd_top(p[name]['kernel'])
    np.testing.assert_allclose(after[name]['kernel'], 0.3 * 2 * s * np.outer(u, v), atol=2e-4)
    # The carried vector is the top right singular vector (up to sign).
    np.testing.assert_allclose(abs(np.dot(st.vectors[name]['kernel'], v)), 1.0, atol=1e-4)
  chex.assert_trees_all_close(after['readout'], jax.tree.map(jnp.zeros_like, p['readout']))
  np.testing.assert_allclose(st.value, sum(_svd_top(p[n]['kernel'])[0] ** 2
                                           for n in ('hidden_0', 'hidden_1')), rtol=1e-4)


def test_every_k_schedule():
  p = _params(3)
  mask = spectral.layer_mask(p, 'll')
  spec = spectral.SpectralSpec(kind='ll', lam=1.0, burn_in_steps=2, every_k=3)
  active = [bool(jnp.any(_one_update(spec, p, mask, c)[0]['readout']['kernel'] != 0))
            for c in range(10)]
  assert active == [False, False, True, False, False, True, False, False, True, False]


def test_clean_is_identity():
  p = _params()
  tx = spectral.penalize(spectral.SpectralSpec(kind='clean'), spectral.layer_mask(p, 'clean'))
  g = jax.tree.map(jnp.ones_like, p)
  out, _ = tx.update(g, tx.init(p), p)
  chex.assert_trees_all_close(out, g)


def _xor_loss(params, key, aux):
  x, y = aux
  logits = MODEL.apply({'params': params}, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), {}


@pytest.mark.slow  # three loop.fit compiles
def test_training_lowers_penalised_sigmas_through_loop_fit():
  """Composes with a stage's loss and loop.fit(batched=True): the penalised
  layers end with smaller sigma_max than the same run without the penalty,
  and only ll shrinks the readout as much."""
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
  y = (x[:, 0] > 0).astype(jnp.int32)
  seeds = jax.random.split(jax.random.PRNGKey(1), 2)
  aux = (jnp.stack([x, x]), jnp.stack([y, y]))

  def run(kind):
    p0 = jax.vmap(lambda k: MODEL.init(k, x[:1])['params'])(seeds)
    mask = spectral.layer_mask(jax.tree.map(lambda a: a[0], p0), kind,
                               feature_layers=MODEL.feature_layers)
    spec = spectral.SpectralSpec(kind=kind, lam=0.5, burn_in_steps=10, iters=5)
    tx = optax.chain(spectral.penalize(spec, mask), state_lib.make_optimizer('sgd', 0.05))
    states = jax.vmap(lambda p: state_lib.create(p, tx))(p0)
    states, _ = loop.fit(states, aux, seeds, _xor_loss, steps=60, chunk_size=60, batched=True,
                         progress=False)
    return jax.vmap(lambda p: spectral.sigma_max(p, spectral.layer_mask(p, 'll')))(states.params)

  base, rep, ll = run('clean'), run('rep'), run('ll')
  for name in ('hidden_0/kernel', 'hidden_1/kernel'):
    assert np.all(rep[name] < base[name] * 0.9), (name, rep[name], base[name])
    assert np.all(ll[name] < base[name] * 0.9), (name, ll[name], base[name])
  assert np.all(ll['readout/kernel'] < base['readout/kernel'] * 0.9)
  assert np.all(ll['readout/kernel'] < rep['readout/kernel'])


def _zero_readout(key=4):
  p = _params(key)
  return dict(p, readout=dict(p['readout'], kernel=jnp.zeros_like(p['readout']['kernel'])))


def test_zero_kernel_adds_exactly_nothing_and_keeps_a_unit_vector():
  """A zero-initialised readout under ll: its update is the task gradient
  itself (d/dW ||W v||^2 = 0 at W = 0; sqrt's gradient there was NaN), the
  other kernels still get 2 lam sigma u v^T, and the carried vector stays a
  unit vector instead of collapsing to 0."""
  p = _zero_readout()
  mask = spectral.layer_mask(p, 'll')
  spec = spectral.SpectralSpec(kind='ll', lam=0.3, iters=10, warmup_iters=3000, tol=0.0)
  tx = spectral.penalize(spec, mask)
  task = jax.tree.map(lambda x: jnp.full_like(x, 0.25), p)
  out, st = tx.update(task, tx.init(p), p)
  np.testing.assert_array_equal(out['readout']['kernel'], task['readout']['kernel'])
  s, u, v = _svd_top(p['hidden_0']['kernel'])
  np.testing.assert_allclose(out['hidden_0']['kernel'], 0.25 + 0.3 * 2 * s * np.outer(u, v),
                             atol=2e-4)
  vec = np.asarray(st.vectors['readout']['kernel'])
  assert np.all(np.isfinite(vec))
  np.testing.assert_allclose(np.linalg.norm(vec), 1.0, rtol=1e-6)
  assert np.isfinite(st.grad_norm) and st.grad_norm > 0


def test_zero_kernel_gradient_through_penalty_and_top_singular_value_is_zero():
  w = jnp.zeros((5, 3))
  g = jax.grad(lambda w: spectral.top_singular_value(w, iters=20)[0] ** 2)(w)
  np.testing.assert_array_equal(g, np.zeros((5, 3)))
  sigma, v = spectral.top_singular_value(w, iters=20)
  assert float(sigma) == 0.0
  np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-6)


@pytest.mark.parametrize('bad', [0.0, np.nan])
def test_collapsed_vector_is_redrawn_and_finds_sigma_of_a_later_kernel(bad):
  """A zero (or NaN) carried vector, as an old run at W = 0 left it: the next
  penalised kernel still gets its exact sigma_max (SVD), and the re-draw is
  deterministic in the key."""
  p = _zero_readout()
  mask = spectral.layer_mask(p, 'll')
  vecs = spectral.init_vectors(p, mask, jax.random.PRNGKey(0))
  vecs = dict(vecs, readout=dict(vecs['readout'],
                                 kernel=jnp.full_like(vecs['readout']['kernel'], bad)))
  _, vecs_at_zero, sig = spectral.penalty(p, vecs, mask, iters=5, tol=0.0,
                                          key=jax.random.PRNGKey(7))
  assert float(sig['readout']['kernel']) == 0.0
  again = spectral.penalty(p, vecs, mask, iters=5, tol=0.0, key=jax.random.PRNGKey(7))[1]
  chex.assert_trees_all_equal(again, vecs_at_zero)
  later = _params(5)  # the readout has moved away from 0
  value, _, sig = spectral.penalty(later, vecs_at_zero, mask, iters=3000, tol=0.0)
  for name in ('hidden_0', 'hidden_1', 'readout'):
    np.testing.assert_allclose(sig[name]['kernel'], _svd_top(later[name]['kernel'])[0],
                               rtol=1e-4, err_msg=name)
  np.testing.assert_allclose(value, sum(_svd_top(later[n]['kernel'])[0] ** 2
                                        for n in ('hidden_0', 'hidden_1', 'readout')), rtol=1e-4)
