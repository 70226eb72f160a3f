"""Every figure on small synthetic inputs: it is written, and its structure reads
at a glance (one panel per row, legends outside the data, bands drawn), not pixels."""
import os
import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from robustjax import report  # noqa: E402

ROWS = ('clean', 'adversarial', 'contrastive_clean', 'contrastive_adversarial',
        'contrastive_adv_negatives_only', 'contrastive_adv_positives_only', 'end_to_end_clean',
        'end_to_end_adversarial')


@pytest.fixture
def figures(monkeypatch):
  """Keeps each figure a plot function saves (path -> Figure) open for inspection."""
  kept = {}

  def save(fig, path, **kwargs):
    fig.savefig(path, **kwargs)  # draws it: the layout the checks read
    kept[os.path.basename(path)] = fig

  monkeypatch.setattr(report, 'save_figure', save)
  yield kept
  for fig in kept.values():
    plt.close(fig)


def _written(path):
  assert os.path.getsize(path) > 1000


def _panels(fig):
  return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != '<colorbar>']


def _outside(legend, fig):
  """The legend overlaps none of the figure's data panels."""
  assert legend is not None
  box = legend.get_window_extent()
  for ax in _panels(fig):
    assert not box.overlaps(ax.get_window_extent()), (legend, ax.get_title())


def _disjoint_titles(fig):
  boxes = [ax.title.get_window_extent() for ax in _panels(fig) if ax.get_title()]
  for i, a in enumerate(boxes):
    for b in boxes[i + 1:]:
      assert not a.overlaps(b)


def _bands(ax):
  return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_purity_is_one_row_of_two_panels_per_pretraining(tmp_path, figures):
  rng = np.random.default_rng(0)
  units = {n: {'purity': rng.uniform(0.3, 1, (2, 16)),
               'participation_ratio': rng.uniform(1, 6, (2, 16))} for n in ROWS[:3]}
  report.plot_purity(units, str(tmp_path / 'purity.png'))
  _written(tmp_path / 'purity.png')
  fig = figures['purity.png']
  panels = _panels(fig)
  assert len(panels) == 2 * 3
  assert [ax.get_ylabel() for ax in panels[::2]] == list(ROWS[:3])  # each row named once
  # The median of each row's purity is the dashed line of its panel.
  line = panels[0].get_lines()[0]
  assert line.get_xdata()[0] == pytest.approx(np.median(units[ROWS[0]]['purity']))


def test_loadings_is_a_grid_with_titles_apart(tmp_path, figures):
  rng = np.random.default_rng(1)
  d, D, m = 8, 8, 16
  encoders = {n: rng.standard_normal((d, m)) for n in ROWS[:5]}
  report.plot_loadings(encoders, rng.standard_normal((d, D)), str(tmp_path / 'loadings.png'))
  _written(tmp_path / 'loadings.png')
  fig = figures['loadings.png']
  assert len(_panels(fig)) == 5  # the grid's sixth cell hidden
  rows = {round(ax.get_position().y0, 3) for ax in _panels(fig)}
  assert len(rows) == 2  # 2 rows x 3, not a strip
  width, height = fig.get_size_inches() * 120
  assert width < 1600 and height < 1200
  _disjoint_titles(fig)


def test_curves_draw_a_band_per_row_and_the_legend_outside(tmp_path, figures):
  eps = [0.0, 0.2, 0.4]
  rng = np.random.default_rng(2)
  per_run = {n: rng.uniform(0.5, 1.0, (4, 3)) for n in ROWS}
  summary = {n: {'downstream_acc_curve': a.mean(0).tolist(),
                 'downstream_robust_acc_per_run': a[:, 2].tolist()} for n, a in per_run.items()}
  report.plot_curves(summary, eps, str(tmp_path / 'robustness.png'), acc_per_run=per_run,
                     attack='l2 PGD')
  _written(tmp_path / 'robustness.png')
  fig = figures['robustness.png']
  sup, con = _panels(fig)
  # Supervised and contrastive encoders apart, the two end-to-end references in both.
  assert [ax.get_title() for ax in (sup, con)] == ['supervised pre-training',
                                                   'contrastive pre-training']
  assert len(_bands(sup)) == 2 + 2 and len(_bands(con)) == 4 + 2
  # The band of the first row spans mean +- std over its runs at every eps.
  ys = _bands(sup)[0].get_paths()[0].vertices[:, 1]
  a = per_run[ROWS[0]]
  assert ys.max() == pytest.approx((a.mean(0) + a.std(0)).max())
  assert ys.min() == pytest.approx((a.mean(0) - a.std(0)).min())
  (legend,) = fig.legends
  assert sorted(t.get_text() for t in legend.get_texts()) == sorted(ROWS)  # each row once
  _outside(legend, fig)
  assert 'l2 PGD' in fig.get_suptitle() and '4 runs' in fig.get_suptitle()
  # The title's 'grey, dotted' references are drawn so: equal r, g, b well above black.
  assert 'grey, dotted: end-to-end references' in fig.get_suptitle()
  assert len(sup.get_lines()) == 4
  for line in sup.get_lines()[2:]:
    r, g, b, _ = matplotlib.colors.to_rgba(line.get_color())
    assert r == g == b and 0.3 <= r <= 0.75 and line.get_linestyle() == ':'


def test_curves_without_per_run_values_draw_means_only(tmp_path, figures):
  summary = {'clean': {'downstream_acc_curve': [0.9, 0.5],
                       'downstream_robust_acc_per_run': [0.5] * 4},
             'end_to_end_clean': {'downstream_acc_curve': [0.8, 0.4],
                                  'downstream_robust_acc_per_run': [0.4] * 2}}
  report.plot_curves(summary, [0.0, 0.4], str(tmp_path / 'r.png'))
  fig = figures['r.png']
  (ax,) = _panels(fig)
  assert not _bands(ax)
  # Rows over different run counts name theirs in the legend.
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      'clean (4 runs)', 'end_to_end_clean (2 runs)']


def test_sweeps_draw_bands_and_legends_outside(tmp_path, figures):
  sweep = {'alpha': [0.0, 0.5, 1.0]}
  for k in ('similar', 'dissimilar'):
    for c in ('clean', 'adversarial'):
      sweep[f'{k}_{c}'] = [0.1, 0.2, 0.3]
      sweep[f'{k}_{c}_std'] = [0.01, 0.02, 0.03]
  report.plot_purification_sweep(sweep, str(tmp_path / 'p.png'))
  widths = {'width': [8, 16, 32], 'purity_median_clean': [0.5, 0.6, 0.7],
            'purity_median_adversarial': [0.6, 0.7, 0.8],
            'purity_median_clean_per_seed': [[0.5, 0.5], [0.55, 0.65], [0.7, 0.7]],
            'purity_median_adversarial_per_seed': [[0.6, 0.6], [0.7, 0.7], [0.75, 0.85]]}
  report.plot_width_sweep(widths, str(tmp_path / 'w.png'))
  for name, bands in (('p.png', 4), ('w.png', 2)):
    _written(tmp_path / name)
    (ax,) = _panels(figures[name])
    assert len(_bands(ax)) == bands
    _outside(ax.get_legend(), figures[name])
  assert '2 seeds' in _panels(figures['w.png'])[0].get_title()


def _spectral_evals(kinds, seeds=2, points=12):
  rng = np.random.default_rng(3)
  return {k: {'distances': {n: [rng.uniform(0.1, 1.0, points) for _ in range(seeds)]
                            for n in ('refit/tangent', 'refit/certified')}} for k in kinds}


def test_spectral_distances_name_heads_attacks_and_keep_the_legend_outside(tmp_path, figures):
  from configs import mnist_spectral
  from robustjax.experiments import spectral
  kinds = ('clean', 'll lam=0.01', 'll lam=0.1', 'rep lam=0.01', 'rep lam=0.1')
  spectral.plot_distances(_spectral_evals(kinds), str(tmp_path / 'box.png'),
                          cfg=mnist_spectral.get_config())
  _written(tmp_path / 'box.png')
  fig = figures['box.png']
  panels = _panels(fig)
  assert [ax.get_title() for ax in panels] == ['refit head: tangent',
                                               'refit head: certified lower bound']
  assert [t.get_text() for t in panels[0].get_xticklabels()] == list(kinds)
  _outside(fig.legends[0], fig)
  assert '2 seeds' in fig.get_suptitle()


def test_spectral_distances_say_where_every_attack_failed_and_the_title_clears_the_legend(
    tmp_path, figures):
  from configs import mnist_spectral
  from robustjax.experiments import spectral
  evals = _spectral_evals(('clean', 'rep'))
  for k in evals:  # original/fmn: every attack failed; refit/tangent: on rep's points only
    evals[k]['distances']['original/fmn'] = [np.full(12, np.inf)] * 2
  evals['rep']['distances']['refit/tangent'] = [np.full(12, np.inf)] * 2
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)
    spectral.plot_distances(evals, str(tmp_path / 'box.png'), cfg=mnist_spectral.get_config())
  fig = figures['box.png']
  texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in _panels(fig)}
  assert texts == {'refit head: tangent': ['all failed'], 'refit head: certified lower bound': [],
                   'original head: fmn': ['every attack failed']}
  _outside(fig.legends[0], fig)
  assert not fig._suptitle.get_window_extent().overlaps(
      fig.legends[0].get_window_extent())


def test_spectral_sweep_has_one_legend_outside_both_panels(tmp_path, figures):
  from configs import mnist_spectral
  from robustjax.experiments import spectral
  cfg = mnist_spectral.get_config()
  cfg.regularizer.kinds = ('clean', 'll', 'rep')
  runs = {'clean': {'kind': 'clean', 'lam': 0.01}}
  runs.update({f'{k} lam={lam:g}': {'kind': k, 'lam': lam} for k in ('ll', 'rep')
               for lam in (0.01, 0.1)})
  summary = {label: dict(adv_distance_mean=0.6, adv_distance_mean_std=0.05, test_acc=0.9,
                         test_acc_std=0.01, refit_test_acc=0.9, refit_test_acc_std=0.01)
             for label in runs}
  spectral.plot_sweep(cfg, summary, runs, str(tmp_path / 'sweep.png'))
  _written(tmp_path / 'sweep.png')
  fig = figures['sweep.png']
  assert len(_panels(fig)) == 2 and len(fig.legends) == 1
  assert all(ax.get_legend() is None for ax in _panels(fig))
  _outside(fig.legends[0], fig)
  # Equal values of ll and rep sit apart (dodged), not on top of each other.
  xs = [tuple(c.lines[0].get_xdata()) for c in _panels(fig)[0].containers]
  assert len(set(xs)) == len(xs) == 2


def test_geometry_maps_are_a_grid_on_one_scale_with_the_boundary_centred(tmp_path, figures):
  from robustjax.experiments import spectral
  rng = np.random.default_rng(4)
  n, kinds = 4, ('clean', 'll_readout', 'll', 'rep')
  maps = {k: dict(log_volume=rng.normal(size=(n, n)), log10_lambda_max=rng.normal(size=(n, n)),
                  boundary=rng.normal(size=(n, n)) + 0.5, extent=(-2, 2, -2, 2), anchors=None)
          for k in kinds}
  data = {'image_shape': None, 'per_seed': False, 'x_train': rng.normal(size=(8, 2)),
          'y_train': np.arange(8) % 2}
  files = spectral.plot_geometry(maps, data, str(tmp_path))
  assert [os.path.basename(f) for f in files] == [
      'log_volume.png', 'log10_lambda_max.png', 'boundary.png']
  for f in files:
    _written(f)
    fig = figures[os.path.basename(f)]
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == list(kinds)
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # 2 x 2, not a strip
    assert len(fig.axes) == 4 + 1  # one colorbar for all panels
  lo, hi = _panels(figures['boundary.png'])[0].images[0].get_clim()
  assert lo == pytest.approx(-hi)  # white = 0 = the boundary


@pytest.mark.parametrize('c_in', [1, 3])
def test_filters_one_block_per_kind_with_its_roughness(tmp_path, figures, c_in):
  from robustjax.experiments import images
  rng = np.random.default_rng(5)
  kernels = {k: rng.normal(size=(3, 3, c_in, 17)) for k in ('clean', 'rep')}
  images.plot_filters(kernels, str(tmp_path / 'filters.png'))
  _written(tmp_path / 'filters.png')
  fig = figures['filters.png']
  assert len(fig.subfigs) == 2
  for block, (kind, k) in zip(fig.subfigs, kernels.items()):
    assert block.get_suptitle() == f'{kind}: roughness {images.roughness(k).mean():.2f}'
    shown = [ax for ax in block.axes if ax.get_visible()]
    assert len(shown) == 17
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2  # 16 to a row


def test_a_centred_map_that_is_never_negative_starts_its_scale_at_0(tmp_path, figures):
  from robustjax.metrics import geometry
  gap = np.linspace(0.0, 2.0, 16).reshape(4, 4)  # top logit - runner-up: 0 on a boundary
  geometry.plot_maps({'clean': gap}, (-1, 1, -1, 1), str(tmp_path / 'gap.png'), cmap='Reds',
                     centered=True, colorbar_label='gap')
  (ax,) = _panels(figures['gap.png'])
  lo, hi = ax.images[0].get_clim()
  assert lo == 0.0 and hi == pytest.approx(np.percentile(gap, 99))
