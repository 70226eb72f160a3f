"""Our attacks beside torchattacks' and Foolbox's: same weights, same budget.

A 64-256-10 ReLU MLP is trained here in JAX on scikit-learn's 8x8 digits
(inputs in [0, 1], ``robustjax.data.images.load_digits``, 397 test points) and
its weights are copied into an equivalent ``torch.nn.Module``; the run stops
unless both frameworks give the same test predictions and logits within 1e-5
of the largest logit's size (float32 sums in another order differ by a few ulp). Each row then
runs one of our attacks and its peer on the same points at the same budget:

- PGD-20, linf 0.1 / l2 0.5 (step 2.5 eps / 20, one random start), on the test
  set tiled ``--pgd-tile`` times (issue 17 timed batch 3176 = 8 x 397):
  ``robustjax.attacks.pgd`` vs torchattacks ``PGD`` / ``PGDL2``.
- APGD-CE, 100 iterations: ``robustjax.attacks.apgd`` vs torchattacks ``APGD``.
- The ensemble (``evaluate_robust_accuracy``, ``version='standard'`` when the
  installed one takes it, else its default) vs the
  same four attacks at the reference's budgets (fra31/auto-attack: 100
  iterations, 9 target classes, Square 5000 queries) in torchattacks'
  ``MultiAttack`` ("AutoAttack (100 it)"), and ours at torchattacks' shipped
  budgets (``n_iter=10, fab_steps=10``) vs its ``AutoAttack('standard')`` as
  shipped ("AutoAttack (shipped)": APGD, APGD-T and FAB-T at its default 10
  iterations, Square 5000 queries): each pair at equal budgets. The points
  broken by ours alone and by the peer alone are printed under the table.
- FMN (untargeted, 100 steps), l2 and linf: ``robustjax.attacks.minimal.fmn``
  vs Foolbox ``L2FMNAttack`` / ``LInfFMNAttack``; HopSkipJump (l2, 40
  iterations, 100 initial / 10,000 max probes) from the same start points (the
  nearest test point predicted as another class):
  ``robustjax.attacks.decision.hopskipjump`` vs Foolbox ``HopSkipJumpAttack``.

Robust accuracy counts every test point (a clean mistake is not robust);
distances are medians over the points the model classifies correctly (inf
where an attack found nothing). Our first call includes compilation (the
``compile s`` column: jax's trace + lower + XLA compile events; ``compiles``:
XLA compiles in the first / second call); second-call times are the best of
warm calls repeated for about a second (at least one).

Without torch, torchattacks and foolbox, only our columns are filled, and a
line says how to get the peers' (``pip install -e '.[bench]'``).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import losses
from robustjax.attacks import apgd, fmn, hopskipjump, pgd
from robustjax.attacks.decision import start_points
from robustjax.attacks.ensemble import evaluate_robust_accuracy
from robustjax.data.images import load_digits
from robustjax.timing import compile_seconds

TEST_POINTS = 397  # of scikit-learn's 1797 digits; the rest train the MLP
HINT = ("peers: torch, torchattacks and foolbox are not installed; for their columns run "
        "`pip install -e '.[bench]'` (torch 2.13.0 CPU build, torchattacks 3.5.1, "
        "foolbox 3.3.4) and rerun with --peers")
LOGIT_TOL = 1e-5
TORCH_NORM = {'linf': 'Linf', 'l2': 'L2'}


# --- the model, in both frameworks ----------------------------------------------------------

def mlp(params, x):
  """(n, 8, 8, 1) NHWC inputs -> (n, 10) logits."""
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def ce_loss(params, y, x):
  """Per-example cross-entropy of the MLP (PGD's loss; one function object, one compile)."""
  return losses.cross_entropy(mlp(params, x), y)


def train_mlp(x, y, *, seed: int, steps: int, width: int = 256):
  """Full-batch Adam on cross-entropy; returns the parameters (a dict of arrays)."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  d = int(np.prod(x.shape[1:]))
  params = {'w1': jax.random.normal(k1, (d, width)) / np.sqrt(d), 'b1': jnp.zeros(width),
            'w2': jax.random.normal(k2, (width, 10)) / np.sqrt(width), 'b2': jnp.zeros(10)}
  opt = optax.adam(1e-2)

  def step(_, carry):
    p, s = carry
    g = jax.grad(lambda p: losses.cross_entropy(mlp(p, x), y).mean())(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s

  params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, (p, opt.init(p))))(params)
  return params


def torch_mlp(torch, params):
  """The same MLP as a torch.nn.Module on (n, 1, 8, 8) NCHW inputs (one channel, so the
  flattening order matches NHWC's)."""
  net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(*params['w1'].shape),
                            torch.nn.ReLU(), torch.nn.Linear(*params['w2'].shape))
  with torch.no_grad():
    for layer, w, b in ((net[1], 'w1', 'b1'), (net[3], 'w2', 'b2')):
      layer.weight.copy_(torch.from_numpy(np.asarray(params[w]).T.copy()))
      layer.bias.copy_(torch.from_numpy(np.asarray(params[b]).copy()))
  return net.eval()


def import_peers():
  """(torch, torchattacks, foolbox) or None when the bench extra is not installed."""
  try:
    import foolbox
    import torch
    import torchattacks
  except ImportError:
    return None
  return torch, torchattacks, foolbox


# --- timing ---------------------------------------------------------------------------------

_compiles = [0]
_lock = threading.Lock()
_listening = [False]


def _count_compile(event: str, _duration: float, **_) -> None:
  if event == '/jax/core/compile/backend_compile_duration':
    with _lock:
      _compiles[0] += 1


def _num_compiles() -> int:
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    _listening[0] = True
  return _compiles[0]


@dataclasses.dataclass
class Timed:
  out: object
  first: float
  second: float
  compile_s: float = float('nan')
  compiles: tuple = ()


def timed(fn, *, jax_side: bool, warm_s: float = 1.0, max_warm: int = 5) -> Timed:
  """First call (compile included) and best warm call of ``fn`` (which returns host values,
  so the device work is finished when it returns)."""
  c0 = _num_compiles() if jax_side else 0
  with compile_seconds() as comp:
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
  c1 = _num_compiles() if jax_side else 0
  warm, spent = [], 0.0
  while not warm or (spent < warm_s and len(warm) < max_warm):
    t0 = time.perf_counter()
    fn()
    warm.append(time.perf_counter() - t0)
    spent += warm[-1]
  c2 = _num_compiles() if jax_side else 0
  if not jax_side:
    return Timed(out, first, min(warm))
  return Timed(out, first, min(warm), comp[0], (c1 - c0, c2 - c1))


# --- the rows -------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
  name: str
  kind: str  # 'acc' (robust accuracy) or 'dist' (median distance)
  ours: Timed
  ours_value: float
  peer_name: str = ''
  peer: Timed | None = None
  peer_value: float = float('nan')
  breaks: tuple | None = None  # ensembles: (points ours alone broke, the peer alone broke)

  def against(self, peer_name: str, peer: Timed, value: float | None = None) -> 'Row':
    """This row's copy with the peer's columns ('value' defaults to the peer's output)."""
    return dataclasses.replace(self, peer_name=peer_name, peer=peer,
                               peer_value=peer.out if value is None else value)


def budgets(small: bool) -> dict:
  if small:
    return dict(pgd_steps=5, apgd_iter=5, ens=dict(n_iter=5, fmn_steps=10, square_queries=50),
                ref_iter=5, square=50, fmn_steps=10, hsj=dict(iterations=2, init_evals=20,
                                                              max_evals=40))
  return dict(pgd_steps=20, apgd_iter=100, ens={}, ref_iter=100, square=5000, fmn_steps=100,
              hsj=dict(iterations=40, init_evals=100, max_evals=10_000))


def ensemble_call():
  """(kwargs that pick AutoAttack's 'standard' version, a line saying which ensemble runs)."""
  params = inspect.signature(evaluate_robust_accuracy).parameters
  if 'version' in params:
    return {'version': 'standard'}, "ensemble: version='standard' (APGD-CE, APGD-T, FAB-T, Square)"
  return {}, ("ensemble: this install's evaluate_robust_accuracy has no version= argument; "
              "its default runs (APGD-CE, APGD-T, targeted FMN, Square)")


def _accepted(kwargs: dict) -> dict:
  params = inspect.signature(evaluate_robust_accuracy).parameters
  return {k: v for k, v in kwargs.items() if k in params}


def _median(d):
  return float(np.median(d)) if d.size else float('nan')


@dataclasses.dataclass
class Bench:
  """What every row shares: the model in both frameworks, the points, the budgets."""
  args: object
  b: dict
  params: dict
  f: object
  x: jax.Array
  y: jax.Array
  correct: np.ndarray  # (n,) clean prediction right
  key: jax.Array
  peers: tuple | None = None  # (torch, torchattacks, foolbox)
  net: object = None
  xt: object = None
  yt: object = None

  @property
  def n(self):
    return self.x.shape[0]

  def torch_correct(self, x_adv):
    """(m,) bool: the torch model still right on x_adv (x tiled m / n times)."""
    torch = self.peers[0]
    with torch.no_grad():
      return (self.net(x_adv).argmax(-1) == self.yt.repeat(x_adv.shape[0] // self.n)).numpy()

  def peer(self, fn) -> Timed:
    torch = self.peers[0]

    def call():
      torch.manual_seed(self.args.seed)
      return fn()
    return timed(call, jax_side=False)


def pgd_rows(c: Bench):
  tile, steps = c.args.pgd_tile, c.b['pgd_steps']
  xp, yp = jnp.tile(c.x, (tile, 1, 1, 1)), jnp.tile(c.y, tile)
  for norm, eps in (('linf', 0.1), ('l2', 0.5)):
    step = 2.5 * eps / steps

    def ours(norm=norm, eps=eps, step=step):
      loss = jax.tree_util.Partial(ce_loss, c.params, yp)
      xa = pgd(loss, xp, eps=eps, norm=norm, steps=steps, step_size=step, key=c.key,
               bounds=(0., 1.))
      return float(np.mean(np.asarray(jnp.argmax(c.f(xa), -1) == yp)))
    t = timed(ours, jax_side=True)
    row = Row(f'PGD-{steps} {norm} {eps:g} ({c.n * tile} pts)', 'acc', t, t.out)
    if c.peers is not None:
      ta = c.peers[1]
      xpt, cls = c.xt.repeat(tile, 1, 1, 1), ta.PGD if norm == 'linf' else ta.PGDL2
      atk = cls(c.net, eps=eps, alpha=step, steps=steps, random_start=True)
      yield row.against(f'torchattacks {cls.__name__}', c.peer(
          lambda atk=atk, xpt=xpt: float(c.torch_correct(atk(xpt, c.yt.repeat(tile))).mean())))
    else:
      yield row


def apgd_rows(c: Bench):
  it = c.b['apgd_iter']
  for norm, eps in (('linf', 0.1), ('l2', 0.5)):
    def ours(norm=norm, eps=eps):
      _, robust, _, _ = apgd(c.f, c.x, c.y, eps=eps, norm=norm, key=c.key, n_iter=it,
                             bounds=(0., 1.))
      return float(np.mean(np.asarray(robust)))
    t = timed(ours, jax_side=True)
    row = Row(f'APGD-CE {norm} {eps:g} ({it} it)', 'acc', t, t.out)
    if c.peers is not None:
      atk = c.peers[1].APGD(c.net, norm=TORCH_NORM[norm], eps=eps, steps=it, n_restarts=1,
                            loss='ce', seed=c.args.seed)
      yield row.against('torchattacks APGD',
                        c.peer(lambda atk=atk: float(c.torch_correct(atk(c.xt, c.yt)).mean())))
    else:
      yield row


SHIPPED = dict(n_iter=10, fab_steps=10)   # torchattacks' APGD, APGD-T and FAB defaults


def ensemble_rows(c: Bench):
  """Per norm: ours at the reference's budgets vs the same four attacks at those budgets
  in torchattacks; with the published budgets also ours at torchattacks' shipped
  budgets (10 iterations) vs its AutoAttack as shipped. Each of our first calls starts
  from empty in-memory caches (``jax.clear_caches``): compile included, every program."""
  version, _ = ensemble_call()
  it = c.b['ref_iter']
  pairs = [(f'{it} it', c.b['ens'], f'AutoAttack ({it} it)')]
  if not c.args.small:
    pairs.append(('10 it', SHIPPED, 'AutoAttack (shipped)'))
  for norm, eps in (('linf', 0.1), ('l2', 0.5)):
    for label, budget, peer_label in pairs:
      def ours(norm=norm, eps=eps, budget=budget):
        res = evaluate_robust_accuracy(c.f, c.x, c.y, eps=eps, norm=norm, key=c.key,
                                       bounds=(0., 1.), warn=False, **version,
                                       **_accepted(budget))
        return res['robust_accuracy'], np.asarray(res['robust']), res['warnings']
      jax.clear_caches()
      t = timed(ours, jax_side=True)
      acc, robust, warns = t.out
      for w in warns:
        print(f'  ensemble {norm} ({label}) warned: {w}')
      row = Row(f'ensemble {norm} {eps:g} ({label})', 'acc', t, acc)
      if c.peers is None:
        yield row
        continue
      ta, tnorm = c.peers[1], TORCH_NORM[norm]
      kw = dict(norm=tnorm, eps=eps, seed=c.args.seed, n_restarts=1)
      if peer_label == 'AutoAttack (shipped)':
        atk = ta.AutoAttack(c.net, norm=tnorm, eps=eps, version='standard', n_classes=10,
                            seed=c.args.seed)
      else:
        atk = ta.MultiAttack([
            ta.APGD(c.net, loss='ce', steps=it, **kw),
            ta.APGDT(c.net, steps=it, n_classes=10, **kw),
            ta.FAB(c.net, steps=it, multi_targeted=True, n_classes=10, **kw),
            ta.Square(c.net, n_queries=c.b['square'], **kw)])
      p = c.peer(lambda atk=atk: c.torch_correct(atk(c.xt, c.yt)))
      r = row.against(f'torchattacks {peer_label}', p, float(p.out.mean()))
      r.breaks = (int(np.sum(c.correct & ~robust & p.out)),
                  int(np.sum(c.correct & robust & ~p.out)))
      yield r


def fmn_rows(c: Bench):
  steps = c.b['fmn_steps']
  for norm in ('l2', 'linf'):
    def ours(norm=norm):
      _, d = fmn(c.f, c.x, c.y, norm=norm, steps=steps, targets=None, bounds=(0., 1.))
      return _median(np.asarray(d)[c.correct])
    t = timed(ours, jax_side=True)
    row = Row(f'FMN {norm} ({steps} steps)', 'dist', t, t.out)
    if c.peers is None:
      yield row
      continue
    fb = c.peers[2]
    cls = fb.attacks.L2FMNAttack if norm == 'l2' else fb.attacks.LInfFMNAttack
    fmodel = fb.PyTorchModel(c.net, bounds=(0., 1.))

    def peer(cls=cls, norm=norm, fmodel=fmodel):
      raw, _, success = cls(steps=steps)(fmodel, c.xt, c.yt, epsilons=None)
      d = (raw - c.xt).flatten(1).norm(p=2 if norm == 'l2' else float('inf'), dim=1).numpy()
      return _median(np.where(success.numpy(), d, np.inf)[c.correct])
    yield row.against(f'foolbox {cls.__name__}', c.peer(peer))


def hsj_rows(c: Bench):
  m, hsj = min(c.args.hsj_points or c.n, c.n), c.b['hsj']
  xs, ys = c.x[:m], c.y[:m]
  starts, have = start_points(c.f, xs, ys, jnp.full((m,), -1, jnp.int32))
  have = np.array(have)  # writable: torch shares its memory
  sub = c.correct[:m] & have

  def ours():
    _, d, _ = hopskipjump(c.f, xs, ys, key=c.key, bounds=(0., 1.), **hsj)
    return _median(np.asarray(d)[sub])
  t = timed(ours, jax_side=True)
  row = Row(f"HopSkipJump l2 ({hsj['iterations']} it, {m} pts)", 'dist', t, t.out)
  if c.peers is None:
    yield row
    return
  torch, fb = c.peers[0], c.peers[2]
  fmodel = fb.PyTorchModel(c.net, bounds=(0., 1.))
  keep = torch.from_numpy(have.copy())
  st = torch.from_numpy(np.asarray(starts).transpose(0, 3, 1, 2).copy())[keep]
  xk, yk = c.xt[:m][keep], c.yt[:m][keep]
  attack = fb.attacks.HopSkipJumpAttack(steps=hsj['iterations'],
                                  initial_gradient_eval_steps=hsj['init_evals'],
                                  max_gradient_eval_steps=hsj['max_evals'], constraint='l2')

  def peer():
    # Foolbox refuses a start that is not adversarial: points without one are left out.
    raw, _, success = attack(fmodel, xk, yk, epsilons=None, starting_points=st)
    d = np.full(m, np.inf)
    d[have] = np.where(success.numpy(), (raw - xk).flatten(1).norm(dim=1).numpy(), np.inf)
    return _median(d[sub])
  yield row.against('foolbox HopSkipJumpAttack', c.peer(peer))


ROWS = {'pgd': pgd_rows, 'apgd': apgd_rows, 'ensemble': ensemble_rows, 'fmn': fmn_rows,
        'hsj': hsj_rows}


def setup(args) -> Bench:
  """Trains the MLP, copies it to torch (when the peers are installed) and checks the copy."""
  peers = None if args.no_peers else import_peers()
  x_tr, y_tr, x_te, y_te = load_digits(test_fraction=TEST_POINTS / 1797)
  params = train_mlp(jnp.asarray(x_tr), jnp.asarray(y_tr), seed=args.seed,
                     steps=args.train_steps)
  f = jax.tree_util.Partial(mlp, params)
  x, y = jnp.asarray(x_te[:args.points]), jnp.asarray(y_te[:args.points])
  correct = np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)
  c = Bench(args, budgets(args.small), params, f, x, y, correct, jax.random.PRNGKey(args.seed))
  print(f'digits MLP 64-256-10 ReLU, trained here ({args.train_steps} Adam steps): '
        f'{c.n} test points, clean accuracy {correct.mean():.3f}; '
        f"backend={jax.default_backend()}, budgets={'small' if args.small else 'published'}")
  if peers is None:
    return c
  torch, ta, fb = peers
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  c.peers, c.net = peers, torch_mlp(torch, params)
  c.xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  c.yt = torch.from_numpy(np.asarray(y).astype(np.int64))
  with torch.no_grad():
    lt, lj = c.net(c.xt).numpy(), np.asarray(f(x))
  # float32 cannot promise an absolute 1e-5 on logits near 40 (one ulp there is 3.8e-6 and
  # the two libraries sum in different orders): the gap is measured relative to the scale.
  scale = max(1.0, float(np.max(np.abs(lj))))
  gap = float(np.max(np.abs(lt - lj)))
  if not gap <= LOGIT_TOL * scale or not np.array_equal(lt.argmax(-1), lj.argmax(-1)):
    raise SystemExit(f'torch and jax logits differ by {gap:.2e} > {LOGIT_TOL:g} x max |logit| '
                     f'{scale:.1f} (or their predictions differ): the weights were not copied '
                     'faithfully')
  print(f'same weights in torch {torch.__version__}: max |logit difference| {gap:.1e} = '
        f'{gap / scale:.1e} x max |logit| {scale:.1f} (<= {LOGIT_TOL:g}), same predictions; '
        f'torchattacks {ta.__version__}, foolbox {fb.__version__}, '
        f'torch threads {torch.get_num_threads()}')
  return c


def run(args) -> None:
  c = setup(args)
  if 'ensemble' in args.rows:
    print(ensemble_call()[1])
  print(HEADER)
  print('-' * len(HEADER))
  rows = []
  for name in args.rows:
    for r in ROWS[name](c):  # each line as soon as its row is measured
      print(row_line(r), flush=True)
      rows.append(r)
  for r in rows:
    if r.breaks is not None:
      print(f'{r.name} vs {r.peer_name}: broken by ours alone {r.breaks[0]}, by the peer alone '
            f'{r.breaks[1]} (of {int(c.correct.sum())} clean-correct points)')
  if c.args.no_peers:
    print('peers: left out (--no-peers)')
  elif c.peers is None:
    print(HINT)


# --- the table ------------------------------------------------------------------------------

def _value(kind, v):
  if math.isnan(v):
    return '-'
  return f'acc {v:.3f}' if kind == 'acc' else f'med {v:.4f}'


def _ratio(a, b):
  return f'{a / b:.2f}x' if b > 0 and math.isfinite(a / b) else '-'


HEADER = (f"{'attack (budget)':<30}{'1st s':>7}{'2nd s':>8}{'compile s':>10}{'compiles':>9}"
          f"{'ours':>12} | {'peer':<35}{'1st s':>8}{'2nd s':>8}{'peer':>12} | "
          f"{'peer/ours 1st':>13}{'2nd':>9}{'acc diff / dist ratio':>23}")


def row_line(r: Row) -> str:
  """One line per (our attack, peer); time ratios are peer / ours, so > 1 means ours is
  faster; 'acc diff' is ours - peer in points of robust accuracy (< 0: ours stronger);
  'dist ratio' is the peer's median distance / ours (> 1: ours finds closer points)."""
  o = r.ours
  line = (f'{r.name:<30}{o.first:>7.2f}{o.second:>8.3f}{o.compile_s:>10.2f}'
          f"{'/'.join(map(str, o.compiles)):>9}{_value(r.kind, r.ours_value):>12} | ")
  if r.peer is None:
    return line + f"{'-':<35}{'-':>8}{'-':>8}{'-':>12} | {'-':>13}{'-':>9}{'-':>23}"
  if r.kind == 'acc':
    diff = f'{100 * (r.ours_value - r.peer_value):+.1f} pt'
  else:
    diff = _ratio(r.peer_value, r.ours_value)
  return line + (f'{r.peer_name:<35}{r.peer.first:>8.2f}{r.peer.second:>8.3f}'
                 f'{_value(r.kind, r.peer_value):>12} | {_ratio(r.peer.first, o.first):>13}'
                 f'{_ratio(r.peer.second, o.second):>9}{diff:>23}')
