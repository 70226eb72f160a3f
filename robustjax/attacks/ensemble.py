"""AutoAttack's versions in JAX: robust accuracy at one radius under an attack cascade.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020; reference code
fra31/auto-attack, ``autoattack/autoattack.py`` (``set_version``,
``run_standard_evaluation``). Attacks run in order; each only sees the points
every earlier attack left robust, so the ensemble's robust accuracy is never
above any of its members'. Every adversarial point an attack returns is
re-checked (misclassified with a finite point and logits, inside the eps-ball
up to float32 rounding, inside ``bounds``) before it counts.

Versions (``version=``), with the reference's attack lists and budgets for
linf and l2:

  'standard'  APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations,
              1 restart, 9 target classes), FAB-T (100 iterations, 1 restart,
              9 target classes), Square (5000 queries, p_init 0.8, the
              published l2 update). What papers report as "AutoAttack".
  'plus'      APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5
              restarts), Square (5000 queries), APGD-T (9 targets), FAB-T (9
              targets, 1 restart), in the reference's order.
  'rand'      APGD-CE and APGD-DLR, 1 restart, each step's gradient the mean
              over 20 draws of a randomised model ``predict_fn(x, key)``
              (Expectation over Transformation).
  'custom'    ``attacks`` (any names below) with the budgets given; the
              default is robustjax's cascade APGD-CE, APGD-T, FMN (targeted
              minimal-norm, in place of FAB-T), Square with the 'simple' l2
              update (``square.L2_UPDATES``: on this project's MLPs it breaks
              more points than the published one from a few hundred queries
              on, e.g. the digits MLP at l2 0.5, 1000 queries: robust
              accuracy 0.311 'simple' vs 0.456 published,
              ``benchmarks/square_l2.py``).

Attack names (the 'fixed' kind of ``attacks.registry``): 'apgd-ce',
'apgd-dlr' (margin loss with < 3 classes), 'apgd-t' (targeted DLR against
each runner-up class in turn; targeted margin with < 4 classes), 'fab'
(untargeted FAB), 'fab-t' (FAB against each runner-up class), 'fmn'
(targeted FMN against each runner-up class; broken when its minimal point is
within eps), 'square' (score-based black box). The targeted members, like
the reference's, attack the runner-up classes one at a time, each rank on the
points earlier ranks left robust. A minimal-distance method (the registry's
'minimal' kind, e.g. 'tangent') is refused: it measures a distance, not the
robust accuracy at eps (``metrics.robustness.adversarial_distance``).

Batches: points go through every attack in chunks of one compiled size,
``min(batch_size, n)`` (AutoAttack's ``bs``); the last chunk is padded with
copies of its first point, whose results are dropped. Random draws are keyed
by each point's position in ``x`` (``common.example_keys``), so a point's
result does not depend on its chunk: chunked and unchunked runs agree point by
point. Each member compiles at most one program for all its chunks, target
ranks (the rank and the targets are arguments, not constants) and later
calls with the same shapes; the clean pass is one more. APGD-CE, APGD-DLR
and APGD-T share one program (the loss, the restarts and the EOT draws are
arguments too; the program holds just the losses of the cascade's APGD
members). The default 'standard' thus compiles 4 programs on its first
call (clean pass, APGD, FAB-T, Square) and none on a second call with new
data of the same shape (``tests/test_ensemble.py`` counts them). Between
programs only host numpy runs (indices, padding, targets, bookkeeping).
Compiling is most of a first call on a CPU, so once a point outlives a chunk
of a member (the cascade will go on), the programs of the members not run yet
are traced in the caller's thread and compiled by XLA in background threads
while the earlier members run; a member waits only for its own program, and
when APGD-CE breaks every point nothing more compiles (``_CompileAhead``).
jax's persistent compilation cache (``robustjax.compilation_cache.enable()``)
takes a later process's first call from compiling to reading programs back;
``benchmarks/ensemble.py`` measures both.

Memory: each program holds one chunk's attack state and the model's
activations (and gradients) for it, so device memory grows linearly with
``batch_size`` and not with the number of points; the host holds x, x_adv and
the clean logits (O(n) in the input size). The targeted members run one
target at a time, so their memory is that of one batch too. Measured with
``benchmarks/memory.py``.

Checks before the attacks, as the reference's: outputs that look like
probabilities; a model whose outputs change between calls with the same input
(the reference's ``check_randomized``; not for 'rand'): the compiled clean
pass is repeated 4 times on the first chunk, and two traces of ``predict_fn``
are compared, which catches randomness drawn in Python (fixed once per
compiled program, so every program would see another draw). After them:
zero or non-finite gradients per white-box attack (``attacks.health``) and
the black-box check (Square breaking points the white-box attacks left
robust). All go to the result's 'warnings' (and are warned).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checks
from robustjax.attacks import common, health, registry
from robustjax.attacks import fab as fab_mod
from robustjax.attacks import minimal
from robustjax.attacks import square as square_mod
from robustjax.attacks.apgd import _apgd, resolve_loss
from robustjax.attacks.registry import FIXED

VERSIONS = ('standard', 'plus', 'rand', 'custom')
ATTACKS = registry.names(FIXED)
WHITE_BOX = tuple(a for a in ATTACKS if registry.get(a, FIXED).white_box)
TARGETED = tuple(a for a in ATTACKS if registry.get(a, FIXED).targeted)
CUSTOM_ATTACKS = ('apgd-ce', 'apgd-t', 'fmn', 'square')
DEFAULT_ATTACKS = CUSTOM_ATTACKS   # the 'custom' version's default list
DEFAULT_VERSION = 'standard'
DEFAULT_BATCH_SIZE = 250           # AutoAttack's bs

VERSION_ATTACKS = {
    'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
    'rand': ('apgd-ce', 'apgd-dlr'),
    'custom': CUSTOM_ATTACKS,
}

# Budgets per version (AutoAttack's set_version for linf / l2 and its
# attacks' defaults). restarts: APGD-CE / APGD-DLR; APGD-T and FAB-T always
# run 1 restart per target class, as the reference's.
VERSION_BUDGETS = {
    'standard': dict(n_iter=100, restarts=1, n_target_classes=9, fab_steps=100, fab_restarts=1,
                     fmn_steps=100, square_queries=5000, eot_iter=1,
                     square_l2_update='published'),
    'plus': dict(n_iter=100, restarts=5, n_target_classes=9, fab_steps=100, fab_restarts=5,
                 fmn_steps=100, square_queries=5000, eot_iter=1, square_l2_update='published'),
    'rand': dict(n_iter=100, restarts=1, n_target_classes=9, fab_steps=100, fab_restarts=1,
                 fmn_steps=100, square_queries=5000, eot_iter=20, square_l2_update='published'),
    'custom': dict(n_iter=100, restarts=1, n_target_classes=9, fab_steps=100, fab_restarts=1,
                   fmn_steps=100, square_queries=5000, eot_iter=1, square_l2_update='simple'),
}

_CLEAN, _VERIFY = 0xC1EA, 0x7E57   # tags of a randomised model's clean / re-check draws
_RANDOMNESS_CALLS = 5              # the reference's check_randomized: n = 5, alpha = 1e-4
_RANDOMNESS_TOL = 1e-4


class Program(NamedTuple):
  """What a member's compiled program depends on (static); the rest is traced.

  APGD-CE, APGD-DLR and APGD-T with the same iterations share one program (the
  loss, restarts and EOT draws are arguments), as do all target ranks of a member."""
  kind: str                 # 'apgd', 'fab', 'fab-t', 'fmn' or 'square'
  norm: str
  n_iter: int = 0           # APGD iterations / FAB, FMN steps
  losses: tuple = ()        # APGD: the losses of the cascade's APGD members (one switch)
  randomized: bool = False
  restarts: int = 1         # FAB (untargeted) restarts
  queries: int = 0          # Square
  l2_update: str = ''       # Square l2


class Member(NamedTuple):
  """One attack of the cascade with its budget."""
  name: str
  norm: str
  loss: str = ''            # APGD: the loss actually run
  n_iter: int = 0           # APGD iterations
  restarts: int = 1         # APGD / FAB restarts
  eot_iter: int = 1         # APGD draws per step (randomised models)
  steps: int = 0            # FAB / FMN iterations
  queries: int = 0          # Square
  l2_update: str = 'published'
  randomized: bool = False
  losses: tuple = ()        # APGD: the losses its program holds (every APGD member's)

  @property
  def tag(self) -> int:
    # A key per attack name: the same attack gets the same draws alone or in any ensemble.
    return zlib.crc32(self.name.encode()) & 0x7FFFFFFF

  @property
  def family(self) -> str:
    return registry.get(self.name, FIXED).family

  @property
  def program(self) -> Program:
    if self.family == 'apgd':
      return Program('apgd', self.norm, n_iter=self.n_iter, randomized=self.randomized,
                     losses=self.losses)
    if self.family in ('fab', 'fab-t'):
      return Program(self.family, self.norm, n_iter=self.steps, restarts=self.restarts)
    if self.family == 'fmn':
      return Program('fmn', self.norm, n_iter=self.steps)
    return Program('square', self.norm, queries=self.queries,
                   l2_update=self.l2_update if self.norm == 'l2' else '')

  def budget(self, n_target_classes: int) -> dict:
    """The budget in the reference's terms, for the result's record."""
    if self.family == 'apgd':
      b = dict(n_iter=self.n_iter, restarts=self.restarts, loss=self.loss, rho=0.75)
      if self.randomized:
        b['eot_iter'] = self.eot_iter
    elif self.family in ('fab', 'fab-t'):
      b = dict(n_iter=self.steps, restarts=self.restarts, alpha_max=0.1, eta=1.05, beta=0.9)
    elif self.family == 'fmn':
      b = dict(steps=self.steps)
    else:
      b = dict(n_queries=self.queries, p_init=0.8)
      if self.norm == 'l2':
        b['l2_update'] = self.l2_update
    if self.name in TARGETED:
      b['n_target_classes'] = n_target_classes
    return b


def _valid(logits_fn, x, y, x_adv, eps, norm, bounds, keys):
  """(n,) True where x_adv is a valid adversarial example for (x, y): finite,
  misclassified, inside the ball and the box. ``keys``: a randomised model's draw."""
  logits = logits_fn(x_adv) if keys is None else logits_fn(x_adv, keys)
  wrong = (common.margin(logits, y) <= 0) & health.rows_finite(x_adv, logits)
  inside = common.norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6
  if bounds is not None:
    flat = x_adv.reshape(x.shape[0], -1)
    lo = jnp.broadcast_to(jnp.asarray(bounds[0], x.dtype), x.shape).reshape(x.shape[0], -1)
    hi = jnp.broadcast_to(jnp.asarray(bounds[1], x.dtype), x.shape).reshape(x.shape[0], -1)
    inside &= jnp.all(flat >= lo, -1) & jnp.all(flat <= hi, -1)
  return wrong & inside


@functools.partial(jax.jit, static_argnames=('p',))
def _attack_chunk(logits_fn, x, y, index, target, key, tag, rank, loss, restarts, eot_iter, eps,
                  bounds, *, p: Program):
  """One member on one chunk, attack and re-check in one program:
  (x_adv, valid adversarial (n,), zero gradient at the start (n,), non-finite gradients (n,)).

  Example i of target rank r (0: untargeted) of the member with key ``tag``
  draws from fold_in(fold_in(fold_in(key, tag), r), index[i])."""
  k = jax.random.fold_in(jax.random.fold_in(key, tag), rank)
  no = jnp.zeros(x.shape[:1], bool)
  zero, bad = no, no
  if p.kind == 'apgd':
    x_adv, _, h = _apgd(logits_fn, x, y, target, eps, k, index, bounds, loss, restarts, eot_iter,
                        norm=p.norm, n_iter=p.n_iter, rho=0.75, randomized=p.randomized,
                        losses=p.losses)
    zero, bad = h['zero_grad'], h['nonfinite']
  elif p.kind in ('fab', 'fab-t'):
    x_adv, _, _ = fab_mod._fab(
        logits_fn, x, y, target, common.example_keys(k, index), eps, bounds, 0.1, 1.05, 0.9,
        norm=p.norm, steps=p.n_iter, restarts=p.restarts, targeted=p.kind == 'fab-t',
        final_search_steps=3, refine_steps=12)
  elif p.kind == 'fmn':
    x_adv, _, h = minimal._fmn(logits_fn, x, y, target, bounds, 1.0, 0.01, 0.05, 0.001,
                               norm=p.norm, steps=p.n_iter, refine_steps=12)
    zero, bad = h['zero_grad'], h['nonfinite']
  else:
    x_adv, _, _, _ = square_mod._square(logits_fn, x, y, eps, k, index, bounds, 0.8, norm=p.norm,
                                        n_queries=p.queries, l2_update=p.l2_update or 'published')
  vkeys = None
  if p.randomized:
    vkeys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(common.example_keys(k, index),
                                                            _VERIFY)
  return x_adv, _valid(logits_fn, x, y, x_adv, eps, p.norm, bounds, vkeys), zero, bad


def _trace(predict_fn, one, randomized):
  # A new function object per call: jax caches traces by function, and the
  # randomness check needs predict_fn's Python code to run again.
  if randomized:
    return jax.make_jaxpr(lambda a: predict_fn(a, jax.random.PRNGKey(0)))(one)
  return jax.make_jaxpr(lambda a: predict_fn(a))(one)


def _model(predict_fn, x, version):
  """(binary, number of classes, Python-level randomness?) from two traces of
  ``predict_fn`` on one example (nothing compiles); refuses the wrong interface."""
  one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
  randomized = version == 'rand'
  try:
    traces = [_trace(predict_fn, one, randomized) for _ in range(2)]
  except TypeError as err:
    try:
      _trace(predict_fn, one, not randomized)
    except Exception:  # noqa: BLE001  (the first error is the one to show)
      raise err from None
    if randomized:
      raise ValueError("predict_fn: version='rand' is for randomised models predict_fn(x, key); "
                       "this one takes no key: use 'standard' or 'plus'") from None
    raise ValueError(f"predict_fn: takes (x, key), a randomised model: use version='rand' "
                     f"(EOT over draws), or fix the key (functools.partial) for a deterministic "
                     f"evaluation; version={version!r} needs predict_fn(x)") from None
  out = traces[0].out_avals[0]
  if out.ndim not in (1, 2):
    raise ValueError(f'predict_fn: must return scalar logits (n,) or logits (n, C), got shape '
                     f'{out.shape} for a batch of one')
  a, b = traces
  differ = (str(a.jaxpr) != str(b.jaxpr) or len(a.consts) != len(b.consts)
            or any(u is not v and not np.array_equal(np.asarray(u), np.asarray(v))
                   for u, v in zip(a.consts, b.consts)))
  return out.ndim == 1, 2 if out.ndim == 1 else int(out.shape[-1]), differ


def _changes_between_calls(logits_fn, x, first_logits, size) -> bool:
  """The reference's check_randomized on the first chunk: the compiled clean pass
  repeated; True when the l2-normalised outputs move by more than 1e-4 or the
  number of correct points changes."""
  unit = lambda z: z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-10)
  ref = unit(first_logits[:size])
  for _ in range(_RANDOMNESS_CALLS - 1):
    z = common.logits_of(logits_fn, x[:size], size)
    if (np.max(np.linalg.norm(unit(z) - ref, axis=-1)) > _RANDOMNESS_TOL
        or np.any(np.argmax(z, -1) != np.argmax(first_logits[:size], -1))):
      return True
  return False


RANDOMNESS_MSG = (
    "predict_fn: its outputs change between calls with the same input (a randomised model?); "
    "attacks, re-checks and the clean pass then see different draws, so the robust accuracy is "
    "unreliable: for a randomised defense pass predict_fn(x, key) with version='rand' (EOT), "
    "else make the model deterministic (AutoAttack's check_randomized)")


def _budgets(version, given):
  """The budgets to run: the version's, overridden by those given (not None)."""
  b = dict(VERSION_BUDGETS[version])
  for name, v in given.items():
    if v is not None:
      b[name] = v
  return b


def _check_budgets(b):
  for name in ('n_iter', 'restarts', 'n_target_classes', 'fab_steps', 'fab_restarts',
               'fmn_steps', 'square_queries', 'eot_iter'):
    b[name] = checks.budget(b[name], name)
  checks.choice(b['square_l2_update'], tuple(square_mod.L2_UPDATES), 'square_l2_update')
  return b


def _members(attacks, norm, b, num_classes, randomized):
  """(Member, note) per name: each registry entry's family with the budgets ``b``."""
  out = []
  for name in attacks:
    entry = registry.get(name, FIXED)
    if entry.family == 'apgd':
      loss, note = resolve_loss(entry.options['loss'], num_classes)
      # APGD-T runs 1 restart per target class, as the reference.
      restarts = 1 if entry.targeted else b['restarts']
      m = Member(name, norm, loss=loss, n_iter=b['n_iter'], restarts=restarts,
                 eot_iter=b['eot_iter'] if randomized else 1, randomized=randomized)
      out.append((m, note))
    elif entry.family in ('fab', 'fab-t'):
      restarts = 1 if entry.targeted else b['fab_restarts']
      out.append((Member(name, norm, steps=b['fab_steps'], restarts=restarts), None))
    elif entry.family == 'fmn':
      out.append((Member(name, norm, steps=b['fmn_steps']), None))
    else:
      out.append((Member(name, norm, queries=b['square_queries'],
                         l2_update=b['square_l2_update']), None))
  # The APGD members share one program, which holds just their losses.
  losses = tuple(dict.fromkeys(m.loss for m, _ in out if m.family == 'apgd'))
  return [(m._replace(losses=losses) if m.family == 'apgd' else m, note) for m, note in out]


def _cores() -> int:
  """CPU cores this process may run on (the affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # macOS, Windows
    return os.cpu_count() or 1


class _CompileAhead:
  """The later members' programs, compiled by XLA in background threads once
  the cascade is known to go on: as soon as a point outlives a chunk of a
  member (:meth:`start`), every program not run yet is traced and lowered on
  one chunk's shapes, in cascade order, and handed to a pool for XLA's
  compile; a member waits only for its own program (:meth:`reach`). jax keeps
  each executable in its in-memory cache, so the cascade's own calls compile
  nothing more. Why: compiling is most of a first call on a CPU (issue 17:
  4.8 s of 6.6 s for 'standard' on the digits MLP, 2 cores), and this way
  FAB-T's and Square's compiles overlap the APGD runs. Why not earlier: when
  APGD-CE breaks every point (an undefended model) no later program is
  compiled at all, as before (compiling them from the start made that first
  call 2.5x slower). Tracing stays in the caller's thread because it reads
  that thread's state, which a worker does not inherit: jax's thread-local
  config (``jax.set_mesh``, ``jax.default_matmul_precision``, ...) and
  context variables the model reads; traced in a worker, a program could
  fail (no mesh), compile twice (another config key) or attack another model
  (a context variable, which jax's cache key does not hold). An error while
  tracing, lowering or compiling is raised when the cascade reaches the
  member. :meth:`close` drops the compiles not yet started and waits for
  the running ones, so compile counts stay exact."""

  def __init__(self, members, chunk_args, y, size):
    self._members, self._chunk_args, self._y = members, chunk_args, y
    self._take = np.arange(size)
    programs = len(dict.fromkeys(m.program for m, _ in members))
    # One compile per core at most: XLA:CPU's own compile keeps ~1.5 cores busy.
    self._pool = ThreadPoolExecutor(max(1, min(programs - 1, _cores())),
                                    thread_name_prefix='robustjax-compile')
    self._futures, self._ran, self._started = {}, set(), False

  def reach(self, m: Member) -> None:
    """Before ``m``'s chunks: its program, if compiling ahead, compiled (or its error raised)."""
    self._ran.add(m.program)
    if m.program in self._futures:
      self._futures[m.program].result()

  def start(self) -> None:
    """A point outlived a chunk: the programs not run yet start compiling."""
    if self._started:
      return
    self._started = True
    for m, _ in self._members:
      if m.program in self._ran or m.program in self._futures:
        continue
      future = Future()
      try:
        lowered = _attack_chunk.lower(*self._chunk_args(m, 0, self._y, self._take), p=m.program)
      except Exception as err:  # noqa: BLE001  (raised if the cascade reaches the member)
        future.set_exception(err)
      else:
        future = self._pool.submit(lowered.compile)
      self._futures[m.program] = future

  def close(self) -> None:
    self._pool.shutdown(cancel_futures=True)


def evaluate_robust_accuracy(predict_fn, x, y, *, eps: float, norm: str, key,
                             version: str | None = None, attacks=None, bounds=None,
                             batch_size: int | None = DEFAULT_BATCH_SIZE,
                             n_iter: int | None = None, restarts: int | None = None,
                             n_target_classes: int | None = None, fab_steps: int | None = None,
                             fab_restarts: int | None = None, fmn_steps: int | None = None,
                             square_queries: int | None = None, eot_iter: int | None = None,
                             square_l2_update: str | None = None, masking_tol: float = 0.01,
                             warn: bool = True) -> dict:
  """Robust accuracy of ``predict_fn`` at radius ``eps`` under AutoAttack's cascade.

  Args:
    predict_fn: batch -> logits (n, C) with labels integers in [0, C), or
      scalar logits (n,) with labels in {-1, +1} (the library's one binary
      convention; {0, 1} labels are refused). For version='rand', a
      randomised model ``predict_fn(x, key)``, called on one example at a time
      (vmapped) with that example's key per draw. Pass a
      ``jax.tree_util.Partial`` (or the same function object) so that later
      calls reuse the compiled programs.
    x, y: inputs (n, ...), floating and finite, and labels (n,).
    eps: radius, a float >= 0; norm: 'l2' or 'linf'.
    key: PRNG key.
    version: 'standard', 'plus', 'rand' or 'custom' (see the module
      docstring for each one's attacks and budgets). Default (None):
      'custom' when ``attacks`` is given, else 'standard'. 'standard' is the
      default because it is the number papers report as AutoAttack and
      compare across libraries (the reference's default too); robustjax's
      earlier default cascade is version='custom' (or any ``attacks=``).
    attacks: names from ``ATTACKS`` (= ``registry.names('fixed')``), run in
      this order; only with version 'custom' (default there:
      ``CUSTOM_ATTACKS``), as the reference. A 'minimal' name is refused.
    bounds: None or (lo, hi) input domain, lo < hi; x must lie inside it.
    batch_size: points per compiled program (AutoAttack's ``bs``; default
      250); None runs all n at once. Results do not depend on it, memory
      grows linearly with it (module docstring).
    n_iter, restarts (APGD-CE / APGD-DLR), n_target_classes, fab_steps,
    fab_restarts (untargeted FAB), fmn_steps, square_queries, eot_iter
      ('rand': draws per step): integers >= 1; square_l2_update: 'published'
      or 'simple'. None takes the version's value; a value that differs from
      it is run and reported in 'notes' (the numbers are then not that
      version's).
    masking_tol: share of all points (in [0, 1]) the black-box attack may
      break after the white-box ones before the evaluation warns of gradient
      masking.

  Returns a dict: 'version', 'clean_accuracy', 'robust_accuracy', 'robust'
  (n,) bool, 'x_adv' (adversarial points where broken, else x), 'per_attack'
  (per attack: name, 'budget', 'broken' points, robust accuracy after it,
  seconds), 'batch_size' (the compiled chunk size), 'log' (the reference's
  log lines), 'notes' (loss substitutions, budgets off the version),
  'randomness' (outputs changed between calls; None for 'rand'),
  'health_warnings' (probability-like outputs; zero or non-finite gradients
  per white-box attack) and 'warnings' (those, the randomness check and the
  black-box check).

  Raises ValueError / TypeError (one line naming the argument) on a bad
  version, attack name, norm, radius, budget, batch size, bounds, dtype or
  label, on ``attacks`` with a version other than 'custom', and on a model
  whose interface does not match the version (a key for 'rand' only);
  points outside ``bounds`` are refused. Only finite points are ever counted
  as adversarial.
  """
  if version is None:
    version = 'custom' if attacks is not None else DEFAULT_VERSION
  checks.choice(version, VERSIONS, 'version')
  if attacks is not None and version != 'custom':
    raise ValueError(f"attacks: the {version!r} version fixes its attacks "
                     f"{VERSION_ATTACKS[version]}; pass version='custom' to choose them")
  if isinstance(attacks, str):
    raise TypeError(f'attacks: a list of names from {ATTACKS}, got the string {attacks!r} '
                    f'(pass ({attacks!r},))')
  attacks = tuple(VERSION_ATTACKS[version] if attacks is None else attacks)
  if not attacks:
    raise ValueError(f'attacks: needs at least one of {ATTACKS}')
  entries = [registry.get(a, FIXED, 'attacks') for a in attacks]
  checks.norm(norm)
  for e in entries:
    registry.check_norm(e, norm)
  checks.radius(eps, name='eps', per_example=False)
  batch_size = checks.optional_budget(batch_size, 'batch_size')
  given = dict(n_iter=n_iter, restarts=restarts, n_target_classes=n_target_classes,
               fab_steps=fab_steps, fab_restarts=fab_restarts, fmn_steps=fmn_steps,
               square_queries=square_queries, eot_iter=eot_iter,
               square_l2_update=square_l2_update)
  b = _check_budgets(_budgets(version, given))
  checks.number(masking_tol, 'masking_tol', low=0, high=1)
  checks.inputs(x)
  checks.bounds(bounds)
  checks.inside(x, bounds)
  x = np.asarray(x)   # host: chunks are gathered here, each then one transfer to the device
  y = np.asarray(checks.batch(x, y if hasattr(y, 'shape') else np.asarray(y)))
  randomized = version == 'rand'
  binary, num_classes, python_random = _model(predict_fn, x, version)
  checks.labels(y, binary=binary, num_classes=num_classes)
  logits_fn = (common.keyed_multiclass if randomized else common.multiclass)(predict_fn)
  yi = common.int_labels(y, binary)
  n = x.shape[0]
  size = common.chunk_size(n, batch_size)
  index = np.arange(n)

  notes, log = [], []
  if binary:
    notes.append('binary task: scalar logits lifted to two classes [0, f]')
  off = {k: (v, VERSION_BUDGETS[version][k]) for k, v in b.items()
         if given[k] is not None and v != VERSION_BUDGETS[version][k]}
  if off and version != 'custom':
    notes.append(f"budgets differ from AutoAttack's {version!r}: " + ', '.join(
        f'{k}={v} (reference {r})' for k, (v, r) in off.items()))
  members = _members(attacks, norm, b, num_classes, randomized)
  log.append(f"using {version} version including {', '.join(attacks)}.")

  t_start = time.perf_counter()
  if randomized:
    clean_logits = common.logits_of(logits_fn, x, size, key=key, index=index, tag=_CLEAN)
  else:
    clean_logits = common.logits_of(logits_fn, x, size)
  prob = bool(health.looks_like_probabilities(clean_logits))
  health_msgs = health.messages('predict_fn', dict(prob=prob))
  randomness = None
  if not randomized:
    randomness = python_random or _changes_between_calls(logits_fn, x, clean_logits, size)
  robust = (common.margin(clean_logits, yi) > 0) & health.rows_finite(clean_logits)
  clean = float(robust.mean())
  log.append(f'initial accuracy: {clean:.2%}')
  # Runner-up classes by clean logit, for the targeted members (host work).
  order = np.argsort(-clean_logits, axis=-1, kind='stable').astype(np.int32)
  x_adv = x.copy()
  per_attack = []

  def chunk_args(m, rank, target, take):
    """The arguments of member ``m``'s program on the points ``take`` (one chunk)."""
    loss = m.losses.index(m.loss) if m.loss else 0
    return (logits_fn, x[take], yi[take], take, target[take], key, m.tag, rank, loss, m.restarts,
            m.eot_iter, float(eps), bounds)

  with contextlib.closing(_CompileAhead(members, chunk_args, yi, size)) as ahead:
    for m, note in members:
      t0 = time.perf_counter()
      if note:
        notes.append(f'{m.name}: {note}')
      broken_here = 0
      flags = {}  # per white-box attack: points with a zero / non-finite gradient
      ranks = [0]
      if m.name in TARGETED:
        ranks = list(range(2, min(b['n_target_classes'], num_classes - 1) + 2))
      for rank in ranks:
        idx = np.nonzero(robust)[0]
        if idx.size == 0:
          break
        target = yi if rank == 0 else order[:, rank - 1]   # untargeted members ignore it
        ahead.reach(m)
        runs = []
        for start in range(0, idx.size, size):   # dispatched without waiting
          rows = idx[start:start + size]
          take = common.padded(rows, size)
          runs.append((rows, _attack_chunk(*chunk_args(m, rank, target, take), p=m.program)))
        for c, (rows, (xa, ok, zero, bad)) in enumerate(runs):
          ok = np.asarray(ok)[:rows.size]
          for flag, v in (('zero_grad', zero), ('nonfinite', bad)):
            flags.setdefault(flag, np.zeros(n, bool))[rows] |= np.asarray(v)[:rows.size]
          flags.setdefault('attacked', np.zeros(n, bool))[rows] = True
          x_adv[rows[ok]] = np.asarray(xa)[:rows.size][ok]
          robust[rows[ok]] = False
          broken_here += int(ok.sum())
          if not ok.all():
            ahead.start()
          what = m.name if rank == 0 else f'{m.name} (target rank {rank})'
          log.append(f'{what} - {c + 1}/{len(runs)} - {int(ok.sum())} out of {rows.size} '
                     'successfully perturbed')
      seconds = time.perf_counter() - t0
      per_attack.append(dict(name=m.name, budget=m.budget(b['n_target_classes']),
                             broken=broken_here, robust_accuracy=float(robust.mean()),
                             seconds=seconds))
      log.append(f'robust accuracy after {m.name.upper()}: {float(robust.mean()):.2%} '
                 f'(total time {time.perf_counter() - t_start:.1f} s)')
      if m.name in WHITE_BOX:
        health_msgs += _gradient_messages(m.name, flags)

  flat = (x_adv - x).reshape(n, -1)
  size_max = float((np.abs(flat).max(-1) if norm == 'linf'
                    else np.sqrt((flat * flat).sum(-1))).max(initial=0.0))
  log.append(f"max {'Linf' if norm == 'linf' else 'L2'} perturbation: {size_max:.5f}, nan in "
             f'tensor: {int(np.isnan(x_adv).sum())}, max: {float(x_adv.max(initial=-np.inf)):.5f}, '
             f'min: {float(x_adv.min(initial=np.inf)):.5f}')
  log.append(f'robust accuracy: {float(robust.mean()):.2%}')
  out = dict(version=version, clean_accuracy=clean, robust_accuracy=float(robust.mean()),
             robust=robust, x_adv=x_adv, per_attack=per_attack, notes=notes, eps=float(eps),
             norm=norm, num_points=n, batch_size=size, log=log, randomness=randomness,
             health_warnings=health_msgs, warnings=[])
  out['warnings'] = (health_msgs + ([RANDOMNESS_MSG] if randomness else [])
                     + black_box_check(out, masking_tol))
  if warn:
    for w in out['warnings']:
      warnings.warn(w, RuntimeWarning, stacklevel=2)
  return out


def _gradient_messages(name: str, flags: dict) -> list[str]:
  """Gradient-masking lines for a white-box attack's zero / non-finite gradients."""
  msgs = []
  if 'attacked' not in flags:
    return msgs
  m = int(flags['attacked'].sum())
  zero, bad = int(flags['zero_grad'].sum()), int(flags['nonfinite'].sum())
  if zero:
    msgs.append(f"gradient masking? white-box '{name}' found a zero gradient at its start point "
                f'on {zero} of the {m} points it attacked: it cannot move there, so robustness '
                'is overstated; check that the model returns logits and is differentiable')
  if bad:
    msgs.append(f"white-box '{name}' met non-finite gradients (nan or inf) on {bad} of the {m} "
                'points it attacked (those entries were set to 0; non-finite points never count '
                'as adversarial); a non-differentiable point such as sqrt at 0 is the usual cause')
  return msgs


def black_box_check(result: dict, tol: float) -> list[str]:
  """A warning when black-box attacks broke > tol of the points after white-box ones."""
  seen_white = False
  msgs = []
  for rec in result['per_attack']:
    if rec['name'] in WHITE_BOX:
      seen_white = True
    elif seen_white and rec['broken'] > tol * result['num_points']:
      msgs.append(
          f"gradient masking? black-box '{rec['name']}' broke {rec['broken']} of "
          f"{result['num_points']} points the white-box attacks left robust at "
          f"eps={result['eps']:g}")
  return msgs
