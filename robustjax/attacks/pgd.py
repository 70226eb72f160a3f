"""Projected gradient ascent (Madry et al. 2018) in the l2 and linf balls.

``loss_fn`` maps a batch to per-example losses to *maximise*; it must treat
examples independently (no batch statistics), which holds for any model in
eval mode. Gradients come from ``grad(sum(loss_fn))``.

Guarantees: every returned point lies in the eps-ball around its input (up to
float32 rounding of ``x + delta``) and inside ``bounds`` when given (provided
the clean input is); the best iterate per example, by loss, is kept across
steps and restarts, the starting point included, so the returned loss is never
below the clean one when ``random_start=False``.

Random start: linf draws uniformly from the cube; l2 draws uniformly from the
ball (Gaussian direction, radius ``eps * U^(1/n)`` with n the input size).

Non-finite values: gradient entries that are nan or inf are set to 0 (the step
uses the rest), and an iterate whose loss is not finite never becomes the best
one, so the returned points are finite. Called outside ``jit``, the attack
warns (``robustjax.attacks.health``) about points whose gradient at the start
point (the first restart's; x itself without a random start) is zero, as
AutoAttack checks it, or whose gradients were non-finite.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from robustjax import checks
from robustjax.attacks import health
from robustjax.checks import NORMS  # noqa: F401  (the norms, as the stages import them)


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcast a scalar or (batch,) value against x's shape."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def _l2_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project(delta: jax.Array, eps, norm: str) -> jax.Array:
  """Euclidean projection of each example's delta onto its eps-ball."""
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  n = _l2_norm(delta)
  return delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))


def random_init(key: chex.PRNGKey, x: jax.Array, eps, norm: str) -> jax.Array:
  """A uniform draw from the cube (linf) or from the ball (l2)."""
  # Flat draws, reshaped: XLA on CPU compiles multi-dimensional threefry
  # draws far more slowly.
  if norm == 'linf':
    return eps * jax.random.uniform(key, (x.size,), x.dtype, -1.0, 1.0).reshape(x.shape)
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, (x.size,), x.dtype).reshape(x.shape)
  direction = direction / jnp.maximum(_l2_norm(direction), 1e-12)
  dim = x[0].size
  radius = jax.random.uniform(k_rad, (x.shape[0],), x.dtype).reshape(
      (x.shape[0],) + (1,) * (x.ndim - 1))
  return eps * radius ** (1.0 / dim) * direction


def ascent_direction(g: jax.Array, norm: str) -> jax.Array:
  """Steepest ascent direction of unit norm: sign(g) (linf), g/||g|| (l2)."""
  if norm == 'linf':
    return jnp.sign(g)
  return g / jnp.maximum(_l2_norm(g), 1e-12)


def _clip_to_bounds(x, delta, bounds):
  if bounds is None:
    return delta
  lo, hi = bounds
  # Clipping moves each coordinate of x + delta towards x (x is in the box), so
  # it can only shrink |delta_i|: the ball constraint survives.
  return jnp.clip(x + delta, lo, hi) - x


@functools.partial(jax.jit, static_argnames=('norm', 'steps', 'restarts', 'random_start'))
def _pgd(loss_fn, x, eps, step_size, key, bounds, *, norm, steps, restarts, random_start):
  """(x_adv, health): (n,) bool 'zero_grad' (the gradient at the first start
  point is zero, as AutoAttack checks it) and 'nonfinite' (some gradient had
  nan / inf entries). Unused outputs cost nothing inside a caller's jit."""
  # Per-example losses: the best iterate is kept per example, so a summed
  # (scalar) loss or logits would silently change what PGD returns. Checked
  # while tracing: once per compiled shape, nothing at run time.
  out = jax.eval_shape(loss_fn, x)
  if out.shape != x.shape[:1]:
    raise ValueError(f'loss_fn: must return per-example losses of shape ({x.shape[0]},), '
                     f'got shape {out.shape}')
  eps = _per_example(eps, x)
  step_size = _per_example(step_size, x)

  def per_ex_loss_and_grad(xa):
    # One forward and one backward pass: the VJP with ones is grad(sum(loss)).
    loss, vjp = jax.vjp(loss_fn, xa)
    # The ones pass through an optimization barrier tied to this step's loss,
    # so XLA cannot hoist what they feed out of the step loop: for a loss
    # linear in a scalar-output net (the negative margin) the output
    # cotangent times the readout weights is loop-invariant, and XLA:CPU
    # would precompute it as an (n, width) array and read it at every step.
    ones, _ = jax.lax.optimization_barrier((jnp.ones_like(loss), loss))
    return loss, vjp(ones)[0]

  def keep_best(best, delta, loss):
    best_delta, best_loss = best
    better = (loss > best_loss) & jnp.isfinite(loss)  # a nan / inf loss is never the best
    mask = better.reshape(better.shape + (1,) * (x.ndim - 1))
    return jnp.where(mask, delta, best_delta), jnp.where(better, loss, best_loss)

  def one_restart(r, carry):
    best, zero, bad = carry
    delta = jnp.zeros_like(x)
    if random_start:
      delta = random_init(jax.random.fold_in(key, r), x, eps, norm)
    delta = _clip_to_bounds(x, project(delta, eps, norm), bounds)

    def step(i, carry):
      delta, best, zero, bad = carry
      loss, g = per_ex_loss_and_grad(x + delta)
      best = keep_best(best, delta, loss)
      zero_here, bad_here = health.grad_flags(g)
      zero = jnp.where((r == 0) & (i == 0), zero_here, zero)
      delta = delta + step_size * ascent_direction(health.finite_grad(g), norm)
      return _clip_to_bounds(x, project(delta, eps, norm), bounds), best, zero, bad | bad_here

    delta, best, zero, bad = jax.lax.fori_loop(0, steps, step, (delta, best, zero, bad))
    return keep_best(best, delta, loss_fn(x + delta)), zero, bad

  no = jnp.zeros(x.shape[:1], bool)
  init = ((jnp.zeros_like(x), jnp.full(x.shape[:1], -jnp.inf, x.dtype)), no, no)
  (best_delta, _), zero, bad = jax.lax.fori_loop(0, restarts, one_restart, init)
  return x + best_delta, dict(zero_grad=zero, nonfinite=bad)


def pgd(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, eps, norm: str,
        steps: int, step_size, key: chex.PRNGKey, random_start: bool = True,
        restarts: int = 1, bounds=None) -> jax.Array:
  """Returns the adversarial batch maximising ``loss_fn`` in the eps-ball.

  Args:
    loss_fn: batch (n, ...) -> per-example losses (n,). Pass the same function
      object (or a ``jax.tree_util.Partial`` whose arrays change) to reuse the
      compiled attack; a new closure on each call recompiles.
    x: clean batch (n, ...).
    eps: radius, scalar or per-example (n,). eps = 0 returns x.
    norm: 'l2' or 'linf'.
    steps: gradient steps (>= 1); steps=1 with random_start=False is FGSM/FGM.
    step_size: absolute step length (the units of eps), scalar or (n,); a
      step relative to eps is ``rel_step_size`` (``PGDSpec``, library-wide).
    key: PRNG key for the random starts.
    random_start: start uniformly in the ball (see module doc) or at x.
    restarts: independent starts; the best per example is returned.
    bounds: None or (lo, hi) input domain, e.g. (0., 1.) for images; x must
      lie inside it.

  Raises ValueError / TypeError (one line naming the argument) for: a norm
  other than 'l2' / 'linf'; steps or restarts not integers >= 1; eps or
  step_size negative, non-finite or not of shape () / (n,); x not floating
  (e.g. uint8 images: convert with ``x.astype(jnp.float32) / 255``) or not
  finite; bounds not (lo, hi) with lo < hi; points of x outside bounds. Value
  checks run only on concrete arrays (not under ``jit``).

  Warns (RuntimeWarning, outside ``jit``) when the gradient at the first
  start point is zero or some gradient was non-finite (``attacks.health``).
  """
  checks.norm(norm)
  steps = checks.budget(steps, 'steps')
  restarts = checks.budget(restarts, 'restarts')
  checks.inputs(x)
  checks.radius(eps, x.shape[0], 'eps')
  checks.radius(step_size, x.shape[0], 'step_size')
  checks.bounds(bounds)
  checks.inside(x, bounds)
  if not isinstance(loss_fn, jax.tree_util.Partial):
    loss_fn = jax.tree_util.Partial(loss_fn)
  x_adv, h = _pgd(loss_fn, x, eps, step_size, key, bounds, norm=norm, steps=steps,
                  restarts=restarts, random_start=bool(random_start))
  health.warn(health.messages('pgd', h))  # (none inside jit: nothing can be read there)
  return x_adv


@dataclasses.dataclass(frozen=True)
class PGDSpec:
  """A PGD attack as config values; the step size is a fraction of eps.

  Hashable, so a stage can close over it inside jit. Calling it runs ``pgd``.
  """
  eps: float
  norm: str = 'l2'
  steps: int = 10
  rel_step_size: float = 0.25  # step = rel_step_size * eps (Madry: 2.5 / steps)
  restarts: int = 1
  random_start: bool = True

  def __post_init__(self):
    # Refused at construction, before a training step closes over the spec.
    checks.radius(self.eps, name='eps', per_example=False)
    checks.norm(self.norm)
    checks.budget(self.steps, 'steps')
    checks.number(self.rel_step_size, 'rel_step_size', low=0)
    checks.budget(self.restarts, 'restarts')

  @classmethod
  def from_config(cls, cfg) -> 'PGDSpec':
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})

  def __call__(self, loss_fn, x: jax.Array, key: chex.PRNGKey, bounds=None) -> jax.Array:
    return pgd(loss_fn, x, eps=self.eps, norm=self.norm, steps=self.steps,
               step_size=self.rel_step_size * self.eps, key=key,
               random_start=self.random_start, restarts=self.restarts, bounds=bounds)
