"""Transfer (Paper B): pre-train on CIFAR-100, linear probe on CIFAR-10.

    python launch.py --config=configs/transfer.py:digits     # offline: digits 0-4 -> 5-9
    python launch.py --config=configs/transfer.py --config.data.data_dir=DIR

Supervised pre-training of every kind (clean / adversarial / rep / ll,
configs/cifar10_supervised.py) on the source task; the probe, its robust
accuracy and its adversarial distances are measured on the target task the
encoder never saw. Offline, the source is digits 0-4 and the target digits
5-9 (relabelled 0-4), from scikit-learn's bundled 8x8 digits.
"""
from configs import cifar10_supervised, common

VARIANTS = ('cifar100', 'digits')
OFFLINE = ('digits',)


def get_config(arg: str | None = None):
  """``--config=configs/transfer.py:ARG``, ARG ``variant=VARIANT,tiny=BOOL``
  (``configs.common.parse_arg``; ``:digits,tiny`` for short); ``tiny`` is
  ``cifar10_supervised.TINY``."""
  arg = common.variant_arg(arg, VARIANTS, OFFLINE)
  variant = arg.variant
  offline = variant == 'digits'
  c = cifar10_supervised.get_config('digits' if offline else 'cifar10')
  c.variant = variant
  if offline:
    c.data.classes = (0, 1, 2, 3, 4)
    c.probe_data.update(name='digits', classes=(5, 6, 7, 8, 9))
    c.eval.n_target_classes = 3
  else:
    c.data.name = 'cifar100'
    c.probe_data.name = 'cifar10'
  return common.override(c, cifar10_supervised.TINY) if arg.tiny else c
