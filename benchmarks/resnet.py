"""CIFAR ResNet-18 training-step throughput: clean, adversarial (PGD-10), rep-spectral.

    python benchmarks/resnet.py [--batch 128] [--width 64] [--steps 3] [--repeats 2]
                               [--padding CIRCULAR]

One SGD step (momentum 0.9, BatchNorm in train mode) on 32x32x3 inputs, 10
classes, for:

- clean: cross-entropy on the batch;
- adversarial: PGD-10 l_inf, eps 8/255, step 2/255, random start, inputs in
  [0, 1], run inside the step on the model in eval mode (running BatchNorm
  statistics, untouched), then the clean-style update on the attacked batch;
- rep-spectral: clean plus lam * sum sigma_max^2 over every conv up to the
  feature map, the true conv operator norms by power iteration through each
  conv and its transpose, 1 warm-started iteration per step.

Each time is the best of ``repeats`` after a compile call, ``steps`` steps at
a time under lax.scan (the training loop's own chunking; on a CPU one
compiled step per call, as ``loop.fit(fused_steps=False)``); the batch is fixed
(random images), so only compute is measured. Prints the device kind and a
table: config | images/s | ms/step | relative to clean.
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import optax

from robustjax import losses, spectral
from robustjax.attacks import pgd
from robustjax.models import resnet
from robustjax.models.apply import bind
from robustjax.train import state as state_lib
from robustjax.train.steps import train_steps
from timing import timeit  # benchmarks/timing.py, beside this script

EPS = 8 / 255


def attack_loss(logit_fn, y, x):
  return losses.cross_entropy(logit_fn(x), y)


def loss_fn(params, key, aux, batch_stats, *, model, adversarial: bool):
  x, y = aux
  if adversarial:
    # Eval mode: the attack reads the running statistics and updates nothing.
    logit_fn = bind(resnet.eval_logits, model, {'params': params, 'batch_stats': batch_stats})
    x = pgd(jax.tree_util.Partial(attack_loss, logit_fn, y), x, eps=EPS, norm='linf', steps=10,
            step_size=2 / 255, key=key, bounds=(0.0, 1.0))
    x = jax.lax.stop_gradient(x)
  logits, new_stats = resnet.train_forward(model, params, batch_stats, x)
  return jnp.mean(losses.cross_entropy(logits, y)), ({}, new_stats)


def step_time(config: str, model, data, steps: int, repeats: int, fused: bool) -> float:
  params, stats = resnet.init(model, jax.random.PRNGKey(0), data[0].shape)
  tx = state_lib.make_optimizer('sgd', 0.1, weight_decay=5e-4)
  if config == 'rep-spectral':
    layers = spectral.conv_layers(model, {'params': params, 'batch_stats': stats}, data[0][:1])
    mask = spectral.layer_mask(params, 'rep', feature_layers=model.feature_layers,
                               conv_layers=layers)
    spec = spectral.SpectralSpec(kind='rep', lam=1e-3, burn_in_steps=0, iters=1,
                                 warmup_iters=1, tol=0.0)
    tx = optax.chain(spectral.penalize(spec, mask), tx)
  state = state_lib.create(params, tx, batch_stats=stats)
  fn = functools.partial(loss_fn, model=model, adversarial=config == 'adversarial PGD-10')
  if fused:
    run = jax.jit(lambda st, k: train_steps(st, k, data, jnp.asarray(0), steps, fn)[0])
  else:  # one compiled step per call, as loop.fit(fused_steps=False)
    one = jax.jit(lambda st, k, t: train_steps(st, k, data, t, 1, fn)[0])

    def run(st, k):
      for t in range(steps):
        st = one(st, k, jnp.asarray(t))
      return st
  return timeit(run, state, jax.random.PRNGKey(1), repeats=repeats) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--padding', default='CIRCULAR', choices=resnet.PADDINGS)
  parser.add_argument('--fused', default='auto', choices=('auto', 'yes', 'no'),
                      help="steps under one lax.scan (auto: not on CPU, where XLA runs conv "
                           "weight gradients ~17x slower inside loops, jax-ml/jax#12868)")
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()} '
        f'({jax.default_backend()})')
  model = resnet.ResNet18(num_classes=10, width=args.width, padding=args.padding)
  key_x, key_y = jax.random.split(jax.random.PRNGKey(0))
  data = (jax.random.uniform(key_x, (args.batch, 32, 32, 3)),
          jax.random.randint(key_y, (args.batch,), 0, 10))
  configs = ('clean', 'adversarial PGD-10', 'rep-spectral')
  fused = {'auto': jax.default_backend() != 'cpu', 'yes': True, 'no': False}[args.fused]
  times = {c: step_time(c, model, data, args.steps, args.repeats, fused) for c in configs}
  print(f'\nResNet-18 (width {args.width}, {args.padding}), CIFAR 32x32x3, batch {args.batch}, '
        f"SGD; best of {args.repeats} x {args.steps} steps, {'one scan' if fused else 'one call per step'}")
  head = f"{'config':<20} {'images/s':>10} {'ms/step':>10} {'relative to clean':>18}"
  print(head + '\n' + '-' * len(head))
  for c, t in times.items():
    print(f"{c:<20} {args.batch / t:>10.1f} {1e3 * t:>10.1f} {t / times['clean']:>17.2f}x")


if __name__ == '__main__':
  main()
