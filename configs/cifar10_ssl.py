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
grayscale 0.2). ``barlow``: Barlow Twins (lambda 5e-3, projector
2048-2048). ``digits`` / ``digits_barlow``: the offline small-scale runs.
"""
from configs import cifar10_supervised

VARIANTS = ('cifar10', 'barlow', 'digits', 'digits_barlow')


def get_config(variant: str = 'cifar10'):
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
  offline = variant.startswith('digits')
  c = cifar10_supervised.get_config('digits' if offline else 'cifar10')
  c.variant = variant
  c.pretrain.update(method='simclr', steps=48_800, batch_size=512, learning_rate=0.3)
  c.ssl = dict(temperature=0.5, barlow_lambda=5e-3, adv_weight=1.0, projector_dims=(512, 128))
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
  if variant.endswith('barlow'):
    c.pretrain.method = 'barlow_twins'
    c.ssl.projector_dims = (64, 64) if offline else (2048, 2048)
  return c
