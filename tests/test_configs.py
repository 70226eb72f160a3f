"""configs/common.py: config arguments, ``tiny``, the shared blocks and their validators."""
import importlib

import ml_collections
import pytest
from absl import flags
from hypothesis import given, strategies as st
from ml_collections import config_flags

from configs import common
from robustjax import config_blocks
from robustjax.config_validation import ConfigError
from robustjax.experiments import images, scaling, sparse_coding, spectral
from tests.helpers import launch

# --- parse_arg ---------------------------------------------------------------

SPEC = dict(variant=('digits', 'mnist'), tiny=False, lam=1e-2, steps=3, name='x')


@pytest.mark.parametrize('arg,expected', [
    (None, dict(variant='digits', tiny=False, lam=1e-2, steps=3, name='x')),
    ('', dict(variant='digits', tiny=False, lam=1e-2, steps=3, name='x')),
    ('mnist', dict(variant='mnist', tiny=False, lam=1e-2, steps=3, name='x')),  # the old syntax
    ('tiny', dict(variant='digits', tiny=True, lam=1e-2, steps=3, name='x')),
    ('mnist,tiny', dict(variant='mnist', tiny=True, lam=1e-2, steps=3, name='x')),
    ('variant=mnist,tiny=True', dict(variant='mnist', tiny=True, lam=1e-2, steps=3, name='x')),
    ('tiny=false,lam=3e-3', dict(variant='digits', tiny=False, lam=3e-3, steps=3, name='x')),
    ('lam=1, steps=7 ,name=a=b', dict(variant='digits', tiny=False, lam=1.0, steps=7,
                                      name='a=b')),
    ('name=', dict(variant='digits', tiny=False, lam=1e-2, steps=3, name='')),
])
def test_parse_arg_known_answers(arg, expected):
  got = common.parse_arg(arg, **SPEC).to_dict()
  assert got == expected
  # Typed as the defaults: 1 is the float 1.0 for lam, bools are bools.
  assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize('arg,words', [
    ('cifar', "config argument variant: must be one of digits, mnist, got 'cifar'"),
    ('variant=cifar', "config argument variant: must be one of digits, mnist, got 'cifar'"),
    ('tiny=maybe', "config argument tiny: must be True or False, got 'maybe'"),
    ('steps=2.5', "config argument steps: must be an integer, got '2.5'"),
    ('lam=big', "config argument lam: must be a number, got 'big'"),
    ('seed=3', "config argument 'seed': unknown key; allowed keys: variant, tiny, lam, steps, "
               'name'),
    ('digits,mnist', "config argument 'mnist': unknown; allowed keys: variant, tiny, lam, "
                     'steps, name (key=value, or a bool key alone for True)'),
    ('tiny,tiny=False', "config argument tiny: given twice in 'tiny,tiny=False'"),
    ('digits,,tiny', "config argument 'digits,,tiny': an empty entry; use key=value pairs "
                     'separated by single commas (keys: variant, tiny, lam, steps, name)'),
])
def test_parse_arg_refuses_in_one_line_naming_the_key(arg, words):
  with pytest.raises(common.ArgError) as e:
    common.parse_arg(arg, **SPEC)
  assert str(e.value) == words


@given(variant=st.sampled_from(('digits', 'mnist')), tiny=st.booleans(),
       lam=st.floats(allow_nan=False), steps=st.integers(),
       name=st.text(st.characters(blacklist_characters=',', blacklist_categories=('Z', 'C'))))
def test_parse_arg_reads_back_what_pack_wrote(variant, tiny, lam, steps, name):
  values = dict(variant=variant, tiny=tiny, lam=lam, steps=steps, name=name)
  arg = ','.join(f'{k}={v!r}' if isinstance(v, float) else f'{k}={v}' for k, v in values.items())
  assert common.parse_arg(arg, **SPEC).to_dict() == values


def test_parse_arg_refuses_a_default_it_cannot_type():
  with pytest.raises(TypeError, match='lams'):
    common.parse_arg('', lams=(1e-3, 1e-2))
  with pytest.raises(TypeError, match='kinds'):
    common.parse_arg('', kinds=())


def test_override_refuses_a_field_the_config_lacks():
  cfg = ml_collections.ConfigDict(dict(a=1, b=dict(c=2)))
  assert common.override(cfg, {'a': 3, 'b.c': 4}).to_dict() == dict(a=3, b=dict(c=4))
  with pytest.raises(KeyError, match='config.b.d'):
    common.override(cfg, {'b.d': 1})


# --- tiny: each config's tiny equals the override lists the tests passed -----

# The CLI overrides the tests ran before ``tiny`` (tests/helpers.py TINY,
# tests/test_images_stage.py TINY, tests/test_spectral_experiments.py COMMON
# plus each test's sizes, tests/test_scaling.py TINY): golden numbers were
# pinned from runs with these.
OLD_SPARSE_CODING = [
    '--config.num_seeds=2', '--config.chunk_size=10', '--config.progress=False',
    '--config.data.d=8', '--config.data.D=8', '--config.data.k=2', '--config.model.width=16',
    '--config.pretrain.steps=20', '--config.pretrain.batch_size=32',
    '--config.attack.steps=2', '--config.downstream.num_tasks=2',
    '--config.downstream.steps=20', '--config.downstream.batch_size=32',
    '--config.eval.num_examples=64', '--config.eval.eps=(0.2,)',
    '--config.eval.attack_steps=3', '--config.contrastive.steps=20',
    '--config.contrastive.batch_size=32', '--config.contrastive.sweep_alphas=(0.0,1.0)']
OLD_IMAGES = [
    '--config.num_seeds=2', '--config.progress=False', '--config.chunk_size=5',
    '--config.checkpoint_every=5', '--config.pretrain.steps=10',
    '--config.pretrain.batch_size=32', '--config.model.cnn_widths=(8,16)',
    '--config.attack.steps=2', '--config.eval.num_points=32', '--config.eval.n_iter=5',
    '--config.eval.attacks=("apgd-ce",)', '--config.eval.distance_points=16',
    '--config.eval.fmn_steps=5', '--config.eval.batch_size=64', '--config.probe.max_iter=30']
OLD_SPECTRAL_COMMON = [
    '--config.num_seeds=2', '--config.progress=False', '--config.chunk_size=50',
    '--config.eval.max_points=16', '--config.eval.grid_size=8',
    '--config.eval.fmn.steps=10', '--config.eval.tangent.iterations=3',
    '--config.eval.tangent.init_evals=20', '--config.eval.tangent.max_evals=100']
OLD_MNIST = OLD_SPECTRAL_COMMON + [
    '--config.model.widths=(32,)', '--config.data.max_train=256',
    '--config.data.max_test=64', '--config.train.batch_size=64',
    '--config.train.epochs=4', '--config.regularizer.burn_in_epochs=2']
OLD_XOR = OLD_SPECTRAL_COMMON + [
    '--config.train.epochs=60', '--config.regularizer.burn_in_epochs=30',
    '--config.data.test_per_blob=10']
OLD_SCALING = [
    '--config.num_seeds=2', '--config.chunk_size=10', '--config.progress=False',
    '--config.pretrain.steps=20', '--config.pretrain.batch_size=32', '--config.attack.steps=2',
    '--config.downstream.num_tasks=2', '--config.downstream.num_examples=64',
    '--config.downstream.max_iter=50', '--config.eval.num_examples=32',
    '--config.eval.attack_steps=2', '--config.eval.fmn_steps=10',
    '--config.scaling.ks=(1,2)', '--config.scaling.Ds=(4,8)',
    '--config.scaling.width_factors=(1,2)', '--config.scaling.eps_factors=(0.5,1.0)',
    '--config.scaling.fit_width_factor=2', '--config.scaling.fit_eps_factor=1.0',
    '--config.scaling.full_Ds=(4,)', '--config.scaling.full_width_factors=(2,)']

TINY_CASES = [
    ('sparse_coding', variant, OLD_SPARSE_CODING, sparse_coding)
    for variant in ('pipeline', 'supervised', 'contrastive', 'pretrain', 'widths')] + [
    ('sparse_coding', 'scaling', OLD_SCALING, scaling),
    ('cifar10_supervised', 'digits', OLD_IMAGES, images),
    ('transfer', 'digits', OLD_IMAGES, images),
    ('cifar10_ssl', 'digits', OLD_IMAGES, images),
    ('cifar10_ssl', 'digits_barlow', OLD_IMAGES, images),
    ('mnist_spectral', 'digits', OLD_MNIST, spectral),
    ('mnist_spectral', 'digits_sweep', OLD_MNIST, spectral),
] + [('xor_spectral', variant, OLD_XOR, spectral) for variant in ('paper', 'quick', 'stable')]


def _through_flags(config_arg, overrides):
  """The config launch.py builds from ``--config=CONFIG_ARG OVERRIDES`` (absl + ml_collections)."""
  argv = ['launch.py', f'--config={config_arg}', *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', flag_values=fv, lock_config=False,
                                           sys_argv=argv)
  fv(argv)
  return holder.value


def _leaves(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


@pytest.mark.parametrize('name,variant,old,experiment', TINY_CASES,
                         ids=[f'{c[0]}:{c[1]}' for c in TINY_CASES])
def test_tiny_equals_the_old_override_list_and_validates(name, variant, old, experiment):
  old_cfg = _through_flags(f'configs/{name}.py:{variant}', old)
  for arg in (f'{variant},tiny', f'variant={variant},tiny=True'):
    tiny = importlib.import_module(f'configs.{name}').get_config(arg)
    # Field by field, value and type, in the same order (config.json and its
    # fingerprint stay those of the old runs).
    assert list(_leaves(tiny.to_dict())) == list(_leaves(old_cfg.to_dict()))
    assert [type(v) for _, v in _leaves(tiny.to_dict())] == [
        type(v) for _, v in _leaves(old_cfg.to_dict())]
    experiment.validate(tiny)


@pytest.mark.parametrize('name,variant', [('cifar10_supervised', 'cifar10'),
                                          ('cifar10_ssl', 'barlow'), ('transfer', 'cifar100'),
                                          ('mnist_spectral', 'mnist')])
def test_tiny_is_for_offline_variants_only(name, variant):
  with pytest.raises(common.ArgError, match=f"tiny: only with an offline variant .*got variant "
                                            f"'{variant}'"):
    importlib.import_module(f'configs.{name}').get_config(f'{variant},tiny')


# --- the shared blocks' validators ------------------------------------------

def test_images_refuses_a_bad_mesh():
  from configs import cifar10_supervised
  cfg = cifar10_supervised.get_config('digits,tiny')
  images.validate(cfg)
  cfg.mesh.data = 0
  with pytest.raises(ConfigError, match=r'^config\.mesh\.data: must be an integer >= 1, or -1 '):
    images.validate(cfg)
  cfg.mesh.data = 4096  # more devices than there are
  with pytest.raises(ConfigError, match=r'^config\.mesh: must be a data x model mesh that fits'):
    images.validate(cfg)


@pytest.mark.parametrize('field,value,words', [
    ('mesh.data', 0, 'config.mesh.data: must be an integer >= 1, or -1 (every device left '
                     'after mesh.model), got 0'),
    ('mesh.model', 0, 'config.mesh.model: must be an integer >= 1, got 0'),
    ('attack.random_start', 'yes', "config.attack.random_start: must be True or False, "
                                   "got 'yes'"),
    ('attack.norm', 'l1', "config.attack.norm: must be one of 'l2', 'linf', got 'l1'"),
    ('pretrain.optimizer', 'lbfgs', "config.pretrain.optimizer: must be one of 'adam', 'sgd', "
                                    "got 'lbfgs'"),
    ('pretrain.momentum', 1.5, 'config.pretrain.momentum: must be <= 1, got 1.5'),
    ('seed', 0.5, 'config.seed: must be an integer, got 0.5'),
    ('progress', 'no', "config.progress: must be True or False, got 'no'"),
])
def test_block_validators_name_the_field_and_what_is_allowed(field, value, words):
  from configs import cifar10_supervised
  # Not type-safe: a config file of one's own may hold any type.
  cfg = ml_collections.ConfigDict(cifar10_supervised.get_config('digits').to_dict(),
                                  type_safe=False)
  common.override(cfg, {field: value})
  with pytest.raises(ConfigError) as e:
    images.validate(cfg)
  assert str(e.value) == words


def test_every_experiment_checks_the_blocks_it_has():
  # One validator per block: the same bad field gives the same line everywhere.
  from configs import mnist_spectral
  from configs import sparse_coding as sc_config
  cases = [(sc_config.get_config(), sparse_coding), (sc_config.get_config('scaling'), scaling),
           (mnist_spectral.get_config(), spectral)]
  for cfg, experiment in cases:
    bad = cfg.copy_and_resolve_references()
    bad.num_seeds = 0
    with pytest.raises(ConfigError, match=r'^config\.num_seeds: must be an integer >= 1'):
      experiment.validate(bad)
  for cfg, experiment, block in ((cases[0][0], sparse_coding, 'contrastive'),
                                 (cases[1][0], scaling, 'pretrain'),
                                 (cases[2][0], spectral, 'train')):
    bad = cfg.copy_and_resolve_references()
    bad[block].learning_rate = 0.0
    with pytest.raises(ConfigError, match=rf'^config\.{block}\.learning_rate: must be > 0'):
      experiment.validate(bad)
  bad = cases[1][0].copy_and_resolve_references()
  bad.num_seeds = 1
  with pytest.raises(ConfigError, match=r"^config\.num_seeds: must be an integer >= 2 "):
    scaling.validate(bad)
  bad = cases[0][0].copy_and_resolve_references()
  bad.mesh.data = -2
  with pytest.raises(ConfigError, match=r'^config\.mesh\.data: .* or -1 '):
    sparse_coding.validate(bad)


def test_config_blocks_check_a_mesh_of_minus_one():
  cfg = ml_collections.ConfigDict(dict(mesh=common.mesh(data=-1, model=1)))
  config_blocks.mesh(cfg)  # every device


# --- through launch.py: one line, exit 2 ------------------------------------

@pytest.mark.parametrize('args,line', [
    # Once 'error: ValueError: variant must be ...' (the traceback's exception name).
    (['--config=configs/mnist_spectral.py:foo'],
     "error: config argument variant: must be one of digits, digits_sweep, mnist, got 'foo'"),
    # Once 'error: flag --config.num_seeds=two: invalid literal for int() ...'.
    (['--config=configs/sparse_coding.py', '--config.num_seeds=two'],
     "error: config.num_seeds: must be an integer (default 3), got 'two'"),
    # images.validate once let any mesh through.
    (['--config=configs/cifar10_supervised.py:digits', '--config.mesh.data=0'],
     'error: config.mesh.data: must be an integer >= 1, or -1 (every device left after '
     'mesh.model), got 0'),
])
def test_launch_refuses_in_one_line(tmp_path, args, line):
  workdir = tmp_path / 'w'
  proc = launch(*args, f'--workdir={workdir}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == line
  assert not workdir.exists()


@pytest.mark.parametrize('text,line', [
    ("flag --config.progress=maybe: ('Non-boolean argument to boolean flag', 'maybe')",
     "config.progress: must be True or False (default True), got 'maybe'"),
    ("flag --config.attack.eps=abc: could not convert string to float: 'abc'",
     "config.attack.eps: must be a number (default 0.4), got 'abc'"),
    ("flag --config.eval.eps=x: ...", "config.eval.eps: must be a tuple such as (1, 2) "
                                      "(default (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)), got 'x'"),
    ("flag --config.attack.nrm=1: ...", None),   # not a field: unknown_field's case
    ('Unknown command line flag', None),
])
def test_bad_override_names_the_field_its_type_and_default(text, line):
  import launch as launch_module
  from configs import sparse_coding as sc_config
  assert launch_module.bad_override(sc_config.get_config(), text) == line
