"""Paper A on the sparse-coding model: adversarial pre-training -> clean downstream.

    python launch.py --config=configs/sparse_coding.py [--config.attack.eps=0.3]

Why these numbers (d = D = 64, k = 4, sigma = 0.1, eps = 0.4):
- Orthonormal dictionary, so a unit's loadings M^T w are exactly what it
  responds to. k = 4 active features out of 64 makes X sparse (k/D = 1/16).
- Labels sign(theta^T X) with theta ~ N(0, I): the clean margin is
  |theta_S^T X_S| ~ sqrt(k). A dense (linear-like) unit mixture is attacked
  along M theta, where the l2 distance to the boundary is
  |theta^T X| / ||theta|| ~ sqrt(k / D) ~ 0.25. Purified thresholded units only
  pass perturbations along the k active features, distance
  |theta_S^T X_S| / ||theta_S|| ~ 1. eps = 0.4 (about 0.8 / sqrt(k), the
  paper's eps ~ 1/sqrt(k) scaling) sits between the two, so it separates
  purified from mixed encoders.
- sigma = 0.1 keeps the noise per feature direction (sigma / sqrt(d) ~ 0.01)
  far below the threshold; width 256 = 4 units per feature gives the clean
  encoder enough random directions for clean heads to do as well as on the
  adversarial one (the claim compares robustness at equal clean accuracy).
- Thresholds b start at 0.1 and are trained: with b = 0 the soft threshold is
  the identity and the net is linear, which cannot be robust here.
"""
import ml_collections

from configs import common

VARIANTS = ('pipeline', 'supervised', 'contrastive', 'pretrain', 'downstream', 'widths', 'scaling')
# ``tiny``: the tests' size (seconds on a CPU): 8 x 8 data, 16 units, 20 steps
# per stage, 2 seeds x 2 tasks, 64 test points, one curve radius.
TINY = {'num_seeds': 2, 'chunk_size': 10, 'progress': False,
        'data.d': 8, 'data.D': 8, 'data.k': 2, 'model.width': 16,
        'pretrain.steps': 20, 'pretrain.batch_size': 32,
        'attack.steps': 2, 'downstream.num_tasks': 2,
        'downstream.steps': 20, 'downstream.batch_size': 32,
        'eval.num_examples': 64, 'eval.eps': (0.2,),
        'eval.attack_steps': 3, 'contrastive.steps': 20,
        'contrastive.batch_size': 32, 'contrastive.sweep_alphas': (0.0, 1.0)}


def get_config(arg: str | None = None):
  """``--config=configs/sparse_coding.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:VARIANT`` and ``:VARIANT,tiny`` for short),
  ``tiny`` the tests' size (``TINY``; the scaling sweep's own), VARIANT one of:

  pipeline     supervised and contrastive pre-training, clean downstream heads,
               references, the controlled-purification sweep (default)
  supervised   the supervised pipeline only (Paper A, first half)
  contrastive  the contrastive pipeline only (Paper A, second half)
  pretrain     pre-training only (both kinds); saves encoders for `downstream`
  downstream   heads on saved encoders: set --config.downstream.encoder_dir
  widths       purity of contrastive encoders against the width m
  scaling      Paper A's scaling laws over k, D, width and eps
               (configs/sparse_coding_scaling.py)
  """
  arg = common.variant_arg(arg, VARIANTS)
  variant = arg.variant
  c = ml_collections.ConfigDict()
  c.experiment = 'sparse_coding'  # robustjax.experiments.<experiment> runs it
  c.stage = {'pretrain': 'pretrain', 'downstream': 'downstream'}.get(variant, 'pipeline')
  c.seed = 0
  c.num_seeds = 3        # seeds draw the dictionary, theta0, init and data
  c.chunk_size = 250     # training steps per compiled chunk (progress-bar tick)
  c.progress = True
  c.resume = 'check'  # a rerun in a workdir of another config refuses; 'overwrite' starts afresh

  c.data = ml_collections.ConfigDict(dict(
      d=64,                  # observation dimension
      D=64,                  # latent features (D > d needs 'overcomplete')
      k=4,                   # active features per example
      exact_k=True,          # exactly k active (else Bernoulli k/D per feature)
      magnitude_low=1.0,     # |X_i| ~ U[magnitude_low, 1]
      noise_std=0.1,         # ||xi|| ~ noise_std
      dictionary='orthonormal',  # 'orthonormal' | 'overcomplete'
  ))
  c.model = ml_collections.ConfigDict(dict(
      width=256,             # hidden units m
      bias_init=0.1,         # soft threshold b at init
      train_bias=True,
      init_scale=1.0,        # w_ij ~ N(0, init_scale^2 / d)
      readout_init_scale=1.0,
  ))
  c.pretrain = ml_collections.ConfigDict(dict(
      modes=('clean', 'adversarial'),
      steps=3000,            # online: a fresh batch every step
      batch_size=256,
      **common.optimizer('adam', learning_rate=1e-2),  # adam | sgd
  ))
  # The training-time attack (adversarial pre-training / reference) and the
  # radius at which "robust" accuracy is reported.
  # norm 'l2' | 'linf'; step = rel_step_size * eps (2.5 eps / steps).
  c.attack = common.attack(norm='l2', eps=0.4, steps=5, rel_step_size=0.5)
  c.downstream = ml_collections.ConfigDict(dict(
      num_tasks=3,           # fresh theta per task, per seed
      steps=1000,            # a convex problem: 1000 Adam steps at 2e-2 converge
      batch_size=128,
      **common.optimizer('adam', learning_rate=2e-2),
      references=('end_to_end_clean', 'end_to_end_adversarial'),
      reference_tasks=1,     # tasks per seed the (costly) references train on
      encoder_dir='',        # stage=downstream: a run's <workdir>/checkpoints
  ))
  # Contrastive pre-training: pairs scored s = score_scale * <h(Z), h(Z')>,
  # logistic loss on y * s. The attack (config.attack) perturbs both views
  # jointly; modes pick the pairs it perturbs (Paper A's negative-pair effect).
  c.contrastive = ml_collections.ConfigDict(dict(
      modes=('clean', 'adversarial', 'adv_negatives_only', 'adv_positives_only'),
      steps=1500,
      batch_size=256,
      **common.optimizer('adam', learning_rate=1e-2),
      negative_fraction=0.5,  # share of dissimilar pairs
      dropout=0.3,            # feature-dropout augmentation of each view
      score_scale=0.1,
      # Controlled purification (Fig. 4 left): units at level alpha, threshold
      # sweep_bias, the score scale fitted per alpha on clean pairs.
      sweep_alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
      sweep_bias=0.1,
      width_sweep=(),         # e.g. (32, 64, 128, 256): purity against width
  ))
  c.eval = ml_collections.ConfigDict(dict(
      num_examples=1000,     # fresh test points per task (accuracy s.e. <= 1.6%)
      eps=(0.1, 0.2, 0.3, 0.4, 0.6, 0.8),  # curve radii (0 and attack.eps added)
      attack_steps=20,
      rel_step_size=0.25,
      restarts=1,
  ))
  if variant == 'supervised':
    c.contrastive.modes = ()
  if variant == 'contrastive':
    c.pretrain.modes = ()
    c.downstream.references = ()
  if variant == 'widths':
    c.pretrain.modes, c.contrastive.modes, c.downstream.references = (), (), ()
    c.contrastive.width_sweep = (32, 64, 128, 256)
  # Scale and durability (robustjax/train/sharding.py, loop.fit). The mesh has
  # a 'data' axis (seeds/tasks, or each step's batch, split over it) and a
  # 'model' axis (wide layers' hidden units split over it); 1 x 1 = one device.
  # data=-1 takes every device left after model (e.g. 8 TPU cores in Colab).
  # Training state is checkpointed under <workdir>/train_checkpoints/<stage>
  # every checkpoint_every steps (at chunk ends) and at the end; rerunning the
  # same command with the same --workdir resumes there.
  c.mesh = common.mesh(data=1, model=1)
  c.checkpoint_every = 500
  if variant == 'scaling':
    from configs import sparse_coding_scaling  # pylint: disable=import-outside-toplevel
    c = sparse_coding_scaling.from_base(c)
    return common.override(c, sparse_coding_scaling.TINY) if arg.tiny else c
  return common.override(c, TINY) if arg.tiny else c
