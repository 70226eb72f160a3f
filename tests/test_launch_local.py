"""robustjax.launch_local: N local processes, prefixed output, failing as a whole."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from robustjax import launch_local
from tests.helpers import ROOT


def _launch_local(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'robustjax.launch_local', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args, match', [
    (['--', 'x.py'], 'required: -n/--num_processes'),
    (['-n', 'two', '--', 'launch.py'], "invalid int value: 'two'"),
    (['-n', '0', '--', 'launch.py'], '-n: the number of processes must be >= 1, got 0'),
    (['-n', '2', '--devices_per_process', '0', '--', 'launch.py'],
     '--devices_per_process: must be >= 1, got 0'),
    (['-n', '2', '--port', '70000', '--', 'launch.py'], r'--port: must be in \[0, 65535\]'),
    (['-n', '2'], 'command: give the command to run after --'),
    (['-n', '2', '--', 'no_such_script.py'], "command: script 'no_such_script.py' not found"),
])
def test_bad_arguments_are_one_line(args, match):
  with pytest.raises(ValueError, match=match):
    launch_local.parse(args)


def test_bad_arguments_exit_2_with_one_line():
  proc = _launch_local('-n', '0', '--', 'launch.py')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: -n: the number of processes must be >= 1, got 0'], proc.stderr
  assert proc.stdout == ''


def test_command_line_and_environment():
  assert launch_local.parse(['-n', '2', '--', 'launch.py', '--config=c.py']).command == [
      'launch.py', '--config=c.py']
  assert launch_local.command_line(['launch.py', '--config=c.py']) == [
      sys.executable, 'launch.py', '--distributed', '--config=c.py']
  assert launch_local.command_line(['launch.py', '--distributed']) == [
      sys.executable, 'launch.py', '--distributed']
  assert launch_local.command_line(['echo', 'hi']) == ['echo', 'hi']
  env = launch_local.process_env(
      {'XLA_FLAGS': '--xla_foo=1 --xla_force_host_platform_device_count=8', 'HOME': '/h'},
      port=1234, num_processes=3, process_id=2, devices_per_process=4)
  assert env == {'XLA_FLAGS': '--xla_foo=1 --xla_force_host_platform_device_count=4',
                 'HOME': '/h', 'JAX_PLATFORMS': 'cpu',
                 'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '3',
                 'JAX_PROCESS_ID': '2'}
  assert launch_local.process_env({'JAX_PLATFORMS': 'gpu'}, port=1, num_processes=1,
                                  process_id=0, devices_per_process=1)['JAX_PLATFORMS'] == 'gpu'


def test_each_process_gets_its_id_and_prefixed_output(tmp_path, capfd):
  script = tmp_path / 'show.py'
  script.write_text(textwrap.dedent('''
      import os, sys
      print('id', os.environ['JAX_PROCESS_ID'], 'of', os.environ['JAX_NUM_PROCESSES'],
            os.environ['JAX_COORDINATOR_ADDRESS'].split(':')[0], os.environ['XLA_FLAGS'])
      print('to stderr', file=sys.stderr)
  '''))
  assert launch_local.run([str(script)], 3, devices_per_process=2) == 0
  out, err = capfd.readouterr()
  flag = '--xla_force_host_platform_device_count=2'
  assert sorted(out.splitlines()) == [f'[p{i}] id {i} of 3 127.0.0.1 {flag}' for i in range(3)]
  assert sorted(err.splitlines()) == [f'[p{i}] to stderr' for i in range(3)]


def test_one_failure_stops_the_others_and_sets_the_status(tmp_path, capfd):
  # Process 1 fails with status 3 at once; process 0 would sleep for 10 minutes.
  script = tmp_path / 'fail.py'
  script.write_text(textwrap.dedent('''
      import os, sys, time
      if os.environ['JAX_PROCESS_ID'] == '1':
        print('failing', flush=True)
        sys.exit(3)
      print('waiting', flush=True)
      time.sleep(600)
  '''))
  t0 = time.monotonic()
  assert launch_local.run([str(script)], 2) == 3
  assert time.monotonic() - t0 < 60  # not the 600 s sleep: process 0 was stopped
  out, err = capfd.readouterr()
  assert '[p1] failing' in out.splitlines() and '[p0] waiting' in out.splitlines()
  assert 'launch_local: process 1 exited with status 3; stopping the others' in err


_GLOBAL_SUM = '''
import sys
sys.argv = ['x', '--distributed']
import launch
launch.start_distributed(True)
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ('data',))
i = jax.process_index()
local = np.arange(2, dtype=np.float32) + 2 * i  # process i holds [2i, 2i + 1]
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), local)
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
print('result', jax.process_count(), jax.device_count(), jax.local_device_count(),
      jax.config.jax_cpu_collectives_implementation, float(total))
'''


@pytest.mark.slow
def test_two_jax_processes_see_four_devices_and_sum_across_them(tmp_path):
  script = tmp_path / 'sum.py'
  script.write_text(_GLOBAL_SUM)
  proc = _launch_local('-n', '2', '--devices_per_process', '2', '--', str(script), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Four devices over two processes; 0 + 1 + 2 + 3 on both.
  assert sorted(l for l in proc.stdout.splitlines() if ' result ' in l) == [
      '[p0] result 2 4 2 gloo 6.0', '[p1] result 2 4 2 gloo 6.0'], proc.stdout
