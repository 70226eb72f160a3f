"""Peak host memory of the probe evaluation against eval.batch_size (CPU).

    python benchmarks/eval_memory.py [--width 16] [--batch_sizes 32,128]
                                     [--points 256,1024] [--fmn_steps 3]

What ``robustjax.recipes.probe`` runs per seed after pre-training, on a CIFAR
ResNet-18 (circular padding, width ``--width``) at 32x32x3 with random
weights and images and a random 10-class linear probe: the features of all
points (``probe.features``, in batches), then the FMN adversarial distances of
the first correctly classified points (``metrics.adversarial_distance``: its
clean pass and the attack, in batches). Every (batch_size, points) pair runs
in its own process under ``/usr/bin/time -v`` and the table gives its maximum
resident set size; 'all' is one batch of every point (the unbatched run).
In batches the peak should be flat in the number of points and grow with the
batch size; unbatched it grows with the points. The images themselves
(points x 12 KiB) are the only per-point memory left.
"""
import argparse
import os
import re
import subprocess
import sys

CHILD = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from robustjax.metrics import robustness
from robustjax.models import resnet
from robustjax.recipes import probe
width, bs, n, steps = (int(a) for a in sys.argv[1:5])
model = resnet.ResNet18(num_classes=10, width=width, padding='CIRCULAR')
params, stats = resnet.init(model, jax.random.PRNGKey(0), (32, 32, 3))
variables = {'params': params, 'batch_stats': stats}
x = jax.random.uniform(jax.random.PRNGKey(1), (n, 32, 32, 3))
f = probe.features(model, variables, x, bs)
head = {'kernel': jax.random.normal(jax.random.PRNGKey(2), (f.shape[-1], 10)),
        'bias': jnp.zeros(10)}
y = jnp.argmax(f @ head['kernel'], -1)  # every point correct: all of them are attacked
predict = probe.predict_fn(model, variables, head)
d = robustness.adversarial_distance(predict, x, y, method='fmn', key=jax.random.PRNGKey(3),
                                    max_points=None, bounds=(0.0, 1.0), batch_size=bs,
                                    steps=steps)
print('attacked', len(d['distances']), 'finite', int(np.isfinite(d['distances']).sum()))
'''


def peak_mib(width: int, batch_size: int, points: int, fmn_steps: int) -> float:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  proc = subprocess.run(['/usr/bin/time', '-v', sys.executable, '-c', CHILD, str(width),
                         str(batch_size), str(points), str(fmn_steps)], env=env,
                        capture_output=True, text=True, cwd=root)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-2000:])
  kb = re.search(r'Maximum resident set size \(kbytes\): (\d+)', proc.stderr)
  return int(kb.group(1)) / 1024


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--width', type=int, default=16)
  ap.add_argument('--batch_sizes', default='32,128')
  ap.add_argument('--points', default='256,1024')
  ap.add_argument('--fmn_steps', type=int, default=3)
  a = ap.parse_args()
  sizes = [int(b) for b in a.batch_sizes.split(',')]
  points = [int(p) for p in a.points.split(',')]
  print(f'ResNet-18 width {a.width}, 32x32x3, FMN {a.fmn_steps} steps; peak RSS (MiB) '
        'of features + distances, one process per cell')
  print('batch_size | ' + ' | '.join(f'{p} points' for p in points))
  for bs in sizes + ['all']:
    row = [peak_mib(a.width, p if bs == 'all' else bs, p, a.fmn_steps) for p in points]
    print(f'{bs} | ' + ' | '.join(f'{m:.0f}' for m in row), flush=True)


if __name__ == '__main__':
  main()
