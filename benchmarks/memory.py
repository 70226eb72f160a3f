"""Peak memory of ``evaluate_robust_accuracy`` against batch size and number of points.

Each row is one evaluation in a fresh process, measured by ``/usr/bin/time -v``
("Maximum resident set size": the whole process, jax and the compiled
programs included). The model is a small CNN (``models.resnet.SmallCNN``,
widths 32-64-128, BatchNorm in eval mode) on 32x32x3 inputs in [0, 1] with
random weights (memory does not depend on what the model learnt); labels are
its own predictions, so every point is attacked. The ensemble is AutoAttack's
'standard' (APGD-CE, APGD-T, FAB-T, Square) at linf 0.5/255 (small enough
that every member has points left to attack) with small budgets (memory does
not grow with iterations: the attacks loop in place). Each configuration
runs twice and the second run is reported: the first fills a persistent
compilation cache, so the peak measured is the evaluation's, not the
compiler's.

Two sweeps: the batch size at a fixed number of points (memory grows with
it), and the number of points at a fixed batch size, next to the unchunked run
(batch_size=None): chunked, the peak stays flat in n up to the inputs
themselves (n x 12 KiB here), unchunked it grows with n.

  python benchmarks/memory.py                      # ~10 min on 2 CPU cores
  python benchmarks/memory.py --batch-sizes 16 64 --points 64 256
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(n: int, batch_size: int | None, eps: float) -> None:
  """One evaluation; prints 'robust=<acc> seconds=<s>'."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from robustjax.attacks import evaluate_robust_accuracy
  from robustjax.models import apply, resnet

  model = resnet.SmallCNN(widths=(32, 64, 128))
  params, stats = resnet.init(model, jax.random.PRNGKey(0), (32, 32, 3))
  variables = {'params': params, 'batch_stats': stats}
  f = apply.bind(resnet.eval_logits, model, variables)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(n, 32, 32, 3)).astype(np.float32)
  y = np.concatenate([np.asarray(f(jnp.asarray(x[i:i + 64]))).argmax(-1)
                      for i in range(0, n, 64)])
  t0 = time.perf_counter()
  r = evaluate_robust_accuracy(f, x, y, eps=eps, norm='linf', key=jax.random.PRNGKey(1),
                               bounds=(0.0, 1.0), batch_size=batch_size, n_iter=5, fab_steps=5,
                               square_queries=20, n_target_classes=3, warn=False)
  broken = '/'.join(str(a['broken']) for a in r['per_attack'])
  print(f"robust={r['robust_accuracy']:.3f} broken={broken} seconds={time.perf_counter() - t0:.1f}")


def measure(n: int, batch_size: int | None, eps: float, cache: str) -> tuple[float, str]:
  """(peak resident set size in MiB, the child's line) of the second of two runs:
  the first fills the persistent compilation cache, so the measured run reads
  its programs from it and its peak is the evaluation's, not XLA's compiler's
  (compiling takes ~150 MiB more here, and more for larger programs)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  cmd = ['/usr/bin/time', '-v', sys.executable, os.path.abspath(__file__), '--child',
         '--n', str(n), '--batch-size', str(batch_size), '--eps', str(eps)]
  for _ in range(2):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
      raise RuntimeError(out.stderr[-2000:])
  kib = int(re.search(r'Maximum resident set size \(kbytes\): (\d+)', out.stderr).group(1))
  return kib / 1024, out.stdout.strip().splitlines()[-1]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--n', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--batch-size', default='None', help=argparse.SUPPRESS)
  ap.add_argument('--batch-sizes', type=int, nargs='+', default=[16, 32, 64, 128, 256])
  ap.add_argument('--points', type=int, nargs='+', default=[64, 128, 256, 512])
  ap.add_argument('--fixed-points', type=int, default=256)
  ap.add_argument('--fixed-batch', type=int, default=32)
  ap.add_argument('--eps', type=float, default=0.5 / 255)
  args = ap.parse_args()
  if args.child:
    child(args.n, None if args.batch_size == 'None' else int(args.batch_size), args.eps)
    return
  cache = tempfile.mkdtemp(prefix='robustjax-memory-cache-')
  print('peak resident memory of one evaluate_robust_accuracy process (/usr/bin/time -v); '
        f"SmallCNN 32-64-128 on 32x32x3, 'standard' at linf {args.eps:.4g}, small budgets; "
        'broken: points each member broke')
  head = f"{'sweep':<12}{'points':>8}{'batch_size':>12}{'peak MiB':>10}  result"
  print(head)
  print('-' * len(head))
  for bs in args.batch_sizes:
    mib, line = measure(args.fixed_points, bs, args.eps, cache)
    print(f"{'batch size':<12}{args.fixed_points:>8}{bs:>12}{mib:>10.0f}  {line}", flush=True)
  for n in args.points:
    for bs in (args.fixed_batch, None):
      mib, line = measure(n, bs, args.eps, cache)
      print(f"{'points':<12}{n:>8}{str(bs):>12}{mib:>10.0f}  {line}", flush=True)


if __name__ == '__main__':
  main()
