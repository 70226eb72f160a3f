"""Paper A's scaling sweep (robustjax.experiments.scaling): grid, pieces with known answers,
config checks, and a tiny sweep end to end."""
import json
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import sparse_coding as sparse_coding_config
from robustjax import report
from robustjax.attacks.exact import affine_min_distance
from robustjax.attacks.pgd import PGDSpec
from robustjax.config_validation import ConfigError
from robustjax.data import sparse_coding as sc
from robustjax.models.two_layer import TwoLayer
from robustjax.experiments import scaling
from tests.helpers import launch

def tiny_config():
  return sparse_coding_config.get_config('scaling,tiny')


def test_grid_has_one_program_per_shape_with_its_points():
  s = ml_collections.ConfigDict(dict(
      ks=(2, 4, 8, 16), Ds=(32, 64, 128), width_factors=(0.5, 1, 4),
      eps_factors=(0.4, 0.8, 1.2), fit_eps_factor=0.8, full_Ds=(32, 64, 128),
      full_width_factors=(0.5, 1, 4)))
  programs = scaling.grid(s)
  assert [(p.D, p.width) for p in programs] == [
      (32, 16), (32, 32), (32, 128), (64, 32), (64, 64), (64, 256),
      (128, 64), (128, 128), (128, 512)]
  for p in programs:
    # Clean (c = 0) and every eps factor, for every k: 4 x 4 points, k fastest.
    assert p.points == tuple((k, c) for c in (0.0, 0.4, 0.8, 1.2) for k in (2, 4, 8, 16))
  assert len({p.name for p in programs}) == 9
  # Trimmed: shapes outside full_Ds x full_width_factors run clean and the fit's c only.
  s.full_Ds, s.full_width_factors = (64,), (4,)
  for p in scaling.grid(s):
    cs = (0.0, 0.4, 0.8, 1.2) if (p.D, p.width) == (64, 256) else (0.0, 0.8)
    assert p.points == tuple((k, c) for c in cs for k in (2, 4, 8, 16))


def test_grid_refuses_a_width_that_is_not_an_integer():
  s = ml_collections.ConfigDict(dict(ks=(1,), Ds=(5,), width_factors=(0.5,), eps_factors=(1.0,),
                                     fit_eps_factor=1.0, full_Ds=(), full_width_factors=()))
  with pytest.raises(ValueError, match=r'width factor 0.5 x D = 5'):
    scaling.grid(s)


def test_pretrain_loss_at_radius_zero_is_the_clean_loss():
  # Clean points share the adversarial program: PGD at eps 0 must return the batch exactly.
  spec = sc.SparseCodingSpec(d=8, D=8, k=4)
  model = TwoLayer(width=6, bias_init=0.1)
  world = sc.make_world(jax.random.PRNGKey(0), spec)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8)))['params']
  attack = PGDSpec(eps=0.0, steps=3, rel_step_size=0.5)

  @jax.jit
  def grads(eps):
    aux = (world, world.theta0, jnp.int32(3), eps)
    g = lambda a: jax.grad(lambda p: scaling.pretrain_loss(
        p, jax.random.PRNGKey(2), aux, model=model, spec=spec, batch_size=16, attack=a)[0])(
            params)
    return g(attack), g(None)

  adv, clean = grads(jnp.float32(0.0))
  chex.assert_trees_all_equal(adv, clean)
  adv, clean = grads(jnp.float32(0.5))  # and a positive radius changes it
  assert not np.allclose(adv['w'], clean['w'])


def test_certified_radius_is_exact_for_an_orthonormal_linear_encoder():
  # b = 0 makes the soft threshold the identity; W with orthonormal columns has
  # ||W||_2 = 1 and ||W a|| = ||a||, so the bound equals the affine model's distance.
  rng = np.random.default_rng(0)
  d, m, n = 6, 4, 20
  w, _ = np.linalg.qr(rng.standard_normal((d, m)))
  a, c, z = rng.standard_normal(m), 0.3, rng.standard_normal((n, d)).astype(np.float32)
  f = (z @ w @ a + c).astype(np.float32)
  y = np.where(rng.random(n) < 0.7, np.sign(f), -np.sign(f)).astype(np.float32)
  got = scaling.certified_radii(f, y, a.astype(np.float32), 1.0)
  exact = affine_min_distance(jnp.asarray(w @ a, jnp.float32), c, z, y)
  chex.assert_trees_all_close(got, exact, atol=1e-5)
  assert np.all(got[y * f < 0] == 0) and np.all(got[y * f > 0] > 0)


def test_feature_lipschitz_counts_slope_two_for_negative_thresholds():
  # Orthonormal units: L = 1 with b >= 0; a negative threshold has slope 2 on
  # |u| < -b (both ramps on), which ||W||_2 alone missed (certified radii
  # above FMN's distances in the tiny sweep).
  w = jnp.asarray(np.linalg.qr(np.random.default_rng(0).standard_normal((5, 3)))[0], jnp.float32)
  assert float(scaling.feature_lipschitz(w, jnp.array([0.0, 0.1, 0.5]))) == pytest.approx(1.0)
  assert float(scaling.feature_lipschitz(w, jnp.array([0.0, -0.1, 0.5]))) == pytest.approx(2.0)
  h = lambda z: TwoLayer(width=3).apply({'params': {'w': w, 'b': jnp.array([0.0, -0.5, 0.5]),
                                                    'a': jnp.zeros(3)}}, z, features_only=True)
  z = 0.01 * w[:, 1]  # inside unit 1's slope-2 band
  ratio = jnp.linalg.norm(h(z[None]) - h(jnp.zeros((1, 5)))) / jnp.linalg.norm(z)
  assert float(ratio) == pytest.approx(2.0, rel=1e-4)
  with pytest.raises(ValueError, match='^w and b: must be'):
    scaling.feature_lipschitz(w, jnp.zeros(4))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_feature_lipschitz_bounds_every_pair(seed):
  rng = np.random.default_rng(seed)
  d, m = 4, 6
  params = {'w': jnp.asarray(rng.standard_normal((d, m)), jnp.float32),
            'b': jnp.asarray(rng.uniform(-1, 1, m), jnp.float32), 'a': jnp.zeros(m)}
  z = jnp.asarray(rng.standard_normal((64, d)), jnp.float32)
  z2 = z + jnp.asarray(0.3 * rng.standard_normal((64, d)), jnp.float32)
  h = lambda x: TwoLayer(width=m).apply({'params': params}, x, features_only=True)
  lip = float(scaling.feature_lipschitz(params['w'], params['b']))
  gain = jnp.linalg.norm(h(z) - h(z2), axis=-1) / jnp.linalg.norm(z - z2, axis=-1)
  assert float(jnp.max(gain)) <= lip * (1 + 1e-5)


def _record(k, c, seed, margin, fmn, broken, purity=(0.5, 1.0)):
  m = np.asarray(margin, float)[None]
  return dict(D=4, m=4, k=k, c=c, seed=seed, purity=np.asarray(purity), margin=m,
              fmn=np.asarray(fmn, float)[None], pgd_broken=np.asarray(broken, bool)[None],
              certified=np.zeros_like(m), zero_grad=np.zeros_like(m, bool),
              head_converged=np.ones((1,), bool))


def test_robust_accuracy_counts_points_no_attack_breaks_within_the_radius():
  # k = 4: eps = c' / 2 for c' in (0.5, 1.0): radii 0.25 and 0.5.
  rec = _record(4, 0.0, 0, margin=[1, 1, 1, -1], fmn=[0.2, 0.4, 0.9, 0.0],
                broken=[[0, 0, 0, 1], [0, 1, 0, 1]])
  # radius 0.25: point 0 falls to FMN (0.2), 3 is wrong -> 2/4; radius 0.5:
  # 0 and 1 (FMN 0.4; PGD too) fall -> 1/4.
  chex.assert_trees_all_close(scaling.robust_accuracy(rec, (0.5, 1.0)), np.array([0.5, 0.25]))


def test_summary_and_gap_on_records_with_known_values():
  eps_factors = (0.5, 1.0)
  recs = []
  for s in (0, 1):
    recs.append(_record(4, 0.0, s, [1, 1, 1, 1], [0.1, 0.1, 0.3, np.inf], [[0] * 4, [0] * 4]))
    recs.append(_record(4, 1.0, s, [1, 1, 1, -1], [0.6, 0.8, 1.0, 0.0], [[0] * 4, [0] * 4],
                        purity=(0.9, 1.0)))
  rows = scaling.summarize(recs, eps_factors)
  clean = next(r for r in rows if r['c'] == 0.0)
  adv = next(r for r in rows if r['c'] == 1.0)
  # FMN failed on one correct point of four: the median is over the 3 it broke.
  assert clean['distance_median'] == pytest.approx(0.1)
  assert clean['fmn_failed_share'] == pytest.approx(0.25)
  assert adv['distance_median'] == pytest.approx(0.8)
  assert adv['clean_acc'] == pytest.approx(0.75)
  assert adv['purity_median'] == pytest.approx(0.95) and adv['eps'] == pytest.approx(0.5)
  # At eps = 1 / sqrt(4) = 0.5: adversarial 3/4 robust, clean 1/4 (0.3 < 0.5 < inf).
  (gap,) = scaling.inheritance_gaps(rows, eps_factors)
  assert (gap['k'], gap['c']) == (4, 1.0)
  assert gap['gap'] == pytest.approx(0.5)
  assert gap['gap_per_seed'] == pytest.approx([0.5, 0.5])


def _law_rows(clean_exponent):
  """Rows whose seeds follow known laws: clean 0.7 (k/D)^(beta + delta_s), adversarial
  0.9 k^delta_s, delta = (0.05, 0, -0.05): per-seed slopes beta + delta and delta."""
  rows = []
  for D in (32, 64):
    for k in (2, 4, 8, 16):
      rows.append(dict(D=D, m=D, k=k, c=0.0, distance_median_per_seed=[
          0.7 * (k / D) ** (clean_exponent + dl) for dl in (0.05, 0.0, -0.05)]))
      rows.append(dict(D=D, m=D, k=k, c=0.8, distance_median_per_seed=[
          0.9 * k ** dl for dl in (0.05, 0.0, -0.05)]))
  return rows


SCFG = ml_collections.ConfigDict(dict(ks=(2, 4, 8, 16), Ds=(32, 64), width_factors=(1,),
                                      eps_factors=(0.8,), fit_width_factor=1, fit_eps_factor=0.8))


def test_fits_and_claims_with_known_exponents():
  # Half-width of both intervals: t_{0.975, 2} * 0.05 / sqrt(3) = 0.124.
  fit = scaling.fits(_law_rows(0.5), SCFG)
  clean, adv = fit['clean_vs_k_over_D'], fit['adversarial_vs_k']
  chex.assert_trees_all_close((clean['interval']['exponent'], clean['interval']['lo']),
                              (0.5, 0.376), atol=1e-3)
  chex.assert_trees_all_close((adv['interval']['exponent'], adv['interval']['hi']),
                              (0.0, 0.124), atol=1e-3)
  assert clean['contains_prediction'] and adv['contains_prediction']
  checks = scaling.claims(fit)
  assert [c.holds for c in checks] == [True, True]
  assert checks[0].numbers['predicted'] == 0.5 and checks[1].numbers['predicted'] == 0.0
  # A clean exponent of 0.3: its interval [0.18, 0.42] leaves out 1/2.
  fit = scaling.fits(_law_rows(0.3), SCFG)
  assert not fit['clean_vs_k_over_D']['contains_prediction']
  assert [c.holds for c in scaling.claims(fit)] == [False, True]


def test_a_point_without_a_distance_leaves_the_fit_undecided():
  rows = _law_rows(0.5)
  rows[0]['distance_median_per_seed'][1] = float('nan')
  fit = scaling.fits(rows, SCFG)
  assert fit['clean_vs_k_over_D']['interval'] is None
  check = scaling.claims(fit)[0]
  assert not check.holds and 'not decided' in check.rule


def test_default_scaling_config_is_valid():
  cfg = sparse_coding_config.get_config('scaling')
  assert cfg.experiment == 'scaling'
  scaling.validate(cfg)
  assert len(scaling.grid(cfg.scaling)) == len(cfg.scaling.Ds) * len(cfg.scaling.width_factors)


@pytest.mark.parametrize('field,value', [
    ('num_seeds', 1),
    ('scaling.ks', (2,)),
    ('scaling.ks', (2, 2)),
    ('scaling.ks', (0, 2)),
    ('scaling.ks', (2, 64)),            # > min(Ds) = 32
    ('scaling.Ds', ()),
    ('scaling.width_factors', (0.3,)),  # 0.3 x 32 is not an integer
    ('scaling.eps_factors', (0.0, 0.8)),
    ('scaling.fit_width_factor', 2),
    ('scaling.fit_eps_factor', 0.5),
    ('scaling.full_width_factors', (2,)),   # not a width factor
    ('scaling.full_Ds', (48,)),
    ('attack.norm', 'linf'),
    ('pretrain.steps', 0),
    ('downstream.num_examples', 0),
    ('downstream.l2', -1.0),
    ('eval.fmn_steps', 0),
    ('data.magnitude_low', 0.0),
])
def test_bad_field_is_named_in_one_line(field, value):
  cfg = sparse_coding_config.get_config('scaling')
  node = cfg
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=rf'^config\.{field}: must be [^\n]*$'):
    scaling.validate(cfg)


def test_launch_refuses_a_bad_field_before_any_work(tmp_path):
  proc = launch('--config=configs/sparse_coding.py:scaling', f'--workdir={tmp_path / "w"}',
                '--config.scaling.fit_eps_factor=0.5')
  assert proc.returncode == 2
  assert proc.stderr.strip().count('\n') == 0
  assert proc.stderr.startswith('error: config.scaling.fit_eps_factor: must be one of')
  assert not (tmp_path / 'w').exists()


def _synthetic_records(cfg, rng):
  """Records of every point of cfg's grid: distances following the predicted laws."""
  T, C, n = cfg.downstream.num_tasks, len(cfg.scaling.eps_factors), 16
  recs = []
  for prog in scaling.grid(cfg.scaling):
    for k, c in prog.points:
      for s in range(cfg.num_seeds):
        law = 0.7 * math.sqrt(k / prog.D) if c == 0 else 0.9
        fmn = law * np.exp(0.1 * rng.standard_normal((T, n)))
        recs.append(dict(D=prog.D, m=prog.width, k=k, c=c, seed=s,
                         purity=rng.uniform(0.2, 1.0, prog.width),
                         head_converged=np.ones((T,), bool),
                         margin=np.where(rng.random((T, n)) < 0.9, 1.0, -1.0), fmn=fmn,
                         pgd_broken=np.zeros((T, C, n), bool), certified=0.1 * fmn,
                         zero_grad=np.zeros((T, n), bool)))
  return recs


def test_report_of_a_sweep_end_to_end(tmp_path):
  # Everything after training, fast: summaries, gaps, fits, claims, plots, the table.
  cfg = tiny_config()
  cfg.scaling.Ds, cfg.scaling.ks, cfg.scaling.full_Ds = (8, 16), (1, 2, 4), (8,)
  out = scaling.report_sweep(cfg, str(tmp_path), _synthetic_records(cfg, np.random.default_rng(0)),
                             {'pretraining': 4, 'heads': 4, 'evaluation': 4, 'sweep_programs': 12,
                              'jax_backend_compiles': 0, 'jax_compiles_over_1s': 0})
  assert [c.holds for c in out['claims']] == [True, True]
  assert len(out['points']) == 3 * 3 + 3 * 2 * 3  # D 8: full sweep at width 16
  assert all(r['certified_above_fmn'] == 0 for r in out['points'])
  for name in scaling.PLOTS:
    assert (tmp_path / name).stat().st_size > 1000
  json.dumps(out['payload'])  # JSON-ready
  text = '\n'.join(out['text']) + '\n' + report.claims_text(out['claims'])  # what main prints
  assert 'fitted exponents' in text and 'claims this run tests' in text
  assert 'compiled: 12 sweep programs' in text


@pytest.mark.slow  # three compiles (pre-training, heads, evaluation): 18 s on the quiet 2 cores
def test_tiny_sweep_end_to_end(tmp_path, capsys):
  cfg = tiny_config()
  cfg.scaling.Ds, cfg.scaling.width_factors = (4,), (2,)
  scaling.validate(cfg)
  out = scaling.main(cfg, str(tmp_path))
  res = json.loads((tmp_path / 'results.json').read_text())
  # One shape, one program of 2 ks x (clean + 2 eps factors), 2 seeds.
  assert res['programs']['pretraining'] == 1 and res['programs']['sweep_programs'] == 3
  assert [tuple(p) for p in res['grid'][0]['points']] == [
      (1, 0.0), (2, 0.0), (1, 0.5), (2, 0.5), (1, 1.0), (2, 1.0)]
  assert len(res['points']) == 6
  for r in res['points']:
    assert 0.0 <= r['clean_acc'] <= 1.0 and 0.0 < r['purity_median'] <= 1.0
    assert len(r['distance_median_per_seed']) == 2 and len(r['robust_acc']) == 2
    assert r['certified_above_fmn'] == 0  # certified <= true <= FMN, point by point
  assert len(res['inheritance_gaps']) == 4
  assert set(res['fits']) == {'clean_vs_k_over_D', 'adversarial_vs_k'}
  assert [c['name'] for c in res['claims']] == [c.name for c in out['claims']]
  assert res['timings']['total']['wall'] > 0 and 'pretrain_D4_m8' in res['timings']
  for name in scaling.PLOTS:
    assert (tmp_path / name).stat().st_size > 1000
  text = capsys.readouterr().out
  assert 'compiled: 3 sweep programs' in text and 'claims this run tests' in text
