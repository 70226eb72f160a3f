"""Runs one command as N jax processes on this machine: a multi-host run without a cluster.

    python -m robustjax.launch_local -n 2 [--devices_per_process 2] -- \\
        launch.py --config=configs/sparse_coding.py --config.mesh.data=-1 --workdir=W

Process i of n gets what ``jax.distributed.initialize`` reads on a cluster:
``JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT`` (a free port, process 0 runs the
coordinator), ``JAX_NUM_PROCESSES=n``, ``JAX_PROCESS_ID=i``, and
``devices_per_process`` fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``, ``JAX_PLATFORMS=cpu``
unless set), so the mesh spans n x devices_per_process devices. A command
that is ``launch.py`` gets ``--distributed`` when it lacks it; a ``.py``
command runs under this Python. The processes' collectives go over TCP
(gloo, see launch.py).

Each line a process writes is forwarded with its prefix (``[p0] ...``),
stdout to stdout and stderr to stderr. The run fails as a whole: when a
process exits non-zero the others are killed at once (a jax process whose peer
died would otherwise wait for the coordination timeout) and the launcher exits
with that first failure's status (128 + signal when it was killed by one).
Ctrl-C is passed to every process. Bad arguments: one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit 2 (argparse prints usage too)
    raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog='python -m robustjax.launch_local', add_help=True,
              description='Runs COMMAND as N jax processes on 127.0.0.1.')
  p.add_argument('-n', '--num_processes', type=int, required=True,
                 help='number of processes (>= 1)')
  p.add_argument('--devices_per_process', type=int, default=1,
                 help='fake CPU devices per process (>= 1, default 1)')
  p.add_argument('--port', type=int, default=0,
                 help="the coordinator's port (default 0: a free one)")
  p.add_argument('command', nargs=argparse.REMAINDER,
                 help='-- then the command, e.g. launch.py --config=...')
  return p


def parse(argv: list[str]) -> argparse.Namespace:
  """The launcher's arguments; ValueError (one line naming the argument) for bad ones."""
  args = _parser().parse_args(argv)
  command = list(args.command)
  if command[:1] == ['--']:
    command = command[1:]
  if not command:
    raise ValueError('command: give the command to run after --, e.g. '
                     '-- launch.py --config=configs/sparse_coding.py')
  if args.num_processes < 1:
    raise ValueError(f'-n: the number of processes must be >= 1, got {args.num_processes}')
  if args.devices_per_process < 1:
    raise ValueError('--devices_per_process: must be >= 1, got '
                     f'{args.devices_per_process}')
  if not 0 <= args.port <= 65535:
    raise ValueError(f'--port: must be in [0, 65535] (0: a free port), got {args.port}')
  if command[0].endswith('.py') and not os.path.isfile(command[0]):
    raise ValueError(f'command: script {command[0]!r} not found')
  args.command = command
  return args


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def command_line(command: list[str]) -> list[str]:
  """``command`` as run: a .py script under this Python; launch.py with --distributed."""
  command = list(command)
  if command[0].endswith('.py'):
    if os.path.basename(command[0]) == 'launch.py' and '--distributed' not in command:
      command.insert(1, '--distributed')
    command.insert(0, sys.executable)
  return command


def process_env(environ, *, port: int, num_processes: int, process_id: int,
                devices_per_process: int) -> dict:
  """The environment of process ``process_id`` (``environ`` plus the jax variables)."""
  env = dict(environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith(DEVICE_COUNT_FLAG)]
  env['XLA_FLAGS'] = ' '.join(flags + [f'{DEVICE_COUNT_FLAG}={devices_per_process}'])
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id))
  return env


def _forward(stream, out, prefix: str, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ''):
    with lock:
      out.write(prefix + line if line.endswith('\n') else prefix + line + '\n')
      out.flush()
  stream.close()


def _status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


def _stop(procs, sig=signal.SIGTERM) -> None:
  """Signals every process still running, then SIGKILLs the ones that outlive the grace."""
  for p in procs:
    if p.poll() is None:
      p.send_signal(sig)
  deadline = time.monotonic() + KILL_GRACE_S
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def run(command: list[str], num_processes: int, devices_per_process: int = 1,
        port: int = 0, environ=None, poll_s: float = 0.1) -> int:
  """Runs ``command`` as ``num_processes`` processes; returns the launcher's exit status:
  0 when all succeeded, else the first failure's status (the others are stopped)."""
  port = port or free_port()
  environ = os.environ if environ is None else environ
  argv, lock, procs, threads = command_line(command), threading.Lock(), [], []
  for i in range(num_processes):
    p = subprocess.Popen(argv, env=process_env(
        environ, port=port, num_processes=num_processes, process_id=i,
        devices_per_process=devices_per_process), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, bufsize=1)
    procs.append(p)
    for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
      t = threading.Thread(target=_forward, args=(stream, out, f'[p{i}] ', lock), daemon=True)
      t.start()
      threads.append(t)
  status = 0
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [c for c in codes if c not in (None, 0)]
      if failed:
        status = _status(failed[0])
        bad = codes.index(failed[0])
        with lock:
          print(f'launch_local: process {bad} exited with status {status}; stopping the '
                'others', file=sys.stderr, flush=True)
        _stop(procs)
        break
      if all(c == 0 for c in codes):
        break
      time.sleep(poll_s)
  except KeyboardInterrupt:
    _stop(procs, signal.SIGINT)
    status = 130
  for t in threads:
    t.join(timeout=5)
  return status


def main(argv=None) -> int:
  try:
    args = parse(sys.argv[1:] if argv is None else argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return run(args.command, args.num_processes, args.devices_per_process, args.port)


if __name__ == '__main__':
  sys.exit(main())
