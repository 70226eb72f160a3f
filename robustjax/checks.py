"""Argument checks shared by every public attack and metric: one line per refusal.

Each check raises ``ValueError`` (a bad value) or ``TypeError`` (a bad type)
with one line that starts with the argument's name and says what is allowed.
Checks that need the values of an array run only when the array is concrete:
inside ``jit`` (a ``jax.core.Tracer``) only shapes and dtypes are checked, so
no check adds a host sync to compiled code.

Conventions the checks hold the library to:
  * inputs x are floating point (n, ...), finite, and inside ``bounds`` when
    bounds are given (points outside are refused, never silently clipped: a
    clean point outside the box makes the box push attack points out of the
    ball, and a robust accuracy below the box-free one);
  * multi-class models return logits (n, C), labels are integers in [0, C);
  * binary models return scalar logits (n,), labels are -1 or +1 (as
    ``losses.margin``: the margin is y f); {0, 1} labels are refused;
  * radii are finite and >= 0 (scalar or one per example), budgets are
    integers >= 1 (or >= 0 where zero means "none"), temperatures > 0;
  * step sizes: ``step_size`` is absolute (the units of eps), ``rel_step_size``
    a fraction of eps; a renamed keyword is refused by :func:`renamed`.
"""
from __future__ import annotations

import numbers
import operator

import jax
import numpy as np

NORMS = ('l2', 'linf')


def concrete(*arrays) -> bool:
  """True when no argument is a tracer (its values can be read without a sync in jit)."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _fmt(v) -> str:
  return f'{float(v):.4g}'


def renamed(func: str, given: dict, **renames: tuple[str, str]) -> None:
  """Refuses keyword arguments a function no longer takes (its ``**given``).

  ``renames``: old name -> (new name, what the new one means). A renamed
  keyword raises TypeError naming the new one; any other unknown keyword the
  TypeError Python itself would raise.
  """
  for old in given:
    if old in renames:
      new, meaning = renames[old]
      raise TypeError(f'{old}: {func}() now takes {new} ({meaning}); pass {new}={given[old]!r} '
                      'for the former meaning')
    raise TypeError(f"{func}() got an unexpected keyword argument '{old}'")


def norm(value, name: str = 'norm') -> str:
  if value not in NORMS:
    raise ValueError(f'{name}: must be one of {NORMS}, got {value!r}')
  return value


def choice(value, allowed, name: str):
  """``value`` must be one of ``allowed``."""
  if value not in allowed:
    raise ValueError(f'{name}: must be one of {tuple(allowed)}, got {value!r}')
  return value


def budget(value, name: str, minimum: int = 1) -> int:
  """An integer count (steps, restarts, queries, classes) >= ``minimum``."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name}: must be an integer >= {minimum}, got {value!r}')
  try:
    v = operator.index(value)
  except TypeError:
    raise TypeError(f'{name}: must be an integer >= {minimum}, got {value!r} '
                    f'({type(value).__name__})') from None
  if v < minimum:
    raise ValueError(f'{name}: must be an integer >= {minimum}, got {v}')
  return v


def optional_budget(value, name: str, minimum: int = 1):
  return None if value is None else budget(value, name, minimum)


def number(value, name: str, *, low=None, high=None, low_open: bool = False,
           high_open: bool = False, what: str = ''):
  """A finite real scalar in [low, high] (open ends when asked); traced values pass."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name}: must be a real number, got {value!r}')
  if not concrete(value):
    return value
  arr = np.asarray(value)
  if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f'{name}: must be a real scalar{what}, got {value!r}')
  v = float(arr)
  bad = not np.isfinite(v)
  if low is not None:
    bad |= v <= low if low_open else v < low
  if high is not None:
    bad |= v >= high if high_open else v > high
  if bad:
    if high is None:
      allowed = f'{">" if low_open else ">="} {low:g}' if low is not None else 'a real number'
    elif low is None:
      allowed = f'{"<" if high_open else "<="} {high:g}'
    else:
      allowed = (f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}')
    raise ValueError(f'{name}: must be finite and {allowed}{what}, got {_fmt(v)}')
  return value


def positive(value, name: str, what: str = ''):
  """A finite scalar > 0 (temperature, step length, window share)."""
  return number(value, name, low=0, low_open=True, what=what)


def temperature(value, name: str = 'temperature'):
  return positive(value, name, what=' (the softmax temperature T divides similarities)')


def radius(value, n: int | None = None, name: str = 'eps', *, per_example: bool = True):
  """A perturbation radius (or a step length): finite and >= 0, scalar or (n,)."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name}: must be a real number >= 0, got {value!r}')
  shape = np.shape(value)
  allowed_shapes = '() or (n,)' if per_example else '()'
  if shape != () and not (per_example and len(shape) == 1 and (n is None or shape[0] == n)):
    raise ValueError(f'{name}: must have shape {allowed_shapes}'
                     f'{f" with n = {n}" if per_example and n is not None else ""}, got {shape}')
  if not concrete(value):
    return value
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f'{name}: must be a real number >= 0, got dtype {arr.dtype}')
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)) or np.any(arr < 0):
    bad = arr[~(np.isfinite(arr) & (arr >= 0))]
    where = '' if arr.ndim == 0 else f' ({bad.size} of {arr.size} examples)'
    raise ValueError(f'{name}: the radius must be finite and >= 0, got {_fmt(bad.flat[0])}'
                     f'{where}')
  return value


def radii(values, name: str = 'eps'):
  """A float or a sequence of radii; returns (list of floats, was it a sequence)."""
  if isinstance(values, (numbers.Real, np.number)) or np.ndim(values) == 0:
    radius(values, name=name, per_example=False)
    return [values], False
  vals = list(values)
  if not vals:
    raise ValueError(f'{name}: needs at least one radius, got an empty sequence')
  for v in vals:
    radius(v, name=name, per_example=False)
  return vals, True


def bounds(value, name: str = 'bounds'):
  """None or (lo, hi): finite, lo < hi (scalars, or arrays broadcast to one input)."""
  if value is None:
    return None
  try:
    lo, hi = value
  except (TypeError, ValueError):
    raise ValueError(f'{name}: must be None or a pair (lo, hi), got {value!r}') from None
  if concrete(lo, hi):
    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))):
      raise ValueError(f'{name}: lo and hi must be finite, got {value!r}')
    if not np.all(lo_a < hi_a):
      raise ValueError(f'{name}: needs lo < hi, got {value!r}')
  return value


def inputs(x, name: str = 'x', min_ndim: int = 2):
  """A floating batch (n, ...), finite when concrete; integer images get the fix."""
  if not hasattr(x, 'dtype') or not hasattr(x, 'shape'):
    raise TypeError(f'{name}: must be an array (n, ...), got {type(x).__name__}')
  dtype = np.dtype(x.dtype)
  if not np.issubdtype(dtype, np.floating):
    fix = (f'convert with {name}.astype(jnp.float32) / 255 (and bounds=(0, 1))'
           if dtype == np.uint8 else f'convert with {name}.astype(jnp.float32)')
    raise TypeError(f'{name}: dtype {dtype} is not floating; {fix}')
  if x.ndim < min_ndim:
    raise ValueError(f'{name}: must be a batch of shape (n, ...) with ndim >= {min_ndim}, '
                     f'got shape {x.shape}')
  if x.shape[0] == 0:
    raise ValueError(f'{name}: must hold at least one point, got shape {x.shape}')
  if concrete(x):
    bad = ~np.all(np.isfinite(np.asarray(x).reshape(x.shape[0], -1)), axis=-1)
    if bad.any():
      raise ValueError(f'{name}: {int(bad.sum())} of {x.shape[0]} points have non-finite '
                       'values (nan or inf)')
  return x


def inside(x, box, name: str = 'x'):
  """Refuses points outside ``box`` = (lo, hi) (beyond a 1e-6 relative tolerance)."""
  if box is None or not concrete(x, *box):
    return x
  xa = np.asarray(x).reshape(x.shape[0], -1)  # in x's dtype: no float64 copy of a data set
  lo, hi = (np.broadcast_to(np.asarray(b, xa.dtype), x.shape[1:]).reshape(-1) for b in box)
  out = np.maximum(np.maximum(lo - xa, xa - hi), 0)
  outside = np.any(out > 1e-6 * (hi - lo), axis=-1)
  if outside.any():
    raise ValueError(
        f'{name}: {int(outside.sum())} of {x.shape[0]} points lie outside bounds='
        f'{_show_bounds(box)} (by up to {float(out.max()):.4g}); clean points must lie in the '
        f'domain: clip them (jnp.clip({name}, lo, hi)) or pass the right bounds')
  return x


def _show_bounds(box):
  lo, hi = box
  show = lambda v: f'{float(v):g}' if np.ndim(v) == 0 else f'array{np.shape(v)}'
  return f'({show(lo)}, {show(hi)})'


def batch(x, y, name_x: str = 'x', name_y: str = 'y'):
  """y is one value per example of x: shape (n,)."""
  if not hasattr(y, 'shape'):
    y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f'{name_y}: must have shape ({x.shape[0]},), one label per example of '
                     f'{name_x}, got {tuple(y.shape)}')
  return y


def labels(y, *, binary: bool, num_classes: int | None = None, name: str = 'y'):
  """Labels in the library's convention for the model's output.

  binary (scalar logits (n,)): every label -1 or +1; {0, 1} labels are
  refused with the conversion. Multi-class (logits (n, C)): integers in
  [0, C). Values are checked only when ``y`` is concrete.
  """
  y_dtype = np.dtype(y.dtype) if hasattr(y, 'dtype') else np.asarray(y).dtype
  if not (np.issubdtype(y_dtype, np.number) or y_dtype == np.bool_):
    raise TypeError(f'{name}: labels must be numbers, got dtype {y_dtype}')
  if not concrete(y):
    return y
  v = np.asarray(y)
  if binary:
    values = set(np.unique(v).tolist())
    if values <= {-1, 1}:
      return y
    if values <= {0, 1}:
      raise ValueError(f'{name}: labels in {{0, 1}} with scalar logits (n,); binary labels are '
                       f'-1 or +1 here (margin y * f): pass 2 * {name} - 1')
    raise ValueError(f'{name}: binary labels (scalar logits (n,)) must be -1 or +1, got values '
                     f'{sorted(values)[:5]}')
  if np.issubdtype(v.dtype, np.floating) and not np.all(v == np.round(v)):
    raise ValueError(f'{name}: class labels must be integers, got non-integer values')
  if num_classes is not None and v.size and (v.min() < 0 or v.max() >= num_classes):
    hint = (' (labels -1/+1 are for scalar logits (n,); with (n, 2) logits use 0/1)'
            if num_classes == 2 and v.min() == -1 else '')
    raise ValueError(f'{name}: class labels must be integers in [0, {num_classes}), got values '
                     f'in [{int(v.min())}, {int(v.max())}]{hint}')
  return y
