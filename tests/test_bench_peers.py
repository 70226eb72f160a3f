"""`benchmarks/attacks.py --peers`: our columns always, the peers' with the bench extra.

Runs the script as a user would (a fresh interpreter) on a tiny budget: the
PGD rows only, 8 points, 10 training steps. Without torch / torchattacks /
foolbox it must print the table with our figures and the line saying how to
get the peers'; with them, the same rows carry torchattacks' columns and the
weight-copy check has passed.
"""
import configparser
import importlib.util
import os
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, 'benchmarks', 'attacks.py')
TINY = ['--peers', '--small', '--points', '8', '--pgd-tile', '1', '--rows', 'pgd',
        '--train-steps', '10']


def _bench(*args, timeout=300):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def bench_pins():
  """(name, version) of each requirement of setup.cfg's bench extra."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  reqs = [l.strip() for l in cfg['options.extras_require']['bench'].splitlines() if l.strip()]
  return [tuple(r.split('==')) for r in reqs]


def _have_peers():
  return all(importlib.util.find_spec(m) is not None for m in ('torch', 'torchattacks', 'foolbox'))


def test_peers_tiny_prints_our_rows_and_the_peers_or_how_to_get_them():
  proc = _bench(*TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  header = [l for l in lines if l.startswith('attack (budget)')]
  assert len(header) == 1 and 'peer/ours 1st' in header[0], proc.stdout
  rows = [l for l in lines if l.startswith('PGD-5 ')]
  assert [r.split()[1] for r in rows] == ['linf', 'l2'], proc.stdout
  for r in rows:
    ours = r.split('|')[0].split()
    # 1st s, 2nd s, compile s are numbers; compiles "first/second"; robust accuracy in [0, 1].
    first, second, compile_s = map(float, ours[-6:-3])
    assert first >= compile_s >= 0 and second >= 0, r
    assert ours[-3].count('/') == 1 and 0 <= float(ours[-1]) <= 1, r
  hint = [l for l in lines if l.startswith('peers: ')]
  if _have_peers():
    assert not hint, proc.stdout
    assert any(l.startswith('same weights in torch') for l in lines), proc.stdout
    assert all('torchattacks PGD' in r for r in rows), proc.stdout
  else:
    assert len(hint) == 1 and "`pip install -e '.[bench]'`" in hint[0], proc.stdout
    for name, version in bench_pins():  # the versions it names are setup.cfg's
      assert f'{name} {version}' in hint[0], (name, version, hint)
    assert all(r.split('|')[1].split() == ['-'] * 4 for r in rows), proc.stdout


def test_peers_bad_arguments_are_one_line_and_exit_2():
  for args, start in ((['--peers', '--rows', 'pgd,fab'], '--rows: comma-separated names among'),
                      (['--peers', '--points', '0'], '--points: must be an integer in [1, 397]')):
    proc = _bench(*args)
    assert proc.returncode == 2, (args, proc.stderr)
    assert proc.stderr.startswith(start) and proc.stderr.count('\n') == 1, proc.stderr
    assert proc.stdout == ''
