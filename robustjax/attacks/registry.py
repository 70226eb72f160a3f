"""The one registry of robustjax's attacks: each name, what it runs, and its kind.

Every attack name the library accepts is looked up here, and nowhere else:
the ensemble (``attacks.evaluate_robust_accuracy(attacks=...)``), the
adversarial distance (``metrics.robustness.adversarial_distance(method=...)``)
and the config validators (``names(FIXED)``, ``names(MINIMAL)``).

Two kinds, one meaning each across the library and the configs:

  'fixed'    fixed-radius attacks: given a radius eps, find a misclassified
             point inside the eps-ball; what they measure is robust accuracy
             at eps. They run as members of the ensemble. A config's
             ``eval.attacks`` lists these.
  'minimal'  minimal-distance methods: find the smallest perturbation that
             flips the prediction; what they measure is the adversarial
             distance per point. They run through ``adversarial_distance``.
             A config's ``eval.distance_attacks`` lists these.

'fmn' is both: as a 'minimal' method it returns FMN's distances; as an
ensemble member ('fixed') a point counts as broken when FMN's minimal point
lies within eps.

Step sizes, library-wide: ``step_size`` is absolute (the units of eps, as
``attacks.pgd``); ``rel_step_size`` is a fraction of eps (``PGDSpec``,
``metrics.robustness.robust_accuracy``, the configs' ``rel_step_size``).
Attacks that adapt their own step keep their papers' names: APGD (step 2 eps,
halved at checkpoints; no argument), FMN's ``alpha_init`` / ``alpha_final``
(fractions of each point's distance estimate), FAB's ``alpha_max`` (a bias
towards x, not a step), Square's ``p_init`` (the share of input elements
its first square covers).

Each entry (:class:`Attack`) records the public function that runs the attack
and the keyword arguments its name fixes, the norms it supports, and the
names of its budget arguments: for 'fixed' attacks the ensemble's budget
arguments (values per AutoAttack version in ``ensemble.VERSION_BUDGETS``), for
'minimal' methods the function's own (values: its defaults, :func:`defaults`).
"""
from __future__ import annotations

import inspect
import types
from typing import Callable, Mapping, NamedTuple

from robustjax.attacks.apgd import apgd
from robustjax.attacks.decision import decision_attack
from robustjax.attacks.fab import fab
from robustjax.attacks.minimal import bisection, fmn
from robustjax.attacks.square import square

FIXED, MINIMAL = 'fixed', 'minimal'
KINDS = (FIXED, MINIMAL)
NORMS = ('l2', 'linf')

_WHAT = {FIXED: 'a fixed-radius attack', MINIMAL: 'a minimal-distance method'}
_WHERE = {FIXED: 'attacks.evaluate_robust_accuracy(attacks=...), a config\'s eval.attacks',
          MINIMAL: 'metrics.robustness.adversarial_distance(method=...), a config\'s '
                   'eval.distance_attacks'}


class Attack(NamedTuple):
  """One registered attack.

  name: the name users pass. kind: FIXED or MINIMAL. function: the public
  function that runs it; options: the keyword arguments the name fixes
  (e.g. APGD-CE is ``apgd(loss='ce')``). norms: the norms it supports.
  budget: the names of its budget arguments (module docstring). family:
  'fixed' only, the ensemble's compiled program that runs it ('apgd', 'fab',
  'fab-t', 'fmn' or 'square'); APGD's three losses share one. white_box:
  uses gradients. targeted: attacks the runner-up classes one at a time.
  random: draws from its key (else deterministic; the key is not passed).
  runs: the name of the method actually run ('ddn' runs FMN).
  """
  name: str
  kind: str
  function: Callable
  options: Mapping
  norms: tuple
  budget: tuple
  family: str = ''
  white_box: bool = True
  targeted: bool = False
  random: bool = True
  runs: str = ''


def _entry(name, kind, function, options=None, **kw) -> Attack:
  return Attack(name, kind, function, types.MappingProxyType(dict(options or {})),
                **{'norms': NORMS, 'runs': name, **kw})


_APGD_BUDGET = ('n_iter', 'restarts', 'eot_iter')
_FMN_BUDGET = ('steps', 'targets', 'refine_steps')
_DECISION_BUDGET = ('iterations', 'init_evals', 'max_evals')

_TABLE = {
    FIXED: (
        _entry('apgd-ce', FIXED, apgd, dict(loss='ce'), budget=_APGD_BUDGET, family='apgd'),
        _entry('apgd-dlr', FIXED, apgd, dict(loss='dlr'), budget=_APGD_BUDGET,
               family='apgd'),
        _entry('apgd-t', FIXED, apgd, dict(loss='dlr-t'),
               budget=('n_iter', 'n_target_classes', 'eot_iter'), family='apgd', targeted=True),
        _entry('fab', FIXED, fab, budget=('fab_steps', 'fab_restarts'), family='fab'),
        _entry('fab-t', FIXED, fab, budget=('fab_steps', 'n_target_classes'), family='fab-t',
               targeted=True),
        _entry('fmn', FIXED, fmn, budget=('fmn_steps', 'n_target_classes'), family='fmn',
               targeted=True, random=False),
        _entry('square', FIXED, square, budget=('square_queries', 'square_l2_update'),
               family='square', white_box=False),
    ),
    MINIMAL: (
        _entry('fmn', MINIMAL, fmn, budget=_FMN_BUDGET, random=False),
        # DDN (Rony et al. 2019) is the same family; the name is kept and runs FMN.
        _entry('ddn', MINIMAL, fmn, budget=_FMN_BUDGET, random=False, runs='fmn'),
        _entry('bisection', MINIMAL, bisection,
               budget=('search_steps', 'expand_steps', 'pgd_steps', 'restarts', 'targets')),
        _entry('hopskipjump', MINIMAL, decision_attack, dict(method='hopskipjump'),
               norms=('l2',), budget=_DECISION_BUDGET, white_box=False),
        _entry('tangent', MINIMAL, decision_attack, dict(method='tangent'),
               norms=('l2',), budget=_DECISION_BUDGET, white_box=False),
    ),
}
REGISTRY = {kind: {a.name: a for a in entries} for kind, entries in _TABLE.items()}


def names(kind: str) -> tuple[str, ...]:
  """The registered names of one kind (FIXED or MINIMAL), in registry order."""
  _check_kind(kind)
  return tuple(REGISTRY[kind])


def get(name: str, kind: str, arg: str = 'name') -> Attack:
  """The entry of ``name`` among the attacks of ``kind``.

  Raises ValueError, one line naming ``arg``: an unknown name lists the
  registered names of ``kind``; a name of the other kind says what it is and
  where it belongs.
  """
  _check_kind(kind)
  if isinstance(name, str) and name in REGISTRY[kind]:
    return REGISTRY[kind][name]
  other = MINIMAL if kind == FIXED else FIXED
  if isinstance(name, str) and name in REGISTRY[other]:
    raise ValueError(f'{arg}: {name!r} is {_WHAT[other]} (registry kind {other!r}; it belongs '
                     f'to {_WHERE[other]}), not {_WHAT[kind]}; {_WHAT[kind]} is one of '
                     f'{names(kind)}')
  raise ValueError(f'{arg}: must be one of {names(kind)}, got {name!r}')


def check_norm(entry: Attack, norm: str, arg: str = 'norm') -> str:
  """``norm`` if ``entry`` supports it, else ValueError (one line)."""
  if norm not in entry.norms:
    raise ValueError(f'{arg}: {entry.name!r} supports {entry.norms}, got {norm!r}')
  return norm


def defaults(name: str, kind: str, version: str = 'standard') -> dict:
  """Default values of an attack's budget arguments: for FIXED, those of the
  ensemble's ``version``; for MINIMAL, the function's own defaults."""
  entry = get(name, kind)
  if kind == FIXED:
    from robustjax.attacks import ensemble  # noqa: PLC0415  (ensemble imports this module)
    return {f: ensemble.VERSION_BUDGETS[version][f] for f in entry.budget}
  params = inspect.signature(entry.function).parameters
  return {f: params[f].default for f in entry.budget}


def run_minimal(name: str, predict_fn, x, y, *, key, bounds=None, **kwargs):
  """Runs the minimal-distance method ``name`` on one batch:
  (x_adv (n, ...), distances (n,), queries (n,) for hard-label methods else None).

  ``kwargs`` go to the method's function (``Attack.function``) with the
  options its name fixes; deterministic methods are not passed ``key``.
  """
  entry = get(name, MINIMAL, 'method')
  call = dict(entry.options, bounds=bounds, **kwargs)
  if entry.random:
    call['key'] = key
  out = entry.function(predict_fn, x, y, **call)
  return out if len(out) == 3 else (*out, None)


def _check_kind(kind):
  if kind not in KINDS:
    raise ValueError(f'kind: must be one of {KINDS}, got {kind!r}')
