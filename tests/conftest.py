"""Shared fixtures."""
import pytest

from tests.helpers import TINY


@pytest.fixture
def tiny_sparse_coding_config():
  """configs/sparse_coding.py with TINY's overrides applied, in-process."""
  import ast
  from configs import sparse_coding
  cfg = sparse_coding.get_config()
  for arg in TINY:
    field, value = arg[len('--config.'):].split('=', 1)
    node = cfg
    *parents, leaf = field.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = ast.literal_eval(value) if value not in ('False', 'True') else value == 'True'
  return cfg
