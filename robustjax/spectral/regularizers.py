"""Spectral-norm penalties on chosen layers: rep-spectral and ll-spectral (or none).

Paper B's penalty is ``lam * sum_l sigma_max(W_l)^2`` (no 1/2) over

- ``rep``: the hidden layers up to the feature map (the layers a re-fitted
  readout sees through), chosen by parameter path or by the model's own
  ``feature_layers`` names;
- ``rep_eig_ub``: the same sigma^2 terms plus ``lam`` times the activation-slope
  term of the authors' ``eig-ub`` bound (their XOR runs). That term depends on
  the batch, so it is added by the stage's loss
  (``robustjax.spectral.eig_ub.activation_slope_penalty``); here it masks as rep;
- ``ll``: every dense/conv kernel, readout included (Yoshida & Miyato 2017;
  what the authors' code does for multi-layer MLPs and ResNets);
- ``ll_readout``: the readout only, chosen by ``readout_layers``: what the
  authors' ll code reaches in their single-hidden-layer model (its loop walks
  the model's direct children, and the hidden layer sits in a nested block);
- ``clean``: nothing (the unregularised baseline; called ``clean`` in every
  experiment, Paper B's "none").

Each sigma_max comes from power iteration with its vector carried between
steps (``power_iteration``). Dense kernels iterate on W^T W; conv kernels
iterate through the conv and its transpose on inputs of the layer's own shape
(the true operator norm, not the reshaped kernel's), which needs each conv's
input size, stride and padding: ``capture.conv_layers(model, variables, x)``
records them and ``layer_mask(..., conv_layers=...)`` puts each one in the
mask in place of True. Those vectors are state that the stage's loss
``loss_fn(params, key, aux)`` cannot carry, so the penalty is applied as an
optax gradient transformation chained *before* the optimizer: at every update
it advances the vectors, adds ``lam * d/dW sum sigma^2 = lam * 2 sigma u v^T``
to the task gradient and keeps the vectors in its own state. The result is
the gradient of ``task + lam * penalty`` for any stage's loss and any
optimizer; weight decay, momentum and Adam see the sum, as they would in a
PyTorch ``loss.backward()``.

Schedule: no penalty for the first ``burn_in_steps`` updates; at the switch-on
update the vectors are warmed up (up to ``warmup_iters`` iterations, to
convergence), then each penalised update runs up to ``iters`` (stopping at
relative change ``tol``); with ``every_k > 1`` only every k-th update after
the burn-in is penalised (the strength per penalised update stays ``lam``).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from robustjax.spectral import conv_norm, power_iteration
from robustjax.spectral.capture import ConvLayer

# 'clean': no penalty (the unregularised baseline; one name across the library).
KINDS = ('clean', 'rep', 'll', 'll_readout', 'rep_eig_ub')
REP_KINDS = ('rep', 'rep_eig_ub')   # kinds that penalise the layers up to the feature map


@dataclasses.dataclass(frozen=True)
class SpectralSpec:
  """The regularizer as config values; hashable, so jit can close over it."""
  kind: str = 'clean'           # one of KINDS
  lam: float = 1e-3             # strength of sum sigma_max^2
  burn_in_steps: int = 0        # unpenalised updates before the switch-on
  every_k: int = 1              # penalise every k-th update after the burn-in
  iters: int = 10               # power iterations per penalised update
  warmup_iters: int = 1000      # at the switch-on: iterate to convergence
  tol: float = 1e-6             # relative change of sigma that stops iterating
  layers: tuple[str, ...] = ()  # rep: parameter paths ('hidden_0' or 'hidden_0/kernel');
                                # empty = the model's feature_layers

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'kind must be one of {KINDS}, got {self.kind!r}')

  @classmethod
  def from_config(cls, cfg, kind: str, steps_per_epoch: int) -> 'SpectralSpec':
    """From a config block with burn_in_epochs (converted to updates)."""
    return cls(kind=kind, lam=float(cfg.lam),
               burn_in_steps=int(cfg.burn_in_epochs) * int(steps_per_epoch),
               every_k=int(cfg.every_k), iters=int(cfg.iters),
               warmup_iters=int(cfg.warmup_iters), tol=float(cfg.tol),
               layers=tuple(cfg.layers))


def _path(path) -> str:
  return '/'.join(str(getattr(p, 'key', getattr(p, 'name', p))) for p in path)


def _matches(path: str, prefixes: Sequence[str]) -> bool:
  return any(path == p or path.startswith(p.rstrip('/') + '/') for p in prefixes)


def layer_mask(params, kind: str, *, feature_layers: Sequence[str] = (),
               layers: Sequence[str] = (), readout_layers: Sequence[str] = (),
               conv_layers: Mapping[str, ConvLayer] | None = None):
  """A pytree mirroring params: what to penalise at each leaf.

  Leaves are False (not penalised), True (a dense kernel) or the kernel's
  ``ConvLayer`` (a conv kernel: its operator), which is truthy, so
  ``any(jax.tree.leaves(mask))`` still says whether anything is penalised.

  Kernels are the leaves named ``kernel``. ``rep`` and ``rep_eig_ub`` take
  those under the paths in ``layers`` when given, else under the model's
  ``feature_layers``; ``ll_readout`` those under ``readout_layers`` (e.g. an
  MLP's ``('readout',)``); ``ll`` takes every kernel. Biases (and BatchNorm
  scales) are never penalised. ``conv_layers``:
  ``capture.conv_layers(model, variables, x)``, needed when a selected kernel
  is 4-D. Raises ValueError when rep or ll_readout selects nothing (a misspelt
  path would otherwise silently train unregularised), or a selected kernel is
  neither a matrix nor a recorded conv.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  prefixes = tuple(layers) or tuple(feature_layers)
  if kind == 'll_readout':
    prefixes = tuple(readout_layers)
    if not prefixes:
      raise ValueError('ll_readout needs readout_layers, e.g. the model\'s readout_layer')
  if kind in REP_KINDS and not prefixes:
    raise ValueError(f"{kind} needs layer paths or a model with feature_layers")
  conv_layers = dict(conv_layers or {})

  def pick(path, leaf):
    p = _path(path)
    if kind == 'clean' or not p.split('/')[-1] == 'kernel':
      return False
    if not (kind == 'll' or _matches(p, prefixes)):
      return False
    if jnp.ndim(leaf) == 2:
      return True
    if jnp.ndim(leaf) == 4 and p in conv_layers:
      layer = conv_layers[p]
      if layer.input_shape[-1] != jnp.shape(leaf)[2]:
        raise ValueError(f'{p}: kernel {jnp.shape(leaf)} does not take the recorded input '
                         f'{layer.input_shape}')
      return layer
    if jnp.ndim(leaf) == 4:
      raise ValueError(f'{p}: a conv kernel {jnp.shape(leaf)} needs its operator: pass '
                       'conv_layers=robustjax.spectral.conv_layers(model, variables, x)')
    raise ValueError(f'{p}: the spectral penalty handles dense (2-D) and conv (4-D) kernels, '
                     f'got shape {jnp.shape(leaf)}')

  mask = jax.tree_util.tree_map_with_path(pick, params)
  if kind not in ('clean', 'll') and not any(jax.tree.leaves(mask)):
    paths = [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    raise ValueError(f'{kind}: no kernel under {prefixes}; parameter paths are {paths}')
  return mask


def init_vectors(params, mask, key: jax.Array):
  """Power-iteration vectors mirroring params: unit vectors on masked kernels
  ((n,) for a dense kernel (m, n), the input shape (H, W, c_in) for a conv),
  empty arrays elsewhere."""
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(mask)
  keys = jax.random.split(key, max(len(leaves), 1))
  convs = [i for i, m in enumerate(flags) if isinstance(m, ConvLayer)]
  starts = _unit_normals(keys[convs[0]], tuple(flags[i].input_shape for i in convs)) if convs else []
  conv_starts = dict(zip(convs, starts))

  def start(i, w, m, k):
    if i in conv_starts:
      return conv_starts[i].astype(w.dtype)
    if m:
      return power_iteration.initial_vector(k, w.shape[1], w.dtype)
    return jnp.zeros((0,), w.dtype)

  return jax.tree.unflatten(treedef, [start(i, w, m, k)
                                      for i, (w, m, k) in enumerate(zip(leaves, flags, keys))])


@functools.partial(jax.jit, static_argnums=1)
def _unit_normals(key, shapes):
  """Random unit arrays of the given shapes from one flat draw: one compile
  for all of a network's convs (eager per-shape draws cost a compile each)."""
  sizes = [math.prod(s) for s in shapes]
  parts = jnp.split(jax.random.normal(key, (sum(sizes),)), list(itertools.accumulate(sizes))[:-1])
  return [p.reshape(s) / power_iteration.norm(p) for p, s in zip(parts, shapes)]


def _operator(w: jax.Array, m):
  """The masked kernel as a linear function of its power vector."""
  if isinstance(m, ConvLayer):
    return lambda x: m(w, x)
  return lambda x: w @ x


def penalty(params, vectors, mask, *, iters, tol: float, key: jax.Array | None = None):
  """(sum of sigma_max^2 over masked kernels, new vectors, sigmas pytree).

  Differentiable in params only: each term is ``||W v||^2`` at the new
  vectors, so d/dW sigma^2 = 2 sigma u v^T (for a conv, the same through the
  conv: the gradient of ||conv(W, v)||^2 in W), and exactly 0 at W = 0
  (``power_iteration.safe_norm``).
  A vector that is zero or not finite (a collapsed or corrupted state) is
  re-drawn first, as a random unit array from ``fold_in(key, leaf index)``
  (``key`` defaults to PRNGKey(0); ``penalize`` passes one derived from its
  update count). The sigmas are for reporting (no gradient). Unmasked leaves
  contribute 0, keep their (empty) vectors and report sigma 0.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(mask)
  vecs = treedef.flatten_up_to(vectors)
  total, new_vecs, sigmas = jnp.zeros((), jnp.float32), [], []
  for i, (w, v, m) in enumerate(zip(leaves, vecs, flags)):
    if not m:
      new_vecs.append(v)
      sigmas.append(jnp.zeros((), jnp.float32))
      continue
    fresh = jax.random.normal(jax.random.fold_in(key, i), v.shape, v.dtype)
    v = jnp.where(power_iteration.usable(v), v, fresh / power_iteration.norm(fresh))
    v, _ = power_iteration.iterate_operator(_operator(jax.lax.stop_gradient(w), m), v,
                                            iters=iters, tol=tol)
    # Recomputed with the live kernel: the gradient flows through w, not v.
    # safe_norm: the plain norm's gradient is NaN at W v = 0 (a zero kernel).
    sigma = power_iteration.safe_norm(_operator(w, m)(v))
    total = total + sigma ** 2
    new_vecs.append(v)
    sigmas.append(jax.lax.stop_gradient(sigma))
  return total, jax.tree.unflatten(treedef, new_vecs), jax.tree.unflatten(treedef, sigmas)


class SpectralState(NamedTuple):
  count: jax.Array      # updates seen so far
  vectors: Any          # power-iteration vectors mirroring the params
  value: jax.Array      # the last penalised update's sum sigma^2 (for logging)
  grad_norm: jax.Array  # l2 norm of what the last update added to the gradient
                        # (0 when it was not penalised); NaN when the penalty's
                        # value or gradient was not finite (train_step reports it)


def penalize(spec: SpectralSpec, mask, key: jax.Array | None = None
             ) -> optax.GradientTransformation:
  """The penalty as an optax transformation; chain it before the optimizer:

      tx = optax.chain(penalize(spec, mask), make_optimizer(...))

  ``update(grads, state, params)`` needs params (flax's TrainState passes
  them). ``kind='clean'`` (or an all-False mask) adds nothing.
  """
  key = jax.random.PRNGKey(0) if key is None else key

  def init(params):
    return SpectralState(jnp.zeros((), jnp.int32), init_vectors(params, mask, key),
                         jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('penalize needs params in update(); flax TrainState passes them')
    count = state.count
    since = count - spec.burn_in_steps
    active = (since >= 0) & (since % spec.every_k == 0)
    iters = jnp.where(since == 0, spec.warmup_iters, spec.iters)

    def on(_):
      # Re-drawn vectors (if any) depend on the update count: reproducible,
      # and a resumed run draws the same ones.
      redraw = jax.random.fold_in(key, count)

      def scaled(p):
        value, (vectors, _) = _penalty_aux(p, state.vectors, mask, iters, spec.tol, redraw)
        return spec.lam * value, (vectors, value)
      (_, (vectors, value)), g = jax.value_and_grad(scaled, has_aux=True)(params)
      # An overflowing sigma^2 can come with a finite gradient: flag it too.
      added = jnp.where(jnp.isfinite(value), optax.global_norm(g), jnp.nan).astype(jnp.float32)
      return jax.tree.map(jnp.add, updates, g), vectors, value, added

    def off(_):
      return updates, state.vectors, state.value, jnp.zeros((), jnp.float32)

    # A real branch when not vmapped: burn-in steps cost nothing extra.
    updates, vectors, value, grad_norm = jax.lax.cond(active, on, off, None)
    return updates, SpectralState(count + 1, vectors, value, grad_norm)

  if spec.kind == 'clean' or not any(jax.tree.leaves(mask)):
    return optax.identity()
  return optax.GradientTransformation(init, update)


def _penalty_aux(params, vectors, mask, iters, tol, key):
  value, vectors, sigmas = penalty(params, vectors, mask, iters=iters, tol=tol, key=key)
  return value, (vectors, sigmas)


def sigma_max(params, mask, *, iters: int = 2000, tol: float = 1e-7) -> dict[str, jax.Array]:
  """sigma_max of every masked kernel, keyed by parameter path (reporting).

  Dense kernels: exact (SVD). Conv kernels: exact by FFT with circular
  padding (and input sizes divisible by the stride); otherwise power
  iteration from a fixed start, up to ``iters`` iterations to relative
  change ``tol`` (a lower bound that is tight once converged).
  """
  out = {}
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for (path, w), m in zip(leaves, jax.tree.structure(params).flatten_up_to(mask)):
    if isinstance(m, ConvLayer):
      fft = m.circular and all(n % s == 0 for n, s in zip(m.input_shape, m.strides))
      out[_path(path)] = conv_norm.conv_operator_norm(
          w, m.input_shape, strides=m.strides, padding=m.padding,
          method='fft' if fft else 'power', iters=iters, tol=tol)[0]
    elif m:
      out[_path(path)] = jnp.linalg.svd(w, compute_uv=False)[..., 0]
  return out
