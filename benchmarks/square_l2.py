"""Strength of the two l2 Square updates on the digits MLP at equal query budgets.

The model is ``tests/models.digits_mlp`` (a 64-32-10 GELU MLP trained on
scikit-learn's 8x8 digits); the points are all 297 held-out digits, in [0, 1]
(used as ``bounds``), given to the attack flat (n, 64: windows are strips of
consecutive pixels) and as images (n, 8, 8, 1: square windows). For each
radius and budget it prints the robust accuracy (lower = stronger) of
``l2_update='published'`` (Andriushchenko et al. 2020, as AutoAttack runs it)
and ``'simple'`` (robustjax's earlier update), the mean over ``--keys`` attack
keys, and the mean queries per broken point; APGD-CE (white box, 100
iterations) is the reference.

  python benchmarks/square_l2.py                     # ~3 min on 2 CPU cores
  python benchmarks/square_l2.py --queries 5000 --keys 1
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from robustjax.attacks.apgd import apgd
from robustjax.attacks.square import L2_UPDATES, square
from tests.models import digits_mlp


def _flat_input(f, z):
  return f(z.reshape(z.shape[0], -1))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--eps', type=float, nargs='+', default=[0.5, 1.0, 1.5])
  ap.add_argument('--queries', type=int, nargs='+', default=[100, 300, 1000])
  ap.add_argument('--keys', type=int, default=3)
  args = ap.parse_args()
  f, _, _ = digits_mlp()
  xs, ys = load_digits(return_X_y=True)
  x = jnp.asarray(xs[1500:] / 16.0, jnp.float32)
  y = jnp.asarray(ys[1500:], jnp.int32)
  correct = np.asarray(jnp.argmax(f(x), -1) == y)
  layouts = {'flat (n, 64)': (f, x),
             'image (n, 8, 8, 1)': (jax.tree_util.Partial(_flat_input, f), x.reshape(-1, 8, 8, 1))}
  print(f'{x.shape[0]} points, clean accuracy {correct.mean():.3f}; robust accuracy, mean over '
        f'{args.keys} keys (queries per broken point)')
  head = f"{'layout':<20}{'eps':>5}{'queries':>9}" + ''.join(f'{u:>22}' for u in L2_UPDATES)
  print(head)
  print('-' * len(head))
  for eps in args.eps:
    rob = apgd(f, x, y, eps=eps, norm='l2', key=jax.random.PRNGKey(0), n_iter=100,
               bounds=(0.0, 1.0))[1]
    print(f"{'APGD-CE 100 iters':<20}{eps:>5}{'':>9}{float(np.mean(np.asarray(rob))):>22.3f}")
    for name, (g, xl) in layouts.items():
      for q in args.queries:
        cells = []
        for update in L2_UPDATES:
          accs, qs = [], []
          for k in range(args.keys):
            _, robust, queries = square(g, xl, y, eps=eps, norm='l2', key=jax.random.PRNGKey(k),
                                        n_queries=q, bounds=(0.0, 1.0), l2_update=update)
            robust, queries = np.asarray(robust), np.asarray(queries)
            accs.append(robust.mean())
            broken = ~robust & correct
            qs.append(queries[broken].mean() if broken.any() else np.nan)
          cells.append(f'{np.mean(accs):.3f} ({np.nanmean(qs):6.1f})')
        print(f'{name:<20}{eps:>5}{q:>9}' + ''.join(f'{c:>22}' for c in cells))


if __name__ == '__main__':
  main()
