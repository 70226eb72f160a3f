"""Cost of the spectral penalty: training-step overhead and sigma_max methods.

    python benchmarks/spectral.py [--repeats 3] [--steps 5]

1. One SGD step of Paper B's MNIST MLP (784-2000-10, batch 1024) without a
   penalty, with rep-spectral (hidden layer) and with ll-spectral (all
   layers), the penalty active from the first step: 10 power iterations per
   step (tol 0, the worst case of the per-step budget) and tol 1e-6 (the
   default, which stops early once warm). Target: rep <= 15% over clean (no penalty).
2. sigma_max per layer shape: 10 warm-started power iterations vs the full
   SVD (jnp.linalg.svd, values only).
3. A conv layer (3x3, 64 -> 64 channels, 32x32 inputs): the exact FFT norm,
   10 warm power iterations through the conv, and the reshaped-kernel SVD.

Each time is the best of ``repeats`` after a compile call; steps run
``steps`` at a time under lax.scan (the training loop's own chunking).
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import optax

from robustjax import spectral
from robustjax.models.mlp import MLP
from robustjax.spectral import conv_norm, power_iteration
from robustjax.experiments.spectral import batch_loss
from robustjax.train import state as state_lib
from robustjax.train.steps import train_steps
from timing import timeit  # benchmarks/timing.py, beside this script


def step_time(kind: str, tol: float, model, data, steps: int, repeats: int) -> float:
  params = model.init(jax.random.PRNGKey(0), data[0][:1])['params']
  mask = spectral.layer_mask(params, kind, feature_layers=model.feature_layers)
  spec = spectral.SpectralSpec(kind=kind, lam=1e-2, burn_in_steps=0, iters=10, tol=tol,
                               warmup_iters=10)
  tx = optax.chain(spectral.penalize(spec, mask), state_lib.make_optimizer('sgd', 0.1))
  state = state_lib.create(params, tx)
  loss_fn = functools.partial(batch_loss, model=model, batch_size=1024)
  run = jax.jit(lambda st, k: train_steps(st, k, data, jnp.asarray(1), steps, loss_fn)[0])
  state = run(state, jax.random.PRNGKey(1))  # past the warm-up step
  return timeit(run, state, jax.random.PRNGKey(2), repeats=repeats) / steps


def layer_times(shape, repeats: int):
  w = jax.random.normal(jax.random.PRNGKey(0), shape) / jnp.sqrt(shape[0])
  _, v = power_iteration.top_singular_value(w, iters=2000, tol=1e-7)
  w2 = w + 1e-3 * jax.random.normal(jax.random.PRNGKey(1), shape) / jnp.sqrt(shape[0])
  power = jax.jit(lambda w, v: power_iteration.top_singular_value(w, v, iters=10, tol=0.0))
  svd = jax.jit(lambda w: jnp.linalg.svd(w, compute_uv=False)[0])
  return timeit(power, w2, v, repeats=repeats), timeit(svd, w2, repeats=repeats)


def conv_times(repeats: int):
  k = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 64, 64)) / 24.0
  shape = (32, 32, 64)
  _, v = spectral.conv_operator_norm(k, shape, method='power', iters=500, tol=1e-7)
  fft = jax.jit(lambda k: spectral.conv_operator_norm(k, shape, method='fft')[0])
  power = jax.jit(lambda k, v: spectral.conv_operator_norm(k, shape, method='power', v=v,
                                                          iters=10, tol=0.0)[0])
  reshape = jax.jit(lambda k: spectral.conv_operator_norm(k, shape, method='reshape')[0])
  return {'fft (exact)': timeit(fft, k, repeats=repeats),
          'power, 10 warm iters': timeit(power, k, v, repeats=repeats),
          'reshape (bound)': timeit(reshape, k, repeats=repeats)}, (
              float(fft(k)), float(power(k, v)), float(reshape(k)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')

  model = MLP(widths=(2000,), num_classes=10)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4096, 784))
  data = (x, jax.random.randint(jax.random.PRNGKey(1), (4096,), 0, 10))
  rows = [('clean', 0.0)] + [(k, t) for k in ('rep', 'll') for t in (0.0, 1e-6)]
  times = {(k, t): step_time(k, t, model, data, args.steps, args.repeats) for k, t in rows}
  base = times[('clean', 0.0)]
  print('\n1. training step, MLP 784-2000-10, batch 1024, SGD')
  head = f"{'penalty':<10} {'power iters':<22} {'ms/step':>9} {'overhead':>9}"
  print(head + '\n' + '-' * len(head))
  for (k, t), s in times.items():
    iters = '-' if k == 'clean' else ('10 (tol 0)' if t == 0 else '<= 10 (tol 1e-6)')
    print(f"{k:<10} {iters:<22} {1e3 * s:>9.2f} {s / base - 1:>+9.1%}")
  rep = times[('rep', 0.0)] / base - 1
  print(f"target rep overhead <= 15%: {'met' if rep <= 0.15 else 'NOT met'} ({rep:+.1%})")

  print('\n2. sigma_max of one dense layer')
  head = f"{'shape':<12} {'power 10 warm (ms)':>19} {'full SVD (ms)':>14} {'SVD / power':>12}"
  print(head + '\n' + '-' * len(head))
  for shape in ((784, 2000), (2000, 10), (2000, 2000), (4096, 4096)):
    p, s = layer_times(shape, args.repeats)
    print(f"{'x'.join(map(str, shape)):<12} {1e3 * p:>19.3f} {1e3 * s:>14.2f} {s / p:>12.0f}")

  print('\n3. conv 3x3, 64 -> 64, 32x32 input, circular padding')
  t, (f, p, r) = conv_times(args.repeats)
  for name, s in t.items():
    print(f'{name:<22} {1e3 * s:>9.2f} ms')
  print(f'sigma: fft {f:.4f}, power {p:.4f}, reshape {r:.4f} (reshape underestimates)')


if __name__ == '__main__':
  main()
