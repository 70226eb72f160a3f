"""robustjax: adversarially robust representation learning in JAX."""
from robustjax import threefry_cpu as _threefry_cpu

__version__ = '0.1.0'

_threefry_cpu.install()  # the same random bits, faster on CPU (see threefry_cpu)
