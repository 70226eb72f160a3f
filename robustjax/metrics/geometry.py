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

Slices: the 2-D input plane of XOR (E = I), or the plane through three test
images (E from Gram-Schmidt of x1 - x0, x2 - x0).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def pullback_metric(feature_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                    basis: jax.Array | None = None) -> jax.Array:
  """g = (J E)^T (J E) at every point: (n, k, k).

  Args:
    feature_fn: batch (n, d) -> features (n, m); examples independent.
    x: points (n, d).
    basis: (d, k) tangent vectors (orthonormal for a metric of the slice);
      None = identity (the full metric, k = d).
  """
  d = x.shape[-1]
  basis = jnp.eye(d, dtype=x.dtype) if basis is None else basis.astype(x.dtype)
  one = lambda xi: feature_fn(xi[None])[0]

  def at(xi):
    je = jax.vmap(lambda e: jax.jvp(one, (xi,), (e,))[1])(basis.T)  # (k, m)
    return je @ je.T

  return jax.vmap(at)(x)


def log_volume_element(g: jax.Array) -> jax.Array:
  """log sqrt(det g) = 0.5 log det g per point (-inf where g is singular)."""
  sign, logdet = jnp.linalg.slogdet(g)
  return jnp.where(sign > 0, 0.5 * logdet, -jnp.inf)


def lambda_max(g: jax.Array) -> jax.Array:
  """Largest eigenvalue of each (symmetric) g."""
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
              labels=None, contour: dict | None = None, cmap: str = 'viridis') -> None:
  """One heat map per entry of ``maps`` (name -> (n, n) array, row i = y index).

  ``extent`` = (x_lo, x_hi, y_lo, y_hi); ``points`` (p, 2) are overlaid,
  coloured by ``labels``; ``contour`` (name -> (n, n)) draws its 0 level (a
  decision boundary) on the panel of the same name.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(maps)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
  finite = np.concatenate([np.ravel(np.asarray(m))[np.isfinite(np.ravel(np.asarray(m)))]
                           for m in maps.values()] or [np.zeros(1)])
  vmin, vmax = (np.percentile(finite, 1), np.percentile(finite, 99)) if finite.size else (0, 1)
  for ax, name in zip(axes[0], names):
    im = ax.imshow(np.asarray(maps[name]), origin='lower', extent=extent, aspect='auto',
                   cmap=cmap, vmin=vmin, vmax=vmax)
    if contour is not None and name in contour:
      c = np.asarray(contour[name])
      xs = np.linspace(extent[0], extent[1], c.shape[1])
      ys = np.linspace(extent[2], extent[3], c.shape[0])
      ax.contour(xs, ys, c, levels=[0.0], colors='w', linewidths=1.5)
    if points is not None:
      p = np.asarray(points)
      colour = dict(c='w') if labels is None else dict(c=np.asarray(labels), cmap='coolwarm')
      ax.scatter(p[:, 0], p[:, 1], s=10, edgecolors='k', linewidths=0.3, **colour)
    ax.set_title(name)
    fig.colorbar(im, ax=ax, fraction=0.046)
  if suptitle:
    fig.suptitle(suptitle)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
