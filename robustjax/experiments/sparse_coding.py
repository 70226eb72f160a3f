"""Paper A's supervised pipeline on the sparse-coding model.

pre-train {clean, adversarial} x seeds -> freeze the hidden layer -> clean
linear heads on fresh downstream tasks -> clean and PGD accuracy, purity.
References: the downstream task trained end to end, cleanly and adversarially.

Stages (``config.stage``):
  pipeline    everything above, one results table.
  supervised  pre-training and its evaluation only; saves encoder checkpoints.
  downstream  heads on encoders loaded from ``config.downstream.encoder_dir``.

Seeds are vmapped: each stage compiles once for all seeds (and tasks).
After the table the run states which of Paper A's claims hold (``claims``).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from robustjax import config_validation as cv
from robustjax import progress, report, timing
from robustjax.attacks.pgd import NORMS, PGDSpec
from robustjax.data import sparse_coding as sc
from robustjax.models.apply import bind, logits as logits_fn
from robustjax.metrics import purification, robustness
from robustjax.recipes import contrastive, downstream, supervised
from robustjax.train import sharding

STAGES = ('pipeline', 'pretrain', 'downstream')
PRETRAIN_MODES = ('clean', 'adversarial')
CONTRASTIVE_MODES = tuple(contrastive.MODES)
REFERENCES = ('end_to_end_clean', 'end_to_end_adversarial')


def validate(cfg) -> None:
  """Raises ConfigError on the first field the run cannot use."""
  cv.one_of(cfg, 'stage', STAGES)
  cv.positive_int(cfg, 'num_seeds', 'chunk_size', 'data.d', 'data.D', 'data.k', 'model.width',
                  'attack.steps', 'attack.restarts', 'downstream.num_tasks',
                  'downstream.reference_tasks',
                  'eval.num_examples', 'eval.attack_steps', 'eval.restarts')
  if cfg.data.k > cfg.data.D:
    raise cv.ConfigError('data.k', f'<= data.D = {cfg.data.D}', cfg.data.k)
  cv.one_of(cfg, 'data.dictionary', ('orthonormal', 'overcomplete'))
  if cfg.data.dictionary == 'orthonormal' and cfg.data.D > cfg.data.d:
    raise cv.ConfigError('data.dictionary', f"'overcomplete' when data.D > data.d "
                         f'({cfg.data.D} > {cfg.data.d})', cfg.data.dictionary)
  cv.number(cfg, 'data.noise_std', low=0)
  cv.number(cfg, 'data.magnitude_low', low=0, high=1, strict_low=True)
  cv.number(cfg, 'model.bias_init', low=0)
  cv.number(cfg, 'model.init_scale', low=0, strict_low=True)
  cv.subset_of(cfg, 'pretrain.modes', PRETRAIN_MODES, nonempty=False)
  cv.subset_of(cfg, 'contrastive.modes', CONTRASTIVE_MODES, nonempty=False)
  if cfg.stage != 'downstream' and not (cfg.pretrain.modes or cfg.contrastive.modes
                                        or cfg.contrastive.width_sweep):
    raise cv.ConfigError('pretrain.modes', 'non-empty when contrastive.modes and '
                         'contrastive.width_sweep are empty (nothing to run)', ())
  cv.subset_of(cfg, 'downstream.references', REFERENCES, nonempty=False)
  for part in ('pretrain', 'contrastive', 'downstream'):
    cv.positive_int(cfg, f'{part}.steps', f'{part}.batch_size')
    cv.one_of(cfg, f'{part}.optimizer', ('adam', 'sgd'))
    cv.number(cfg, f'{part}.learning_rate', low=0, strict_low=True)
    cv.number(cfg, f'{part}.weight_decay', low=0)
  cv.number(cfg, 'contrastive.negative_fraction', low=0, high=1)
  cv.number(cfg, 'contrastive.dropout', low=0, high=1)
  cv.number(cfg, 'contrastive.score_scale', low=0, strict_low=True)
  cv.number(cfg, 'contrastive.sweep_bias', low=0)
  cv.nonnegative_list(cfg, 'contrastive.sweep_alphas')
  if any(a > 1 for a in cfg.contrastive.sweep_alphas):
    raise cv.ConfigError('contrastive.sweep_alphas', 'a list of numbers in [0, 1]',
                         cfg.contrastive.sweep_alphas)
  if any(isinstance(w, bool) or not isinstance(w, int) or w < 1
         for w in cfg.contrastive.width_sweep):
    raise cv.ConfigError('contrastive.width_sweep', 'a list of integers >= 1',
                         cfg.contrastive.width_sweep)
  cv.one_of(cfg, 'attack.norm', NORMS)
  cv.number(cfg, 'attack.eps', low=0)
  cv.number(cfg, 'attack.rel_step_size', low=0, strict_low=True)
  cv.number(cfg, 'eval.rel_step_size', low=0, strict_low=True)
  cv.nonnegative_list(cfg, 'eval.eps')
  if cfg.stage == 'downstream':
    d = cfg.downstream.encoder_dir
    if not (d and os.path.isdir(d) and any(n.startswith('encoder_') for n in os.listdir(d))):
      raise cv.ConfigError('downstream.encoder_dir', "a run's <workdir>/checkpoints holding "
                           'encoder_<name>/ directories', d)
  # Scale and durability: the mesh must fit the devices this process sees.
  cv.positive_int(cfg, 'checkpoint_every', 'mesh.model')
  if cfg.mesh.data != -1:
    cv.positive_int(cfg, 'mesh.data')
  try:
    from robustjax.train import sharding  # pylint: disable=import-outside-toplevel
    sharding.mesh_shape(cfg.mesh.data, cfg.mesh.model)
  except ValueError as e:
    raise cv.ConfigError('mesh', f'a data x model mesh that fits the devices ({e})',
                         cfg.mesh.to_dict()) from None


# Set-up array shuffling runs in numpy on the host: the arrays are small, and
# jax would compile a program per primitive and shape for it.

def _repeat(tree, times: int):
  """(S, ...) -> (S * times, ...): seed s's leaves for each of its tasks."""
  return jax.tree.map(lambda a: np.repeat(np.asarray(a), times, axis=0), tree)


def _concat(trees):
  """A list of trees -> one tree, leaves concatenated along the leading axis."""
  return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *trees)


def _split(tree, n: int):
  """(n * S, ...) -> n trees of (S, ...)."""
  return [jax.tree.map(lambda a: np.asarray(a).reshape((n, -1) + a.shape[1:])[i], tree)
          for i in range(n)]


def _first_tasks(tree, S: int, T: int, R: int):
  """(S * T, ...) -> (S * R, ...): the first R tasks of each seed."""
  return jax.tree.map(lambda a: np.asarray(a).reshape((S, T) + a.shape[1:])[:, :R].reshape(
      (S * R,) + a.shape[1:]), tree)


# The random draws of the set-up, jitted: a few programs instead of one per
# primitive and shape (as they would compile op by op).

@functools.partial(jax.jit, static_argnums=(0, 1))
def _keys(seed: int, num_seeds: int):
  """Per-seed keys for the world, the downstream tasks, training and evaluation."""
  seeds = jax.random.split(jax.random.PRNGKey(seed), num_seeds)
  k = jax.vmap(lambda s: jax.random.split(s, 5))(seeds)
  return {'world': k[:, 0], 'tasks': k[:, 1], 'pretrain': k[:, 2], 'downstream': k[:, 3],
          'eval': k[:, 4]}


@functools.partial(jax.jit, static_argnums=1)
def _worlds(keys, spec: sc.SparseCodingSpec):
  return jax.vmap(lambda k: sc.make_world(k, spec))(keys)


_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _tasks(keys, spec: sc.SparseCodingSpec, T: int):
  """The downstream tasks: thetas (S * T, D) and per-task training and
  evaluation keys (S * T, 2)."""
  S = keys['tasks'].shape[0]
  thetas = jax.vmap(lambda k: jax.vmap(lambda t: sc.new_task(t, spec))(
      jax.random.split(k, T)))(keys['tasks']).reshape(S * T, spec.D)
  per_task = lambda name: jax.vmap(lambda k: jax.random.split(k, T))(keys[name]).reshape(
      S * T, -1)
  return thetas, per_task('downstream'), per_task('eval')


def eval_eps(cfg) -> list[float]:
  """The evaluation radii: the config's list plus the training radius."""
  return sorted(set(float(e) for e in cfg.eval.eps) | {0.0, float(cfg.attack.eps)})


def evaluate(cfg, logit_fn, model, params, worlds, thetas, keys, pairs: bool = False
             ) -> np.ndarray:
  """Accuracy at each eval eps for every run (leading axis): (runs, n_eps).

  Each run gets its own fresh test set of ``eval.num_examples`` points of its
  task (or, with ``pairs``, contrastive pairs scored by sign(s)), and the
  white-box PGD of ``cfg.eval`` on the composed model: radius i of
  ``eval_eps`` attacks with the key ``fold_in(k_attack, i)``. eps = 0 is the
  clean accuracy (PGD in a ball of radius 0 cannot move).
  """
  e = cfg.eval
  return np.asarray(_evaluate_runs(
      params, worlds, thetas, keys, logit_fn=logit_fn, model=model,
      spec=sc.SparseCodingSpec.from_config(cfg.data), num_examples=e.num_examples,
      eps=tuple(eval_eps(cfg)), norm=cfg.attack.norm, steps=e.attack_steps,
      rel_step_size=e.rel_step_size, restarts=e.restarts,
      negative_fraction=cfg.contrastive.negative_fraction if pairs else None))


# Module-level and keyed by hashable statics, so equal evaluations (clean and
# adversarial encoders of the same shape) share one compile.
@functools.partial(jax.jit, static_argnames=(
    'logit_fn', 'model', 'spec', 'num_examples', 'eps', 'norm', 'steps', 'rel_step_size',
    'restarts', 'negative_fraction'))
def _evaluate_runs(params, worlds, thetas, keys, *, logit_fn, model, spec, num_examples, eps,
                   norm, steps, rel_step_size, restarts, negative_fraction):
  radii = [i for i, e in enumerate(eps) if e > 0]

  def one(params, world, theta, key):
    k_data, k_attack = jax.random.split(key)
    if negative_fraction is None:
      x, y, _ = sc.sample_task(k_data, num_examples, world, spec, theta)
    else:
      x, y = sc.sample_pairs(k_data, num_examples, world, spec,
                             negative_fraction=negative_fraction)
    f = bind(logit_fn, model, params)
    clean = robustness.accuracy(f(x), y)
    if not radii:
      return jnp.full((len(eps),), clean)

    # One PGD program looped over the radii (not one per radius, and not
    # vmapped: a batch of all radii at once outgrows the caches).
    def at(args):
      e, i = args
      return robustness.robust_accuracy(
          f, x, y, eps=e, norm=norm, steps=steps, step_size=rel_step_size, restarts=restarts,
          key=jax.random.fold_in(k_attack, i))

    robust = jax.lax.map(at, (jnp.asarray([eps[i] for i in radii], x.dtype),
                              jnp.asarray(radii)))
    return jnp.full((len(eps),), clean).at[jnp.asarray(radii)].set(robust)

  return jax.vmap(one)(params, worlds, thetas, keys)


_unit_reports = jax.jit(jax.vmap(purification.unit_report))


def unit_stats(encoders, worlds) -> dict[str, np.ndarray]:
  """Per-unit purity / participation ratio / loading norm, (seeds, width)."""
  return jax.tree.map(np.asarray, _unit_reports(encoders['w'], worlds.dictionary))


def save_encoders(path: str, encoders, worlds) -> None:
  """Writes ``{'params': encoders, 'world': worlds}`` (leading seed axis) to ``path`` with orbax.

  Every process calls it; under several processes the host-local leaves are
  saved as replicated global arrays (``sharding.global_arrays``), written once.
  """
  tree = sharding.global_arrays({'params': encoders, 'world': worlds})
  with progress.deferred_interrupts(), ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)


def load_encoders(path: str):
  """(params, world) saved by ``save_encoders``, as arrays on this process's default device.

  Read as host numpy (the target is the checkpoint's own shapes and dtypes), so
  a checkpoint written by any number of processes or devices loads anywhere.
  """
  with ocp.StandardCheckpointer() as ckptr:
    like = jax.tree.map(lambda m: np.empty(m.shape, m.dtype),
                        ckptr.metadata(os.path.abspath(path)).item_metadata.tree)
    tree = ckptr.restore(os.path.abspath(path), like)
  world = sc.SparseCodingWorld(**tree['world'])
  return jax.tree.map(jnp.asarray, tree['params']), jax.tree.map(jnp.asarray, world)


def pretraining_jobs(cfg, worlds, keys):
  """(row names, thunk) per compiled pre-training program.

  A thunk returns params with a leading axis of len(names) * seeds; the
  adversarial contrastive modes differ only in which pairs are attacked, so
  they share one vmapped program.
  """
  jobs = [((mode,), functools.partial(supervised.train, cfg, worlds, worlds.theta0, keys,
                                      adversarial=mode == 'adversarial',
                                      desc=f'pre-train {mode}'))
          for mode in cfg.pretrain.modes]
  clean = [m for m in cfg.contrastive.modes if contrastive.MODES[m] is None]
  adv = [m for m in cfg.contrastive.modes if contrastive.MODES[m] is not None]
  for group, desc in ((clean, 'contrastive clean'), (adv, 'contrastive adversarial')):
    if group:
      jobs.append((tuple(f'contrastive_{m}' for m in group), functools.partial(
          contrastive.train, cfg, worlds, keys, modes=tuple(group), desc=desc)))
  return jobs


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'ccfg', 'attack', 'num_examples'))
def _sweep_over_seeds(keys, worlds, alpha, **statics):
  return jax.vmap(functools.partial(contrastive.controlled_purification, **statics),
                  in_axes=(0, 0, None))(keys, worlds, alpha)


def purification_sweep(cfg, worlds, keys) -> dict:
  """Pair losses of units at each purification level alpha, (alphas,) means over seeds.

  One compiled program over the seeds, called once per alpha (alpha is traced).
  """
  alphas = [float(a) for a in cfg.contrastive.sweep_alphas]
  statics = dict(
      model=supervised.model_from_config(cfg), spec=sc.SparseCodingSpec.from_config(cfg.data),
      ccfg=ml_collections.FrozenConfigDict(cfg.contrastive),
      attack=PGDSpec(eps=cfg.attack.eps, norm=cfg.attack.norm, steps=cfg.eval.attack_steps,
                     rel_step_size=cfg.eval.rel_step_size, restarts=cfg.eval.restarts),
      num_examples=cfg.eval.num_examples)
  per_alpha = []
  with progress.tracked('controlled purification sweep', len(alphas), cfg.progress) as bar:
    for a in alphas:
      per_alpha.append(jax.tree.map(np.asarray, _sweep_over_seeds(keys, worlds, np.float32(a),
                                                                  **statics)))
      bar.update()
  out = {k: np.stack([o[k] for o in per_alpha], axis=1) for k in per_alpha[0]}  # (S, A)
  return {'alpha': alphas, **{k: v.mean(0).tolist() for k, v in out.items()},
          **{f'{k}_std': v.std(0).tolist() for k, v in out.items()}}


def width_sweep(cfg, worlds, keys) -> dict:
  """Median unit purity after contrastive pre-training, clean and adversarial, per width."""
  out = {'width': list(cfg.contrastive.width_sweep)}
  for mode in ('clean', 'adversarial'):
    meds = []
    for width in cfg.contrastive.width_sweep:
      c = cfg.copy_and_resolve_references()
      c.model.width = width
      params, _ = contrastive.train(c, worlds, keys, modes=(mode,), desc=f'{mode} width {width}')
      meds.append(np.median(unit_stats(params, worlds)['purity'], axis=-1).tolist())
    out[f'purity_median_{mode}'] = [float(np.mean(m)) for m in meds]
    out[f'purity_median_{mode}_per_seed'] = meds
  return out


def _timed(timings, name, fn, *args, **kwargs):
  """fn(*args, **kwargs), timed into ``timings[name]`` (wall, compile, run)."""
  with timing.stage(timings, name):
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
  return out


def run(cfg, workdir: str) -> dict:
  """Runs ``cfg.stage``; returns rows, per-unit metrics, sweeps and timings for ``main``."""
  timings, rows, units, sweeps = {}, {}, {}, {}
  keys = _keys(cfg.seed, cfg.num_seeds)
  spec = sc.SparseCodingSpec.from_config(cfg.data)
  S, T = cfg.num_seeds, cfg.downstream.num_tasks
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  eps_list = eval_eps(cfg)
  i_eps = eps_list.index(float(cfg.attack.eps))
  model = supervised.model_from_config(cfg)

  if cfg.stage == 'downstream':
    encoders = {}
    for name in sorted(os.listdir(cfg.downstream.encoder_dir)):
      if name.startswith('encoder_'):
        encoders[name[len('encoder_'):]], worlds = load_encoders(
            os.path.join(cfg.downstream.encoder_dir, name))
    S = worlds.theta0.shape[0]  # the checkpoint's seeds, whatever num_seeds says
    keys = _keys(cfg.seed, S)
  else:
    worlds = _worlds(keys['world'], spec)
    test_keys = _fold_in(keys['eval'], T)
    encoders = {}
    for names, train in pretraining_jobs(cfg, worlds, keys['pretrain']):
      job = names[0] if len(names) == 1 else names[0].split('_')[0] + '_adversarial_modes'
      params, _ = _timed(timings, f'pretrain_{job}', train, checkpoint_dir=os.path.join(
          workdir, 'train_checkpoints', f'pretrain_{job}'))
      for name, p in zip(names, _split(params, len(names))):
        encoders[name] = p
        save_encoders(os.path.join(ckpt_dir, f'encoder_{name}'), p, worlds)
    with timing.stage(timings, 'eval_pretrain'), progress.tracked(
        'evaluate pre-training', len(encoders), cfg.progress) as bar:
      for name, p in encoders.items():
        if name in PRETRAIN_MODES:  # accuracy on the pre-training task
          acc = evaluate(cfg, logits_fn, model, p, worlds, worlds.theta0, test_keys)
        else:  # pair accuracy sign(s) = y on fresh pairs
          acc = evaluate(cfg, contrastive.pair_logits, (model, cfg.contrastive.score_scale),
                         p, worlds, worlds.theta0, test_keys, pairs=True)
        rows[name] = {'pretrain_acc': acc}
        units[name] = unit_stats(p, worlds)
        bar.update()
    if cfg.stage == 'pipeline' and cfg.contrastive.modes and cfg.contrastive.sweep_alphas:
      sweeps['purification'] = _timed(timings, 'purification_sweep', purification_sweep, cfg,
                                      worlds, keys['eval'])
    if cfg.contrastive.width_sweep:
      sweeps['width'] = _timed(timings, 'width_sweep', width_sweep, cfg, worlds, keys['pretrain'])

  if cfg.stage != 'pretrain' and encoders:
    thetas, train_keys, eval_keys = _tasks(keys, spec, T)
    worlds_st = _repeat(worlds, T)
    # Every encoder's heads train in one vmapped program: (encoders x seeds x tasks).
    names = list(encoders)
    enc = _concat([_repeat({'w': encoders[n]['w'], 'b': encoders[n]['b']}, T) for n in names])
    worlds_all, thetas_all = _concat([worlds_st] * len(names)), _concat([thetas] * len(names))
    heads, _ = _timed(timings, 'downstream_heads', downstream.train_heads, cfg, enc, worlds_all,
                      thetas_all, _concat([train_keys] * len(names)),
                      desc=f'downstream heads on {len(names)} encoders',
                      checkpoint_dir=os.path.join(workdir, 'train_checkpoints', 'downstream'))
    # One encoder's heads at a time (one compile for all: equal shapes), for progress.
    with timing.stage(timings, 'eval_downstream'), progress.tracked(
        'evaluate downstream heads', len(names), cfg.progress) as bar:
      for name, e, h in zip(names, _split(enc, len(names)), _split(heads, len(names))):
        rows.setdefault(name, {})['downstream_acc'] = evaluate(
            cfg, downstream.head_logits, model, {'encoder': e, 'head': h}, worlds_st, thetas,
            eval_keys)
        units.setdefault(name, unit_stats(encoders[name], worlds))
        bar.update()
    if cfg.stage == 'pipeline':
      # References train whole nets, so they run on the first reference_tasks
      # tasks of each seed only (the same tasks, test sets and keys as the heads).
      # With reference_tasks = 1 they have the pre-training's shapes, and
      # supervised.train's loss compares by value: they reuse its compiled programs.
      pick = functools.partial(_first_tasks, S=S, T=T, R=min(cfg.downstream.reference_tasks, T))
      ref_worlds, ref_thetas = pick(worlds_st), pick(thetas)
      for ref in cfg.downstream.references:
        params, _ = _timed(timings, ref, supervised.train, cfg, ref_worlds, ref_thetas,
                           pick(train_keys), adversarial=ref == 'end_to_end_adversarial',
                           desc=ref,
                           checkpoint_dir=os.path.join(workdir, 'train_checkpoints', ref))
        with progress.tracked(f'evaluate {ref}', 1, cfg.progress) as bar:
          acc = _timed(timings, f'eval_{ref}', evaluate, cfg, logits_fn, model, params,
                       ref_worlds, ref_thetas, pick(eval_keys))
          bar.update()
        rows[ref] = {'downstream_acc': acc}
        units[ref] = unit_stats(params, ref_worlds)

  return {'eps': eps_list, 'train_eps': float(cfg.attack.eps), 'i_eps': i_eps,
          'rows': rows, 'units': units, 'timings': timings, 'sweeps': sweeps,
          'dictionary_seed0': np.asarray(worlds.dictionary)[0],
          'encoders_seed0': {m: np.asarray(p['w'])[0] for m, p in encoders.items()}}


# --- Paper A's claims ----------------------------------------------------------
# The margins a claim must clear, sized to the default config's seed spread
# (README): a purity gain of 0.2 is ~10x its spread over seeds, a robust
# accuracy gain of 0.1 ~5x; 0.05 of clean accuracy is "equal".
PURITY_GAIN = 0.2
ROBUST_GAIN = 0.10
CLEAN_TOLERANCE = 0.05
NEGATIVE_SHARE, POSITIVE_SHARE = 0.7, 0.5  # of the full adversarial purity gain
DENSE_RATIO = 3.0  # dissimilar / similar loss increase for dense units


def _pm(s: dict, key: str) -> tuple[float, float]:
  return (s[key], s[key + '_std'])


def claims(summary: dict, sweeps: dict) -> list[report.Claim]:
  """Paper A's claims the run's rows allow, each tested by the rule it states.

  purification (per pre-training kind): median unit purity, adversarial
  minus clean, > PURITY_GAIN. inheritance: clean heads on the frozen
  adversarial encoder beat those on the clean one in downstream robust
  accuracy by >= ROBUST_GAIN, every run of them above every run of the
  others, at clean accuracies within CLEAN_TOLERANCE. The negative-pair
  effect: attacking only dissimilar pairs gives > NEGATIVE_SHARE of the
  purity gain of attacking all pairs, attacking only similar pairs
  < POSITIVE_SHARE of it. The controlled-purification trend: the ratio of the
  adversarial loss increases (dissimilar / similar pairs) is > DENSE_RATIO
  for the densest units and larger there than for the purest.
  """
  out = []
  for kind, clean, adv in (('supervised', 'clean', 'adversarial'),
                           ('contrastive', 'contrastive_clean', 'contrastive_adversarial')):
    if clean not in summary or adv not in summary:
      continue
    c, a = summary[clean], summary[adv]
    if 'purity_median' in c and 'purity_median' in a:
      out.append(report.Claim(
          f'A: purification, {kind} pre-training', bool(
              a['purity_median'] - c['purity_median'] > PURITY_GAIN),
          f'median unit purity, {adv} - {clean} > {PURITY_GAIN:g}',
          {f'{adv} purity': a['purity_median'], f'{clean} purity': c['purity_median'],
           f'{adv} PR': a['participation_ratio_median'],
           f'{clean} PR': c['participation_ratio_median']}))
    if 'downstream_robust_acc' in c and 'downstream_robust_acc' in a:
      gain = a['downstream_robust_acc'] - c['downstream_robust_acc']
      clean_gap = abs(a['downstream_clean_acc'] - c['downstream_clean_acc'])
      apart = min(a['downstream_robust_acc_per_run']) > max(c['downstream_robust_acc_per_run'])
      out.append(report.Claim(
          f'A: robustness inheritance, {kind} pre-training',
          bool(gain >= ROBUST_GAIN and apart and clean_gap <= CLEAN_TOLERANCE),
          f'clean heads on frozen encoders: robust acc {adv} - {clean} >= {ROBUST_GAIN:g}, '
          f'every {adv} run above every {clean} run, clean acc within {CLEAN_TOLERANCE:g}',
          {f'{adv} robust acc': _pm(a, 'downstream_robust_acc'),
           f'{clean} robust acc': _pm(c, 'downstream_robust_acc'),
           f'{adv} clean acc': _pm(a, 'downstream_clean_acc'),
           f'{clean} clean acc': _pm(c, 'downstream_clean_acc')}))
  rows = ('contrastive_clean', 'contrastive_adversarial', 'contrastive_adv_negatives_only',
          'contrastive_adv_positives_only')
  if all(r in summary and 'purity_median' in summary[r] for r in rows):
    c, a, neg, pos = (summary[r]['purity_median'] for r in rows)
    gain = a - c
    out.append(report.Claim(
        'A: purification comes from the negative (dissimilar) pairs',
        bool(gain > 0 and neg - c > NEGATIVE_SHARE * gain and pos - c < POSITIVE_SHARE * gain),
        f'median purity gain over contrastive_clean: negatives only > {NEGATIVE_SHARE:g} x, '
        f'positives only < {POSITIVE_SHARE:g} x that of attacking all pairs',
        {'gain all pairs': gain, 'gain negatives only': neg - c,
         'gain positives only': pos - c}))
  sw = sweeps.get('purification')
  if sw and len(set(sw['alpha'])) >= 2:
    def ratio(i):
      inc = {k: sw[f'{k}_adversarial'][i] - sw[f'{k}_clean'][i] for k in ('similar', 'dissimilar')}
      return inc['dissimilar'] / inc['similar'] if inc['similar'] > 0 else float('inf')
    pure, dense = int(np.argmin(sw['alpha'])), int(np.argmax(sw['alpha']))
    r_pure, r_dense = ratio(pure), ratio(dense)
    out.append(report.Claim(
        'A: controlled purification, attacks hurt dissimilar pairs more as units get denser',
        bool(r_dense > DENSE_RATIO and r_pure < r_dense),
        'adversarial loss increase, dissimilar / similar pairs: > '
        f'{DENSE_RATIO:g} at the densest alpha and larger there than at the purest',
        {f"ratio at alpha {sw['alpha'][pure]:g}": r_pure,
         f"ratio at alpha {sw['alpha'][dense]:g}": r_dense}))
  return out


def main(cfg, workdir: str) -> dict:
  """Runs the stage; prints the table, the claims and the files written; writes
  results.json and the plots."""
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  with timing.stage(timings, 'total'):
    out = run(cfg, workdir)
    summary = report.summarize(out)
    checks = claims(summary, out['sweeps'])
    plots = []
    if out['units']:
      report.plot_purity(out['units'], os.path.join(workdir, 'purity.png'))
      plots.append('purity.png')
    if out['encoders_seed0']:
      report.plot_loadings(out['encoders_seed0'], out['dictionary_seed0'],
                           os.path.join(workdir, 'loadings.png'))
      plots.append('loadings.png')
    if any('downstream_acc_curve' in s for s in summary.values()):
      report.plot_curves(summary, out['eps'], os.path.join(workdir, 'robustness.png'))
      plots.append('robustness.png')
    if 'purification' in out['sweeps']:
      report.plot_purification_sweep(out['sweeps']['purification'],
                                     os.path.join(workdir, 'purification_sweep.png'))
      plots.append('purification_sweep.png')
    if 'width' in out['sweeps']:
      report.plot_width_sweep(out['sweeps']['width'], os.path.join(workdir, 'width_sweep.png'))
      plots.append('width_sweep.png')
  timings = dict(out['timings'], total=timings['total'])
  report.write_json(os.path.join(workdir, 'results.json'), {
      'config': cfg.to_dict(), 'seeds': [cfg.seed, cfg.num_seeds], 'eval_eps': out['eps'],
      'timings': timings, 'summary': summary, 'claims': report.claims_json(checks),
      'sweeps': out['sweeps'], 'plots': plots,
      'units': {k: {m: np.asarray(v).tolist() for m, v in u.items() if m != 'norm'}
                for k, u in out['units'].items()}})
  if summary:
    print(report.table(summary, out['train_eps']))
  if 'purification' in out['sweeps']:
    print('controlled purification (pair loss at eps = %g):' % out['train_eps'])
    print(report.sweep_table(out['sweeps']['purification']))
  if 'width' in out['sweeps']:
    w = out['sweeps']['width']
    print('width | median purity clean | adversarial')
    for i, m in enumerate(w['width']):
      print(f"{m:5d} | {w['purity_median_clean'][i]:.3f} | {w['purity_median_adversarial'][i]:.3f}")
  if checks:
    print(report.claims_text(checks))
  written = ['results.json'] + plots + (['checkpoints/'] if os.path.isdir(
      os.path.join(workdir, 'checkpoints')) else [])
  print(report.files_text(workdir, written, timings))
  return summary
