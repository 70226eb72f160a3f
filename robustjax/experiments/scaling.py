"""Paper A's scaling laws on the sparse-coding model, swept in a few compiled programs.

    python launch.py --config=configs/sparse_coding.py:scaling

The sweep (``config.scaling``): latent size D (= observation size d,
orthonormal dictionary), width m = factor * D, k active features, training
radius eps = c / sqrt(k) for c in ``eps_factors`` (Paper A's eps ~ 1/sqrt(k)
regime) and clean pre-training (c = 0), ``num_seeds`` seeds. Every point:
supervised pre-training on theta0 (clean, or under l2 PGD at its eps) ->
frozen hidden layer -> clean logistic heads (L-BFGS on the frozen features
of ``downstream.num_examples`` points) on ``downstream.num_tasks`` fresh
tasks -> per point:

- median unit purity (``metrics.purification``) over its units, all seeds;
- downstream clean accuracy;
- the median minimal l2 adversarial distance of the clean heads (FMN,
  ``attacks.minimal``) over the correctly classified test points it broke,
  with the certified lower bound beside it (``metrics.certify``: margin over
  ``||W diag(s)||_2 ||a||``, s_j the soft threshold's slope bound, 1, or 2
  where the trained b_j < 0: ``feature_lipschitz``): certified <= true
  distance <= FMN's;
- downstream robust accuracy at eps = c' / sqrt(k) for every c' of the grid:
  a test point counts as robust when it is classified correctly, l2 PGD at
  that radius does not break it, and FMN's distance exceeds the radius;
- the inheritance gap at eps = c / sqrt(k): robust accuracy of the heads on
  the encoder adversarially pre-trained at that eps minus that of the heads
  on the clean encoder (same seed, world, task and test points).

Compiles: k (read by the sampler, ``sample_features(k=...)``), eps (0 for
clean: PGD at radius 0 is the identity) and the seeds are arrays, vmapped,
so each shape (D, m) compiles one pre-training program, one heads program
and one evaluation program (``grid``; ``results.json['programs']`` counts
them and all of jax's compile events).

Why the predictions (configs/sparse_coding.py): a clean-trained (mixed) unit
is attacked along the dense direction M theta, at l2 distance
|theta^T X| / ||theta|| ~ sqrt(k / D); purified thresholded units pass only
perturbations along the k active features, distance
|theta_S^T X_S| / ||theta_S|| ~ 1 whatever k. The fits
(``analysis.power_law``): the exponent of the clean encoders' median distance
against k / D (predicted 1/2) and of the adversarial encoders' against k
(predicted 0), one log-log slope per seed over every (k, D) at width
``fit_width_factor * D`` (and c = ``fit_eps_factor``), a Student-t 95%
interval over the seeds; each claim holds when its interval contains the
prediction. Both are fixed in the config before the run; nothing is chosen
after seeing the numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from robustjax import config_blocks as blocks
from robustjax import config_validation as cv
from robustjax import losses, progress, report, run_record
from robustjax.analysis import power_law
from robustjax.attacks import health, minimal
from robustjax.attacks.pgd import PGDSpec, pgd
from robustjax.data import sparse_coding as sc
from robustjax.experiments import runner
from robustjax.metrics import certify, purification
from robustjax.models import heads as heads_lib
from robustjax.models.apply import bind, logits as logits_fn
from robustjax.recipes import downstream, supervised
from robustjax.train import sharding

CLEAN_EXPONENT, ADVERSARIAL_EXPONENT = 0.5, 0.0  # the predictions (module docstring)
CONFIDENCE = 0.95


# --- The grid ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled pre-training program: every (k, c) point of one shape (D, width), all seeds.

  ``points`` are (k, c) pairs with training radius eps = c / sqrt(k); c = 0
  is clean pre-training (PGD at radius 0 returns its input exactly, so clean
  and adversarial runs share the program).
  """
  D: int
  width: int
  points: tuple

  @property
  def name(self) -> str:
    """'D<D>_m<width>', e.g. 'D64_m128': the program's job name in timings and logs."""
    return f'D{self.D}_m{self.width}'


def width(D: int, factor: float) -> int:
  """m = factor * D; ValueError unless it is an integer >= 1."""
  m = factor * D
  if not (m >= 1 and float(m).is_integer()):
    raise ValueError(f'width factor {factor!r} x D = {D}: must give an integer >= 1, got {m!r}')
  return int(m)


def grid(scfg) -> list[Program]:
  """The sweep as compiled pre-training programs, in run order.

  For each D in ``scfg.Ds`` and factor in ``scfg.width_factors`` (m = factor
  * D), one program over ks x c: c in (0,) + ``scfg.eps_factors`` where D is
  in ``scfg.full_Ds`` and the factor in ``scfg.full_width_factors``, c in
  (0, ``scfg.fit_eps_factor``) elsewhere (all that the fits and purity
  against width need; the trim that keeps the sweep within its time budget).
  Raises ValueError for a factor that gives no integer width.
  """
  every = (0.0,) + tuple(float(c) for c in scfg.eps_factors)
  trimmed = (0.0, float(scfg.fit_eps_factor))
  full = lambda D, f: D in scfg.full_Ds and f in scfg.full_width_factors
  return [Program(D, width(D, f), tuple(
      (k, c) for c in (every if full(D, f) else trimmed) for k in scfg.ks))
          for D in scfg.Ds for f in scfg.width_factors]


def _int_list(cfg, field: str, minimum: int = 1) -> list:
  v = cv.value(cfg, field)
  if isinstance(v, str) or not v or not all(
      isinstance(e, int) and not isinstance(e, bool) and e >= minimum for e in v) or (
          len(set(v)) != len(v)):
    raise cv.ConfigError(field, f'a non-empty list of distinct integers >= {minimum}', v)
  return list(v)


def _number_list(cfg, field: str) -> list:
  v = cv.value(cfg, field)
  if isinstance(v, str) or not v or not all(
      isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0
      for e in v) or len(set(v)) != len(v):
    raise cv.ConfigError(field, 'a non-empty list of distinct numbers > 0', v)
  return list(v)


def validate(cfg) -> None:
  """Raises ConfigError on the first field the sweep cannot use."""
  blocks.run(cfg, min_seeds=2)  # the exponents' intervals are over seeds
  cv.positive_int(cfg, 'downstream.num_tasks', 'eval.fmn_steps')
  blocks.pgd_eval(cfg)
  ks = _int_list(cfg, 'scaling.ks')
  Ds = _int_list(cfg, 'scaling.Ds')
  if len(ks) < 2:
    raise cv.ConfigError('scaling.ks', 'at least 2 values (an exponent needs 2 points)', ks)
  if max(ks) > min(Ds):
    raise cv.ConfigError('scaling.ks', f'values <= min(scaling.Ds) = {min(Ds)}', ks)
  factors = _number_list(cfg, 'scaling.width_factors')
  for f in factors:
    for D in Ds:
      if not (f * D >= 1 and float(f * D).is_integer()):
        raise cv.ConfigError('scaling.width_factors', f'factors f with f * D an integer >= 1 '
                             f'for every D in {Ds}', factors)
  eps_factors = _number_list(cfg, 'scaling.eps_factors')
  if cfg.scaling.fit_width_factor not in factors:
    raise cv.ConfigError('scaling.fit_width_factor', f'one of scaling.width_factors {factors}',
                         cfg.scaling.fit_width_factor)
  full = cv.value(cfg, 'scaling.full_width_factors')
  if isinstance(full, str) or not set(full) <= set(factors):
    raise cv.ConfigError('scaling.full_width_factors', 'a list from scaling.width_factors',
                         full)
  full = cv.value(cfg, 'scaling.full_Ds')
  if isinstance(full, str) or not set(full) <= set(Ds):
    raise cv.ConfigError('scaling.full_Ds', 'a list from scaling.Ds', full)
  if cfg.scaling.fit_eps_factor not in eps_factors:
    raise cv.ConfigError('scaling.fit_eps_factor', f'one of scaling.eps_factors {eps_factors}',
                         cfg.scaling.fit_eps_factor)
  cv.number(cfg, 'data.noise_std', low=0)
  cv.number(cfg, 'data.magnitude_low', low=0, high=1, strict_low=True)
  cv.boolean(cfg, 'data.exact_k')
  cv.number(cfg, 'model.bias_init', low=0)
  cv.number(cfg, 'model.init_scale', low=0, strict_low=True)
  cv.number(cfg, 'model.readout_init_scale', low=0, strict_low=True)
  cv.positive_int(cfg, 'pretrain.steps', 'pretrain.batch_size', 'downstream.num_examples',
                  'downstream.max_iter')
  blocks.optimizer(cfg, 'pretrain')
  cv.number(cfg, 'downstream.l2', low=0)
  cv.number(cfg, 'downstream.tol', low=0, strict_low=True)
  # The distances and the theory are l2; the radius comes from the grid (eps = c / sqrt(k)).
  blocks.attack(cfg, norms=('l2',), eps=False)


# --- Training --------------------------------------------------------------------

def shape_config(cfg, D: int, m: int):
  """An unlocked copy of ``cfg`` with the shape's d = D, D and width m filled in;
  ``data.k`` = max(scaling.ks) bounds the k each run passes to the sampler."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.data.d, c.data.D, c.data.dictionary = D, D, 'orthonormal'
  c.data.k = max(cfg.scaling.ks)  # the sampler's bound on each run's own k
  c.model.width = m
  return c


def pretrain_loss(params, key, aux, *, model, spec: sc.SparseCodingSpec, batch_size: int,
                  attack: PGDSpec | None):
  """Logistic loss on a fresh batch of task theta with the run's k active features;
  with ``attack``, on its l2 PGD points at the run's radius (radius 0: the
  batch itself, exactly: clean training).

  aux = (world, theta, k, eps) of one run; ``attack`` gives the PGD settings
  (its own eps is not used). The inner maximisation is a constant for the
  outer gradient, as in ``supervised.supervised_loss``. Returns (scalar mean
  logistic loss, {'accuracy': scalar share of the (attacked) batch with
  margin > 0}), the (loss, aux) pair ``loop.fit`` expects.
  """
  world, theta, k, eps = aux
  k_data, k_attack = jax.random.split(key)
  z, y, _ = sc.sample_task(k_data, batch_size, world, spec, theta, k=k)
  z, y = sharding.constrain_batch((z, y))
  apply = bind(logits_fn, model)
  if attack is not None:
    loss_of_input = jax.tree_util.Partial(supervised.attack_loss, apply,
                                          jax.lax.stop_gradient(params), y)
    z = jax.lax.stop_gradient(pgd(
        loss_of_input, z, eps=eps, norm=attack.norm, steps=attack.steps,
        step_size=attack.rel_step_size * eps, key=k_attack, restarts=attack.restarts,
        random_start=attack.random_start))
  logits = apply(params, z)
  return jnp.mean(losses.logistic(logits, y)), {
      'accuracy': jnp.mean(losses.margin(logits, y) > 0)}


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'num_examples', 'l2', 'max_iter',
                                             'tol'))
def _fit_heads(encoders, worlds, thetas, ks, keys, *, model, spec, num_examples, l2, max_iter,
               tol):
  """Per run: a clean logistic head on the frozen encoder's features of
  ``num_examples`` fresh points of its task: the l2-penalised logistic
  regression solved by L-BFGS (``models.heads.fit_logistic_regression``,
  at most ``max_iter`` iterations, ``info['grad_norm']`` says how close);
  returns ({'a', 'c'}, info)."""
  def one(encoder, world, theta, k, key):
    z, y, _ = sc.sample_task(key, num_examples, world, spec, theta, k=k)
    h = model.apply({'params': encoder}, z, features_only=True)
    p, info = heads_lib.fit_logistic_regression(h, (y > 0).astype(jnp.int32), num_classes=2,
                                                l2=l2, max_iter=max_iter, tol=tol,
                                                return_info=True)
    # Two-class softmax = the scalar logistic loss on the logit difference.
    return {'a': p['kernel'][:, 1] - p['kernel'][:, 0], 'c': p['bias'][1] - p['bias'][0]}, info

  return jax.vmap(one)(encoders, worlds, thetas, ks, keys)


# --- Evaluation ------------------------------------------------------------------

def _neg_margin(predict, y, z):
  return -losses.margin(predict(z), y)


@functools.partial(jax.jit, static_argnames=(
    'model', 'spec', 'num_examples', 'fmn_steps', 'pgd_steps', 'rel_step_size', 'restarts'))
def _evaluate_runs(encoders, heads, worlds, thetas, ks, keys, eval_factors, *, model, spec,
                   num_examples, fmn_steps, pgd_steps, rel_step_size, restarts):
  """Per run (leading axis): the test points' margins, FMN distances, PGD breaks and health."""
  def one(encoder, head, world, theta, k, key):
    k_data, k_attack = jax.random.split(key)
    z, y, _ = sc.sample_task(k_data, num_examples, world, spec, theta, k=k)
    predict = bind(downstream.head_logits, model, {'encoder': encoder, 'head': head})
    logits = predict(z)
    _, dist, fmn_health = minimal.fmn_with_health(predict, z, y, norm='l2', steps=fmn_steps)
    loss = jax.tree_util.Partial(_neg_margin, predict, y)

    def broken_at(i, eps):
      z_adv = pgd(loss, z, eps=eps, norm='l2', steps=pgd_steps, step_size=rel_step_size * eps,
                  key=jax.random.fold_in(k_attack, i), restarts=restarts)
      out = predict(z_adv)
      return (losses.margin(out, y) <= 0) & health.rows_finite(z_adv, out)

    # vmapped over the radii: one PGD in the compiled program, not one per radius.
    radii = eval_factors / jnp.sqrt(k.astype(jnp.float32))
    broken = jax.vmap(broken_at)(jnp.arange(eval_factors.shape[0]), radii)
    return {'margin': losses.margin(logits, y), 'logits': logits, 'y': y, 'fmn': dist,
            'pgd_broken': broken, 'zero_grad': fmn_health['zero_grad'],
            'nonfinite': fmn_health['nonfinite']}

  return jax.vmap(one)(encoders, heads, worlds, thetas, ks, keys)


def feature_lipschitz(w: jax.Array, b: jax.Array) -> jax.Array:
  """l2 Lipschitz bound of the soft-threshold features h(z) = sigma_b(W^T z): a scalar.

  w: (d, m) units as columns; b: (m,) thresholds. sigma_b(u) = relu(u - b) -
  relu(-u - b) has slope 1 where b >= 0 but 2 on |u| < -b where b < 0 (both
  ramps on; trained thresholds can go negative), so |h_j(z) - h_j(z')| <= s_j
  |w_j^T (z - z')| with s_j = 1 + [b_j < 0], and L = ||W diag(s)||_2 (exact SVD).
  """
  if w.ndim != 2 or b.shape != (w.shape[1],):
    raise ValueError(f'w and b: must be (d, m) and (m,), got {w.shape} and {b.shape}')
  slopes = jnp.where(b < 0, 2.0, 1.0)
  return jnp.linalg.svd(w * slopes[None, :], compute_uv=False)[0]


def certified_radii(logits: np.ndarray, y: np.ndarray, head_a: np.ndarray,
                    lipschitz: float) -> np.ndarray:
  """(n,) certified l2 radii of the scalar head f = sigma_b(W^T z) @ a + c.

  logits (n,) = f(z), y (n,) in {-1, +1}, head_a (m,) = a, lipschitz: a
  Lipschitz bound of the features (:func:`feature_lipschitz`). The binary
  head as two classes, logits (0, f) and kernel (0, a) (label 1 for
  y = +1), through ``certify.certified_radius``: r = y f / (L ||a||),
  misclassified points 0.
  """
  lip = certify.lipschitz_bound([lipschitz], 1.0)
  two = np.stack([np.zeros_like(logits), logits], axis=-1)
  kernel = np.stack([np.zeros_like(head_a), head_a], axis=-1)
  return np.asarray(certify.certified_radius(two, (y > 0).astype(np.int32), kernel, lip))


# --- The sweep -------------------------------------------------------------------

# Each seed's key streams (``runner.key_streams``, (S, 2) each): the worlds,
# tasks, pre-training, heads and evaluation; the same as sparse_coding's.
STREAMS = ('world', 'tasks', 'pretrain', 'downstream', 'eval')


def _tile(tree, times: int):
  """(S, ...) -> (times * S, ...): the seeds, once per point."""
  return jax.tree.map(lambda a: jnp.concatenate([a] * times), tree)


def _per_task(tree, T: int):
  """(R, ...) -> (R * T, ...): each run once per task."""
  return jax.tree.map(lambda a: jnp.repeat(a, T, axis=0), tree)


def run_shape(cfg, prog: Program, keys: dict, run: runner.Run) -> list[dict]:
  """Pre-trains, fits heads and evaluates every point of one shape in ``run``
  (jobs ``pretrain_<shape>``, checkpoints in ``train_checkpoints/<shape>``,
  ``heads_D<D>_m<m>``, ``eval_D<D>_m<m>``); one record per (point, seed): its
  D, m, k, c, seed, per-unit purity (m,), head_converged (T,) and the per-task
  test arrays margin, fmn, zero_grad (T, n), pgd_broken (T, C, n), certified
  (T, n) (distances in l2 units of the observation)."""
  D, m = prog.D, prog.width
  scfg = shape_config(cfg, D, m)
  spec = sc.SparseCodingSpec.from_config(scfg.data)
  S, T = cfg.num_seeds, cfg.downstream.num_tasks
  worlds = jax.vmap(lambda k: sc.make_world(jax.random.fold_in(k, D), spec))(keys['world'])
  thetas = jax.vmap(lambda k: jax.vmap(lambda t: sc.new_task(t, spec))(
      jax.random.split(jax.random.fold_in(k, D), T)))(keys['tasks'])          # (S, T, D)
  model = supervised.model_from_config(scfg)
  attack = PGDSpec(eps=0.0, norm=cfg.attack.norm, steps=cfg.attack.steps,
                   rel_step_size=cfg.attack.rel_step_size, restarts=cfg.attack.restarts,
                   random_start=cfg.attack.random_start)
  P = len(prog.points)
  # Runs point-major: index p * S + s.
  ks = jnp.repeat(jnp.asarray([k for k, _ in prog.points], jnp.int32), S)
  eps = jnp.repeat(jnp.asarray([c / math.sqrt(k) for k, c in prog.points], jnp.float32), S)
  loss_fn = functools.partial(pretrain_loss, model=model, spec=spec,
                              batch_size=cfg.pretrain.batch_size, attack=attack)
  with run.job(f'pretrain_{prog.name}'):
    # The shape's own config fingerprint (as before the runner: old runs resume).
    params, _ = supervised.train_two_layer(
        scfg, (_tile(worlds, P), _tile(worlds.theta0, P), ks, eps), _tile(keys['pretrain'], P),
        loss_fn, opt_cfg=cfg.pretrain, desc=f'pre-train {prog.name} ({P * S} runs)',
        checkpoint_dir=run.checkpoint_dir(prog.name),
        fingerprint=run_record.fingerprint(scfg.to_dict()))
    jax.block_until_ready(params)
  points = [(k, c, s) for k, c in prog.points for s in range(S)]
  enc = {'w': params['w'], 'b': params['b']}                                  # (R, ...)
  R = len(points)
  seed_of = np.array([s for _, _, s in points])
  ks = jnp.asarray([k for k, _, _ in points], jnp.int32)
  run_worlds = jax.tree.map(lambda a: a[seed_of], worlds)
  # Runs x tasks, task-major inside each run: index r * T + t.
  aux = (_per_task(run_worlds, T), thetas[seed_of].reshape(R * T, D), _per_task(ks, T))
  head_keys = jax.vmap(lambda k: jax.random.split(k, T))(keys['downstream'])[seed_of]
  dcfg = cfg.downstream
  with run.job(f'heads_D{D}_m{m}'), warnings.catch_warnings():
    # One line per shape below, not one per head.
    warnings.filterwarnings('ignore', message='fit_logistic_regression: L-BFGS stopped',
                            category=RuntimeWarning)
    heads, info = _fit_heads(_per_task(enc, T), *aux, head_keys.reshape(R * T, -1), model=model,
                             spec=spec, num_examples=dcfg.num_examples, l2=float(dcfg.l2),
                             max_iter=dcfg.max_iter, tol=float(dcfg.tol))
    jax.block_until_ready((heads, info))
  grad_norm = np.asarray(info['grad_norm'])
  if not np.all(grad_norm <= dcfg.tol):
    warnings.warn(f'heads (D {D}, m {m}): L-BFGS stopped at max_iter={dcfg.max_iter} above '
                  f'tol={dcfg.tol:g} on {int(np.sum(~(grad_norm <= dcfg.tol)))} of '
                  f'{grad_norm.size} heads (gradient norm up to {np.nanmax(grad_norm):.3g}; '
                  "results.json: points' head_unconverged)", RuntimeWarning)
  eval_keys = jax.vmap(lambda k: jax.random.split(k, T))(keys['eval'])[seed_of]
  with run.job(f'eval_D{D}_m{m}'):
    out = _evaluate_runs(
        _per_task(enc, T), heads, *aux, eval_keys.reshape(R * T, -1),
        jnp.asarray(cfg.scaling.eps_factors, jnp.float32), model=model, spec=spec,
        num_examples=cfg.eval.num_examples, fmn_steps=cfg.eval.fmn_steps,
        pgd_steps=cfg.eval.attack_steps, rel_step_size=cfg.eval.rel_step_size,
        restarts=cfg.eval.restarts)
    out = jax.tree.map(lambda a: np.asarray(a).reshape((R, T) + a.shape[1:]), out)
    units = jax.tree.map(np.asarray, jax.vmap(purification.unit_report)(
        enc['w'], run_worlds.dictionary))
    a = np.asarray(heads['a']).reshape(R, T, m)
    lips = np.asarray(jax.vmap(feature_lipschitz)(enc['w'], enc['b']))
    cert = np.stack([np.stack([certified_radii(out['logits'][r, t], out['y'][r, t], a[r, t],
                                               lips[r]) for t in range(T)]) for r in range(R)])
  health.warn(health.messages(f'fmn (D {D}, m {m})', {
      'zero_grad': out['zero_grad'].reshape(-1), 'nonfinite': out['nonfinite'].reshape(-1)}))
  converged = (grad_norm <= dcfg.tol).reshape(R, T)
  return [dict(D=D, m=m, k=k, c=c, seed=s, purity=units['purity'][r],
               head_converged=converged[r],
               margin=out['margin'][r], fmn=out['fmn'][r], pgd_broken=out['pgd_broken'][r],
               certified=cert[r], zero_grad=out['zero_grad'][r])
          for r, (k, c, s) in enumerate(points)]


# --- Summaries, fits, claims -----------------------------------------------------

def _median_distance(records: list[dict], key: str = 'fmn') -> float:
  """Median over the correctly classified test points of ``records`` whose FMN
  distance is finite (the points FMN broke), of ``key``; nan when none."""
  vals = [r[key][(r['margin'] > 0) & np.isfinite(r['fmn'])] for r in records]
  vals = np.concatenate([v.ravel() for v in vals]) if vals else np.array([])
  return float(np.median(vals)) if vals.size else float('nan')


def robust_accuracy(rec: dict, eps_factors) -> np.ndarray:
  """(len(eps_factors),) robust accuracy over the record's tasks and test points at
  eps = c' / sqrt(k): correct, not broken by PGD, FMN distance > eps."""
  radii = np.asarray(eps_factors) / math.sqrt(rec['k'])
  ok = (rec['margin'] > 0)[None] & ~rec['pgd_broken'].transpose(1, 0, 2) & (
      rec['fmn'][None] > radii[:, None, None])
  return ok.reshape(len(radii), -1).mean(axis=1)


def summarize(records: list[dict], eps_factors) -> list[dict]:
  """One row per point (D, m, k, c), over its seeds (and tasks, test points)."""
  groups = {}
  for r in records:
    groups.setdefault((r['D'], r['m'], r['k'], r['c']), []).append(r)
  rows = []
  for (D, m, k, c), recs in groups.items():
    recs = sorted(recs, key=lambda r: r['seed'])
    correct = np.concatenate([(r['margin'] > 0).ravel() for r in recs])
    broken = np.concatenate([((r['margin'] > 0) & np.isfinite(r['fmn'])).ravel() for r in recs])
    rob = np.stack([robust_accuracy(r, eps_factors) for r in recs])          # (S, C)
    rows.append(dict(
        D=D, m=m, width_factor=m / D, k=k, c=c, eps=c / math.sqrt(k),
        purity_median=float(np.median(np.concatenate([r['purity'] for r in recs]))),
        purity_median_per_seed=[float(np.median(r['purity'])) for r in recs],
        clean_acc=float(correct.mean()),
        clean_acc_per_seed=[float((r['margin'] > 0).mean()) for r in recs],
        distance_median=_median_distance(recs),
        distance_median_per_seed=[_median_distance([r]) for r in recs],
        certified_median=_median_distance(recs, 'certified'),
        # certified <= true <= FMN's distance: a point above it means a bug.
        certified_above_fmn=int(sum(np.sum(r['certified'] > r['fmn'] * (1 + 1e-5) + 1e-6)
                                    for r in recs)),
        fmn_failed_share=float(1 - broken.sum() / max(correct.sum(), 1)),
        zero_grad_share=float(np.mean(np.concatenate([r['zero_grad'].ravel() for r in recs]))),
        head_unconverged=int(sum(np.sum(~r['head_converged']) for r in recs)),
        robust_acc=rob.mean(0).tolist(), robust_acc_per_seed=rob.tolist()))
  return rows


def _row(rows, **where):
  hits = [r for r in rows if all(r[k] == v for k, v in where.items())]
  return hits[0] if hits else None


def inheritance_gaps(rows: list[dict], eps_factors) -> list[dict]:
  """Per (D, m, k, c > 0): robust accuracy of heads on the adversarial encoder minus
  on the clean one at eps = c / sqrt(k) (mean over seeds; per seed too)."""
  out = []
  for r in rows:
    if r['c'] == 0:
      continue
    clean = _row(rows, D=r['D'], m=r['m'], k=r['k'], c=0.0)
    i = list(eps_factors).index(r['c'])
    per_seed = [a[i] - b[i] for a, b in zip(r['robust_acc_per_seed'], clean['robust_acc_per_seed'])]
    out.append(dict(D=r['D'], m=r['m'], k=r['k'], c=r['c'], eps=r['eps'],
                    gap=float(np.mean(per_seed)), gap_per_seed=per_seed,
                    adversarial_robust_acc=r['robust_acc'][i],
                    clean_robust_acc=clean['robust_acc'][i]))
  return out


def fits(rows: list[dict], scfg) -> dict:
  """The two exponents with their intervals (``analysis.power_law``); a fit whose
  points lack a finite distance for some seed is reported as None with the reason."""
  m_of = lambda D: width(D, scfg.fit_width_factor)
  out = {}
  for name, c, xfun, predicted in (
      ('clean_vs_k_over_D', 0.0, lambda r: r['k'] / r['D'], CLEAN_EXPONENT),
      ('adversarial_vs_k', float(scfg.fit_eps_factor), lambda r: r['k'], ADVERSARIAL_EXPONENT)):
    pts = [r for r in rows if r['c'] == c and r['m'] == m_of(r['D'])]
    pts.sort(key=lambda r: (r['D'], r['k']))
    x = np.array([xfun(r) for r in pts], np.float64)
    y = np.array([r['distance_median_per_seed'] for r in pts], np.float64).T  # (S, P)
    base = dict(predicted=predicted, width_factor=scfg.fit_width_factor, eps_factor=c,
                x=x.tolist(), y_per_seed=y.tolist())
    if not np.all(np.isfinite(y) & (y > 0)):
      out[name] = dict(base, interval=None, reason='a point has no finite positive median '
                       'distance for some seed')
      continue
    iv = power_law.exponent_interval(x, y, CONFIDENCE)
    out[name] = dict(base, interval=iv, contains_prediction=power_law.contains(iv, predicted))
  return out


def claims(fit: dict) -> list[report.Claim]:
  """Each exponent's claim holds when its 95% interval over seeds contains the prediction."""
  out = []
  for key, name, what in (
      ('clean_vs_k_over_D', "A: clean encoders' adversarial distance scales as sqrt(k / D)",
       'median FMN distance of clean heads on clean encoders against k / D'),
      ('adversarial_vs_k', "A: adversarial encoders' adversarial distance is flat in k",
       'median FMN distance of clean heads on adversarially pre-trained encoders '
       '(eps = c / sqrt(k)) against k')):
    f = fit[key]
    iv = f['interval']
    rule = (f"the {CONFIDENCE:.0%} interval over seeds of the exponent of the {what} "
            f"(width {f['width_factor']:g} D" + (f", c = {f['eps_factor']:g}" if f['eps_factor']
                                                 else '') +
            f", every k and D) contains {f['predicted']:g}")
    if iv is None:
      out.append(report.Claim(name, False, rule + f" (not decided: {f['reason']})", {}))
      continue
    out.append(report.Claim(name, bool(f['contains_prediction']), rule, {
        'exponent': iv['exponent'], 'interval lo': iv['lo'], 'interval hi': iv['hi'],
        'predicted': f['predicted'], 'seeds': iv['num_seeds']}))
  return out


# --- Output ----------------------------------------------------------------------

def table(rows: list[dict], eps_factors) -> str:
  """The ``summarize`` rows as a text table, one line per (D, m, k, c), with a
  legend below: purity, clean accuracy and robust accuracy (fractions in [0,
  1]), median FMN and certified l2 distances (input units), the share of
  points FMN failed on. Returns the table as one string."""
  head = ['D', 'm', 'k', 'c', 'eps', 'median purity', 'clean acc', 'median FMN dist',
          'median certified', 'FMN failed', 'robust acc at own eps']
  body = []
  for r in rows:
    own = r['robust_acc'][list(eps_factors).index(r['c'])] if r['c'] else float('nan')
    body.append([str(r['D']), str(r['m']), str(r['k']), f"{r['c']:g}", f"{r['eps']:.3f}",
                 f"{r['purity_median']:.3f}", f"{r['clean_acc']:.3f}",
                 f"{r['distance_median']:.3f}", f"{r['certified_median']:.4f}",
                 f"{r['fmn_failed_share']:.3f}", '-' if r['c'] == 0 else f'{own:.3f}'])
  return report.format_table(head, body) + (
      '\nc = 0: clean pre-training; eps = c / sqrt(k) the training radius. Medians over the '
      'correctly classified test points FMN broke (all seeds and tasks); certified: the '
      'margin over ||W diag(s)||_2 ||a|| on the same points; robust acc: correct, unbroken by PGD '
      'and FMN distance > eps.')


def fits_text(fit: dict) -> str:
  """The ``fits`` result as text, one line per fitted quantity: the mean
  log-log exponent with its 95% interval, the predicted exponent and whether
  the interval holds it, the per-seed slopes; or why it was not fitted.
  Returns one string (lines joined by newlines)."""
  lines = ['fitted exponents (log-log slope per seed; mean and 95% Student-t interval over '
           'seeds):']
  for key, f in fit.items():
    iv = f['interval']
    if iv is None:
      lines.append(f"  {key}: not fitted ({f['reason']})")
      continue
    lines.append(f"  {key}: {iv['exponent']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}], predicted "
                 f"{f['predicted']:g}: {'inside' if f['contains_prediction'] else 'outside'} "
                 f"the interval; per seed {', '.join(f'{s:.3f}' for s in iv['per_seed'])}")
  return '\n'.join(lines)


def _seeds(rows: list[dict]) -> int:
  return len(rows[0]['purity_median_per_seed']) if rows else 0


def plot_distances(rows: list[dict], fit: dict, scfg, path: str) -> None:
  """Median FMN distance against k (log-log), one line per D (error bars: the
  seeds' range), clean (left) and adversarial (right) encoders at the fit
  width; dashed: the predicted slope, dotted: the fitted one, both through the
  points' log-centre; the fitted exponent and its 95% interval in the title."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2), layout='constrained')
  colors = {D: f'C{i % 10}' for i, D in enumerate(scfg.Ds)}
  drawn = []
  for ax, key, c in ((axes[0], 'clean_vs_k_over_D', 0.0),
                     (axes[1], 'adversarial_vs_k', float(scfg.fit_eps_factor))):
    f = fit[key]
    ks = set()
    for D in scfg.Ds:
      pts = sorted((r for r in rows if r['D'] == D and r['c'] == c
                    and r['m'] == width(D, scfg.fit_width_factor)), key=lambda r: r['k'])
      if not pts:
        continue
      if D not in drawn:
        drawn.append(D)
      k = np.array([r['k'] for r in pts], np.float64)
      ks |= set(k.tolist())
      per_seed = np.array([r['distance_median_per_seed'] for r in pts])
      mid = np.array([r['distance_median'] for r in pts])
      ax.errorbar(k, mid, yerr=[mid - np.nanmin(per_seed, 1), np.nanmax(per_seed, 1) - mid],
                  marker='o', ms=4, capsize=3, color=colors[D])
      ok = np.isfinite(mid) & (mid > 0)
      if ok.sum() >= 1:  # predicted (dashed) and fitted (dotted) slopes through the log-centre
        lk, lm = np.log(k[ok]), np.log(mid[ok])
        for slope, style in ((f['predicted'], '--'),
                             (f['interval']['exponent'] if f['interval'] else None, ':')):
          if slope is not None:
            ax.plot(k, np.exp(lm.mean() + slope * (np.log(k) - lk.mean())), style,
                    color=colors[D], alpha=0.6)
    iv = f['interval']
    fitted = (f"fitted {iv['exponent']:.2f} [{iv['lo']:.2f}, {iv['hi']:.2f}]" if iv
              else 'not fitted')
    kind = ('clean pre-training' if c == 0 else
            f'adversarial pre-training, eps = {c:g} / sqrt(k)')
    law = 'sqrt(k / D)' if c == 0 else 'flat'
    ax.set_title(f"{kind}\npredicted {law} (exponent {f['predicted']:g}); {fitted}", fontsize=9)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(sorted(ks), [f'{v:g}' for v in sorted(ks)])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    report.plain_log_ticks(ax.yaxis)
    ax.grid(alpha=0.3, which='both')
    ax.set_xlabel('k (active features per example)')
  axes[0].set_ylabel('median min l2 distance (FMN, input units)')
  handles = [Line2D([], [], color=colors[D], marker='o', ms=4) for D in drawn] + [
      Line2D([], [], color='gray', ls='--'), Line2D([], [], color='gray', ls=':')]
  labels = [f'D = {D}' for D in drawn] + ['predicted slope', 'fitted slope']
  report.fig_legend_outside(fig, handles, labels)
  fig.suptitle(f'clean heads: median FMN distance against k, clean vs adversarial encoders '
               f'(m = {scfg.fit_width_factor:g} D)\nmedian over correct test points of all '
               f'{_seeds(rows)} seeds and tasks; bars: range of the per-seed medians', fontsize=9)
  report._save(fig, path)  # pylint: disable=protected-access


def plot_purity(rows: list[dict], scfg, path: str) -> None:
  """Median unit purity against m / D, one panel per k, clean (dashed) and
  adversarial at c = fit_eps_factor (solid), one colour per D."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  ks = list(scfg.ks)
  c_adv = float(scfg.fit_eps_factor)
  fig, axes = plt.subplots(1, len(ks), figsize=(2.9 * len(ks) + 1.8, 3.5), squeeze=False,
                           sharey=True, layout='constrained')
  factors = set()
  for ax, k in zip(axes[0], ks):
    for i, D in enumerate(scfg.Ds):
      for c, style in ((0.0, '--'), (c_adv, '-')):
        pts = sorted((r for r in rows if r['D'] == D and r['k'] == k and r['c'] == c),
                     key=lambda r: r['m'])
        factors |= {r['width_factor'] for r in pts}
        ax.plot([r['width_factor'] for r in pts], [r['purity_median'] for r in pts], style,
                marker='o', ms=4, color=f'C{i % 10}')
    ax.set_xscale('log', base=2)
    ax.set_xticks(sorted(factors), [f'{v:g}' for v in sorted(factors)])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f'k = {k}', fontsize=9)
    ax.set_xlabel('width m / D')
  axes[0][0].set_ylabel('median unit purity (1 = one feature)')
  handles = [Line2D([], [], color=f'C{i % 10}', marker='o', ms=4) for i, _ in
             enumerate(scfg.Ds)] + [Line2D([], [], color='gray', ls='--'),
                                    Line2D([], [], color='gray', ls='-')]
  labels = [f'D = {D}' for D in scfg.Ds] + ['clean', f'adversarial, c = {c_adv:g}']
  report.fig_legend_outside(fig, handles, labels, title='pre-training', title_fontsize=8)
  fig.suptitle('median unit purity after pre-training against width, clean vs adversarial '
               f'(eps = c / sqrt(k))\nmedian over the units of all {_seeds(rows)} seeds',
               fontsize=9)
  report._save(fig, path)  # pylint: disable=protected-access


FAILED_FLAG = 0.5  # FMN share of failed points above which a cell is flagged (near-constant heads)


def plot_gaps(gaps: list[dict], rows: list[dict], scfg, path: str) -> None:
  """Heatmaps of the inheritance gap over (k, c), one per D with gaps at the fit
  width. A cell is starred where FMN found no adversarial point for more than
  FAILED_FLAG of the adversarial encoder's correct test points (its heads are
  near-constant: collapsed pre-training, zero gradients), so its robust
  accuracy is not inheritance."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ks, cs = list(scfg.ks), [float(c) for c in scfg.eps_factors]
  Ds = [D for D in scfg.Ds if any(g['D'] == D and g['m'] == width(D, scfg.fit_width_factor)
                                  for g in gaps)]
  fig, axes = plt.subplots(1, max(len(Ds), 1), figsize=(3.6 * max(len(Ds), 1) + 1.2, 3.6),
                           squeeze=False, layout='constrained')
  im = None
  for ax, D in zip(axes[0], Ds):
    m = width(D, scfg.fit_width_factor)
    grid_ = np.full((len(ks), len(cs)), np.nan)
    flag = np.zeros_like(grid_, bool)
    for g in gaps:
      if g['D'] == D and g['m'] == m:
        i, j = ks.index(g['k']), cs.index(g['c'])
        grid_[i, j] = g['gap']
        flag[i, j] = _row(rows, D=D, m=m, k=g['k'], c=g['c'])['fmn_failed_share'] > FAILED_FLAG
    im = ax.imshow(grid_, vmin=-1, vmax=1, cmap='RdBu', origin='lower', aspect='auto')
    for i, j in zip(*np.nonzero(np.isfinite(grid_))):  # cells the grid did not run stay blank
      ax.text(j, i, f"{grid_[i, j]:.2f}{'*' if flag[i, j] else ''}", ha='center', va='center',
              fontsize=8, color='w' if abs(grid_[i, j]) > 0.6 else 'k')  # legible on dark cells
    ax.set_xticks(range(len(cs)), [f'{c:g}' for c in cs])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel('c (eps = c / sqrt(k), training and test)')
    ax.set_title(f'D = {D}, m = {m}', fontsize=9)
  axes[0][0].set_ylabel('k (active features)')
  if im is not None:
    fig.colorbar(im, ax=axes, shrink=0.85,
                 label='robust acc: adv - clean encoder (fraction)')
  fig.suptitle('inheritance gap: robust accuracy of clean heads on the adversarial minus the '
               f'clean encoder at eps = c / sqrt(k)\nmean over {_seeds(rows)} seeds; blank: not '
               f'run; * FMN failed on > {FAILED_FLAG:.0%} of points (near-constant heads)',
               fontsize=9)
  report._save(fig, path)  # pylint: disable=protected-access


class _CompileCounter:
  """Counts jax's backend compiles (cache hits included) and those over 1 s."""

  def __init__(self):
    self.count = self.long = 0
    self.active = self.registered = False

  def __call__(self, event: str, duration: float, **_):
    if self.active and event == '/jax/core/compile/backend_compile_duration':
      self.count += 1
      self.long += duration >= 1.0


_COUNTER = _CompileCounter()


def sweep(cfg, run: runner.Run) -> tuple[list[dict], dict]:
  """Runs every program of ``grid`` in ``run``; returns (records, one per
  (point, seed) as ``run_shape``'s; compile counts {'pretraining', 'heads',
  'evaluation', 'sweep_programs', 'jax_backend_compiles',
  'jax_compiles_over_1s'})."""
  programs = grid(cfg.scaling)
  keys = runner.key_streams(cfg.seed, cfg.num_seeds, STREAMS)
  records = []
  if not _COUNTER.registered:  # one listener for the process, registered on first use
    jax.monitoring.register_event_duration_secs_listener(_COUNTER)
    _COUNTER.registered = True
  _COUNTER.count = _COUNTER.long = 0
  _COUNTER.active = True
  try:
    with progress.tracked('scaling sweep: shapes (D, m)', len(programs), cfg.progress) as bar:
      for prog in programs:
        records += run_shape(cfg, prog, keys, run)
        bar.update()
  finally:
    _COUNTER.active = False
  return records, {'pretraining': len(programs), 'heads': len(programs),
                   'evaluation': len(programs), 'sweep_programs': 3 * len(programs),
                   'jax_backend_compiles': _COUNTER.count,
                   'jax_compiles_over_1s': _COUNTER.long}


PLOTS = ('distance_vs_k.png', 'purity_vs_width.png', 'inheritance_gap.png')


def report_sweep(cfg, workdir: str, records: list[dict], compiled: dict) -> dict:
  """Summaries, fits, claims and plots (``PLOTS``, drawn into ``workdir``) of a
  finished sweep's records. Returns {'points': per-point summary rows,
  'gaps': inheritance gaps, 'fits': the power-law fits, 'claims':
  [report.Claim], 'text': the printed blocks (table, fits, compile counts),
  'payload': results.json's content but config, timings, claims and plots
  ('seeds', 'grid', 'programs', 'points', 'inheritance_gaps', 'fits')}."""
  rows = summarize(records, cfg.scaling.eps_factors)
  gaps = inheritance_gaps(rows, cfg.scaling.eps_factors)
  fit = fits(rows, cfg.scaling)
  checks = claims(fit)
  plot_distances(rows, fit, cfg.scaling, os.path.join(workdir, PLOTS[0]))
  plot_purity(rows, cfg.scaling, os.path.join(workdir, PLOTS[1]))
  plot_gaps(gaps, rows, cfg.scaling, os.path.join(workdir, PLOTS[2]))
  payload = {
      'seeds': [cfg.seed, cfg.num_seeds],
      'grid': [dataclasses.asdict(p) for p in grid(cfg.scaling)], 'programs': compiled,
      'points': rows, 'inheritance_gaps': gaps, 'fits': fit}
  text = [table(rows, cfg.scaling.eps_factors), fits_text(fit),
          f"compiled: {compiled['sweep_programs']} sweep programs ({compiled['pretraining']} "
          f"pre-training, {compiled['heads']} heads, {compiled['evaluation']} evaluation); jax "
          f"backend compiles in all {compiled['jax_backend_compiles']} "
          f"({compiled['jax_compiles_over_1s']} over 1 s)"]
  return {'points': rows, 'gaps': gaps, 'fits': fit, 'claims': checks, 'text': text,
          'payload': payload}


def main(cfg, workdir: str) -> dict:
  """Runs the sweep (``sweep``) in a ``runner.Run``, reports it
  (``report_sweep``), prints the table, fits, compile counts, claims and
  files written, and writes results.json (``report_sweep``'s payload with
  'config', 'timings' (seconds per job and 'total'), 'claims', 'plots'),
  metrics.jsonl, training_curves.png and the plots. Returns ``report_sweep``'s
  dict."""
  run = runner.Run(cfg, workdir)
  with run.job('total'):
    records, compiled = sweep(cfg, run)
    out = report_sweep(cfg, workdir, records, compiled)
  run.finish(out['payload'], text=out['text'], claims=out['claims'], plots=PLOTS)
  return out
