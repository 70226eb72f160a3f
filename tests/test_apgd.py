"""APGD, Square and the AutoAttack-style ensemble: known answers on affine models,
contracts (ball, bounds, per-example keys), the cascade and masking warnings."""
import warnings

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from robustjax.attacks import evaluate_robust_accuracy
from robustjax.attacks.apgd import (LOSSES, _loss_and_logit_grad, apgd, checkpoints, loss_value,
                                    resolve_loss)
from robustjax.attacks.exact import affine_min_distance
from robustjax.attacks.square import p_selection, square
from robustjax.metrics import robustness
from tests import models
from tests.models import affine_logits, random_affine

D, C, N = 10, 5, 64


@pytest.fixture(scope='module')
def affine():
  return random_affine(0, D, C, N)


@pytest.fixture(scope='module')
def binary_affine():
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  w = jax.random.normal(k[0], (D,))
  x = jax.random.normal(k[2], (N, D))
  f = jax.tree_util.Partial(affine_logits, w, 0.3)
  y = jnp.where(f(x) > 0, 1, -1)
  return f, w, 0.3, x, y


@pytest.fixture(scope='module')
def digits_mlp():
  return models.digits_mlp()


def test_checkpoints_follow_published_schedule():
  ws, windows = checkpoints(100)
  assert ws[0] == 22
  chex.assert_trees_all_equal(sum(windows), ws[-1])
  assert all(w >= 6 for w in windows)          # increments of at least 0.06
  assert ws[-1] <= 100 and ws == sorted(ws)
  # The published p_j: 0, .22, .41, .57, .7, .8, .87, .93, .99.
  assert ws[:4] == [22, 41, 57, 70]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_dlr_invariant_to_logit_shift_and_scale(seed, scale, shift):
  z = jax.random.normal(jax.random.PRNGKey(seed), (8, 6))
  y = jax.random.randint(jax.random.PRNGKey(seed + 1), (8,), 0, 6)
  t = (y + 1) % 6
  for name in ('dlr', 'dlr-t'):
    chex.assert_trees_all_close(loss_value(name, z, y, t), loss_value(name, scale * z + shift, y, t),
                                rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('c', [3, 10])
def test_traced_loss_index_equals_loss_value_and_its_gradient(c):
  # The program APGD-CE, -DLR and -T share selects the loss by a traced index:
  # each index must give loss_value of the loss valid for c classes (3: the
  # targeted margin for DLR-T) and its exact logit gradient, also on rows with
  # inf / huge / tied logits (where an unselected loss's nan backward must not
  # leak in).
  z = jax.random.normal(jax.random.PRNGKey(c), (6, c))
  z = z.at[0, 1].set(jnp.inf).at[1, 0].set(1e30).at[2].set(0.0)
  y = jnp.arange(6) % c
  t = (y + 1) % c

  @jax.jit
  def selected_and_reference(indices):       # one compile: indices traced
    out = []
    for i, name in enumerate(LOSSES):
      used = resolve_loss(name, c)[0]
      ref = jax.vjp(lambda z: loss_value(used, z, y, t), z)
      out.append((_loss_and_logit_grad(indices[i], z, y, t),
                  (ref[0], ref[1](jnp.ones(6))[0])))
    return out

  for got, want in selected_and_reference(jnp.arange(len(LOSSES))):
    chex.assert_trees_all_equal(got[0], want[0])
    chex.assert_trees_all_close(got[1], want[1])
  # A program holding a subset of the losses (the ensemble's): the index is
  # the position in that subset; a single loss needs no switch.
  for losses in (('ce', 'dlr-t'), ('dlr-t',)):
    used = resolve_loss('dlr-t', c)[0]
    want = jax.vjp(lambda z: loss_value(used, z, y, t), z)
    got = _loss_and_logit_grad(jnp.asarray(losses.index('dlr-t')), z, y, t, losses)
    chex.assert_trees_all_equal(got[0], want[0])
    chex.assert_trees_all_close(got[1], want[1](jnp.ones(6))[0])


def test_dlr_replaced_by_margin_with_few_classes():
  assert resolve_loss('dlr', 2)[0] == 'margin' and 'margin' in resolve_loss('dlr', 2)[1]
  assert resolve_loss('dlr-t', 3)[0] == 'margin-t'
  assert resolve_loss('dlr-t', 4) == ('dlr-t', None)
  assert resolve_loss('ce', 2) == ('ce', None)


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_apgd_ensemble_equals_exact_robust_accuracy_on_affine(affine, norm):
  f, w, b, x, y = affine
  exact = affine_min_distance(w, b, x, y, norm)
  for eps in np.quantile(np.asarray(exact), [0.25, 0.5, 0.75]):
    eps = float(eps) * 1.001  # off the exact median point: it sits on the boundary
    r = evaluate_robust_accuracy(f, x, y, eps=eps, norm=norm, attacks=('apgd-ce', 'apgd-t'),
                                 key=jax.random.PRNGKey(0), n_iter=20)
    assert r['robust_accuracy'] == pytest.approx(float(np.mean(exact > eps)))
    np.testing.assert_array_equal(r['robust'], np.asarray(exact > eps))


def test_apgd_binary_scalar_logits_exact_and_note(binary_affine):
  f, w, b, x, y = binary_affine
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  eps = float(np.median(exact)) * 1.001
  r = evaluate_robust_accuracy(f, x, y, eps=eps, norm='l2', attacks=('apgd-ce', 'apgd-dlr'),
                               key=jax.random.PRNGKey(0), n_iter=20)
  assert r['robust_accuracy'] == pytest.approx(float(np.mean(exact > eps)))
  _, _, used, note = apgd(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0), loss='dlr',
                          n_iter=20)
  assert used == 'margin' and 'margin' in note


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_apgd_stays_in_ball_and_bounds(affine, norm):
  f, _, _, x, y = affine
  x01 = jax.nn.sigmoid(x)
  eps = 0.3 if norm == 'l2' else 0.05
  x_adv, robust, _, _ = apgd(f, x01, y, eps=eps, norm=norm, key=jax.random.PRNGKey(3),
                             n_iter=20, restarts=2, bounds=(0.0, 1.0))
  flat = (x_adv - x01).reshape(N, -1)
  size = jnp.linalg.norm(flat, axis=-1) if norm == 'l2' else jnp.max(jnp.abs(flat), -1)
  assert float(size.max()) <= eps * (1 + 1e-5)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # Reported non-robust points are really misclassified.
  wrong = np.asarray(jnp.argmax(f(x_adv), -1) != y)
  assert np.all(wrong[~np.asarray(robust)])


def test_per_example_keys_make_results_batch_independent(affine):
  f, _, _, x, y = affine
  key = jax.random.PRNGKey(5)
  xa, rob, _, _ = apgd(f, x, y, eps=0.5, norm='l2', key=key, n_iter=20)
  # The same points in another order (same shape: no recompile), each keeping
  # its index: every point gets the same random start and the same answer.
  perm = np.random.default_rng(0).permutation(x.shape[0])
  xp, rp, _, _ = apgd(f, x[perm], y[perm], eps=0.5, norm='l2', key=key, n_iter=20, index=perm)
  np.testing.assert_array_equal(np.asarray(rob)[perm], np.asarray(rp))
  chex.assert_trees_all_close(xa[perm], xp, atol=1e-5)
  # Different indices give different starts.
  xs, _, _, _ = apgd(f, x, y, eps=0.5, norm='l2', key=key, n_iter=20, index=perm)
  assert float(jnp.abs(xs - xa).max()) > 1e-3


def test_square_schedule_and_contracts(binary_affine):
  assert float(p_selection(0.8, jnp.array(0), 10_000)) == pytest.approx(0.8)
  assert float(p_selection(0.8, jnp.array(60), 10_000)) == pytest.approx(0.2)
  assert float(p_selection(0.8, jnp.array(6), 1000)) == pytest.approx(0.2)  # rescaled budget
  f, w, b, x, y = binary_affine
  exact = np.asarray(affine_min_distance(w, b, x, y, 'linf'))
  eps = float(np.median(exact)) * 1.001
  x01 = x
  x_adv, robust, queries = square(f, x01, y, eps=eps, norm='linf', key=jax.random.PRNGKey(0),
                                  n_queries=200)
  assert float(jnp.max(jnp.abs(x_adv - x01))) <= eps * (1 + 1e-6)
  # A binary affine model is beaten at the cube's corner sign(w): Square finds it.
  np.testing.assert_array_equal(np.asarray(robust), exact > eps)
  assert int(queries.max()) <= 200 and int(queries.min()) >= 1
  # Points broken early stop paying queries.
  assert float(jnp.mean(queries[~robust])) < 200


def test_square_l2_stays_in_ball_and_bounds(affine):
  f, _, _, x, y = affine
  x01 = jax.nn.sigmoid(x)
  x_adv, robust, _ = square(f, x01, y, eps=0.5, norm='l2', key=jax.random.PRNGKey(0),
                            n_queries=200, bounds=(0.0, 1.0))
  assert float(jnp.linalg.norm(x_adv - x01, axis=-1).max()) <= 0.5 * (1 + 1e-5)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  wrong = np.asarray(jnp.argmax(f(x_adv), -1) != y)
  assert np.all(wrong[~np.asarray(robust)])


def test_ensemble_never_above_any_single_attack(digits_mlp):
  f, x, y = digits_mlp
  key = jax.random.PRNGKey(7)
  kw = dict(eps=0.6, norm='l2', key=key, n_iter=20, fmn_steps=30, square_queries=200,
            n_target_classes=3, warn=False)
  attacks = ('apgd-ce', 'apgd-t', 'fmn', 'square')
  ens = evaluate_robust_accuracy(f, x, y, attacks=attacks, **kw)
  assert 0.0 < ens['clean_accuracy']
  singles = {a: evaluate_robust_accuracy(f, x, y, attacks=(a,), **kw) for a in attacks}
  for a, r in singles.items():
    assert ens['robust_accuracy'] <= r['robust_accuracy'], a
    # Per point too: whatever a single attack breaks, the cascade breaks.
    assert not np.any(ens['robust'] & ~r['robust']), a
  # The cascade's bookkeeping adds up.
  broken = sum(rec['broken'] for rec in ens['per_attack'])
  assert ens['clean_accuracy'] - ens['robust_accuracy'] == pytest.approx(broken / x.shape[0])
  assert ens['per_attack'][-1]['robust_accuracy'] == ens['robust_accuracy']


def _masked(w, b, x):
  # Quantised input: zero gradient almost everywhere, same decisions as the
  # affine model up to the grid. White-box attacks see nothing.
  xq = x + jax.lax.stop_gradient(jnp.round(x * 4.0) / 4.0 - x)
  return jax.lax.stop_gradient(xq @ w + b) + 0.0 * x.sum(-1, keepdims=True)


def test_black_box_beating_white_box_warns(affine):
  _, w, b, x, y = affine
  f = jax.tree_util.Partial(_masked, w, b)
  y = jnp.argmax(f(x), -1)
  with pytest.warns(RuntimeWarning, match='gradient masking'):
    r = evaluate_robust_accuracy(f, x, y, eps=1.0, norm='l2', attacks=('apgd-ce', 'square'),
                                 key=jax.random.PRNGKey(0), n_iter=20, square_queries=200)
  # (APGD's random start alone breaks a few points; the gradient gives nothing.)
  assert r['per_attack'][1]['broken'] > 0.01 * x.shape[0]
  assert r['warnings']


def test_masking_checks_flag_each_failure():
  assert robustness.gradient_masking_checks([0.0, 0.1, 0.2], [0.9, 0.5, 0.1],
                                            large_eps_accuracy=0.0) == []
  rising = robustness.gradient_masking_checks([0.0, 0.1, 0.2], [0.9, 0.4, 0.6])
  assert len(rising) == 1 and 'rises' in rising[0]
  stuck = robustness.gradient_masking_checks([0.0, 0.1], [0.9, 0.5], large_eps_accuracy=0.3)
  assert len(stuck) == 1 and '~0' in stuck[0]


def test_robustness_curve_on_affine_model(affine, tmp_path):
  f, w, b, x, y = affine
  exact = np.asarray(affine_min_distance(w, b, x, y, 'l2'))
  eps = [0.0, 0.2, 0.5, 1.0]
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a sound model raises no masking warning
    curve = robustness.robustness_curve(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0),
                                        large_eps=20.0, attacks=('apgd-ce', 'apgd-t', 'square'),
                                        n_iter=20, square_queries=200,
                                        plot_path=str(tmp_path / 'curve.png'))
  np.testing.assert_allclose(curve['accuracy'], [np.mean(exact > e) for e in eps])
  assert curve['large_eps_accuracy'] == 0.0 and curve['warnings'] == []
  assert (tmp_path / 'curve.png').stat().st_size > 0
  fig = robustness.plot_robustness_curve([curve, curve], labels=['a', 'b'])
  assert len(fig.axes[0].lines) == 2


def test_robustness_curve_warns_on_masked_model(affine):
  _, w, b, x, _ = affine
  f = jax.tree_util.Partial(_masked, w, b)
  y = jnp.argmax(f(x), -1)
  with pytest.warns(RuntimeWarning, match='gradient masking'):
    curve = robustness.robustness_curve(f, x, y, eps=[0.0, 0.5], norm='l2',
                                        key=jax.random.PRNGKey(0), large_eps=20.0,
                                        attacks=('apgd-ce',), n_iter=20)
  # Only a white-box attack that sees no gradient: accuracy never reaches 0.
  assert any('~0' in m for m in curve['warnings'])
