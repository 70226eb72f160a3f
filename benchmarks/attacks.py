"""Throughput of each attack on Paper B's MNIST MLP (784-2000-10, GELU), and with
``--peers`` our attacks beside torchattacks' and Foolbox's (``benchmarks/peers.py``).

Prints one row per attack: compile+first-run seconds, steady-state seconds,
points per second, and for the query-based attacks the mean queries per point
and model queries per second. Weights are random (the speed of an attack does
not depend on what the model learnt); labels are the model's own predictions,
so every point starts correctly classified, and inputs are uniform in [0, 1]
(MNIST's domain, used as ``bounds``).

  python benchmarks/attacks.py                       # Paper B size: batch 1024
  python benchmarks/attacks.py --batch 64 --small    # a few minutes on 2 CPU cores
  python benchmarks/attacks.py --peers               # digits MLP, ours vs torchattacks / Foolbox
  python benchmarks/attacks.py --peers --small --points 16   # seconds: a smoke run

The peers' columns need the ``bench`` extra (``pip install -e '.[bench]'``);
without it ``--peers`` prints our figures and says how to get theirs.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import bisection, decision_attack, fmn
from robustjax.attacks.apgd import apgd, target_classes
from robustjax.attacks.square import square

import peers  # benchmarks/peers.py, beside this script


def mlp(params, x):
  h = jax.nn.gelu(x @ params['w1'] + params['b1'])
  # Paper B scales the readout by 1 / sqrt(width).
  return (h @ params['w2']) / jnp.sqrt(params['w1'].shape[1]) + params['b2']


def init(key, width=2000):
  k1, k2 = jax.random.split(key)
  return {'w1': jax.random.normal(k1, (784 * width,)).reshape(784, width) / jnp.sqrt(784.0),
          'b1': jnp.zeros(width), 'w2': jax.random.normal(k2, (width * 10,)).reshape(width, 10),
          'b2': jnp.zeros(10)}


def _timed(fn):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=1024)
  ap.add_argument('--small', action='store_true',
                  help='reduced budgets (APGD 20 iters, Square 200 queries, FMN 50 steps, '
                       'hard-label 5 iterations at 40 probes)')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--peers', action='store_true',
                  help='digits MLP: ours beside torchattacks / Foolbox on the same weights '
                       '(benchmarks/peers.py)')
  ap.add_argument('--no-peers', action='store_true',
                  help='with --peers: our columns only, even when the bench extra is installed')
  ap.add_argument('--points', type=int, default=397, help='--peers: test points (1..397)')
  ap.add_argument('--pgd-tile', type=int, default=8,
                  help='--peers: PGD runs on the test points tiled this many times (>= 1)')
  ap.add_argument('--hsj-points', type=int, default=0,
                  help='--peers: HopSkipJump on the first this many points (0 = all)')
  ap.add_argument('--train-steps', type=int, default=300,
                  help='--peers: full-batch Adam steps training the MLP (>= 1)')
  ap.add_argument('--torch-threads', type=int, default=0,
                  help="--peers: torch's intra-op threads (0 = torch's default, one per core)")
  ap.add_argument('--rows', default='pgd,apgd,ensemble,fmn,hsj',
                  help='--peers: comma-separated families among pgd, apgd, ensemble, fmn, hsj')
  args = ap.parse_args()
  args.rows = [r.strip() for r in args.rows.split(',') if r.strip()]
  families = tuple(peers.ROWS)
  if not args.rows or any(r not in families for r in args.rows):
    print(f'--rows: comma-separated names among {", ".join(families)}, '
          f'got {",".join(args.rows) or "nothing"}', file=sys.stderr)
    raise SystemExit(2)
  for name, value, lo, hi in (('--points', args.points, 1, peers.TEST_POINTS),
                              ('--pgd-tile', args.pgd_tile, 1, None),
                              ('--hsj-points', args.hsj_points, 0, peers.TEST_POINTS),
                              ('--train-steps', args.train_steps, 1, None),
                              ('--torch-threads', args.torch_threads, 0, None),
                              ('--batch', args.batch, 1, None)):
    if value < lo or (hi is not None and value > hi):
      allowed = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
      print(f'{name}: must be an integer {allowed}, got {value}', file=sys.stderr)
      raise SystemExit(2)
  if args.peers:
    peers.run(args)
    return
  key = jax.random.PRNGKey(args.seed)
  params = init(key)
  f = jax.tree_util.Partial(mlp, params)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (args.batch * 784,)).reshape(args.batch, 784)
  y = jnp.argmax(f(x), -1)
  n = args.batch
  if args.small:
    b = dict(n_iter=20, square=200, fmn=50, bis=(6, 4, 10), hl=dict(iterations=5, init_evals=40,
                                                                     chunk=40))
  else:
    b = dict(n_iter=100, square=5000, fmn=100, bis=(12, 8, 20), hl=dict(iterations=40))
  eps_l2, eps_linf = 1.0, 0.1
  k = jax.random.PRNGKey(1)
  t2 = target_classes(f, x, 2)
  attacks = {
      'APGD-CE l2': lambda: apgd(f, x, y, eps=eps_l2, norm='l2', key=k, n_iter=b['n_iter'],
                                 bounds=(0., 1.))[:2],
      'APGD-CE linf': lambda: apgd(f, x, y, eps=eps_linf, norm='linf', key=k,
                                   n_iter=b['n_iter'], bounds=(0., 1.))[:2],
      'APGD-T (1 target) linf': lambda: apgd(f, x, y, eps=eps_linf, norm='linf', key=k,
                                             loss='dlr-t', target=t2, n_iter=b['n_iter'],
                                             bounds=(0., 1.))[:2],
      'Square linf': lambda: square(f, x, y, eps=eps_linf, norm='linf', key=k,
                                    n_queries=b['square'], bounds=(0., 1.)),
      'Square l2': lambda: square(f, x, y, eps=eps_l2, norm='l2', key=k,
                                  n_queries=b['square'], bounds=(0., 1.)),
      'FMN l2 (9 targets)': lambda: fmn(f, x, y, norm='l2', steps=b['fmn'], bounds=(0., 1.)),
      'FMN l2 untargeted': lambda: fmn(f, x, y, norm='l2', steps=b['fmn'], targets=None,
                                       bounds=(0., 1.)),
      'bisection-PGD l2': lambda: bisection(f, x, y, norm='l2', key=k,
                                            search_steps=b['bis'][0], expand_steps=b['bis'][1],
                                            pgd_steps=b['bis'][2], bounds=(0., 1.)),
      'HopSkipJump l2': lambda: decision_attack(f, x, y, method='hopskipjump', key=k,
                                                bounds=(0., 1.), **b['hl']),
      'TangentAttack l2': lambda: decision_attack(f, x, y, method='tangent', key=k,
                                                  bounds=(0., 1.), **b['hl']),
  }
  print(f'backend={jax.default_backend()} devices={jax.device_count()} batch={n} '
        f"budgets={'small' if args.small else 'published'} {b}")
  head = (f"{'attack':<24}{'first s':>9}{'steady s':>10}{'points/s':>10}"
          f"{'queries/pt':>12}{'queries/s':>12}  result")
  print(head)
  print('-' * len(head))
  for name, fn in attacks.items():
    _, first = _timed(fn)
    out, steady = _timed(fn)
    queries = ''
    qps = ''
    if name.startswith('Square'):
      q = np.asarray(out[2])
      queries, qps = f'{q.mean():.0f}', f'{q.sum() / steady:.3g}'
      result = f'robust acc {float(np.mean(np.asarray(out[1]))):.3f}'
    elif name.startswith(('HopSkip', 'Tangent')):
      q = np.asarray(out[2])
      queries, qps = f'{q.mean():.0f}', f'{q.sum() / steady:.3g}'
      result = f'median dist {float(np.median(np.asarray(out[1]))):.3f}'
    elif name.startswith('APGD'):
      result = f'robust acc {float(np.mean(np.asarray(out[1]))):.3f}'
    else:
      result = f'median dist {float(np.median(np.asarray(out[1]))):.3f}'
    print(f'{name:<24}{first:>9.2f}{steady:>10.2f}{n / steady:>10.1f}{queries:>12}{qps:>12}  '
          f'{result}')


if __name__ == '__main__':
  main()
