"""Two independent phases of a run side by side, on two threads.

XLA:CPU runs the small matmuls of a training step on one core, and programs
called from two Python threads run at the same time (jax releases the GIL
while a program runs), so two independent phases (two trainings) take about
as long as the longer of them on a 2-core machine instead of their sum. The
results are those of running them one after the other: every program is
deterministic, and the phases share no state.

Ctrl-C reaches only the main thread. Whatever stops one lane (an exception,
Ctrl-C) asks the other to stop at its next training chunk or progress
update (``progress.request_stop``); the first failure is re-raised: the main
lane's when it was interrupted or failed on its own, else the side lane's.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from robustjax import progress


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def side_by_side(main: Callable[[], Any], side: Callable[[], Any], parallel: bool = True
                 ) -> tuple[Any, Any]:
  """(main(), side()): ``side`` on a second thread while ``main`` runs here.

  ``parallel=False`` runs them one after the other (main first), as does a
  machine with one core. Raises the first failure (see the module doc).
  """
  if not parallel or cores() < 2:
    return main(), side()
  out, failed = {}, []

  def run_side():
    try:
      out['side'] = side()
    except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
      failed.append(e)
      progress.request_stop()

  thread = threading.Thread(target=run_side, name='robustjax-side-lane', daemon=True)
  thread.start()
  main_error = None
  try:
    try:
      main_out = main()
    except BaseException as e:  # noqa: BLE001 - re-raised below, once the side lane stopped
      main_error = e
      progress.request_stop()
    while thread.is_alive():
      try:
        thread.join()
      except KeyboardInterrupt:  # Ctrl-C while waiting: the side lane says where it stopped
        progress.request_stop()
    if main_error is not None:
      # The main lane stopped because the side lane failed: say why.
      if (failed and isinstance(main_error, KeyboardInterrupt)
          and not isinstance(failed[0], KeyboardInterrupt)):
        raise failed[0]
      raise main_error
    if failed:
      raise failed[0]
    return main_out, out['side']
  finally:
    progress.clear_stop()
