"""Geometry a feature map induces on its input space (Paper B, Sec. on geometry).

The pull-back metric of phi at x is ``g = J^T J`` with J = d phi / dx. Restricted
to a k-dimensional slice spanned by the columns of an orthonormal basis E
(d, k) it is ``E^T J^T J E = (J E)^T (J E)``, computed from k forward-mode
JVPs (never the full J: for MNIST J is 2000 x 784 but the plane needs 2).

- volume element ``sqrt(det g)``: how much phi stretches areas of the slice;
  reported in log form (``0.5 * logdet g``) because it spans decades.
- ``lambda_max(g)``: the squared largest stretch ``||J e||^2`` over unit
  tangent vectors e in the slice; the adversarial-distance bound of Paper B
  is governed by its full-space counterpart.

Precision: forming g squares the condition number, so in float32 g holds no
trace of singular values of J E below ~3e-4 of the largest (``log det g`` came
out -inf or off by ~1 at cond(J E) = 1e4). ``pullback_metric`` therefore keeps
g factored, ``PullbackMetric(jacobian=J E)``, and both maps come from the
singular values s of J E: ``0.5 log det g = sum log s``, ``lambda_max = s_max^2``.
What remains is float32 J E itself: an absolute error ~eps * s_max per entry,
so the log volume is good to ~eps * cond(J E) (measured in tests/test_geometry.py).

Slices: the 2-D input plane of XOR (E = I), or the plane through three test
images (E from Gram-Schmidt of x1 - x0, x2 - x0).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PullbackMetric:
  """The pull-back metric at n points in factored form g = F^T F, F = J E.

  ``jacobian``: (n, m, k), the Jacobian of the features (m) along the k basis
  vectors. ``matrix`` forms g (n, k, k) (``np.asarray(metric)`` too), losing
  what float32 cannot hold (module docstring); ``log_volume_element`` and
  ``lambda_max`` use the factor. A pytree: it passes through jit and vmap.
  """
  jacobian: jax.Array

  @property
  def matrix(self) -> jax.Array:
    return jnp.einsum('...mk,...ml->...kl', self.jacobian, self.jacobian)

  @property
  def shape(self) -> tuple:
    *n, _, k = self.jacobian.shape
    return (*n, k, k)

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self.matrix, dtype=dtype)


def pullback_metric(feature_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                    basis: jax.Array | None = None) -> PullbackMetric:
  """g = (J E)^T (J E) at every point, kept as its factor J E: (n, m, k).

  Args:
    feature_fn: batch (n, d) -> features (n, m); examples independent.
    x: points (n, d).
    basis: (d, k) tangent vectors (orthonormal for a metric of the slice);
      None = identity (the full metric, k = d).
  Returns:
    ``PullbackMetric``; ``.matrix`` is g (n, k, k).
  Raises:
    ValueError when x is not (n, d) or basis not (d, k).
  """
  if x.ndim != 2:
    raise ValueError(f'pullback_metric: x must be (n, d), got shape {x.shape}')
  d = x.shape[-1]
  if basis is not None and (basis.ndim != 2 or basis.shape[0] != d):
    raise ValueError(f'pullback_metric: basis must be (d, k) with d = {d}, got shape '
                     f'{basis.shape}')
  basis = jnp.eye(d, dtype=x.dtype) if basis is None else basis.astype(x.dtype)
  one = lambda xi: feature_fn(xi[None])[0]

  def at(xi):
    return jax.vmap(lambda e: jax.jvp(one, (xi,), (e,))[1], out_axes=1)(basis.T)  # (m, k)

  return PullbackMetric(jax.vmap(at)(x))


def _singular_values(metric: PullbackMetric) -> jax.Array:
  return jnp.linalg.svd(metric.jacobian, compute_uv=False)   # (n, min(m, k)), descending


def _check_metric(g, name: str) -> None:
  if not isinstance(g, PullbackMetric) and (jnp.ndim(g) < 2 or g.shape[-1] != g.shape[-2]):
    raise ValueError(f'{name}: g must be a PullbackMetric or (..., k, k), got shape '
                     f'{jnp.shape(g)}')


def log_volume_element(g) -> jax.Array:
  """log sqrt(det g) = 0.5 log det g per point (-inf where g is singular).

  g: a ``PullbackMetric`` (accurate: the sum of log singular values of J E;
  -inf when m < k) or a formed (..., k, k) matrix (slogdet of g: float32 loses
  singular values below ~3e-4 of the largest, see the module docstring).
  """
  _check_metric(g, 'log_volume_element')
  if isinstance(g, PullbackMetric):
    m, k = g.jacobian.shape[-2:]
    if m < k:
      return jnp.full(g.jacobian.shape[:-2], -jnp.inf, g.jacobian.dtype)
    return jnp.sum(jnp.log(_singular_values(g)), axis=-1)
  sign, logdet = jnp.linalg.slogdet(g)
  return jnp.where(sign > 0, 0.5 * logdet, -jnp.inf)


def lambda_max(g) -> jax.Array:
  """Largest eigenvalue of each g: s_max(J E)^2 for a ``PullbackMetric``, else from
  eigvalsh of the (symmetric) (..., k, k) matrix."""
  _check_metric(g, 'lambda_max')
  if isinstance(g, PullbackMetric):
    return _singular_values(g)[..., 0] ** 2
  return jnp.linalg.eigvalsh(g)[..., -1]


def grid_2d(lo: float, hi: float, n: int) -> tuple[jax.Array, np.ndarray]:
  """An n x n grid over [lo, hi]^2: points (n * n, 2) row-major, and the axis (n,)."""
  t = np.linspace(lo, hi, n, dtype=np.float32)
  xx, yy = np.meshgrid(t, t)  # row i holds y = t[i]
  return jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1)), t


def plane_through(x0: jax.Array, x1: jax.Array, x2: jax.Array, n: int, margin: float = 0.25):
  """The plane through three points, gridded.

  Returns (points (n * n, d), basis (d, 2) orthonormal, coords (n, n, 2) of the
  grid in the basis, anchors (3, 2): the three points' coordinates). The grid
  covers the anchors' bounding box widened by ``margin`` of its size; its
  origin is x0. Raises ValueError when the points are collinear.
  """
  x0, x1, x2 = (jnp.ravel(a).astype(jnp.float32) for a in (x0, x1, x2))
  e1 = x1 - x0
  e1 = e1 / jnp.linalg.norm(e1)
  e2 = (x2 - x0) - jnp.dot(x2 - x0, e1) * e1
  if float(jnp.linalg.norm(e2)) < 1e-6 * float(jnp.linalg.norm(x2 - x0) + 1e-12):
    raise ValueError('plane_through: the three points are collinear')
  e2 = e2 / jnp.linalg.norm(e2)
  basis = jnp.stack([e1, e2], axis=1)
  anchors = jnp.stack([jnp.zeros(2), basis.T @ (x1 - x0), basis.T @ (x2 - x0)])
  lo, hi = anchors.min(0), anchors.max(0)
  pad = margin * (hi - lo).max()
  a = jnp.linspace(lo[0] - pad, hi[0] + pad, n)
  b = jnp.linspace(lo[1] - pad, hi[1] + pad, n)
  aa, bb = jnp.meshgrid(a, b)
  coords = jnp.stack([aa, bb], -1)
  points = x0 + coords.reshape(-1, 2) @ basis.T
  return points, basis, coords, anchors


def plot_maps(maps: dict, extent, path: str, *, suptitle: str = '', points=None,
              labels=None, contour: dict | None = None, cmap: str = 'viridis',
              colorbar_label: str = '', centered: bool = False,
              axis_labels: tuple[str, str] = ('x1', 'x2')) -> None:
  """A grid (at most 3 columns) of heat maps, one per entry of ``maps`` (name ->
  (n, n) array, row i = y index), on one colour scale with one colorbar.

  ``extent`` = (x_lo, x_hi, y_lo, y_hi); ``points`` (p, 2) are overlaid,
  coloured by ``labels``; ``contour`` (name -> (n, n)) draws its 0 level (a
  decision boundary) on the panel of the same name; ``centered`` puts 0 at
  the middle of the colour scale (white in a diverging ``cmap``), or at its
  bottom when no value is negative;
  ``colorbar_label`` and ``axis_labels`` say what the colours and axes are.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robustjax import report  # matplotlib too: only when plotting

  names = list(maps)
  ncols = 2 if len(names) == 4 else min(len(names), 3)  # 2 x 2 rather than 3 + 1
  nrows = -(-len(names) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 1.2, 3.0 * nrows + 0.7),
                           squeeze=False, layout='constrained')
  finite = np.concatenate([np.ravel(np.asarray(m))[np.isfinite(np.ravel(np.asarray(m)))]
                           for m in maps.values()] or [np.zeros(1)])
  vmin, vmax = (np.percentile(finite, 1), np.percentile(finite, 99)) if finite.size else (0, 1)
  if centered:  # 0 at the middle of the scale, or at its bottom for a map that is never < 0
    vmax = max(abs(vmin), abs(vmax), 1e-12)
    vmin = 0.0 if finite.size and finite.min() >= 0 else -vmax
  im = None
  for i, ax in enumerate(axes.flat):
    if i >= len(names):
      ax.set_visible(False)
      continue
    name = names[i]
    im = ax.imshow(np.asarray(maps[name]), origin='lower', extent=extent, aspect='auto',
                   cmap=cmap, vmin=vmin, vmax=vmax)
    if contour is not None and name in contour:
      c = np.asarray(contour[name])
      xs = np.linspace(extent[0], extent[1], c.shape[1])
      ys = np.linspace(extent[2], extent[3], c.shape[0])
      if np.nanmin(c) < 0 < np.nanmax(c):  # a level that is not there draws nothing but a warning
        ax.contour(xs, ys, c, levels=[0.0], colors='w', linewidths=1.5)
    if points is not None:
      p = np.asarray(points)
      # Labels in white to black (not the maps' colours, where they would vanish).
      colour = dict(c='w') if labels is None else dict(c=np.asarray(labels), cmap='Greys')
      ax.scatter(p[:, 0], p[:, 1], s=12, edgecolors='0.5', linewidths=0.6, **colour)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
    if i // ncols == nrows - 1 or i + ncols >= len(names):
      ax.set_xlabel(axis_labels[0], fontsize=8)
    if i % ncols == 0:
      ax.set_ylabel(axis_labels[1], fontsize=8)
  if im is not None:
    fig.colorbar(im, ax=axes, shrink=0.8, label=colorbar_label)
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  report.save_figure(fig, path, dpi=110, bbox_inches='tight')
