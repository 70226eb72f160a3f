"""Many seeds in one compile, one step on 1 vs 8 (fake) devices, and on 1 vs 2 processes.

    python benchmarks/seeds.py [--seeds 10] [--steps 300] [--no-devices] [--no-processes]

1. The sparse-coding supervised stage (adversarial pre-training, PGD-5, the
   default config's sizes: d = D = 64, width 256, batch 256) for ``--seeds``
   seeds: all vmapped in one compiled program, against the same seeds as
   sequential one-seed runs (each its own compile, as separate runs would be).
   "total" is the wall time including compilation; "per 100 steps" is the
   steady-state compute, from the difference between runs of 2N and N steps.
2. The same stage's step time with 8 seeds on one device and on a data = 8
   mesh of 8 fake CPU devices (a subprocess with
   XLA_FLAGS=--xla_force_host_platform_device_count=8): the code path a TPU
   pod runs, here sharing the same CPU cores.
3. The same stage's step time on a data = 4 mesh of 4 fake CPU devices held by
   one process, and by two processes of 2 devices each (``jax.distributed``
   over gloo, started with ``robustjax.launch_local``): what crossing a
   process boundary costs. With 4 seeds each device trains its own seed (no
   communication); with 1 seed each step's batch is split over the 4 devices
   and the gradient is all-reduced every step (across the processes in the
   second layout). Each is the median time of a compiled chunk of ``--steps``
   steps, per step.

Run it on an idle machine; wall times on a shared one are noisy.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import sparse_coding as config_lib  # noqa: E402
from robustjax.data import sparse_coding as sc  # noqa: E402
from robustjax.recipes import supervised  # noqa: E402


def make_cfg(steps: int, mesh=None, chunk: int | None = None):
  cfg = config_lib.get_config()
  cfg.pretrain.steps = steps
  # Runs of N and 2N steps share one chunk size N, so they compile the same
  # program and their difference is N steps of compute (no compile in it).
  cfg.chunk_size = chunk or steps
  cfg.progress = False
  if mesh is not None:
    cfg.mesh = mesh
  return cfg


def train_seconds(cfg, worlds, keys) -> float:
  t0 = time.perf_counter()
  params, _ = supervised.train(cfg, worlds, worlds.theta0, keys, adversarial=True)
  jax.block_until_ready(params)
  return time.perf_counter() - t0


def setup(num_seeds: int):
  cfg = make_cfg(1)
  keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
  spec = sc.SparseCodingSpec.from_config(cfg.data)
  worlds = jax.vmap(lambda k: sc.make_world(k, spec))(keys)
  return worlds, keys


def vmapped_vs_sequential(num_seeds: int, steps: int) -> dict:
  worlds, keys = setup(num_seeds)
  one = lambda i: (jax.tree.map(lambda a: a[i:i + 1], worlds), keys[i:i + 1])
  out = {}
  for n in (steps, 2 * steps):
    cfg = make_cfg(n, chunk=steps)
    out[('vmapped', n)] = train_seconds(cfg, worlds, keys)
    out[('sequential', n)] = sum(train_seconds(cfg, *one(i)) for i in range(num_seeds))
  return out


def device_step_ms(steps: int) -> dict:
  """Runs in the 8-fake-device subprocess: ms per step, 8 seeds, 1 device vs data = 8."""
  worlds, keys = setup(8)
  res = {}
  for name, mesh in (('1 device', None), ('8 fake devices (data=8)', {'data': 8, 'model': 1})):
    t = {n: train_seconds(make_cfg(n, mesh, chunk=steps), worlds, keys)
         for n in (steps, 2 * steps)}
    res[name] = 1e3 * (t[2 * steps] - t[steps]) / steps
  return res


PROCESS_LAYOUTS = {'4 seeds over data (no communication)': 4,
                   '1 seed, batch over data (all-reduce)': 1}


def process_step_ms(steps: int, chunks: int = 4) -> dict:
  """Runs in every process of a 4-device layout: ms per step on a data = 4 mesh.

  One fit of ``chunks`` chunks of ``steps`` steps; the first chunk (it
  compiles) is dropped and the median of the others' wall time per step
  (``loop.fit``'s chunk records) is reported.
  """
  from robustjax.train import metric_log  # pylint: disable=import-outside-toplevel
  if os.environ.get('JAX_NUM_PROCESSES'):
    import launch  # pylint: disable=import-outside-toplevel
    launch.start_distributed(True)
  res = {}
  for name, seeds in PROCESS_LAYOUTS.items():
    worlds, keys = setup(seeds)
    records = []
    with metric_log.sink(records.append):
      train_seconds(make_cfg(chunks * steps, {'data': 4, 'model': 1}, chunk=steps), worlds, keys)
    res[name] = float(np.median([1e3 / r['steps_per_s'] for r in records[1:]]))
  return res


def processes_table(steps: int) -> None:
  """Step time with 4 devices in 1 process vs 2 processes x 2 devices, printed as a table."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  part = [os.path.abspath(__file__), '--process-part', f'--steps={steps}']
  runs = {'1 process x 4': ([sys.executable, *part],
                            dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=4')),
          '2 processes x 2': ([sys.executable, '-m', 'robustjax.launch_local', '-n', '2',
                               '--devices_per_process', '2', '--', *part], env)}
  res = {}
  for name, (cmd, e) in runs.items():
    proc = subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f'{name}: exit {proc.returncode}: {proc.stderr[-2000:]}')
    line = next(l for l in proc.stdout.splitlines() if 'RESULT ' in l)
    res[name] = json.loads(line.split('RESULT ', 1)[1])
  cols = list(runs)
  print(f'\nms per step, same stage, data = 4 mesh | ' + ' | '.join(f'{c:>15}' for c in cols)
        + ' | ratio')
  print(f'{"-" * 39}-+-' + '-+-'.join('-' * 15 for _ in cols) + '-+------')
  for row in PROCESS_LAYOUTS:
    a, b = (res[c][row] for c in cols)
    print(f'{row:39} | {a:15.1f} | {b:15.1f} | {b / a:4.2f}x')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', type=int, default=10)
  ap.add_argument('--steps', type=int, default=300)
  ap.add_argument('--no-devices', action='store_true', help='skip the 1 vs 8 devices part')
  ap.add_argument('--no-processes', action='store_true',
                  help='skip the 1 process x 4 devices vs 2 processes x 2 devices part')
  ap.add_argument('--only-processes', action='store_true', help='run only that part')
  ap.add_argument('--device-part', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--process-part', action='store_true', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.device_part:
    print('RESULT ' + json.dumps(device_step_ms(args.steps)))
    return
  if args.process_part:
    res = process_step_ms(args.steps)
    if jax.process_index() == 0:
      print('RESULT ' + json.dumps(res))
    return
  if args.only_processes:
    processes_table(args.steps)
    return

  S, N = args.seeds, args.steps
  print(f'sparse-coding supervised stage, adversarial (PGD-{make_cfg(1).attack.steps}), '
        f'{S} seeds, {jax.device_count()} device(s) {jax.devices()[0].platform}, '
        f'{os.cpu_count()} CPU cores')
  t = vmapped_vs_sequential(S, N)
  rows = []
  for mode in ('vmapped', 'sequential'):
    total = t[(mode, N)]
    per100 = 100 * (t[(mode, 2 * N)] - t[(mode, N)]) / N
    rows.append((mode, total, per100))
  name = {'vmapped': f'{S} seeds vmapped, 1 compile',
          'sequential': f'{S} sequential runs, {S} compiles'}
  print(f'\n{"":34} | total {N} steps (s) | per 100 steps, compiled (s)')
  print(f'{"-" * 34}-+-{"-" * 19}-+-{"-" * 28}')
  for mode, total, per100 in rows:
    print(f'{name[mode]:34} | {total:19.2f} | {per100:28.3f}')
  (_, tv, pv), (_, ts, ps) = rows
  print(f'{"speed-up (sequential / vmapped)":34} | {ts / tv:18.1f}x | {ps / pv:27.1f}x')

  if not args.no_devices:
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--device-part',
                           f'--steps={N}'], env=env, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1][len('RESULT '):])
    print(f'\nstep time, 8 seeds vmapped, same stage | ms per step')
    print(f'{"-" * 39}-+-{"-" * 11}')
    for k, v in res.items():
      print(f'{k:39} | {v:11.1f}')
  if not args.no_processes:
    processes_table(N)


if __name__ == '__main__':
  main()
