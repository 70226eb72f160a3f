"""Tables, claims, plots and results.json for a finished run."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mean_std(a) -> tuple[float, float]:
  a = np.asarray(a, np.float64)
  return float(a.mean()), float(a.std())


def summarize(out: dict) -> dict:
  """Per-row summary: medians of unit metrics, mean/std of accuracies, per-run lists.

  Accuracies are fractions in [0, 1]; 'robust' is at the training radius
  ``train_eps``; curves hold the mean accuracy at every evaluation eps.
  """
  i = out['i_eps']
  summary = {}
  for name, row in out['rows'].items():
    s = {}
    u = out['units'].get(name)
    if u is not None:
      s['purity_median'] = float(np.median(u['purity']))
      s['participation_ratio_median'] = float(np.median(u['participation_ratio']))
      s['purity_median_per_seed'] = np.median(u['purity'], axis=-1).tolist()
    for stage in ('pretrain', 'downstream'):
      acc = row.get(f'{stage}_acc')
      if acc is None:
        continue
      s[f'{stage}_clean_acc'], s[f'{stage}_clean_acc_std'] = _mean_std(acc[:, 0])
      s[f'{stage}_robust_acc'], s[f'{stage}_robust_acc_std'] = _mean_std(acc[:, i])
      s[f'{stage}_robust_acc_per_run'] = acc[:, i].tolist()
      s[f'{stage}_acc_curve'] = acc.mean(axis=0).tolist()
    summary[name] = s
  return summary


def table(summary: dict, train_eps: float) -> str:
  """The run's one table, as text."""
  def pm(s, key):
    return f"{s[key]:.3f} +- {s[key + '_std']:.3f}" if key in s else '-'

  head = ['pre-training', 'median purity', 'median PR', 'pretrain clean acc',
          f'pretrain robust acc', 'downstream clean acc', f'downstream robust acc']
  rows = [[name,
           f"{s['purity_median']:.3f}" if 'purity_median' in s else '-',
           f"{s['participation_ratio_median']:.2f}" if 'participation_ratio_median' in s else '-',
           pm(s, 'pretrain_clean_acc'), pm(s, 'pretrain_robust_acc'),
           pm(s, 'downstream_clean_acc'), pm(s, 'downstream_robust_acc')]
          for name, s in summary.items()]
  return format_table(head, rows) + (
      f'\nrobust = PGD accuracy at eps = {train_eps:g}; '
      'mean +- std over seeds (pre-training) and seeds x tasks (downstream); '
      'contrastive pre-training acc = pair accuracy sign(s) = y')


def format_table(head: list[str], rows: list[list[str]]) -> str:
  """Columns padded to their widest cell, a rule under the header."""
  widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
  fmt = lambda r: ' | '.join(v.ljust(w) for v, w in zip(r, widths))
  return '\n'.join([fmt(head), '-+-'.join('-' * w for w in widths)] + [fmt(r) for r in rows])


@dataclasses.dataclass(frozen=True)
class Claim:
  """One of the papers' claims as a run tested it.

  ``name`` says which claim ('A: ...' for Paper A, 'B: ...' for Paper B),
  ``holds`` whether ``rule`` (the test applied, in words) held on
  ``numbers``: label -> a float, or a (mean, std) pair over seeds.
  Every experiment prints and records its claims through this one format
  (``claim_line``, ``claims_text``, ``claims_json``).
  """
  name: str
  holds: bool
  rule: str
  numbers: dict

  def __post_init__(self):
    if not isinstance(self.holds, bool):
      raise TypeError(f'holds: a bool, got {type(self.holds).__name__}')
    if not self.name or not self.rule:
      raise ValueError(f'name and rule: non-empty strings, got {self.name!r}, {self.rule!r}')


def _number(v) -> str:
  if isinstance(v, (tuple, list)):
    return f'{v[0]:.3g} +- {v[1]:.3g}'
  return f'{v:.3g}'


def claim_line(c: Claim) -> str:
  """'holds: NAME: label value, ...; rule: RULE' (or 'does not hold: ...')."""
  numbers = ', '.join(f'{k} {_number(v)}' for k, v in c.numbers.items())
  return f"{'holds' if c.holds else 'does not hold'}: {c.name}: {numbers}; rule: {c.rule}"


def claims_text(claims: Sequence[Claim]) -> str:
  """The claims a run tested, one line each under a heading ('' when none)."""
  if not claims:
    return ''
  return '\n'.join(['claims this run tests:'] + ['  ' + claim_line(c) for c in claims])


def claims_json(claims: Sequence[Claim]) -> list[dict]:
  """results.json's 'claims': [{name, holds, rule, numbers}], (mean, std) as [mean, std]."""
  return [dict(name=c.name, holds=c.holds, rule=c.rule,
               numbers={k: list(v) if isinstance(v, tuple) else v for k, v in c.numbers.items()})
          for c in claims]


def files_text(workdir: str, names: Sequence[str], timings: dict | None = None) -> str:
  """The files a run wrote (paths under ``workdir``), and its total wall, compile and
  CPU time (``timing.record``)."""
  lines = ['files written:'] + [f'  {os.path.join(workdir, n)}' for n in names]
  t = (timings or {}).get('total')
  if t:
    cpu = f"; {t['cpu']:.1f} s CPU" if 'cpu' in t else ''
    lines.append(f"total {t['wall']:.1f} s ({t['compile']:.1f} s compiling, "
                 f"{t['run']:.1f} s running{cpu})")
  return '\n'.join(lines)


def writer() -> bool:
  """Whether this process writes a run's files: process 0 of a multi-host run
  (the others compute the same results alongside and write nothing)."""
  return jax.process_index() == 0


def save_figure(fig, path: str, **savefig_kwargs) -> None:
  """``fig.savefig(path)`` in the writing process (``writer``); closes ``fig`` in all."""
  if writer():
    fig.savefig(path, **savefig_kwargs)
  plt.close(fig)


def write_json(path: str, payload: dict) -> None:
  """Atomic JSON; NaN and +-inf (e.g. a failed attack's distance) become null.
  Written by the writing process only (``writer``)."""
  if not writer():
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_finite(json.loads(json.dumps(payload, default=_jsonable))), f, indent=2,
              allow_nan=False)
  os.replace(tmp, path)  # atomic: a reader never sees half a file


def _finite(x):
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_finite(v) for v in x]
  return x


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return str(x)


def _save(fig, path: str) -> None:
  # Figures made with layout='constrained' lay themselves out (legends outside
  # the axes included); bbox_inches='tight' keeps what sits outside in the file.
  if fig.get_layout_engine() is None:
    fig.tight_layout()
  save_figure(fig, path, dpi=120, bbox_inches='tight')


def legend_outside(ax, **kwargs):
  """``ax.legend`` to the right of ``ax``, outside its data area; returns the legend."""
  return ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                   fontsize=8, **kwargs)


def fig_legend_outside(fig, handles, labels, **kwargs):
  """One legend for all of ``fig``'s panels, to the right of them (the figure
  must use layout='constrained'); returns the legend."""
  return fig.legend(handles, labels, loc='outside right upper', fontsize=8, **kwargs)


def plain_log_ticks(axis) -> None:
  """Tick labels of a log-scaled ``axis`` (``ax.xaxis`` / ``ax.yaxis``) as plain
  numbers ('0.3', not '3 x 10^-1'), on the ticks matplotlib would label."""
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel

  class Plain(ticker.LogFormatterSciNotation):
    def __call__(self, x, pos=None):
      return f'{x:.3g}' if super().__call__(x, pos) else ''

  axis.set_major_formatter(Plain())
  axis.set_minor_formatter(Plain(labelOnlyBase=False))


def _num_seeds(units: dict) -> tuple[int, int]:
  shape = np.shape(next(iter(units.values()))['purity'])
  return (shape[0], shape[1]) if len(shape) == 2 else (1, shape[-1])


def plot_purity(units: dict, path: str) -> None:
  """Small multiples: one row per pre-training (``units``: name -> {'purity',
  'participation_ratio'}: (seeds, width) arrays), histograms of per-unit purity
  (left) and participation ratio (right) over its units and seeds, the median
  dashed; columns share their bins and x axis so rows compare by eye."""
  names = list(units)
  S, m = _num_seeds(units)
  cols = (('purity', 'purity max|c| / ||c||  (1 = one feature)'),
          ('participation_ratio', 'participation ratio  (1 = one feature)'))
  fig, axes = plt.subplots(len(names), 2, figsize=(8.5, 0.85 * len(names) + 1.3),
                           sharex='col', squeeze=False, layout='constrained')
  for col, (key, xlabel) in enumerate(cols):
    values = [np.ravel(np.asarray(units[n][key], np.float64)) for n in names]
    finite = np.concatenate([v[np.isfinite(v)] for v in values] or [np.zeros(1)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    for row, (name, v) in enumerate(zip(names, values)):
      ax = axes[row, col]
      v = v[np.isfinite(v)]
      ax.hist(v, bins=bins, color=f'C{row % 10}', weights=np.full(v.size, 1 / max(v.size, 1)))
      if v.size:
        med = float(np.median(v))
        ax.axvline(med, color='k', ls='--', lw=1)
        ax.text(0.99, 0.9, f'median {med:.2f}', transform=ax.transAxes, ha='right', va='top',
                fontsize=7)
      ax.tick_params(labelsize=7)
      if col == 0:
        ax.set_ylabel(name, rotation=0, ha='right', va='center', fontsize=8)
    axes[-1, col].set_xlabel(xlabel, fontsize=9)
  fig.suptitle(f'per-unit purity and participation ratio, one row per pre-training\n'
               f'share of units per bin ({S} seeds x {m} units pooled per row); dashed: median',
               fontsize=9)
  _save(fig, path)


def plot_loadings(encoders: dict, dictionary: np.ndarray, path: str) -> None:
  """A grid of |M^T w_j| heatmaps (``encoders``: name -> w (d, width) of seed 0;
  ``dictionary`` M (d, D)), one panel per pre-training, rows = units sorted by
  their strongest latent feature, each row scaled to max 1: a pure unit is one
  bright cell."""
  names = list(encoders)
  ncols = 2 if len(names) == 4 else min(len(names), 3)  # 2 x 2 rather than 3 + 1
  nrows = -(-len(names) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 1.0, 2.7 * nrows + 0.8),
                           squeeze=False, layout='constrained')
  im = None
  for i, ax in enumerate(axes.flat):
    if i >= len(names):
      ax.set_visible(False)
      continue
    c = np.abs(np.asarray(dictionary).T @ np.asarray(encoders[names[i]])).T
    c = c / np.maximum(c.max(axis=1, keepdims=True), 1e-12)
    order = np.lexsort((-c.max(axis=1), c.argmax(axis=1)))
    im = ax.imshow(c[order], aspect='auto', cmap='viridis', interpolation='nearest',
                   vmin=0.0, vmax=1.0)
    ax.set_title(names[i], fontsize=9)
    ax.tick_params(labelsize=7)
    if i // ncols == nrows - 1 or i + ncols >= len(names):
      ax.set_xlabel('latent feature i', fontsize=8)
    if i % ncols == 0:
      ax.set_ylabel('unit j (sorted)', fontsize=8)
  if im is not None:
    fig.colorbar(im, ax=axes, shrink=0.8, label='|M^T w_j| / its max over i')
  fig.suptitle('loadings of each unit on the latent features (seed 0), units sorted by top '
               'feature\none bright cell per row = a purified unit', fontsize=9)
  _save(fig, path)


def _curve_panels(names: list[str]) -> list[tuple[str, list[str], list[str]]]:
  """(title, rows, references) per panel: supervised and contrastive encoders
  apart (at most four curves each), the end-to-end references in every panel."""
  refs = [n for n in names if n.startswith('end_to_end')]
  contrastive = [n for n in names if n.startswith('contrastive')]
  supervised = [n for n in names if n not in refs and n not in contrastive]
  panels = [(t, rows, refs) for t, rows in (('supervised pre-training', supervised),
                                            ('contrastive pre-training', contrastive)) if rows]
  return panels or [('end-to-end references', [], refs)]


def plot_curves(summary: dict, eps: list, path: str, *, acc_per_run: dict | None = None,
                attack: str = 'PGD') -> None:
  """Downstream accuracy against the attack radius, one line per pre-training:
  supervised and contrastive encoders in two panels, the end-to-end references
  (grey, dotted) in both, one legend outside.

  ``summary``: ``summarize``'s rows (their 'downstream_acc_curve', the mean
  over runs at each of ``eps``); ``acc_per_run``: optional name -> (runs,
  len(eps)) accuracies (``run``'s rows[name]['downstream_acc'], runs = seeds x
  tasks) drawing a mean +- std band; ``attack`` names the attack in the title.
  """
  eps = np.asarray(eps, np.float64)
  rows = {n: s for n, s in summary.items() if 'downstream_acc_curve' in s}
  counts = {}  # runs behind each row's mean
  for name, s in rows.items():
    if acc_per_run is not None and name in acc_per_run:
      counts[name] = np.shape(acc_per_run[name])[0]
    elif 'downstream_robust_acc_per_run' in s:
      counts[name] = len(s['downstream_robust_acc_per_run'])
  # One count in the title when every row has it, else each row's in the legend.
  same = len(set(counts.values())) == 1 and len(counts) == len(rows)
  label = lambda n: n if same else f"{n} ({counts.get(n, '?')} runs)"
  panels = _curve_panels(list(rows))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.6, 3.9), sharey=True,
                           squeeze=False, layout='constrained')
  colors = {n: f'C{i % 10}'
            for i, n in enumerate(n for n in rows if not n.startswith('end_to_end'))}
  for j, n in enumerate(n for n in rows if n.startswith('end_to_end')):
    # Two greys, both plainly lighter than black: the title calls them grey.
    colors[n] = str(0.35 + 0.25 * (j % 2))
  handles = {}
  for ax, (title, names, refs) in zip(axes[0], panels):
    for name in names + refs:
      mean = np.asarray(rows[name]['downstream_acc_curve'], np.float64)
      if acc_per_run is not None and name in acc_per_run:
        sd = np.asarray(acc_per_run[name], np.float64).std(axis=0)
        ax.fill_between(eps, mean - sd, mean + sd, color=colors[name], alpha=0.12, lw=0)
      handles[name], = ax.plot(eps, mean, marker='o', ms=4, color=colors[name],
                               ls=':' if name in refs else '-')
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f'eps: {attack} radius (input units)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('downstream accuracy (fraction)')
  fig_legend_outside(fig, list(handles.values()), [label(n) for n in handles],
                     title='pre-training', title_fontsize=8)
  band = 'mean +- std (bands)' if acc_per_run is not None else 'mean'
  over = f'{next(iter(counts.values()))} runs' if same else 'runs'
  refs = ' (grey, dotted: end-to-end references)' if any(p[2] for p in panels) else ''
  fig.suptitle(f'downstream heads on each pre-trained encoder{refs}\n'
               f'accuracy under {attack}: {band} over {over} (seeds x tasks)', fontsize=9)
  _save(fig, path)


def plot_purification_sweep(sweep: dict, path: str, *, attack: str = 'PGD') -> None:
  """Paper A Fig. 4 (left): clean and adversarial pair loss against alpha,
  mean +- std over seeds (bands); ``sweep`` as ``purification_sweep`` returns it."""
  fig, ax = plt.subplots(figsize=(7.0, 3.8), layout='constrained')
  a = np.asarray(sweep['alpha'], np.float64)
  for kind, color in (('similar', 'tab:blue'), ('dissimilar', 'tab:red')):
    for cond, style in (('clean', '--'), ('adversarial', '-')):
      key = f'{kind}_{cond}'
      m, sd = np.asarray(sweep[key], np.float64), np.asarray(sweep[f'{key}_std'], np.float64)
      ax.plot(a, m, color=color, linestyle=style, marker='o', ms=4, label=f'{kind} pairs, {cond}')
      ax.fill_between(a, m - sd, m + sd, color=color, alpha=0.12, lw=0)
  ax.set_xlabel('alpha (0 = purified units, 1 = dense mixtures)')
  ax.set_ylabel('logistic pair loss on test pairs (nats)')
  ax.grid(alpha=0.3)
  ax.set_title(f'controlled purification: pair loss, clean vs under {attack}\n'
               'mean +- std over seeds (bands)', fontsize=9)
  legend_outside(ax)
  _save(fig, path)


def plot_width_sweep(sweep: dict, path: str) -> None:
  """Median unit purity after contrastive pre-training against the width m,
  clean and adversarial: mean over seeds, +- std band when ``sweep`` has the
  per-seed medians (``width_sweep``'s 'purity_median_<mode>_per_seed')."""
  fig, ax = plt.subplots(figsize=(6.5, 3.6), layout='constrained')
  w = np.asarray(sweep['width'], np.float64)
  seeds = set()
  for i, mode in enumerate(('clean', 'adversarial')):
    ax.plot(w, sweep[f'purity_median_{mode}'], marker='o', ms=4, color=f'C{i}', label=mode)
    per_seed = sweep.get(f'purity_median_{mode}_per_seed')
    if per_seed is not None:
      p = np.asarray(per_seed, np.float64)  # (widths, seeds)
      m, sd = p.mean(axis=1), p.std(axis=1)
      ax.fill_between(w, m - sd, m + sd, color=f'C{i}', alpha=0.15, lw=0)
      seeds.add(p.shape[1])
  ax.set_xscale('log', base=2)
  ax.set_xticks(w, [f'{v:g}' for v in w])
  ax.xaxis.set_minor_locator(plt.NullLocator())
  ax.set_xlabel('width m (hidden units)')
  ax.set_ylabel('median unit purity (1 = one feature)')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  over = (f"mean +- std over {'/'.join(map(str, sorted(seeds)))} seeds" if seeds
          else 'mean over seeds')
  ax.set_title(f'contrastive pre-training: purity against width, clean vs adversarial\n{over}',
               fontsize=9)
  legend_outside(ax, title='pre-training', title_fontsize=8)
  _save(fig, path)


def sweep_table(sweep: dict) -> str:
  """The controlled-purification sweep as text: loss increase per pair kind."""
  lines = ['alpha | similar clean -> adv (increase) | dissimilar clean -> adv (increase) | ratio']
  for i, a in enumerate(sweep['alpha']):
    inc = {k: sweep[f'{k}_adversarial'][i] - sweep[f'{k}_clean'][i]
           for k in ('similar', 'dissimilar')}
    ratio = inc['dissimilar'] / inc['similar'] if inc['similar'] > 0 else float('inf')
    lines.append(f"{a:5.2f} | {sweep['similar_clean'][i]:.3f} -> {sweep['similar_adversarial'][i]:.3f}"
                 f" (+{inc['similar']:.3f}) | {sweep['dissimilar_clean'][i]:.3f} -> "
                 f"{sweep['dissimilar_adversarial'][i]:.3f} (+{inc['dissimilar']:.3f}) | {ratio:.1f}x")
  return '\n'.join(lines)
