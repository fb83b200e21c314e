"""WarpGrad (Flennerhag et al., 2019/2020): meta-learned warp layers that precondition task gradients.

The task model's parameters are split by name (docs/warpgrad.md §1):

    θ  task-adaptable — every parameter the inner optimiser steps; its start θ⁰ is meta-learned by an
       *init objective* C (Leap, MAML, or none);
    φ  warp           — parameters under the warp prefixes (default ``warps.``); fixed during adaptation
       and meta-learned by the *warp objective*.

Warp objective at one stored trajectory point θ (a constant: no gradient flows into how θ was reached),
with one differentiable replay of the inner SGD step from θ — task loss on batch 1, meta loss on a
different batch 2 of the same task:

    θ'(φ) = θ − α·d(φ),  d = μ·b + ∇_θ L_task(θ; φ)   (b: the inner SGD's stored momentum buffer, if any)
    full         L(φ) = L_meta(θ'(φ); φ)                      (arXiv Eq. 7)
                 ∇_φ L = ∂_φ L_meta(θ'; φ) − α (∂²L_task/∂φ∂θ)ᵀ ∇_θ' L_meta
    first_order  L̂(φ) = L_meta(sg[θ'(φ)]; φ)                  (arXiv Eq. 8)
                 the step is taken, then frozen: φ gets only its direct role in L_meta at θ'.
    (The original code's ``approx=True`` evaluated L_meta at θ with no step at all — not Eq. 8.)

Composite J(φ, θ⁰) = L(φ) + λ C(θ⁰) (Eq. 9), trained by coordinate descent with two separate
meta-optimisers (λ is the ratio of their learning rates).

Algorithms (App. B):
- ``online`` (Alg. 1): the warp gradient is computed at every selected point θ_k while the task runs
  (through the optimiser-step seam) and accumulated; φ and θ⁰ step once per meta-batch.
- ``offline`` (Alg. 2): the points θ_0 … θ_K of every task (with BN buffers and momentum buffers) go to an
  in-memory replay buffer; ``meta_step`` samples (task, k) pairs without replacement and steps φ every
  ``eta`` samples. θ⁰ steps with them (``init_schedule="eta"``, the paper) or once per meta-batch
  (``"meta_batch"``, the original code).

Normalisation (a convention; the paper writes plain sums): a φ step uses the *mean* warp gradient of the
points it covers (all points of the meta-batch online, ``eta`` samples offline); a θ⁰ step uses the *mean*
init gradient over the finite tasks, like every other MetaLearner here. Offline with the ``eta`` schedule
each sample (τ, k) carries the share G_τ / (n_τ·T) of its task's init gradient G_τ (n_τ points, T tasks):
the shares of a meta-batch sum to the per-meta-batch mean, so with an SGD init optimiser both schedules end
at the same θ⁰; they differ with stateful optimisers (Adam).

Trainer contract: ``load_init`` → ``prepare`` (freezes the model's warp parameters) → the inner optimiser
over ``task_parameters(model)`` (everything but the warps; it must be ``torch.optim.SGD`` unless
``inner_lr`` is set) → ``with watch(model, optimizer, task)`` (``task`` must be the Task object: the
objective draws its two batches with ``task.batch`` and scores them with ``task.loss``) → ``meta_step``.
"""

from __future__ import annotations

from .config import (ALGORITHMS, INIT_OBJECTIVES, INIT_SCHEDULES, OBJECTIVES, WarpGradConfig, warp_leap_config,
                     warp_maml_config)
from .init_objectives import LeapInit, MAMLInit, NoInit, make_init_objective
from .inner import InnerSGD, SGDRule, sgd_step
from .learner import WarpGrad
from .objective import WarpObjective, WarpValue, train_mode

__all__ = ["WarpGrad", "WarpGradConfig", "warp_leap_config", "warp_maml_config", "OBJECTIVES", "ALGORITHMS",
           "INIT_OBJECTIVES", "INIT_SCHEDULES", "WarpObjective", "WarpValue", "train_mode", "SGDRule", "sgd_step",
           "InnerSGD", "NoInit", "LeapInit", "MAMLInit", "make_init_objective"]
