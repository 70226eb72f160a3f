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
  fig.tight_layout()
  save_figure(fig, path, dpi=120)


def plot_purity(units: dict, path: str) -> None:
  """Histograms of per-unit purity and participation ratio, one colour per row."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for name, u in units.items():
    for ax, key in zip(axes, ('purity', 'participation_ratio')):
      ax.hist(np.ravel(u[key]), bins=40, alpha=0.5, label=name, density=True)
  axes[0].set_xlabel('purity max|c| / ||c||  (1 = one feature)')
  axes[1].set_xlabel('participation ratio  (1 = one feature)')
  axes[0].set_ylabel('density over units (all seeds)')
  axes[0].legend()
  _save(fig, path)


def plot_loadings(encoders: dict, dictionary: np.ndarray, path: str) -> None:
  """|M^T w_j| heatmaps, units (rows) sorted by their strongest feature."""
  fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 4), squeeze=False)
  for ax, (name, w) in zip(axes[0], encoders.items()):
    c = np.abs(dictionary.T @ w).T
    c = c / np.maximum(c.max(axis=1, keepdims=True), 1e-12)
    order = np.lexsort((-c.max(axis=1), c.argmax(axis=1)))
    ax.imshow(c[order], aspect='auto', cmap='viridis', interpolation='nearest')
    ax.set_title(f'{name}: |loadings| per unit (seed 0)')
    ax.set_xlabel('latent feature i')
    ax.set_ylabel('unit j (sorted by top feature)')
  _save(fig, path)


def plot_curves(summary: dict, eps: list, path: str) -> None:
  """Downstream accuracy against the PGD radius, one line per row."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, s in summary.items():
    if 'downstream_acc_curve' in s:
      ax.plot(eps, s['downstream_acc_curve'], marker='o', label=name)
  ax.set_xlabel('eps')
  ax.set_ylabel('downstream accuracy under PGD')
  ax.set_ylim(0, 1)
  ax.legend()
  _save(fig, path)


def plot_purification_sweep(sweep: dict, path: str) -> None:
  """Paper A Fig. 4 (left): clean and adversarial pair loss against alpha."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  a = sweep['alpha']
  for kind, color in (('similar', 'tab:blue'), ('dissimilar', 'tab:red')):
    for cond, style in (('clean', '--'), ('adversarial', '-')):
      key = f'{kind}_{cond}'
      ax.errorbar(a, sweep[key], yerr=sweep[f'{key}_std'], color=color, linestyle=style,
                  marker='o', capsize=2, label=f'{kind} pairs, {cond}')
  ax.set_xlabel('alpha (0 = purified units, 1 = dense mixtures)')
  ax.set_ylabel('contrastive test loss')
  ax.legend(fontsize=8)
  _save(fig, path)


def plot_width_sweep(sweep: dict, path: str) -> None:
  """Median unit purity after contrastive pre-training against the width m."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for mode in ('clean', 'adversarial'):
    ax.plot(sweep['width'], sweep[f'purity_median_{mode}'], marker='o', label=mode)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('width m')
  ax.set_ylabel('median unit purity')
  ax.set_ylim(0, 1)
  ax.legend()
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
