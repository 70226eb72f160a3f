"""End to end: launch.py on a tiny config, stage hand-off through checkpoints, the main claim."""
import json
import os
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import config_validation as cv, timing
from robustjax.experiments import runner, sparse_coding
from robustjax.train import loop, state as state_lib
from tests.helpers import (GOLDEN_EXACT, GOLDEN_LOOSE, assert_same_numbers, golden_exact,
                           launch)

GOLDEN = os.path.join(os.path.dirname(__file__), 'data', 'golden_sparse_coding_tiny.json')
KEYS = ('purity_median', 'participation_ratio_median', 'pretrain_clean_acc',
        'pretrain_robust_acc', 'downstream_clean_acc', 'downstream_robust_acc')


def assert_matches_golden(res: dict, stdout: str):
  """The tiny pipeline's numbers and printed table are those recorded before
  the experiment moved onto the runner (tests/data: rtol 1e-6 on the machine
  that recorded them, the same programs on the same keys; elsewhere
  ``helpers.GOLDEN_LOOSE`` and no verdicts or printed lines)."""
  with open(GOLDEN) as f:
    want = json.load(f)
  exact = golden_exact(want)
  tol = GOLDEN_EXACT if exact else GOLDEN_LOOSE
  assert res['eval_eps'] == want['eval_eps']
  assert list(res['summary']) == list(want['summary'])  # rows, in order
  for row, s in want['summary'].items():
    assert set(res['summary'][row]) == set(s), row
    assert_same_numbers({k: res['summary'][row][k] for k in s}, s, f'summary {row}', **tol)
  assert [c['name'] for c in res['claims']] == [c['name'] for c in want['claims']]
  for c, w in zip(res['claims'], want['claims']):
    assert_same_numbers({k: list(v) if isinstance(v, (list, tuple)) else v
                         for k, v in c['numbers'].items()}, w['numbers'], c['name'], **tol,
                        exact=exact)
    assert c['holds'] == w['holds'] or not exact, c['name']
  assert set(res['sweeps']) == set(want['sweeps'])
  assert_same_numbers({k: res['sweeps']['purification'][k] for k in want['sweeps']['purification']},
                      want['sweeps']['purification'], 'sweep', **tol)
  if exact:
    out = stdout.splitlines()
    at = out.index(want['printed'][0])
    assert out[at:at + len(want['printed'])] == want['printed']


def test_launch_tiny_pipeline(tmp_path):
  proc = launch('--config=configs/sparse_coding.py:tiny', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / 'results.json').read_text())
  assert_matches_golden(res, proc.stdout)
  assert 'downstream robust acc' in proc.stdout  # the table was printed
  assert res['config']['data']['d'] == 8 and res['config']['num_seeds'] == 2
  assert set(res['summary']) == {
      'clean', 'adversarial', 'end_to_end_clean', 'end_to_end_adversarial',
      'contrastive_clean', 'contrastive_adversarial', 'contrastive_adv_negatives_only',
      'contrastive_adv_positives_only'}
  for mode in ('clean', 'adversarial', 'contrastive_clean', 'contrastive_adv_positives_only'):
    s = res['summary'][mode]
    for k in KEYS:
      assert 0.0 <= s[k] <= (1.0 if 'ratio' not in k else 8.0), (mode, k, s[k])
    assert len(s['downstream_robust_acc_per_run']) == 2 * 2  # seeds x tasks
    assert len(s['purity_median_per_seed']) == 2
    # Accuracy under attack cannot exceed clean accuracy.
    assert s['downstream_robust_acc'] <= s['downstream_clean_acc']
  assert res['eval_eps'] == [0.0, 0.2, 0.4]
  for name in ('total', 'pretrain_adversarial', 'eval_pretrain', 'eval_downstream'):
    t = res['timings'][name]  # seconds: compile + run = wall
    assert t['wall'] > 0 and abs(t['compile'] + t['run'] - t['wall']) < 0.02, (name, t)
    assert t['cpu'] > 0, (name, t)  # the process's CPU seconds over the stage
  assert res['timings']['total']['compile'] > 0
  # Paper A's claims, tested and recorded in one format, then the files written.
  assert [c['name'].split(',')[0] for c in res['claims']] == [
      'A: purification', 'A: robustness inheritance', 'A: purification',
      'A: robustness inheritance', 'A: purification comes from the negative (dissimilar) pairs',
      'A: controlled purification']
  out = proc.stdout.splitlines()
  at = out.index('claims this run tests:')
  for c, line in zip(res['claims'], out[at + 1:]):
    assert line.startswith(f"  {'holds' if c['holds'] else 'does not hold'}: {c['name']}: ")
  assert out[at + 7:at + 9] == ['files written:', f'  {tmp_path / "results.json"}']
  assert res['plots'] == ['purity.png', 'loadings.png', 'robustness.png', 'purification_sweep.png',
                         'training_curves.png']
  # metrics.jsonl: one line per training chunk per job (20 steps in chunks of 10), in run order.
  records = runner.read_metrics(str(tmp_path / 'metrics.jsonl'))
  jobs = ['pretrain_clean', 'pretrain_adversarial', 'pretrain_contrastive_clean',
          'pretrain_contrastive_adversarial_modes', 'downstream_heads', 'end_to_end_clean',
          'end_to_end_adversarial']
  assert [(r['job'], r['step']) for r in records] == [(j, s) for j in jobs for s in (10, 20)]
  # Runs per fit: seeds; 3 adversarial contrastive modes x seeds; encoders x seeds x tasks.
  runs = {'pretrain_contrastive_adversarial_modes': 3 * 2, 'downstream_heads': 6 * 2 * 2}
  assert [len(r['loss_per_run']) for r in records] == [runs.get(r['job'], 2) for r in records]
  sweep = res['sweeps']['purification']
  assert sweep['alpha'] == [0.0, 1.0]
  for kind in ('similar', 'dissimilar'):  # the attack never lowers the pair loss
    assert np.all(np.array(sweep[f'{kind}_adversarial']) >= np.array(sweep[f'{kind}_clean']))
  assert 'controlled purification' in proc.stdout
  for png in res['plots']:
    assert (tmp_path / png).stat().st_size > 1000
  assert (tmp_path / 'checkpoints' / 'encoder_adversarial').is_dir()
  # The run recorded its config; a rerun with another training field refuses
  # in one line before any work and leaves the run as it was.
  record = json.loads((tmp_path / 'config.json').read_text())
  assert record['config']['data']['d'] == 8 and record['process_count'] == 1
  assert record['versions']['jax'] == jax.__version__ and record['fingerprint']['attack.eps'] > 0
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')}
  proc = launch('--config=configs/sparse_coding.py:tiny', f'--workdir={tmp_path}',
                '--config.attack.eps=0.1')
  assert proc.returncode == 2, proc.stderr[-2000:]
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith(f'error: config.resume: {tmp_path} holds a run of another config: '
                         'config.attack.eps 0.1 (recorded: ')
  assert '--config.resume=overwrite' in line and 'fresh --workdir' in line
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')} == before


def test_supervised_then_downstream_stage(tmp_path, tiny_sparse_coding_config, capsys):
  cfg = tiny_sparse_coding_config
  cfg.stage = 'pretrain'
  cfg.pretrain.modes = ('adversarial',)
  cfg.contrastive.modes = ('adv_negatives_only',)
  cfg.progress = True  # evaluation shows progress bars, as training does
  pre = sparse_coding.main(cfg, str(tmp_path / 'pre'))
  assert 'evaluate pre-training' in capsys.readouterr().err
  cfg.progress = False
  assert set(pre) == {'adversarial', 'contrastive_adv_negatives_only'}
  assert 'downstream_clean_acc' not in pre['adversarial']
  cfg.stage = 'downstream'
  cfg.downstream.encoder_dir = str(tmp_path / 'pre' / 'checkpoints')
  sparse_coding.validate(cfg)
  # Heads train on the checkpoint's encoders: other seeds or shapes are refused before any work.
  for field, value, want in (('num_seeds', 3, 2), ('model.width', 32, 16), ('data.D', 4, 8)):
    bad = cfg.copy_and_resolve_references()
    bad.update_from_flattened_dict({field: value})
    with pytest.raises(cv.ConfigError, match=f'^config.{field}: must be {want}, as the encoders'):
      sparse_coding.validate(bad)
  down = sparse_coding.main(cfg, str(tmp_path / 'down'))
  # The downstream stage reads the encoders back: same units, same purity.
  assert set(down) == set(pre)
  for name, s in down.items():
    assert s['purity_median'] == pytest.approx(pre[name]['purity_median'], rel=1e-6)
    assert 0.0 <= s['downstream_robust_acc'] <= s['downstream_clean_acc']
  assert not os.path.exists(tmp_path / 'down' / 'checkpoints')
  # The same stage again in this process compiles nothing: every program is reused.
  with timing.compiled_programs() as again:
    assert sparse_coding.main(cfg, str(tmp_path / 'down_again')) == down
  assert len(again) == 0


def test_recipes_refuse_a_checkpoint_dir_without_the_config_fingerprint(
    tmp_path, tiny_sparse_coding_config):
  # A checkpoint without the fingerprint could be resumed by a changed config.
  from robustjax.recipes import contrastive, downstream, supervised
  cfg, where = tiny_sparse_coding_config, str(tmp_path / 'ck')
  for train in (lambda: supervised.train(cfg, None, None, None, adversarial=False,
                                         checkpoint_dir=where),
                lambda: contrastive.train(cfg, None, np.zeros((1, 2), np.uint32),
                                          modes=('clean',), checkpoint_dir=where),
                lambda: downstream.train_heads(cfg, None, None, None, None, checkpoint_dir=where)):
    with pytest.raises(ValueError, match='^fingerprint: required with checkpoint_dir'):
      train()
  assert not os.path.exists(where)


@pytest.mark.slow  # the tiny pipeline above runs both halves in the default suite
@pytest.mark.parametrize('variant,rows', [
    ('supervised', {'clean', 'adversarial', 'end_to_end_clean', 'end_to_end_adversarial'}),
    ('contrastive', {'contrastive_clean', 'contrastive_adversarial',
                     'contrastive_adv_negatives_only', 'contrastive_adv_positives_only'}),
])
def test_variants_select_their_pipeline(tmp_path, variant, rows):
  proc = launch(f'--config=configs/sparse_coding.py:{variant},tiny', f'--workdir={tmp_path}',
                '--config.downstream.steps=10', '--config.eval.eps=()')
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / 'results.json').read_text())
  assert set(res['summary']) == rows
  assert ('purification' in res['sweeps']) == (variant == 'contrastive')


@pytest.mark.slow
def test_width_sweep_variant(tmp_path):
  proc = launch('--config=configs/sparse_coding.py:widths,tiny', f'--workdir={tmp_path}',
                '--config.contrastive.width_sweep=(4,8)')
  assert proc.returncode == 0, proc.stderr[-3000:]
  w = json.loads((tmp_path / 'results.json').read_text())['sweeps']['width']
  assert w['width'] == [4, 8]
  for mode in ('clean', 'adversarial'):
    assert all(0.0 < p <= 1.0 for p in w[f'purity_median_{mode}'])
  assert (tmp_path / 'width_sweep.png').stat().st_size > 1000


def test_fit_stops_on_non_finite_loss():
  def loss_fn(params, key, aux):
    return jnp.log(params['x'] - 2.0), {}  # log of a negative number: NaN

  st = state_lib.create({'x': jnp.ones(())}, optax.sgd(0.1))
  with pytest.raises(loop.DivergedError, match='not finite'):
    loop.fit(st, None, jax.random.PRNGKey(0), loss_fn, steps=4, chunk_size=2, progress=False)


@pytest.mark.slow
def test_main_job_reproduces_paper_a(tmp_path):
  """The default config: purification and robustness inheritance (~2-3 min on 2 cores)."""
  proc = launch('--config=configs/sparse_coding.py', f'--workdir={tmp_path}',
                '--config.progress=False', timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / 'results.json').read_text())
  s = res['summary']
  clean, adv = s['clean'], s['adversarial']
  assert adv['purity_median'] > clean['purity_median'] + 0.2
  assert adv['downstream_robust_acc'] >= clean['downstream_robust_acc'] + 0.15
  assert abs(adv['downstream_clean_acc'] - clean['downstream_clean_acc']) <= 0.05
  assert np.min(adv['downstream_robust_acc_per_run']) > np.max(
      clean['downstream_robust_acc_per_run'])
  # Contrastive half: purification comes from the dissimilar pairs ...
  c, ca = s['contrastive_clean'], s['contrastive_adversarial']
  neg, pos = s['contrastive_adv_negatives_only'], s['contrastive_adv_positives_only']
  gain = ca['purity_median'] - c['purity_median']
  assert gain > 0.2
  assert neg['purity_median'] - c['purity_median'] > 0.7 * gain
  assert pos['purity_median'] - c['purity_median'] < 0.5 * gain
  # ... and clean heads on adversarial contrastive encoders inherit robustness.
  assert ca['downstream_robust_acc'] >= c['downstream_robust_acc'] + 0.10
  assert abs(ca['downstream_clean_acc'] - c['downstream_clean_acc']) <= 0.05
  # Controlled purification: dense units hurt dissimilar pairs several times more.
  sw = res['sweeps']['purification']
  inc = lambda kind, i: sw[f'{kind}_adversarial'][i] - sw[f'{kind}_clean'][i]
  assert inc('dissimilar', -1) > 3 * inc('similar', -1)
  assert inc('dissimilar', 0) / inc('similar', 0) < inc('dissimilar', -1) / inc('similar', -1)
  # ... and the run says so: every claim it states holds.
  assert len(res['claims']) == 6 and all(c['holds'] for c in res['claims']), res['claims']
  assert proc.stdout.count('\n  holds: A: ') == 6


def test_distributed_args_from_the_environment():
  import launch
  env = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4',
         'JAX_PROCESS_ID': '3'}
  assert launch.distributed_args(False, {}) is None
  assert launch.distributed_args(True, {}) == {}  # jax auto-detects the cluster
  assert launch.distributed_args(True, env) == {'num_processes': 4, 'process_id': 3}
  bad = [(False, env, '--distributed'),
         (True, {'JAX_NUM_PROCESSES': '4'}, 'JAX_PROCESS_ID'),
         (True, dict(env, JAX_PROCESS_ID='4'), r'JAX_PROCESS_ID: an integer in \[0, '),
         (True, dict(env, JAX_NUM_PROCESSES='four'), 'JAX_NUM_PROCESSES and JAX_PROCESS_ID')]
  for distributed, environ, match in bad:
    with pytest.raises(ValueError, match=match):
      launch.distributed_args(distributed, environ)


def test_cpu_collectives_are_gloo_unless_jax_is_told_otherwise():
  import launch
  assert launch.cpu_collectives({}) == 'gloo'
  assert launch.cpu_collectives({'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'mpi'}) == 'mpi'


def test_distributed_flag_initializes_first_and_fails_cleanly(tmp_path):
  # jax.distributed.initialize is replaced by a stub that reports whether any
  # backend had started and then fails as a missing coordinator would: nothing
  # is really initialized, and the failure is one line, exit 2, no workdir.
  import subprocess
  import sys
  from tests.helpers import ROOT
  stub = ('import runpy, sys, jax\n'
          'from jax._src import xla_bridge\n'
          'def initialize(**kw):\n'
          '  print("initialize", kw, "backends started:", xla_bridge.backends_are_initialized(),\n'
          '        "cpu collectives:", jax.config.jax_cpu_collectives_implementation)\n'
          '  raise ValueError("coordinator unreachable")\n'
          'jax.distributed.initialize = initialize\n'
          'sys.argv = ["launch.py"] + sys.argv[1:]\n'
          'runpy.run_path("launch.py", run_name="__main__")\n')
  workdir = str(tmp_path / 'w')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_COORDINATOR_ADDRESS='10.0.0.1:1234',
             JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='1')
  proc = subprocess.run([sys.executable, '-c', stub, '--distributed',
                         '--config=configs/xor_spectral.py', f'--workdir={workdir}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("initialize {'num_processes': 2, 'process_id': 1} backends started: False "
          'cpu collectives: gloo' in proc.stdout), proc.stdout
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: --distributed: ') and (
      'coordinator unreachable' in lines[0]), proc.stderr
  assert not os.path.exists(workdir)


def test_stray_positional_arguments_are_refused_in_one_line():
  import launch
  assert launch.stray_arguments(['config.num_seeds=1']) == (
      "unexpected argument 'config.num_seeds=1': launch.py takes flags only; "
      'did you mean --config.num_seeds=1?')
  assert launch.stray_arguments(['num_seeds=1', 'x']).endswith('did you mean --config.num_seeds=1?')
  assert launch.stray_arguments(['extra_positional']) == (
      "unexpected argument 'extra_positional': launch.py takes flags only "
      '(--config=FILE[:variant], --workdir=DIR, --config.FIELD=VALUE)')


def test_unknown_field_names_the_closest_valid_ones():
  import launch
  from configs import sparse_coding as config
  cfg = config.get_config()
  assert launch.unknown_field(cfg, ['seed', 'attack.eps']) is None
  assert launch.unknown_field(cfg, ['attack.eps', 'atack.eps']) == (
      'unknown config field config.atack.eps; closest valid: config.attack.eps, '
      'config.attack.steps, config.attack.restarts')
  # A block left out: the fields of that name anywhere.
  assert launch.unknown_field(cfg, ['eps']) == (
      'unknown config field config.eps; closest valid: config.attack.eps, config.eval.eps')
  # Nothing close: the valid fields where the path went wrong.
  assert launch.unknown_field(cfg, ['attack.zzzz']) == (
      'unknown config field config.attack.zzzz; config.attack has: eps, norm, random_start, '
      'rel_step_size, restarts, steps')


def test_interrupted_line_says_where_what_is_kept_and_how_to_resume():
  import launch
  from robustjax.progress import Interrupted
  argv = ['launch.py', '--config=configs/sparse_coding.py', '--config.eval.eps=(0.2, 0.4)']
  assert launch.interrupted(Interrupted('evaluate pre-training (1/6 done)'), 'runs/x', argv) == (
      'interrupted: evaluate pre-training (1/6 done); finished training stages keep their '
      'checkpoints under runs/x; the same command resumes from the last checkpoint: python '
      "launch.py --config=configs/sparse_coding.py '--config.eval.eps=(0.2, 0.4)'")
  line = launch.interrupted(Interrupted('pre-train clean at step 250/3000', 'kept: step 250'),
                            'runs/x', argv)
  assert line.startswith('interrupted: pre-train clean at step 250/3000; kept: step 250; ')
  assert launch.interrupted(KeyboardInterrupt(), 'runs/x', argv).startswith(
      'interrupted: between phases; ')


def test_compilation_cache_directory_default_and_precedence(tmp_path):
  import launch
  from robustjax import compilation_cache as cc
  home = os.path.expanduser('~')
  assert cc.directory(None, {}) == os.path.join(home, '.cache', 'robustjax', 'jax')
  assert cc.directory(None, {'XDG_CACHE_HOME': '/x'}) == '/x/robustjax/jax'
  env = {'XDG_CACHE_HOME': '/x', 'JAX_COMPILATION_CACHE_DIR': '/j'}
  assert cc.directory(None, env) == '/j'  # jax's own variable
  assert cc.directory('/flag', env) == '/flag'
  # The tests' own cache (conftest.py) is what a launched run uses: nothing goes to ~/.cache.
  assert cc.directory() == os.environ['JAX_COMPILATION_CACHE_DIR']
  assert not cc.directory().startswith(os.path.join(home, '.cache'))
  # On: the directory and every program cached; --nocompilation_cache: off.
  names = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs')
  before = {n: getattr(jax.config, n) for n in names}
  try:
    assert cc.enable(str(tmp_path / 'c'), environ={}) == str(tmp_path / 'c')
    assert [getattr(jax.config, n) for n in names] == [True, str(tmp_path / 'c'), 0.0]
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 2.0)  # as jax read it
    launch.enable_compilation_cache(True, str(tmp_path / 'c'),
                                    {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '2'})
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0  # the user's value
    launch.enable_compilation_cache(False, str(tmp_path / 'c'), {})
    assert jax.config.jax_enable_compilation_cache is False
  finally:
    for n, v in before.items():
      jax.config.update(n, v)
  f = tmp_path / 'file'
  f.write_text('x')
  with pytest.raises(ValueError, match='^path: must be a directory'):
    cc.enable(str(f))
  assert jax.config.jax_compilation_cache_dir == before['jax_compilation_cache_dir']  # untouched
  from robustjax.config_validation import ConfigError
  with pytest.raises(ConfigError, match='^--compilation_cache_dir: must be a directory'):
    launch.enable_compilation_cache(True, str(f), {})


@pytest.mark.slow
def test_ctrl_c_stops_in_one_line_and_the_command_resumes(tmp_path):
  """SIGINT mid-training: exit 130, one line naming the fit, the step and the
  checkpoint kept, and the command; that command resumes from the checkpoint.
  The run keeps its compiled programs in --compilation_cache_dir, not ~/.cache."""
  import signal
  import subprocess
  import sys
  import time
  import matplotlib
  from tests.helpers import ROOT
  home, cache = tmp_path / 'home', tmp_path / 'cache'
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR',
                                                           'XDG_CACHE_HOME')}
  env.update(PYTHONPATH=ROOT, HOME=str(home), MPLCONFIGDIR=matplotlib.get_configdir())
  args = ['launch.py', '--config=configs/sparse_coding.py:supervised,tiny', f'--workdir={tmp_path}/w',
          f'--compilation_cache_dir={cache}', '--config.pretrain.steps=100000',
          '--config.checkpoint_every=10']
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  ckpt = tmp_path / 'w' / 'train_checkpoints' / 'pretrain_clean'
  deadline = time.time() + 300
  while not (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  m = re.fullmatch(r'interrupted: pre-train clean at step (\d+)/100000; its last checkpoint, '
                   r'step (\d+), is kept in (\S+); the same command resumes from the last '
                   r'checkpoint: python (.*)', lines[0])
  assert m, lines[0]
  assert m.group(3) == str(ckpt) and (ckpt / m.group(2)).is_dir()
  assert int(m.group(2)) <= int(m.group(1))
  assert shlex.split(m.group(4)) == args
  assert 'Traceback' not in err
  assert any(cache.iterdir()) and not (home / '.cache' / 'robustjax').exists()
  # The printed command resumes from that checkpoint (stopped again once it says so).
  again = subprocess.Popen([sys.executable, *shlex.split(m.group(4))], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  first = again.stdout.readline()
  again.send_signal(signal.SIGINT)
  again.communicate(timeout=120)
  assert first == f'pre-train clean: resuming from step {m.group(2)}/100000 ({ckpt})\n'
