"""Self-supervised pre-training (SimCLR or Barlow Twins), clean or adversarial, then probes.

    python launch.py --config=configs/cifar10_ssl.py:digits          # offline, CPU
    python launch.py --config=configs/cifar10_ssl.py --config.data.data_dir=DIR
    python launch.py --config=configs/cifar10_ssl.py:barlow --config.data.data_dir=DIR

The kinds of configs/cifar10_supervised.py with a self-supervised loss:
'adversarial' is RoCL (Kim et al. 2020): each step attacks the first view
inside the linf 8/255 ball to maximise its NT-Xent loss against the other
views (instance-wise, no labels; ``robustjax.attacks.instance``) and trains
on ``L(z1, z2) + adv_weight * L(z_adv, z2)``. rep-spectral penalises the
backbone only; ll adds the projector. The probe reads the backbone's pooled
features (the projector is dropped). RoCL reports ~83.7% clean / ~40.3% PGD
linear-probe accuracy on CIFAR-10 with ResNet-18 (Paper A's inheritance).

Default (``cifar10``): SimCLR on CIFAR-10, ResNet-18 with circular padding,
projector 512-128, temperature 0.5, batch 512 for 500 epochs (48,800 steps),
SGD 0.3 with cosine decay, weight decay 5e-4, SimCLR's CIFAR augmentations
(resized crop from 0.2 of the area, flip, colour jitter 0.5 with p 0.8,
grayscale 0.2).

``barlow``: Paper B's Barlow Twins, the recipe of the authors' code
(Pehlevan-Group/rep-spectral: src/train_reg_barlow.py, src/model/
architectures/Barlow.py, commands/job_train_barlow_batch.sh): ResNet-18
backbone, projector one bias-free 512 -> 256 layer, the unscaled loss with
lambda 5e-3, SGD lr 0.01, momentum 0.9, weight decay 1e-4, no schedule,
batch 1024 for 1000 epochs (48 steps each: 48,000 steps), rep-spectral
lam 0.01 after a burn-in of 900 epochs, every 24 updates. Their views:
resized crop (scale 0.08-1), flip, jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
grayscale 0.2, plus a Gaussian blur and solarisation that robustjax's
augmentations do not have. Chosen over the Barlow Twins paper's LARS
(lr 0.2, loss scale 0.024; solo-learn's CIFAR LARS 0.3, scale 0.1) because
these settings are what Paper B's Barlow numbers come from. SimCLR's SGD at
lr 0.3 with a 2048-2048 projector diverged: the unscaled loss (a sum over
2048 dimensions) had a gradient norm of 7.0e3 at init (ResNet-18 width 16,
batch 128; SimCLR's is ~0.4) and the weight norm went 85 -> 8952 in 6 steps
with a flat loss, freezing the network (the weights are scale-invariant
under BatchNorm and the loss's standardisation, so a huge norm is a tiny
learning rate). Here the first updates are ~230x smaller (lr 0.01, gradient
norm 9.0e2 with the 256-d projector) and the norm levels off (width 8: 43
-> 106 in 36 steps, growing 3.7 then 0.4 per step).
``digits`` / ``digits_barlow``: the offline small-scale runs (Adam 3e-3).

Memory (the paper-scale variants train one seed at a time,
``pretrain.seeds_at_once = 1``): a ResNet-18 (width 64) training step keeps
~7.8 MiB of activations per 32x32 image (XLA's compile-time memory analysis
of its forward + backward on CPU, 264 MiB at 32 images, 515 MiB at 64: the
slope; by hand, 20 conv-BN-ReLU units keeping ~3 tensors each: 15 x
(64x32x32 + 128x16x16 + 256x8x8 + 512x4x4) floats = 7.0 MiB). A step holds
seeds x batch x views images: RoCL with all 3 seeds at once,
3 x 512 x 3 = 4608 images = ~35 GiB (~37 GiB with parameters, optimizer
state and the on-device training set), too much for a 40 GB card; one seed
at a time 1536 images = ~12 GiB; SimCLR 3 x 512 x 2 = ~24 GiB or ~8 GiB;
Barlow 3 x 1024 x 2 = ~47 GiB or ~16 GiB. Seeds at once trade memory for
nothing else on an accelerator a batch of 512-1024 images already fills
(the results are the same: each seed keeps its keys). With a mesh whose
'data' axis the seeds divide, ``seeds_at_once = 0`` splits them over the
devices instead.
"""
from configs import cifar10_supervised, common

VARIANTS = ('cifar10', 'barlow', 'digits', 'digits_barlow')
OFFLINE = ('digits', 'digits_barlow')


def get_config(arg: str | None = None):
  """``--config=configs/cifar10_ssl.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:digits,tiny`` for short); ``tiny`` is
  ``cifar10_supervised.TINY``."""
  arg = common.variant_arg(arg, VARIANTS, OFFLINE)
  variant = arg.variant
  offline = variant.startswith('digits')
  c = cifar10_supervised.get_config('digits' if offline else 'cifar10')
  c.variant = variant
  c.pretrain.update(method='simclr', steps=48_800, batch_size=512, learning_rate=0.3,
                    seeds_at_once=0 if offline else 1)
  c.ssl = dict(temperature=0.5, barlow_lambda=5e-3, adv_weight=1.0, projector_dims=(512, 128),
               projector_bias=True)
  c.augment.update(crop_padding=0, flip=True, jitter_strength=0.5, jitter_p=0.8,
                   grayscale_p=0.2, resized_crop=True, min_scale=0.2)
  c.attack.update(steps=7, rel_step_size=0.32)  # RoCL: 7 steps of 0.01 at 8/255
  if offline:
    c.pretrain.update(steps=1000, batch_size=128, learning_rate=3e-3)
    c.ssl.projector_dims = (64, 32)
    # 8x8 digits: a one-pixel shift and brightness/contrast are the views;
    # flips and 0.2-area crops would change the digit.
    c.augment.update(crop_padding=1, flip=False, resized_crop=False, grayscale_p=0.0)
    c.attack.update(steps=3, rel_step_size=0.8)  # as the supervised digits run
  if variant == 'digits_barlow':
    c.pretrain.method = 'barlow_twins'
    c.ssl.projector_dims = (64, 64)
  if variant == 'barlow':  # the authors' recipe (module docstring)
    c.pretrain.update(method='barlow_twins', steps=48_000, batch_size=1024, learning_rate=0.01,
                      momentum=0.9, weight_decay=1e-4, schedule='constant')
    c.ssl.update(projector_dims=(256,), projector_bias=False, barlow_lambda=5e-3)
    c.spectral.update(lam=0.01, burn_in=0.9, every_k=24)
    c.augment.update(min_scale=0.08)
  return common.override(c, cifar10_supervised.TINY) if arg.tiny else c
