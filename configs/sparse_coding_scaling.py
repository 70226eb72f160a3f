"""Paper A's scaling laws: ``--config=configs/sparse_coding.py:scaling``.

    python launch.py --config=configs/sparse_coding.py:scaling

Built from the main job's blocks (configs/sparse_coding.py: data model,
network, optimizers, attack settings), so the two stay in one place; the
sweep sets d = D, D, k, the width and the training radius itself, from the
``scaling`` block (robustjax/experiments/scaling.py runs it).
"""
import ml_collections

# ``:scaling,tiny``: the tests' size: 2 seeds, 20 steps of 32, a 2 x 2 grid of
# shapes (D 4, 8; width factors 1, 2) at k 1, 2 and two training radii.
TINY = {'num_seeds': 2, 'chunk_size': 10, 'progress': False,
        'pretrain.steps': 20, 'pretrain.batch_size': 32, 'attack.steps': 2,
        'downstream.num_tasks': 2, 'downstream.num_examples': 64, 'downstream.max_iter': 50,
        'eval.num_examples': 32, 'eval.attack_steps': 2, 'eval.fmn_steps': 10,
        'scaling.ks': (1, 2), 'scaling.Ds': (4, 8), 'scaling.width_factors': (1, 2),
        'scaling.eps_factors': (0.5, 1.0), 'scaling.fit_width_factor': 2,
        'scaling.fit_eps_factor': 1.0, 'scaling.full_Ds': (4,), 'scaling.full_width_factors': (2,)}


def from_base(base):
  """The scaling sweep's config from the main job's ``base`` config."""
  c = ml_collections.ConfigDict()
  c.experiment = 'scaling'
  c.seed = base.seed
  c.num_seeds = base.num_seeds     # the exponents' intervals are over seeds (>= 2)
  c.chunk_size = base.chunk_size
  c.progress = base.progress
  c.checkpoint_every = base.checkpoint_every
  c.data = ml_collections.ConfigDict({k: base.data[k] for k in (
      'exact_k', 'magnitude_low', 'noise_std')})
  c.model = ml_collections.ConfigDict({k: base.model[k] for k in (  # width: from the grid
      'bias_init', 'train_bias', 'init_scale', 'readout_init_scale')})
  # 1000 steps of 128 (the main job: 3000 of 256), for the 20-minute budget.
  # Measured (D = 64, k = 4, c = 0.8, 2 seeds): median purity 0.70 at 1000
  # steps and 0.72 at 4000 with m = 4D; 0.67 at 1000 and 0.99 from 2000 on with
  # m = D, so the narrow widths are not yet converged at this budget.
  c.pretrain = ml_collections.ConfigDict({k: base.pretrain[k] for k in (
      'optimizer', 'learning_rate', 'weight_decay')})
  c.pretrain.steps = 1000
  c.pretrain.batch_size = 128
  # The training attack; its radius comes from the grid: eps = c / sqrt(k).
  c.attack = ml_collections.ConfigDict({k: base.attack[k] for k in (
      'norm', 'steps', 'rel_step_size', 'restarts', 'random_start')})
  # Clean heads: logistic regression on the frozen features of num_examples
  # fresh points per task, solved to its optimum by L-BFGS
  # (robustjax.models.heads.fit_logistic_regression, Paper B's refit protocol)
  # instead of the main job's 1000 online Adam steps: the same convex loss,
  # and the online heads took 296 s of a 491 s one-shape trial (48 encoders x 3 tasks).
  c.downstream = ml_collections.ConfigDict(dict(
      num_tasks=1,         # fresh tasks per encoder (each with its own test points)
      num_examples=2000,   # training points per head
      l2=1e-4,             # 0.5 * l2 * ||kernel||^2 beside the mean loss
      max_iter=100,        # L-BFGS iterations at most (500: 1900 s of a 3400 s wall run)
      tol=1e-6,            # gradient norm (standardised features) to stop at
  ))
  c.eval = ml_collections.ConfigDict(dict(
      num_examples=500,                      # test points per head
      attack_steps=base.eval.attack_steps,   # PGD at each eps = c' / sqrt(k)
      rel_step_size=base.eval.rel_step_size,
      restarts=base.eval.restarts,
      fmn_steps=100,                         # FMN's minimal-distance search
  ))
  c.scaling = ml_collections.ConfigDict(dict(
      ks=(2, 4, 8, 16),            # active features
      Ds=(32, 64, 128),            # latent features = observation dim (orthonormal M)
      width_factors=(0.5, 1, 4),   # width m = factor * D
      eps_factors=(0.4, 0.8, 1.2),  # adversarial training radius eps = c / sqrt(k)
      # The fits, fixed before the run: the clean fit uses the clean encoders at
      # m = fit_width_factor * D; the adversarial one those trained at
      # c = fit_eps_factor (the main job's eps 0.4 at k = 4 is c = 0.8).
      fit_width_factor=4,
      fit_eps_factor=0.8,
      # Where every eps factor runs (the gap heatmap): D in full_Ds at a width
      # factor in full_width_factors, the main job's shape (64, 256). Elsewhere
      # only clean and fit_eps_factor run, all the fits and purity against
      # width need. Running every eps factor at m = 4D for all three Ds (and
      # 500-iteration heads) took 1828 s of CPU time: over the 20-minute budget.
      full_Ds=(64,),
      full_width_factors=(4,),
  ))
  return c
