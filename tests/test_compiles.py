"""How many XLA programs the sparse-coding pipeline compiles (issue 17).

Counted with jax's compile events (``/jax/core/compile/backend_compile_duration``,
one per program compiled or read back from the persistent cache, jax 0.10.2
``jax/_src/interpreters/pxla.py``). Programs other tests of the same process
compiled already are not compiled again, so a first run may count fewer.
"""
import jax
import numpy as np
import pytest

from robustjax import timing
from robustjax.experiments import sparse_coding

# The tiny pipeline's programs (jax_log_compiles, jax 0.10.2): 4 set-up draws
# (keys, worlds, pre-training test keys, tasks), 2 train-state inits (2 runs:
# supervised and contrastive clean; 3 modes x 2 runs: contrastive adversarial)
# and the zero heads, 5 training chunks (supervised clean and adversarial,
# contrastive clean and adversarial modes, heads; the references reuse the
# supervised ones), 3 evaluations (pre-training task, pairs, heads; the
# references reuse the first), the purification sweep and the unit reports.
TINY_PIPELINE_PROGRAMS = 17


def test_count_compiles_sees_a_new_program_only_once():
  f = jax.jit(lambda x: x * 3.0 + 1.0)
  ones, zeros = np.ones(7, np.float32), np.zeros(7, np.float32)  # host arrays: no programs
  with timing.compiled_programs() as n:
    f(ones)
    f(zeros)  # same shape: no new program
  assert len(n) == 1
  with timing.compiled_programs() as n:
    f(ones)
  assert len(n) == 0


@pytest.mark.slow  # the whole tiny pipeline in-process, twice (156 s on the loaded 2 cores)
def test_tiny_pipeline_compiles_each_program_once(tmp_path, tiny_sparse_coding_config):
  cfg = tiny_sparse_coding_config
  with timing.compiled_programs() as first:
    sparse_coding.main(cfg, str(tmp_path / 'first'))
  assert len(first) <= TINY_PIPELINE_PROGRAMS
  # The same run again (fresh workdir, new host arrays): every program is reused.
  with timing.compiled_programs() as second:
    sparse_coding.main(cfg, str(tmp_path / 'second'))
  assert len(second) == 0
