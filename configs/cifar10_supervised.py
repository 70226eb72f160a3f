"""Both papers on images: supervised pre-training, then linear probes on frozen encoders.

    python launch.py --config=configs/cifar10_supervised.py:digits     # offline, CPU, ~minutes
    python launch.py --config=configs/cifar10_supervised.py --config.data.data_dir=DIR

Encoders are trained in four ways (``pretrain.kinds``), every other setting equal:

  clean        cross-entropy (Paper B's "none")
  adversarial  Madry et al. PGD training, linf 8/255 (Paper A's pre-training)
  rep          clean + lam * sum of the squared operator norms of every conv
               layer up to the feature map (Paper B's rep-spectral)
  ll           rep + the readout's squared spectral norm (ll-spectral)

Then, per encoder and seed, a multinomial logistic readout is re-fitted on the
frozen features (clean data; the linear probe) and evaluated: clean accuracy,
robust accuracy at ``eval.eps`` under the attack ensemble (APGD-CE, APGD-T)
through encoder + probe (Paper A's robustness inheritance), and the l2
adversarial distance of the first correctly classified test points (Paper B;
white-box FMN). The first-layer filters of each kind are plotted side by side.

Default: CIFAR-10, ResNet-18 with circular padding (Paper B), SGD 0.1,
momentum 0.9, weight decay 5e-4, batch 128, 200 epochs with cosine decay,
random crop (pad 4) + flip; PGD-10 at linf 8/255, step 2/255. It needs a tfds
``data_dir`` with 'cifar10' prepared and an accelerator.

``digits`` is the offline stand-in that finishes in minutes on 2 CPU cores:
scikit-learn's 8x8 digits, a small CNN without BatchNorm (with it, shrinking a
conv kernel costs nothing, so the spectral penalty has no grip), l2 attacks
(8x8 images are too coarse for a meaningful linf radius), fewer steps and
points. Its numbers are a
small-scale check of the claims, not the papers' tables.
"""
import ml_collections

from configs import common

VARIANTS = ('cifar10', 'digits')
OFFLINE = ('digits',)
# ``tiny`` (offline variants, here and in cifar10_ssl.py and transfer.py): the
# tests' size: 2 seeds, 10 steps of 32 images, an 8-16 CNN, APGD-CE only on 32
# points, FMN on 16.
TINY = {'num_seeds': 2, 'progress': False, 'chunk_size': 5,
        'checkpoint_every': 5, 'pretrain.steps': 10,
        'pretrain.batch_size': 32, 'model.cnn_widths': (8, 16),
        'attack.steps': 2, 'eval.num_points': 32, 'eval.n_iter': 5,
        'eval.attacks': ('apgd-ce',), 'eval.distance_points': 16,
        'eval.fmn_steps': 5, 'eval.batch_size': 64, 'probe.max_iter': 30}


def get_config(arg: str | None = None):
  """``--config=configs/cifar10_supervised.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:digits`` and ``:digits,tiny`` for short)."""
  arg = common.variant_arg(arg, VARIANTS, OFFLINE)
  variant = arg.variant
  c = ml_collections.ConfigDict()
  c.experiment = 'images'
  c.variant = variant
  c.seed = 0
  c.num_seeds = 3        # vmapped: one compile trains every seed
  c.chunk_size = 500
  c.progress = True
  c.resume = 'check'  # a rerun in a workdir of another config refuses; 'overwrite' starts afresh
  c.checkpoint_every = 2000
  c.mesh = common.mesh(data=1, model=1)

  # What the encoder is pre-trained on ...
  c.data = ml_collections.ConfigDict(dict(
      name='cifar10',        # 'cifar10' | 'cifar100' | 'mnist' | 'digits'
      data_dir='',           # tfds data_dir with the dataset prepared (no download)
      classes=(),            # keep these classes only, relabelled 0..k-1 (() = all)
      test_fraction=0.2,     # digits only: held-out share
      split_seed=0,          # digits only
      max_train=0,           # caps for smoke runs (0 = all)
      max_test=0,
  ))
  # ... and what the linear probe is fitted and evaluated on (transfer: another
  # dataset or other classes). name '' = the pre-training data.
  c.probe_data = ml_collections.ConfigDict(dict(name='', classes=()))

  c.model = ml_collections.ConfigDict(dict(
      name='resnet18',       # 'resnet18' | 'resnet34' | 'small_cnn'
      width=64,              # ResNet: channels of the first stage
      cnn_widths=(16, 32),   # small_cnn: channels per conv layer
      batch_norm=True,       # small_cnn: BatchNorm after each conv (ResNets always have it)
      padding='CIRCULAR',    # 'CIRCULAR' (Paper B) | 'SAME'
  ))
  c.pretrain = ml_collections.ConfigDict(dict(
      method='supervised',   # 'supervised' | 'simclr' | 'barlow_twins'
      kinds=('clean', 'adversarial', 'rep', 'll'),
      steps=78_000,          # 200 epochs of 50k images at batch 128
      batch_size=128,
      **common.optimizer('sgd', learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
      schedule='cosine',     # 'cosine' | 'constant'
      seeds_at_once=0,       # seeds per compiled step (0 = all): memory grows with it
  ))
  c.augment = ml_collections.ConfigDict(dict(
      crop_padding=4,        # random crop after zero padding
      flip=True,             # horizontal flips
      jitter_strength=0.0,   # SimCLR colour jitter strength (0 = none)
      jitter_p=0.8,
      grayscale_p=0.0,
      resized_crop=False,
      min_scale=0.2,
  ))
  # The training-time attack of the 'adversarial' kind.
  c.attack = common.attack(norm='linf', eps=8 / 255, steps=10, rel_step_size=0.25)
  c.spectral = ml_collections.ConfigDict(dict(
      lam=1e-2,              # lam * sum sigma_max^2
      burn_in=0.8,           # share of pre-training steps before the penalty switches on
      every_k=1,
      iters=1,               # power iterations per step (vectors carried across steps)
      warmup_iters=100,
      tol=1e-6,
  ))
  c.probe = ml_collections.ConfigDict(dict(l2=1e-4, max_iter=500))
  c.eval = ml_collections.ConfigDict(dict(
      num_points=1000,       # test points for robust accuracy
      eps=(8 / 255,),        # robust accuracy radii
      norm='linf',
      attacks=('apgd-ce', 'apgd-t'),
      n_iter=100,
      n_target_classes=9,
      distance_points=1000,  # first correctly classified test points (Paper B)
      fmn_steps=100,
      batch_size=500,        # feature extraction / attack batches
  ))
  if variant == 'digits':
    c.num_seeds = 3
    c.chunk_size = 250
    c.checkpoint_every = 500
    c.data.name = 'digits'
    c.model.name = 'small_cnn'
    c.model.padding = 'CIRCULAR'
    c.pretrain.update(steps=1000, batch_size=128, optimizer='adam', learning_rate=3e-3,
                      weight_decay=0.0)
    c.augment.update(crop_padding=1, flip=False)
    # l2 0.5 is about 2.5x the clean probes' median distance (~0.19); PGD-3 of
    # 0.8 eps keeps the adversarial kind inside the time budget.
    c.attack.update(norm='l2', eps=0.5, steps=3, rel_step_size=0.8)
    # Without BatchNorm, so that the penalty on the conv kernels bounds the
    # feature map's Jacobian (BatchNorm would undo any shrinking of a kernel).
    c.model.batch_norm = False
    c.spectral.update(lam=0.1, burn_in=0.5)
    c.eval.update(num_points=359, eps=(0.25, 0.5), norm='l2', n_iter=25, n_target_classes=3,
                  distance_points=200, fmn_steps=50)
  return common.override(c, TINY) if arg.tiny else c
