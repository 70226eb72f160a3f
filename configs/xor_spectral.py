"""Paper B on noisy XOR: rep-spectral (eig-ub) vs ll-spectral vs clean (width-3 GELU net).

    python launch.py --config=configs/xor_spectral.py [--config.regularizer.lam=1e-2]
    python launch.py --config=configs/xor_spectral.py:quick     # 1/10 of the schedule

Paper B's setting as the authors' public code runs it (Pehlevan-Group/
rep-spectral: commands/train_xor.sh, src/train_reg.py): 4 Gaussian blobs at
(+-1, +-1), 20 points each, noise 0.2 (80 training points; a fresh set per
seed); one hidden layer of width 3, exact GELU, readout scaled by 1/sqrt(3);
every weight AND bias ~ N(0, 0.01^2) (their ``weights_init``: INIT_STD = 0.01
in src/model/architectures/MLP.py since April 2024); SGD lr 1, momentum 0.9,
coupled weight decay 1e-4, batch 20, 15000 epochs with the penalty switched
on after epoch 10500; lam = 1e-3; power iteration with up to 10 iterations
per step (tol 1e-6) after converging at the switch-on. Two output logits and
cross-entropy, as the authors use for binary tasks.

Kinds: clean (no penalty; Paper B's "none"); rep_eig_ub, the authors' XOR
regulariser (``eig-ub``: sigma_max^2 of the hidden kernel plus the batch mean
of max_j gelu'(z_j)^2, both times lam); rep (the sigma^2 term alone);
ll_readout (the readout only: what their ``spectral`` code reaches in this
model); ll (both layers).

Evaluation: 1000 fresh test points per seed (250 per blob; the authors attack
the 80 training points), inputs unbounded (they clamp to [-2, 2]).
``get_config('quick')`` is a 1/10 schedule (1500 epochs, burn-in 1050);
``get_config('stable')`` the paper's setting with lr 0.1.
"""
import ml_collections

from configs import common, mnist_spectral

VARIANTS = ('paper', 'quick', 'stable')
# ``tiny``: the tests' size: 2 seeds, 60 epochs (penalty from epoch 30), 40
# test points, mnist_spectral's shrunken evaluation.
TINY = {**mnist_spectral.SHRUNK_EVAL, 'train.epochs': 60, 'regularizer.burn_in_epochs': 30,
        'data.test_per_blob': 10}


def get_config(arg: str | None = None):
  """``--config=configs/xor_spectral.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:quick`` and ``:tiny`` for short), VARIANT
  one of VARIANTS (all offline); ``tiny`` is ``TINY``."""
  arg = common.variant_arg(arg, VARIANTS)
  variant = arg.variant
  c = ml_collections.ConfigDict()
  c.experiment = 'spectral'  # robustjax.experiments.spectral runs it
  c.variant = variant
  c.seed = 0
  c.num_seeds = 5            # vmapped: one compile trains all seeds
  c.chunk_size = 5000        # steps per compiled chunk
  c.progress = True
  c.resume = 'check'  # a rerun in a workdir of another config refuses; 'overwrite' starts afresh
  c.checkpoint_every = 5000  # steps between checkpoints (workdir/checkpoints/<kind>)
  # Device mesh (robustjax/train/sharding.py, loop.fit): 'data' splits the seeds, 'model'
  # the MLP's widest kernel dimension (its hidden units); 1 x 1 = one device.
  c.mesh = common.mesh(data=1, model=1)

  c.data = ml_collections.ConfigDict(dict(
      name='xor',
      n_per_blob=20,         # 4 blobs x 20 = the paper's 80 points
      noise_std=0.2,
      test_per_blob=250,     # fresh test points per blob (1000 in all)
  ))
  c.model = ml_collections.ConfigDict(dict(
      widths=(3,),           # hidden widths (one hidden layer of 3 units)
      activation='gelu',     # exact (erf) GELU, as torch.nn.GELU()
      init='normal',         # the authors' weights_init: kernels AND biases N(0, 0.01^2)
      init_std=0.01,
      scale_by_width=True,   # readout (W h + b) / sqrt(width)
  ))
  c.train = ml_collections.ConfigDict(dict(
      # weight decay coupled (added to the gradient), as torch SGD
      **common.optimizer('sgd', learning_rate=1.0, momentum=0.9, weight_decay=1e-4),
      batch_size=20,         # 4 steps per epoch
      epochs=15000,
  ))
  c.regularizer = ml_collections.ConfigDict(dict(
      kinds=('clean', 'll_readout', 'll', 'rep', 'rep_eig_ub'),
      lam=1e-3,              # lam * sum sigma_max(W)^2 (no 1/2)
      burn_in_epochs=10500,  # unpenalised epochs before the switch-on
      every_k=1,             # penalise every k-th update after the burn-in
      iters=10,              # power iterations per penalised update
      warmup_iters=1000,     # at the switch-on (stops earlier at tol)
      tol=1e-6,
      layers=(),             # rep: parameter paths; () = the model's feature layers
  ))
  c.sweep = ml_collections.ConfigDict(dict(
      lams=(),               # non-empty: every penalised kind at each lam (one burn-in)
  ))
  c.eval = ml_collections.ConfigDict(dict(
      heads=('original', 'refit'),   # the trained head; a re-fitted logistic readout
      # minimal-distance attacks (each point's smallest flipping l2 perturbation):
      distance_attacks=('fmn', 'tangent'),  # white-box minimal norm; hard-label TangentAttack
      skip=(),                       # 'head/attack' pairs to leave out
      primary_head='refit',          # the headline adv_distance_* (Paper B's protocol)
      primary_attack='tangent',
      max_points=1000,               # first correctly classified test points
      refit_l2=1e-4,                 # logistic readout: l2 / 2 ||W||^2
      refit_max_iter=500,
      fmn=ml_collections.ConfigDict(dict(steps=100, targets=9)),  # runner-up classes tried
      # The authors' start: x + N(0, 0.5^2) (no clamping here: inputs are unbounded).
      tangent=ml_collections.ConfigDict(dict(iterations=40, init_evals=100, max_evals=10000,
                                             starts='gaussian', start_std=0.5,
                                             start_tries=5000)),
      bisection=ml_collections.ConfigDict(dict(search_steps=12, pgd_steps=20)),
      geometry=True,                 # volume-element / lambda_max maps (seed 0)
      grid_size=100,
      grid_limit=2.0,                # XOR maps over [-2, 2]^2
  ))
  if variant == 'quick':
    c.train.epochs, c.regularizer.burn_in_epochs = 1500, 1050
  elif variant == 'stable':
    c.train.learning_rate = 0.1
  return common.override(c, TINY) if arg.tiny else c
