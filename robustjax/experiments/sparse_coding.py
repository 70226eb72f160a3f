"""Paper A's pipeline on the sparse-coding model, as a list of named jobs.

pre-train {clean, adversarial} (supervised and contrastive) x seeds -> freeze
the hidden layer -> clean linear heads on fresh downstream tasks -> clean and
PGD accuracy, purity. References: the downstream task trained end to end,
cleanly and adversarially.

Stages (``config.stage``):
  pipeline    everything above, one results table.
  pretrain    pre-training and its evaluation only; saves encoder checkpoints.
  downstream  heads on encoders loaded from ``config.downstream.encoder_dir``.

The jobs (``run_jobs``; each times into results.json's timings and logs its
training chunks to metrics.jsonl under its name, ``runner.Run.job``):
``pretrain_<mode>`` per supervised mode, ``pretrain_contrastive_clean`` and
``pretrain_contrastive_adversarial_modes`` (all adversarial contrastive modes
in one fit), ``eval_pretrain``, ``purification_sweep``, ``width_sweep``,
``downstream_heads`` (every encoder's heads in one fit), ``eval_downstream``,
and per reference ``<ref>`` and ``eval_<ref>``. A job's draws come from its
seed's named key streams (``STREAMS``), never from which other jobs run.
Seeds are vmapped: each job compiles once for all seeds (and tasks).
After the table the run states which of Paper A's claims hold (``claims``).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from robustjax import config_blocks as blocks
from robustjax import config_validation as cv
from robustjax import progress, report
from robustjax.attacks.pgd import NORMS, PGDSpec
from robustjax.data import sparse_coding as sc
from robustjax.experiments import runner
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
  blocks.run(cfg)
  cv.positive_int(cfg, 'data.d', 'data.D', 'data.k', 'model.width', 'downstream.num_tasks',
                  'downstream.reference_tasks')
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
    blocks.optimizer(cfg, part)
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
  blocks.attack(cfg, norms=NORMS)
  blocks.pgd_eval(cfg)
  cv.nonnegative_list(cfg, 'eval.eps')
  if cfg.stage == 'downstream':
    d = cfg.downstream.encoder_dir
    if not (d and os.path.isdir(d) and any(n.startswith('encoder_') for n in os.listdir(d))):
      raise cv.ConfigError('downstream.encoder_dir', "a run's <workdir>/checkpoints holding "
                           'encoder_<name>/ directories', d)
    _check_encoders(cfg, d)
  blocks.mesh(cfg)  # scale and durability: the mesh must fit the devices this process sees


def encoder_shapes(encoder_dir: str) -> dict:
  """{'seeds', 'd', 'D', 'width'} of the first ``encoder_<name>`` checkpoint in
  ``encoder_dir``, read from orbax's metadata (no array is loaded)."""
  name = sorted(n for n in os.listdir(encoder_dir) if n.startswith('encoder_'))[0]
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.abspath(os.path.join(encoder_dir, name))).item_metadata
  tree = getattr(meta, 'tree', meta)
  seeds, d, width = tree['params']['w'].shape
  return {'seeds': seeds, 'd': d, 'D': tree['world']['dictionary'].shape[-1], 'width': width}


def _check_encoders(cfg, encoder_dir: str) -> None:
  """The downstream stage trains heads on the checkpoint's encoders and worlds:
  the config's seeds and shapes must be theirs (else one line naming the field)."""
  got = encoder_shapes(encoder_dir)
  for field, key in (('num_seeds', 'seeds'), ('data.d', 'd'), ('data.D', 'D'),
                     ('model.width', 'width')):
    value = cfg.num_seeds if field == 'num_seeds' else cfg[field.split('.')[0]][field.split('.')[1]]
    if value != got[key]:
      raise cv.ConfigError(field, f'{got[key]}, as the encoders in downstream.encoder_dir '
                           f'({encoder_dir}) were pre-trained with', value)


# The key streams of every seed (``runner.key_streams``): what is drawn from
# each, in this fixed order, whichever jobs the config selects.
STREAMS = ('world', 'tasks', 'pretrain', 'downstream', 'eval')


# The random draws of the set-up, jitted: a few programs instead of one per
# primitive and shape (as they would compile op by op).

@functools.partial(jax.jit, static_argnums=1)
def _worlds(keys, spec: sc.SparseCodingSpec):
  return jax.vmap(lambda k: sc.make_world(k, spec))(keys)


_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _task_draws(keys, spec: sc.SparseCodingSpec, T: int):
  """Each seed's T downstream tasks: thetas (S, T, D) and per-task training
  and evaluation keys (S, T, 2), split from the seed's 'tasks', 'downstream'
  and 'eval' streams."""
  per_task = lambda name: jax.vmap(lambda k: jax.random.split(k, T))(keys[name])
  thetas = jax.vmap(lambda k: jax.vmap(lambda t: sc.new_task(t, spec))(
      jax.random.split(k, T)))(keys['tasks'])
  return thetas, per_task('downstream'), per_task('eval')


# The downstream tasks and the encoders keep their (seed, task) axes; they
# are flattened to one runs axis only where a vmapped program takes them.
# Set-up array shuffling runs in numpy on the host: the arrays are small, and
# jax would compile a program per primitive and shape for it.

def _flat(tree, axes: int):
  """Leaves (n1, ..., n_axes, ...) -> (n1 * ... * n_axes, ...), row-major."""
  return jax.tree.map(lambda a: np.reshape(a, (-1,) + np.shape(a)[axes:]), tree)


def _by_name(tree, names) -> dict:
  """Leaves (len(names) * n, ...), name-major -> {name: leaves (n, ...)}."""
  split = jax.tree.map(lambda a: np.asarray(a).reshape((len(names), -1) + a.shape[1:]), tree)
  return {name: jax.tree.map(lambda a: a[i], split) for i, name in enumerate(names)}


def _per_task(tree, T: int):
  """Leaves (S, ...) -> (S, T, ...): seed s's leaf once per task."""
  return jax.tree.map(lambda a: np.repeat(np.asarray(a)[:, None], T, axis=1), tree)


def draw_tasks(keys: dict, worlds: sc.SparseCodingWorld, spec: sc.SparseCodingSpec,
               T: int) -> dict:
  """Every seed's T downstream tasks from its key streams (``STREAMS``), leaves
  (S, T, ...), seed-major: {'worlds': seed s's world once per task, 'thetas':
  (S, T, D) the tasks, 'train_keys': (S, T, 2) train their heads (and the
  references), 'eval_keys': (S, T, 2) draw their test sets and attacks}.
  ``_flat(tasks, 2)``: one run per (seed, task), as vmapped programs take them."""
  thetas, train_keys, eval_keys = (np.asarray(a) for a in _task_draws(keys, spec, T))
  return {'worlds': _per_task(worlds, T), 'thetas': thetas, 'train_keys': train_keys,
          'eval_keys': eval_keys}


def eval_eps(cfg) -> list[float]:
  """The evaluation radii, sorted and distinct: ``eval.eps`` plus 0 (clean)
  and the training radius ``attack.eps`` (same norm, ``attack.norm``)."""
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
          f, x, y, eps=e, norm=norm, steps=steps, rel_step_size=rel_step_size, restarts=restarts,
          key=jax.random.fold_in(k_attack, i))

    robust = jax.lax.map(at, (jnp.asarray([eps[i] for i in radii], x.dtype),
                              jnp.asarray(radii)))
    return jnp.full((len(eps),), clean).at[jnp.asarray(radii)].set(robust)

  return jax.vmap(one)(params, worlds, thetas, keys)


_unit_reports = jax.jit(jax.vmap(purification.unit_report))


def unit_stats(encoders, worlds) -> dict[str, np.ndarray]:
  """Per-unit metrics of the loadings c_j = M^T w_j (``purification.unit_report``):
  {'purity': in (0, 1], 'participation_ratio': in [1, D], 'norm': ||c_j||_2},
  each (S, width) for encoders {'w': (S, d, width)} and worlds of S seeds."""
  return jax.tree.map(np.asarray, _unit_reports(encoders['w'], worlds.dictionary))


def save_encoders(path: str, encoders, worlds) -> None:
  """Writes ``{'params': encoders, 'world': worlds}`` (leaves (S, ...)) to the orbax
  directory ``path``, replacing what is there; returns None.

  Every process calls it; under several processes the host-local leaves are
  saved as replicated global arrays (``sharding.global_arrays``), written once.
  """
  tree = sharding.global_arrays({'params': encoders, 'world': worlds})
  with progress.deferred_interrupts(), ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)


def load_encoders(path: str) -> tuple[dict, sc.SparseCodingWorld]:
  """What ``save_encoders`` wrote to ``path``: (params, worlds), leaves (S, ...),
  as arrays on this process's default device.

  Read as host numpy (the target is the checkpoint's own shapes and dtypes), so
  a checkpoint written by any number of processes or devices loads anywhere.
  """
  with ocp.StandardCheckpointer() as ckptr:
    like = jax.tree.map(lambda m: np.empty(m.shape, m.dtype),
                        ckptr.metadata(os.path.abspath(path)).item_metadata.tree)
    tree = ckptr.restore(os.path.abspath(path), like)
  world = sc.SparseCodingWorld(**tree['world'])
  return jax.tree.map(jnp.asarray, tree['params']), jax.tree.map(jnp.asarray, world)


@dataclasses.dataclass(frozen=True)
class Pretraining:
  """One pre-training job: one compiled fit that trains the encoders ``rows``.

  ``name``: the job in timings and metrics.jsonl, and its checkpoint directory
  ``train_checkpoints/<name>``; ``rows``: the encoders it trains (rows of the
  results), in the order of its runs axis; ``train(checkpoint_dir=...,
  fingerprint=...)`` returns (params with leaves (len(rows) * S, ...),
  rows-major, and the last chunk's metrics).
  """
  name: str
  rows: tuple[str, ...]
  train: Callable


def pretraining_jobs(cfg, worlds, keys) -> list[Pretraining]:
  """The config's pre-training jobs, in run order: one per ``pretrain.modes``
  entry, then the clean and the adversarial ``contrastive.modes`` as one job
  each (the adversarial modes differ only in which pairs are attacked, so
  they share one vmapped program). ``keys``: the (S, 2) 'pretrain' stream."""
  jobs = [Pretraining(f'pretrain_{m}', (m,), functools.partial(
      supervised.train, cfg, worlds, worlds.theta0, keys, adversarial=m == 'adversarial',
      desc=f'pre-train {m}')) for m in cfg.pretrain.modes]
  for kind in ('clean', 'adversarial'):
    group = tuple(m for m in cfg.contrastive.modes
                  if (contrastive.MODES[m] is None) == (kind == 'clean'))
    if group:  # one mode keeps its own name (and checkpoint directory)
      rows = tuple(f'contrastive_{m}' for m in group)
      name = f'pretrain_{rows[0]}' if len(rows) == 1 else 'pretrain_contrastive_adversarial_modes'
      jobs.append(Pretraining(name, rows, functools.partial(
          contrastive.train, cfg, worlds, keys, modes=group, desc=f'contrastive {kind}')))
  return jobs


def pretrain(cfg, run: runner.Run, worlds, keys: dict) -> dict:
  """Runs the pre-training jobs in ``run`` (each in ``run.job(name)``, resumable
  from ``run.checkpoint_dir(name)``) and saves every encoder, with the
  worlds, to ``<workdir>/checkpoints/encoder_<row>`` for the downstream stage.
  Returns {row: params {'w': (S, d, width), 'b': (S, width), 'a': (S, width)}}."""
  encoders = {}
  for job in pretraining_jobs(cfg, worlds, keys['pretrain']):
    params, _ = run.timed(job.name, job.train, checkpoint_dir=run.checkpoint_dir(job.name),
                          fingerprint=run.fingerprint)
    encoders.update(_by_name(params, job.rows))
    for row in job.rows:
      save_encoders(run.path(os.path.join('checkpoints', f'encoder_{row}')), encoders[row], worlds)
  return encoders


def load_pretrained(path: str) -> tuple[dict, sc.SparseCodingWorld]:
  """The encoders a pre-training run saved under ``path`` (its
  ``<workdir>/checkpoints``): ({row: params, leaves (S, ...)}, worlds, leaves (S, ...))."""
  encoders = {}
  for name in sorted(os.listdir(path)):
    if name.startswith('encoder_'):
      encoders[name[len('encoder_'):]], worlds = load_encoders(os.path.join(path, name))
  return encoders, worlds


def downstream_heads(cfg, encoders: dict, tasks: dict, *, checkpoint_dir: str | None = None,
                     fingerprint: dict | None = None) -> dict:
  """Clean linear heads on every frozen encoder for every task of its seed.

  All heads train in ONE vmapped fit over (encoders, seeds, tasks): one
  compile however many encoders. ``encoders``: {row: params, leaves (S, ...)};
  ``tasks``: ``draw_tasks``'s. Returns {row: the composed model's params
  {'encoder': {'w', 'b'}, 'head': {'a': (S * T, width), 'c': (S * T,)}},
  leaves (S * T, ...)}, as ``evaluate`` takes them with ``_flat(tasks, 2)``.
  """
  T = tasks['thetas'].shape[1]
  stack = lambda trees: jax.tree.map(lambda *a: np.stack(a), *trees)  # (encoders, S, T, ...)
  frozen = {n: _per_task({'w': p['w'], 'b': p['b']}, T) for n, p in encoders.items()}
  runs = _flat(stack([tasks] * len(frozen)), 3)
  heads, _ = downstream.train_heads(
      cfg, _flat(stack(list(frozen.values())), 3), runs['worlds'], runs['thetas'],
      runs['train_keys'], desc=f'downstream heads on {len(frozen)} encoders',
      checkpoint_dir=checkpoint_dir, fingerprint=fingerprint)
  return {n: {'encoder': _flat(frozen[n], 2), 'head': h}
          for n, h in _by_name(heads, list(frozen)).items()}


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'ccfg', 'attack', 'num_examples'))
def _sweep_over_seeds(keys, worlds, alpha, **statics):
  return jax.vmap(functools.partial(contrastive.controlled_purification, **statics),
                  in_axes=(0, 0, None))(keys, worlds, alpha)


def purification_sweep(cfg, worlds, keys) -> dict:
  """Paper A, Fig. 4 (left): pair losses of units at each purification level
  alpha (``contrastive.controlled_purification``, at the training radius).

  Returns {'alpha': [A floats], and for each of 'similar_clean',
  'similar_adversarial', 'dissimilar_clean', 'dissimilar_adversarial' (mean
  logistic pair loss, nats) and 'scale' (the fitted score scale): [A] means
  over seeds, and '<name>_std': [A] stds over seeds}. One compiled program
  over the seeds, called once per alpha (alpha is traced).
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
  """Median unit purity after contrastive pre-training, clean and adversarial,
  per width of ``contrastive.width_sweep`` (W widths, S seeds).

  Returns {'width': [W], 'purity_median_<mode>': [W] means over seeds of the
  median purity, 'purity_median_<mode>_per_seed': [W][S]} for mode clean and
  adversarial. The fits keep no checkpoints (they rerun on a resume).
  """
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


def run_jobs(cfg, run: runner.Run) -> dict:
  """Runs the jobs of ``cfg.stage`` in ``run``, in this order: pre-training,
  its evaluation ('eval_pretrain'), the purification and width sweeps, the
  downstream heads ('downstream_heads', checkpoints in
  ``train_checkpoints/downstream``), their evaluation ('eval_downstream'),
  and the end-to-end references (``<ref>`` and ``eval_<ref>``).

  Returns what ``main`` reports: 'eps' (``eval_eps``), 'train_eps', 'i_eps'
  (its index in 'eps'), 'rows' ({row: {'pretrain_acc' and/or
  'downstream_acc': (runs, len(eps)) accuracies in [0, 1]}}, runs = seeds
  for pre-training, seeds x tasks downstream), 'units' ({row: ``unit_stats``,
  (S, width)}), 'sweeps' ({'purification', 'width'} where run),
  'dictionary_seed0' (d, D) and 'encoders_seed0' ({row: (d, width) weights w}).
  Raises ``progress.Interrupted`` on Ctrl-C (finished jobs keep their checkpoints).
  """
  spec = sc.SparseCodingSpec.from_config(cfg.data)
  model = supervised.model_from_config(cfg)
  eps, T = eval_eps(cfg), cfg.downstream.num_tasks
  rows, units, sweeps = {}, {}, {}
  if cfg.stage == 'downstream':
    encoders, worlds = load_pretrained(cfg.downstream.encoder_dir)
    # validate checked that num_seeds and the shapes are the checkpoint's.
    keys = runner.key_streams(cfg.seed, cfg.num_seeds, STREAMS)
  else:
    keys = runner.key_streams(cfg.seed, cfg.num_seeds, STREAMS)
    worlds = _worlds(keys['world'], spec)
    encoders = pretrain(cfg, run, worlds, keys)
    test_keys = _fold_in(keys['eval'], T)
    with run.job('eval_pretrain'), progress.tracked(
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
      sweeps['purification'] = run.timed('purification_sweep', purification_sweep, cfg, worlds,
                                         keys['eval'])
    if cfg.contrastive.width_sweep:
      sweeps['width'] = run.timed('width_sweep', width_sweep, cfg, worlds, keys['pretrain'])

  if cfg.stage != 'pretrain' and encoders:
    tasks = draw_tasks(keys, worlds, spec, T)
    heads = run.timed('downstream_heads', downstream_heads, cfg, encoders, tasks,
                      checkpoint_dir=run.checkpoint_dir('downstream'),
                      fingerprint=run.fingerprint)
    test = _flat(tasks, 2)
    # One encoder's heads at a time (one compile for all: equal shapes), for progress.
    with run.job('eval_downstream'), progress.tracked(
        'evaluate downstream heads', len(heads), cfg.progress) as bar:
      for name, params in heads.items():
        rows.setdefault(name, {})['downstream_acc'] = evaluate(
            cfg, downstream.head_logits, model, params, test['worlds'], test['thetas'],
            test['eval_keys'])
        units.setdefault(name, unit_stats(encoders[name], worlds))
        bar.update()
    if cfg.stage == 'pipeline':
      # References train whole nets, so they run on the first reference_tasks
      # tasks of each seed only (the same tasks, test sets and keys as the heads).
      # With reference_tasks = 1 they have the pre-training's shapes, and
      # supervised.train's loss compares by value: they reuse its compiled programs.
      R = min(cfg.downstream.reference_tasks, T)
      refs = _flat(jax.tree.map(lambda a: a[:, :R], tasks), 2)
      for ref in cfg.downstream.references:
        params, _ = run.timed(ref, supervised.train, cfg, refs['worlds'], refs['thetas'],
                              refs['train_keys'], adversarial=ref == 'end_to_end_adversarial',
                              desc=ref, checkpoint_dir=run.checkpoint_dir(ref),
                              fingerprint=run.fingerprint)
        with progress.tracked(f'evaluate {ref}', 1, cfg.progress) as bar:
          acc = run.timed(f'eval_{ref}', evaluate, cfg, logits_fn, model, params,
                          refs['worlds'], refs['thetas'], refs['eval_keys'])
          bar.update()
        rows[ref] = {'downstream_acc': acc}
        units[ref] = unit_stats(params, refs['worlds'])

  return {'eps': eps, 'train_eps': float(cfg.attack.eps), 'i_eps': eps.index(float(cfg.attack.eps)),
          'rows': rows, 'units': units, 'sweeps': sweeps,
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
  """Paper A's claims the run's rows allow, each tested by the rule it states:
  a list of ``report.Claim`` (name, holds, rule, numbers), in the order below.

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


def plots(cfg, out: dict, summary: dict, workdir: str) -> list[str]:
  """Draws the figures the run has data for into ``workdir``; returns their
  file names, in order: purity.png (per-unit purity of every row),
  loadings.png (seed 0's unit loadings on the dictionary), robustness.png
  (downstream accuracy vs eps, mean +- std over seeds x tasks),
  purification_sweep.png, width_sweep.png."""
  sweeps, drawn = out['sweeps'], []
  attack = f'{cfg.attack.norm} PGD-{cfg.eval.attack_steps}'
  per_run = {n: r['downstream_acc'] for n, r in out['rows'].items() if 'downstream_acc' in r}
  for name, has_data, draw, args in (
      ('purity.png', out['units'], report.plot_purity, (out['units'],)),
      ('loadings.png', out['encoders_seed0'], report.plot_loadings,
       (out['encoders_seed0'], out['dictionary_seed0'])),
      ('robustness.png', any('downstream_acc_curve' in s for s in summary.values()),
       functools.partial(report.plot_curves, acc_per_run=per_run, attack=attack),
       (summary, out['eps'])),
      ('purification_sweep.png', 'purification' in sweeps,
       functools.partial(report.plot_purification_sweep, attack=attack),
       (sweeps.get('purification'),)),
      ('width_sweep.png', 'width' in sweeps, report.plot_width_sweep, (sweeps.get('width'),))):
    if has_data:
      draw(*args, os.path.join(workdir, name))
      drawn.append(name)
  return drawn


def sweeps_text(sweeps: dict, train_eps: float) -> list[str]:
  """The printed tables of the sweeps that ran: the controlled-purification
  pair losses and the median purity per width."""
  out = []
  if 'purification' in sweeps:
    out.append(f'controlled purification (pair loss at eps = {train_eps:g}):\n'
               + report.sweep_table(sweeps['purification']))
  if 'width' in sweeps:
    w = sweeps['width']
    out.append('\n'.join(['width | median purity clean | adversarial'] + [
        f"{m:5d} | {w['purity_median_clean'][i]:.3f} | {w['purity_median_adversarial'][i]:.3f}"
        for i, m in enumerate(w['width'])]))
  return out


def main(cfg, workdir: str) -> dict:
  """Runs ``cfg.stage`` in ``workdir`` (a ``runner.Run``); prints the table, the
  sweeps, the claims and the files written.

  Writes results.json ('config', 'seeds' [seed, num_seeds], 'eval_eps',
  'summary', 'sweeps', 'units' ({row: {'purity', 'participation_ratio':
  (S, width)}}), 'timings' (seconds per job and 'total'), 'claims', 'plots'),
  metrics.jsonl, training_curves.png, the plots and the encoder checkpoints.
  Returns the summary: {row: ``report.summarize``'s numbers, accuracies as
  fractions in [0, 1]}.
  """
  run = runner.Run(cfg, workdir)
  with run.job('total'):
    out = run_jobs(cfg, run)
    summary = report.summarize(out)
    checks = claims(summary, out['sweeps'])
    drawn = plots(cfg, out, summary, workdir)
  run.finish({
      'seeds': [cfg.seed, cfg.num_seeds], 'eval_eps': out['eps'], 'summary': summary,
      'sweeps': out['sweeps'],
      'units': {k: {m: np.asarray(v).tolist() for m, v in u.items() if m != 'norm'}
                for k, u in out['units'].items()}},
      text=[report.table(summary, out['train_eps']) if summary else '',
            *sweeps_text(out['sweeps'], out['train_eps'])],
      claims=checks, plots=drawn, files=['checkpoints/'])
  return summary
