"""First-call and second-call cost of each attack and of the AutoAttack versions.

The model is issue 17's digits MLP: 64-256-10 ReLU, trained (Adam, 300 full-batch
steps) on the first 1400 of scikit-learn's 8x8 digits; the points are the other
397, in [0, 1] (``bounds``). Each row runs in a fresh Python process with an
empty persistent compilation cache (``robustjax.compilation_cache``), so its
first call is what a researcher meets in a new session: compile included
(and the cache written). Per row: seconds of the first call, of which
compiling (``timing.compile_seconds``, all threads), the number of XLA
programs it compiled (``timing.compiled_programs``), seconds of a second
call on the same points, programs that call compiled (0: nothing
recompiles), the first call of a second fresh process that finds the cache
warm ('warm 1st s': tracing and lowering are not cached), and the robust
accuracy.

Attacks alone run on all 397 points in one program (``batch_size`` None):
APGD-CE; APGD-T over the 9 runner-up classes (9 calls of one program); FAB-T
and FMN with 9 targets (a point counts when its minimal point is within
eps); Square. The ensembles ('standard' = AutoAttack's APGD-CE, APGD-T,
FAB-T, Square; 'custom' = robustjax's APGD-CE, APGD-T, FMN, Square) run with
the default batch_size (250).

  python benchmarks/ensemble.py                  # published budgets, ~15 min on 2 CPU cores
  python benchmarks/ensemble.py --small          # APGD 20 iterations, FAB/FMN 20, Square 500
  python benchmarks/ensemble.py --shipped        # torchattacks' AutoAttack defaults: 10 / 10 / 5000
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ('apgd-ce', 'apgd-t', 'fab-t', 'fmn', 'square', 'standard', 'custom')
EPS = {'linf': 0.1, 'l2': 0.5}


def mlp(params, x):
  h = jax.nn.relu(x @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def train(path: str) -> None:
  """The 64-256-10 ReLU MLP on digits[:1400]; saves the weights and the 397 test points."""
  import optax
  from sklearn.datasets import load_digits
  xs, ys = load_digits(return_X_y=True)
  xs, ys = (xs / 16.0).astype(np.float32), ys.astype(np.int32)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {'w1': jax.random.normal(k1, (64, 256)) / 8.0, 'b1': jnp.zeros(256),
            'w2': jax.random.normal(k2, (256, 10)) / 16.0, 'b2': jnp.zeros(10)}
  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, s):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        mlp(p, xs[:1400]), ys[:1400]).mean()
    u, s = opt.update(jax.grad(loss)(p), s)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  for _ in range(300):
    params, state = step(params, state)
  np.savez(path, x=xs[1400:], y=ys[1400:], **{k: np.asarray(v) for k, v in params.items()})


SMALL, SHIPPED, PUBLISHED = (20, 20, 500), (10, 10, 5000), (100, 100, 5000)


def child(path: str, row: str, norm: str, cache: str, budgets: tuple) -> None:
  """One row: prints a JSON line."""
  from robustjax import compilation_cache, timing
  compilation_cache.enable(cache)
  from robustjax.attacks import apgd, evaluate_robust_accuracy, fab, fmn, square
  from robustjax.attacks.apgd import target_classes
  data = np.load(path)
  f = jax.tree_util.Partial(mlp, {k: jnp.asarray(data[k]) for k in ('w1', 'b1', 'w2', 'b2')})
  x, y = data['x'], data['y']
  eps, key, box = EPS[norm], jax.random.PRNGKey(0), (0.0, 1.0)
  n_iter, steps, queries = budgets

  def apgd_t():
    robust = np.ones(len(y), bool)
    for rank in range(2, 11):
      r = apgd(f, x, y, eps=eps, norm=norm, key=jax.random.fold_in(key, rank), loss='dlr-t',
               target=target_classes(f, x, rank), n_iter=n_iter, bounds=box)[1]
      robust &= np.asarray(r)
    return robust

  runs = {
      'apgd-ce': lambda: np.asarray(apgd(f, x, y, eps=eps, norm=norm, key=key, n_iter=n_iter,
                                         bounds=box)[1]),
      'apgd-t': apgd_t,
      'fab-t': lambda: ~(np.asarray(fab(f, x, y, norm=norm, eps=eps, targets=9, steps=steps,
                                        bounds=box)[1]) <= eps),
      'fmn': lambda: ~(np.asarray(fmn(f, x, y, norm=norm, targets=9, steps=steps,
                                      bounds=box)[1]) <= eps),
      'square': lambda: np.asarray(square(f, x, y, eps=eps, norm=norm, key=key,
                                          n_queries=queries, bounds=box)[1]),
  }
  for version in ('standard', 'custom'):
    runs[version] = functools.partial(
        lambda v: evaluate_robust_accuracy(
            f, x, y, eps=eps, norm=norm, key=key, version=v, bounds=box, n_iter=n_iter,
            fab_steps=steps, fmn_steps=steps, square_queries=queries, warn=False)['robust'],
        version)
  clean = np.asarray(jnp.argmax(f(x), -1)) == y
  out = {}
  for call in ('first', 'second'):
    t0 = time.perf_counter()
    with timing.compile_seconds() as c, timing.compiled_programs() as names:
      robust = runs[row]()
    out[call] = dict(seconds=time.perf_counter() - t0, compile=c[0], programs=len(names))
  out['robust_accuracy'] = float(np.mean(robust & clean))
  print(json.dumps(out))


def _run(cmd, env) -> dict:
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  if out.returncode != 0:
    raise RuntimeError(out.stderr[-2000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--small', action='store_true', help='APGD 20 iterations, FAB/FMN 20 steps, '
                  'Square 500 queries (default: the published 100 / 100 / 5000)')
  ap.add_argument('--shipped', action='store_true', help="torchattacks' AutoAttack defaults: "
                  'APGD 10 iterations, FAB/FMN 10 steps, Square 5000 queries')
  ap.add_argument('--rows', nargs='+', default=list(ROWS), choices=ROWS)
  ap.add_argument('--norms', nargs='+', default=['linf', 'l2'], choices=sorted(EPS))
  ap.add_argument('--child', nargs=4, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.small and args.shipped:
    ap.error('--small and --shipped: choose one')
  name, budgets = (('small', SMALL) if args.small else ('shipped', SHIPPED) if args.shipped
                   else ('published', PUBLISHED))
  if args.child:
    child(*args.child, budgets)
    return
  path = os.path.join(tempfile.mkdtemp(prefix='robustjax-ensemble-bench-'), 'mlp.npz')
  train(path)
  env = dict(os.environ, PYTHONPATH=ROOT)
  print(f'digits MLP 64-256-10 ReLU, 397 points, budgets {name} (APGD iterations, FAB/FMN '
        f'steps, Square queries {budgets}); each row a fresh process with an empty persistent '
        "compilation cache, then another finding it warm ('warm 1st s')")
  head = (f"{'norm':<6}{'eps':>5}  {'attack':<10}{'1st s':>8}{'compile s':>11}{'programs':>10}"
          f"{'2nd s':>8}{'programs':>10}{'warm 1st s':>12}{'robust acc':>12}")
  print(head)
  print('-' * len(head))
  for norm in args.norms:
    for row in args.rows:
      cache = tempfile.mkdtemp(prefix='robustjax-ensemble-cache-')
      cmd = [sys.executable, os.path.abspath(__file__), '--child', path, row, norm, cache]
      cmd += ['--small'] if args.small else ['--shipped'] if args.shipped else []
      r, warm = (_run(cmd, env) for _ in range(2))   # empty cache, then warm
      a, b = r['first'], r['second']
      print(f"{norm:<6}{EPS[norm]:>5}  {row:<10}{a['seconds']:>8.2f}{a['compile']:>11.2f}"
            f"{a['programs']:>10}{b['seconds']:>8.2f}{b['programs']:>10}"
            f"{warm['first']['seconds']:>12.2f}{r['robust_accuracy']:>12.3f}", flush=True)


if __name__ == '__main__':
  main()
