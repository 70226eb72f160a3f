"""PGD-10 throughput against the machine's measured dense-matmul rate.

    python benchmarks/pgd.py [--repeats 5]

Prints a table: model, batch, examples x steps per second, achieved GFLOP/s of
the attack (forward + backward matmuls), and that as a fraction of the
float32 matmul GFLOP/s measured here (2048^3). Run it on an idle machine. The
last two columns use CPU seconds (all threads) instead of wall seconds: on a
shared machine they move much less than the wall-time rates, and compare how
much matmul work each CPU second of the attack does.
"""
import argparse

import jax
import jax.numpy as jnp

from robustjax import losses
from robustjax.attacks import pgd
from robustjax.models.apply import bind, logits
from robustjax.models.mlp import MLP
from robustjax.models.two_layer import TwoLayer
from timing import timeit  # benchmarks/timing.py, beside this script


def matmul_gflops(n: int, repeats: int) -> tuple[float, float]:
  """(GFLOP per wall second, GFLOP per CPU second) of an n^3 float32 matmul."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  t, cpu = timeit(f, a, repeats=repeats, cpu=True)
  return 2 * n ** 3 / t / 1e9, 2 * n ** 3 / cpu / 1e9


def attack_loss(logit_fn, y, x):
  return -losses.margin(logit_fn(x), y)


def bench(name, model, x, y, repeats, steps=10):
  params = model.init(jax.random.PRNGKey(1), x[:1])['params']
  loss = jax.tree_util.Partial(attack_loss, bind(logits, model, params), y)
  run = jax.jit(lambda x, key: pgd(loss, x, eps=0.5, norm='l2', steps=steps, step_size=0.125,
                                   key=key))
  t, cpu = timeit(run, x, jax.random.PRNGKey(2), repeats=repeats, cpu=True)
  # Matmul flops per example and pass: forward 2*sum(fan_in*fan_out); a step is a
  # forward and a backward (input gradient only: the same flops again), plus the
  # final evaluation pass.
  fwd = sum(2 * a.size for a in jax.tree.leaves(params) if a.ndim == 2)
  flops = x.shape[0] * fwd * (2 * steps + 1)
  return {'model': name, 'batch': x.shape[0], 'time_s': t,
          'ex_steps_per_s': x.shape[0] * steps / t, 'gflops': flops / t / 1e9,
          'gflops_cpu': flops / cpu / 1e9}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  peak, peak_cpu = matmul_gflops(2048, args.repeats)
  rows = [
      bench('two-layer d=64 m=256', TwoLayer(width=256, bias_init=0.1),
            jax.random.normal(jax.random.PRNGKey(0), (4096, 64)),
            jnp.ones(4096), args.repeats),
      bench('MLP 784-2000-10', MLP(widths=(2000,), num_classes=10),
            jax.random.uniform(jax.random.PRNGKey(0), (1024, 784)),
            jnp.zeros(1024, jnp.int32), args.repeats),
  ]
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}; '
        f'float32 matmul 2048^3: {peak:.1f} GFLOP/s, {peak_cpu:.1f} GFLOP per CPU second')
  head = (f"{'model':<22} {'batch':>6} {'PGD-10 s':>9} {'ex*steps/s':>12} {'GFLOP/s':>9} "
          f"{'of matmul':>9} {'GFLOP/cpu-s':>11} {'of matmul':>9}")
  print(head)
  print('-' * len(head))
  for r in rows:
    print(f"{r['model']:<22} {r['batch']:>6} {r['time_s']:>9.4f} {r['ex_steps_per_s']:>12.0f} "
          f"{r['gflops']:>9.1f} {r['gflops'] / peak:>9.1%} {r['gflops_cpu']:>11.1f} "
          f"{r['gflops_cpu'] / peak_cpu:>9.1%}")


if __name__ == '__main__':
  main()
