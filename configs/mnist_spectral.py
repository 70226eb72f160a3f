"""Paper B on MNIST (784-2000-10) and, offline, on scikit-learn's 8x8 digits.

    python launch.py --config=configs/mnist_spectral.py                  # digits, offline
    python launch.py --config=configs/mnist_spectral.py:digits_sweep     # lam sweep on digits
    python launch.py --config=configs/mnist_spectral.py:mnist --config.data.data_dir=DIR

``mnist`` is Paper B's setting as the authors' public code runs it
(Pehlevan-Group/rep-spectral: commands/train_mnist.sh, src/train_reg_multi.py,
src/eval_black_box_robustness.py): one hidden layer of 2000 exact-GELU units,
readout scaled by 1/sqrt(2000); every weight AND bias drawn from N(0, 0.01^2)
(their ``weights_init``, INIT_STD = 0.01 in src/model/architectures/MLP.py;
the runs are tagged "mnist_small_init"); SGD lr 0.1, momentum 0.9, batch 1024,
200 epochs with the penalty on after epoch 160, lam in {1e-3, 1e-2, 1e-1}
(``--config.regularizer.lam``; 1e-2 here), up to 10 power iterations per step.
Kinds: clean (no penalty; Paper B's "none"), ll_readout (the readout only:
what their ll code reaches in this model, whose hidden layer sits in a nested
block), ll (every layer, Yoshida & Miyato) and rep (the hidden layer).
Adversarial distances (``eval.distance_attacks``) on the first 1000
correctly classified test points: hard-label TangentAttack (40 iterations,
100 * sqrt(t) probes capped at 10000, started from x + N(0, 0.5^2) clamped to
[0, 1] and redrawn until misclassified) on a logistic readout re-fitted on the
frozen features (the headline; not on the trained head, ``eval.skip``), with
the white-box FMN and a certified lower bound beside it on both heads. Weight decay: the authors tune it per run (``wd=$2``); 0 here.

``digits`` (the default) is the offline stand-in, SCALED DOWN to finish in
<= 10 minutes on 2 CPU cores: 64-2000-10 on 1438 training / 359 test images,
the authors' init; batch 128 (12 steps per epoch), 60 epochs with the penalty
after epoch 48 (the paper's 4/5 burn-in ratio); lr 1.0 (0.1 leaves the
1/sqrt(width)-scaled readout far from converged in 60 epochs). The dose, i.e.
penalised steps x lr x lam, is 144 x 1.0 x lam: {0.14, 0.43, 1.4, 4.3} for
the sweep's lam in {1e-3, 3e-3, 1e-2, 3e-2}; the paper's MNIST arms are
~2340 x 0.1 x {1e-3, 1e-2, 1e-1} = {0.23, 2.3, 23}. The default lam is
where ``:digits_sweep`` shows the claim (see the README). Attack: the
authors' protocol on every correctly classified test point (about 350), with
fewer Monte-Carlo probes per step (``eval.tangent``) so that the run fits the
time budget; FMN (50 steps, 3 runner-up classes) on both heads. Numbers from
it are a small-scale replication, not Paper B's MNIST table.
"""
import ml_collections

from configs import common

VARIANTS = ('digits', 'digits_sweep', 'mnist')
OFFLINE = ('digits', 'digits_sweep')
# ``tiny``: the tests' size: 2 seeds, a 64-32-10 net on 256 / 64 images,
# 4 epochs (penalty from epoch 2), 16 attacked points, short FMN and
# TangentAttack runs, an 8 x 8 geometry grid. (xor_spectral.py shares the
# evaluation part, SHRUNK_EVAL.)
SHRUNK_EVAL = {'num_seeds': 2, 'progress': False, 'chunk_size': 50,
               'eval.max_points': 16, 'eval.grid_size': 8,
               'eval.fmn.steps': 10, 'eval.tangent.iterations': 3,
               'eval.tangent.init_evals': 20, 'eval.tangent.max_evals': 100}
TINY = {**SHRUNK_EVAL, 'model.widths': (32,), 'data.max_train': 256, 'data.max_test': 64,
        'train.batch_size': 64, 'train.epochs': 4, 'regularizer.burn_in_epochs': 2}


def get_config(arg: str | None = None):
  """``--config=configs/mnist_spectral.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:digits_sweep`` and ``:digits,tiny`` for
  short), VARIANT one of VARIANTS; ``tiny`` (offline variants) is ``TINY``."""
  arg = common.variant_arg(arg, VARIANTS, OFFLINE)
  variant = arg.variant
  c = ml_collections.ConfigDict()
  c.experiment = 'spectral'
  c.variant = variant
  c.seed = 0
  c.num_seeds = 5
  c.chunk_size = 500
  c.progress = True
  c.resume = 'check'  # a rerun in a workdir of another config refuses; 'overwrite' starts afresh
  c.checkpoint_every = 500   # steps between checkpoints (workdir/checkpoints/<kind>)
  # Device mesh (robustjax/train/sharding.py, loop.fit): 'data' splits the seeds, 'model'
  # the MLP's widest kernel dimension (its hidden units); 1 x 1 = one device.
  c.mesh = common.mesh(data=1, model=1)

  c.data = ml_collections.ConfigDict(dict(
      name='mnist',
      data_dir='',           # tfds data_dir with 'mnist' prepared (no download)
      test_fraction=0.2,     # digits only: held-out share of the 1797 images
      split_seed=0,          # digits only: the train/test permutation
      max_train=0,           # optional caps for smoke runs (0 = all)
      max_test=0,
  ))
  c.model = ml_collections.ConfigDict(dict(
      widths=(2000,),
      activation='gelu',
      init='normal',         # kernels AND biases N(0, init_std^2) (the authors');
                             # 'fan_in': kernels N(0, init_std^2 / fan_in), biases 0
      init_std=0.01,
      scale_by_width=True,   # readout (W h + b) / sqrt(2000)
  ))
  c.train = ml_collections.ConfigDict(dict(
      **common.optimizer('sgd', learning_rate=0.1, momentum=0.9, weight_decay=0.0),
      batch_size=1024,
      epochs=200,
  ))
  c.regularizer = ml_collections.ConfigDict(dict(
      kinds=('clean', 'll_readout', 'll', 'rep'),
      lam=1e-2,              # Paper B sweeps 1e-3, 1e-2, 1e-1
      burn_in_epochs=160,
      every_k=1,
      iters=10,
      warmup_iters=1000,
      tol=1e-6,
      layers=(),
  ))
  c.sweep = ml_collections.ConfigDict(dict(
      lams=(),               # non-empty: every penalised kind at each lam (one burn-in)
  ))
  c.eval = ml_collections.ConfigDict(dict(
      heads=('original', 'refit'),
      # minimal-distance attacks (each point's smallest flipping l2 perturbation):
      distance_attacks=('fmn', 'tangent'),  # white-box minimal norm; hard-label TangentAttack
      # 'head/attack' pairs left out: the hard-label attack runs on the re-fitted head
      # (the headline) only, as the authors'; the trained head gets FMN and the bound.
      skip=('original/tangent',),
      primary_head='refit',
      primary_attack='tangent',
      max_points=1000,
      refit_l2=1e-4,
      refit_max_iter=500,
      fmn=ml_collections.ConfigDict(dict(steps=100, targets=9)),  # runner-up classes tried
      # The authors' TangentAttack: 40 steps of min(100 sqrt(t), 10000) probes, from
      # x + N(0, 0.5^2) clamped to [0, 1] (up to 5000 draws, then the nearest other-class
      # point); starts='nearest' starts from the nearest other-class test point instead.
      tangent=ml_collections.ConfigDict(dict(iterations=40, init_evals=100, max_evals=10000,
                                             starts='gaussian', start_std=0.5,
                                             start_tries=5000)),
      bisection=ml_collections.ConfigDict(dict(search_steps=12, pgd_steps=20)),
      geometry=True,         # maps on the plane through three test images (seed 0)
      grid_size=60,
      grid_limit=2.0,        # unused for images (the plane's extent follows the images)
  ))
  if variant in ('digits', 'digits_sweep'):
    c.data.name = 'digits'
    c.train.batch_size, c.train.epochs, c.train.learning_rate = 128, 60, 1.0
    c.regularizer.burn_in_epochs, c.regularizer.lam = 48, 1e-2
    c.eval.fmn.update(steps=50, targets=3)
    # 20 sqrt(t) probes per step (rounded up to chunks of 20), at most 400: ~3800 per
    # point over the 40 steps instead of the authors' ~17000 (time budget).
    c.eval.tangent.update(init_evals=20, max_evals=400, chunk=20)
  if variant == 'digits_sweep':
    c.sweep.lams = (1e-3, 3e-3, 1e-2, 3e-2)
    c.eval.geometry = False
  return common.override(c, TINY) if arg.tiny else c
