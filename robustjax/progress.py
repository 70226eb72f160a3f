"""Where a run is: progress bars for its phases, and where Ctrl-C stopped it.

Training shows a bar per ``fit`` (``train/loop.py``); evaluation phases use
``tracked`` for the same display. A Ctrl-C inside either becomes
``Interrupted``, a ``KeyboardInterrupt`` that carries where the run stopped
and what it kept, so launch.py can say so in one line. ``deferred_interrupts``
holds Ctrl-C back while a checkpoint is written, so it lands between library
calls and leaves a complete checkpoint (orbax logs a traceback when Ctrl-C
lands in its wait for a save).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

from tqdm.auto import tqdm


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, with ``where`` the run stopped and what it ``kept`` ('' when nothing to say).

  A ``KeyboardInterrupt``, so code that catches Ctrl-C still does.
  """

  def __init__(self, where: str, kept: str = ''):
    super().__init__(where)
    self.where, self.kept = where, kept


class _Bar:
  """A tqdm bar's ``update`` / ``set_postfix_str`` that also counts when the bar is hidden."""

  def __init__(self, bar):
    self._bar, self.n = bar, 0

  def update(self, n: int = 1) -> None:
    self.n += n
    self._bar.update(n)

  def set_postfix_str(self, s: str) -> None:
    self._bar.set_postfix_str(s)


@contextlib.contextmanager
def tracked(desc: str, total: int, enabled: bool = True):
  """A progress bar of ``total`` units named ``desc`` (hidden unless ``enabled``),
  yielded for the caller to ``update()``; the bar is removed at the end, as
  training's are. A Ctrl-C inside the block is re-raised as
  ``Interrupted('<desc> (<done>/<total> done)')``; one raised by an inner
  phase passes through unchanged (the innermost phase knows best).

  Raises ValueError for a negative ``total``.
  """
  if isinstance(total, bool) or not isinstance(total, int) or total < 0:
    raise ValueError(f'total: an integer >= 0, got {total!r}')
  with tqdm(total=total, desc=desc, disable=not enabled, leave=False) as raw:
    bar = _Bar(raw)
    try:
      yield bar
    except Interrupted:
      raise
    except KeyboardInterrupt:
      raise Interrupted(f'{desc} ({bar.n}/{total} done)') from None


class _Deferred:
  def __enter__(self):
    self._got, self._old = [], None
    self._stopping = sys.exc_info()[0] is not None  # entered from a finally clause
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self._old = signal.signal(signal.SIGINT, lambda *_: self._got.append(True))
    return self

  def __exit__(self, exc_type, *_):
    if self._old is not None:
      signal.signal(signal.SIGINT, self._old)
    if self._got and exc_type is None and not self._stopping:
      raise KeyboardInterrupt
    return False


def deferred_interrupts():
  """A context in which Ctrl-C waits: it is raised as KeyboardInterrupt when the
  block ends. Entered while an exception propagates (a finally clause), it is
  dropped: the run is stopping anyway. Only Python's default SIGINT handler in
  the main thread is replaced; elsewhere the block runs unchanged."""
  return _Deferred()
