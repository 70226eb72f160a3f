"""The Colab TPU notebook runs end to end on CPU at a tiny size, on a mesh of
8 fake CPU devices (as the 8 cores of a Colab TPU)."""
import os

import pytest

from tests.helpers import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'sparse_coding_tpu.ipynb')


@pytest.mark.slow
def test_colab_notebook_executes_tiny_on_cpu(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1
  params[0].source = (f'TINY = True\nWORKDIR = {str(tmp_path / "run")!r}\n'
                      f'SOURCE = {ROOT!r}')
  # The kernel inherits the environment: 8 fake devices, CPU only.
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()

  text = lambda cell: ''.join(o.get('text', '') for o in cell.get('outputs', []))
  outputs = '\n'.join(text(c) for c in nb.cells if c.cell_type == 'code')
  assert '8 devices' in outputs
  assert "mesh: {'data': 8, 'model': 1}" in outputs
  assert 'downstream robust acc' in outputs  # the table
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) == 3
  assert (tmp_path / 'run' / 'results.json').is_file()
  assert (tmp_path / 'run' / 'train_checkpoints' / 'pretrain_adversarial').is_dir()
