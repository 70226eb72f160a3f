"""Contrastive pairs, the pair loss, attacks on pairs, and the controlled-purification sweep."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import losses
from robustjax.attacks import PGDSpec
from robustjax.data import sparse_coding as sc
from robustjax.models.apply import bind
from robustjax.models.two_layer import TwoLayer
from robustjax.recipes import contrastive

SPEC = sc.SparseCodingSpec(d=32, D=32, k=3, noise_std=0.1)
WORLD = sc.make_world(jax.random.PRNGKey(0), SPEC)


def test_pair_statistics():
  pairs, y = sc.sample_pairs(jax.random.PRNGKey(1), 20000, WORLD, SPEC, negative_fraction=0.3)
  chex.assert_shape((pairs, y), ((20000, 2, 32), (20000,)))
  np.testing.assert_allclose(np.mean(y < 0), 0.3, atol=0.01)
  # Orthonormal M: M^T Z recovers X up to noise, so views can be compared in X.
  x = np.asarray(pairs @ WORLD.dictionary)
  code = np.sign(x) * (np.abs(x) > 0.5)  # active features and their signs
  same = np.all(code[:, 0] == code[:, 1], axis=1)
  assert same[np.asarray(y) > 0].mean() > 0.999      # similar: one X, two noises
  assert same[np.asarray(y) < 0].mean() < 0.01       # dissimilar: independent X
  diff = np.linalg.norm(np.asarray(pairs[:, 0] - pairs[:, 1]), axis=1)[np.asarray(y) > 0]
  np.testing.assert_allclose(np.mean(diff ** 2), 2 * 0.1 ** 2, rtol=0.05)  # noise only


def test_feature_dropout_rate():
  pairs, y = sc.sample_pairs(jax.random.PRNGKey(2), 20000, WORLD, SPEC, dropout=0.25)
  x = np.abs(np.asarray(pairs @ WORLD.dictionary)) > 0.5
  np.testing.assert_allclose(x.sum(-1).mean(), 3 * 0.75, rtol=0.02)
  # The two views of a similar pair drop features independently.
  both = (x[:, 0] & x[:, 1]).sum(-1)[np.asarray(y) > 0]
  np.testing.assert_allclose(both.mean(), 3 * 0.75 ** 2, rtol=0.03)


def test_pair_loss_known_values():
  h, h2 = jnp.array([[1.0, 2.0]] * 2), jnp.array([[3.0, -1.0]] * 2)
  s = losses.pair_score(h, h2, 0.5)
  chex.assert_trees_all_close(s, jnp.array([0.5, 0.5]))
  chex.assert_trees_all_close(losses.pair_contrastive(s, jnp.array([1.0, -1.0])),
                              jnp.array([np.log1p(np.exp(-0.5)), np.log1p(np.exp(0.5))]),
                              rtol=1e-6)


@pytest.fixture(scope='module')
def encoder():
  model = TwoLayer(width=48, bias_init=0.05)
  params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32)))['params']
  return model, params


@pytest.mark.parametrize('which', ['both', 'negatives', 'positives'])
def test_attack_increases_pair_loss_only_where_asked(encoder, which):
  model, params = encoder
  pairs, y = sc.sample_pairs(jax.random.PRNGKey(4), 256, WORLD, SPEC)
  score_fn = bind(contrastive.pair_logits, (model, 1.0))
  attack = PGDSpec(eps=0.3, norm='l2', steps=5, rel_step_size=0.5)
  adv = contrastive.attack_pairs(score_fn, params, pairs, y, jax.random.PRNGKey(5), attack,
                                 which)
  loss = lambda p: np.asarray(contrastive.pair_loss_of_input(score_fn, params, y, p))
  attacked = {'both': np.ones(256, bool), 'negatives': np.asarray(y) < 0,
              'positives': np.asarray(y) > 0}[which]
  size = np.linalg.norm(np.asarray(adv - pairs).reshape(256, -1), axis=1)
  assert np.all(size[attacked] <= 0.3 * (1 + 1e-5))
  np.testing.assert_array_equal(np.asarray(adv)[~attacked], np.asarray(pairs)[~attacked])
  gain = loss(adv) - loss(pairs)
  assert np.all(gain[attacked] >= -1e-6) and gain[attacked].mean() > 0.01


def test_controlled_purification_endpoints():
  model = TwoLayer(width=64)
  ccfg = {'sweep_bias': 0.1, 'negative_fraction': 0.5}

  class C(dict):
    __getattr__ = dict.__getitem__

  out = jax.vmap(lambda a: contrastive.controlled_purification(
      jax.random.PRNGKey(6), WORLD, a, model=model, spec=SPEC, ccfg=C(ccfg),
      attack=PGDSpec(eps=0.4, steps=10), num_examples=1000))(jnp.array([0.0, 1.0]))
  inc = {k: np.asarray(out[f'{k}_adversarial'] - out[f'{k}_clean']) for k in
         ('similar', 'dissimilar')}
  assert np.all(inc['similar'] >= 0) and np.all(inc['dissimilar'] >= 0)
  # Dense mixtures: dissimilar pairs are hurt several times more than similar ones,
  # and more than with purified units.
  assert inc['dissimilar'][1] > 3 * inc['similar'][1]
  assert inc['dissimilar'][1] > 2 * inc['dissimilar'][0]
