"""Lazy teacher–student meta-learning: a long graph-free student, a short-graph teacher leap.

Only the abstract and introduction of the paper are available (docs/protocols.md §10). What they fix: a
**student** explores the task's parameter space for a long horizon (well over ten steps) without the
meta-gradient having to pass through those steps; a **teacher** then "leaps toward the regions probed by
the student", arriving at a good task model and "defining a lightweight computation graph for
meta-gradients". The leap formula is not in the text, so it is a switch here (``LazyConfig.reading``):

    student (all readings, no graph):  φ_0 = θ,  φ_{k+1} = φ_k − η ⊙ g_k,  g_k = ∇L_train(φ_k),  k < K

    interpolate     ψ = θ + γ·(sg[φ_K] − θ)             ∇_θ L_q(ψ) = (1 − γ)·∇_ψ L_q(ψ)
                    (the teacher moves part-way to the student's end point)
    follow_updates  ψ = θ − γ·η ⊙ Σ_k sg[g_k]            ∇_θ L_q(ψ) = ∇_ψ L_q(ψ);  η gets a signal
                    (the teacher replays a fraction of the student's summed updates)
    leap_then_step  ψ as in interpolate or follow_updates (``base``), then ψ' = ψ − α ⊙ ∇L_support(ψ)
                    (create_graph): second order through that one step only; meta-gradient ∇_θ L_q(ψ')

η is the student's step size per parameter tensor: the constant ``student_lr`` or, with ``learn_lr``, a
learned per-tensor log step size (MetaSGD-style, one scalar per tensor, a meta-parameter in the
meta-optimiser and in ``state_dict``). Under follow_updates (and in leap_then_step's step when
``teacher_step_lr`` is None) η stays differentiable, so it is meta-learned; under interpolate its gradient
is exactly zero (the student's end point is behind a stop-gradient). With SGD students and a constant η,
interpolate and follow_updates reach the same point ψ; they differ only in how the meta-gradient passes
through it.

Default: **leap_then_step on follow_updates** (``reading="leap_then_step", base="follow_updates"``).
Reasons, weighing the text against §10's remarks:
- the text says the teacher *defines a computation graph* for meta-gradients. Under interpolate or
  follow_updates that graph is one affine map of θ, i.e. a first-order method evaluated at the leap point;
  leap_then_step is the smallest reading where the graph holds a real (second-order) learning step, "MAML
  one step at the leap point";
- the text calls the scheme *generic* over four meta-learning algorithms. interpolate gives learned
  inner-loop quantities (step sizes, preconditioners) exactly zero signal, so it could not serve a
  MetaSGD-like algorithm; follow_updates and leap_then_step do;
- interpolate's θ-signal shrinks as (1 − γ) and vanishes as the teacher leaps all the way to the student;
  follow_updates passes θ's signal through the leap unscaled (at γ = 1 it is first-order MAML at the
  student's end).
interpolate remains available and is the cheapest (one forward/backward at ψ, no second order).

Memory: the student's K steps are plain ``autograd.grad`` calls on detached leaf copies, updated in place
under ``torch.no_grad``; each step's graph is freed before the next. The teacher keeps O(#parameters)
statistics — φ_K (interpolate) or Σ_k g_k (follow_updates) — and its graph has the same size for every K.
``keep_trajectory`` additionally records every φ_k and g_k (detached) for tests and diagnostics.

Protocol: like :class:`~metarl.maml.MAML`, ``run_task`` differentiates through loops of its own; it calls
``accumulate(model, loss_fn)`` with ``loss_fn(model, split)`` drawing a batch of ``split`` ("train": the
student's steps and leap_then_step's support step; "query": the teacher's outer loss). A task whose student
or teacher loss is non-finite is skipped (``meta/skipped_tasks``) and never reaches θ or η.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .base import MetaLearner, Update, all_finite, global_norm
from .functional import Functional
from .state import Names, Record, Tensors

LEAPS = ("interpolate", "follow_updates")          # the teacher's leap rules
READINGS = (*LEAPS, "leap_then_step")              # a leap rule alone, or a leap (``base``) + one step


@dataclass
class LazyConfig:
    reading: str = "leap_then_step"      # interpolate | follow_updates | leap_then_step (module docstring)
    gamma: float = 0.5                   # leap fraction γ: 0 < γ < 1 for interpolate, 0 < γ ≤ 1 for follow_updates
    student_steps: int = 100             # K, the student's (graph-free) horizon
    student_lr: float = 0.01             # η (the initial value of the learned step sizes with learn_lr)
    teacher_step_lr: float | None = None  # α of leap_then_step's step; None: the student's η (learned or not)
    learn_lr: bool = False               # meta-learn one log step size per parameter tensor (MetaSGD-style)
    base: str = "follow_updates"         # the leap under leap_then_step: interpolate | follow_updates
    lr_meta_lr: float | None = None      # meta-optimiser lr of the log step sizes; None: the θ meta lr
    keep_trajectory: bool = False        # record every φ_k and g_k (detached) in ``last_trace``

    def __post_init__(self) -> None:
        if self.reading not in READINGS:
            raise ValueError(f"reading must be one of {', '.join(READINGS)}, got {self.reading!r}")
        if self.base not in LEAPS:
            raise ValueError(f"base must be one of {', '.join(LEAPS)}, got {self.base!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.leap == "interpolate" and self.gamma >= 1.0:
            raise ValueError("gamma must be < 1 for the interpolate leap: at 1 the meta-gradient is zero")
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if not self.student_lr > 0:
            raise ValueError(f"student_lr must be > 0, got {self.student_lr}")
        for key in ("teacher_step_lr", "lr_meta_lr"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise ValueError(f"{key} must be >= 0, got {v}")

    @property
    def leap(self) -> str:
        """The leap rule in use: the reading itself, or ``base`` under leap_then_step."""
        return self.base if self.reading == "leap_then_step" else self.reading


@dataclass
class StudentTrace:
    """What one task's student left for the teacher (all detached). ``points`` / ``grads`` only with
    ``keep_trajectory``: φ_0 … φ_K and g_0 … g_{K−1}, each a dict over the stepped parameter names."""

    start: dict[str, Tensor]
    end: dict[str, Tensor]
    grad_sum: dict[str, Tensor]
    lr: dict[str, Tensor]                 # η per tensor, as the student used it
    losses: list[float]
    finite: bool
    points: list[dict[str, Tensor]] | None = None
    grads: list[dict[str, Tensor]] | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class LossSums:
    """Sums over the meta-batch's merged tasks (Python floats: float64), averaged into ``meta_step``'s logs."""

    student_loss: float = 0.0             # the student's last training loss
    teacher_loss: float = 0.0             # the teacher's query loss


class Lazy(MetaLearner):
    """Lazy teacher–student leap over ``model``'s parameters (see the module docstring)."""

    name = "lazy"

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        why = "Lazy's student is plain, unclipped SGD (lazy.student_lr); held-out adaptation keeps that rule"
        return {**super().unused_keys(cfg), "inner.optimizer": why, "inner.momentum": why,
                "inner.clip_grad_norm": why}

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head=(), **common: Any) -> "Lazy":
        return cls(model, cfg.method_config, **common)

    def __init__(self, model: nn.Module, config: LazyConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.config = cfg = config or LazyConfig()
        # Every trainable parameter is stepped by the student; only ``names`` are meta-learned in θ.
        self.step_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.lr_names: list[str] = list(self.step_names) if cfg.learn_lr else []
        named = dict(model.named_parameters())
        self.lr_params = [nn.Parameter(torch.full((), math.log(cfg.student_lr), dtype=named[n].dtype,
                                                  device=named[n].device)) for n in self.lr_names]
        if self.lr_params:
            group = {"params": self.lr_params}
            if cfg.lr_meta_lr is not None:
                group["lr"] = cfg.lr_meta_lr
            self.meta_optimizer.add_param_group(group)
        self._lr_task_acc = [torch.zeros_like(p) for p in self.lr_params]
        self._lr_acc = [torch.zeros_like(p) for p in self.lr_params]
        self._sums = LossSums()
        self.last_trace: StudentTrace | None = None

    def observers(self, task: Any = None) -> list:
        return []

    def run_task(self, adapter: Any, task: Any, model: nn.Module, optimizer: Any, steps: int,
                 clip_grad_norm: float | None = None) -> list[float]:
        """The student and teacher run their own differentiable loops instead of watching ``optimizer``."""
        return self.accumulate(model, lambda m, split: task.loss(m, task.batch(split)))

    # -- the student ---------------------------------------------------------------------------------------
    def _rates(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """η per stepped tensor, differentiable w.r.t. the log step sizes when they are learned."""
        if self.lr_params:
            return {n: p.exp() for n, p in zip(self.lr_names, self.lr_params)}
        return {n: torch.tensor(self.config.student_lr, dtype=like[n].dtype, device=like[n].device)
                for n in self.step_names}

    def student(self, model: nn.Module, loss_fn: Callable[[nn.Module, str], Tensor]) -> StudentTrace:
        """K graph-free SGD steps from the parameters ``model`` holds (θ). Stops at the first
        non-finite loss or gradient (``finite=False``)."""
        cfg = self.config
        named = dict(model.named_parameters())
        missing = [n for n in self.step_names if n not in named]
        if missing:
            raise ValueError(f"task model lacks the parameters {missing}")
        start = {n: p.detach().clone() for n, p in named.items()}
        phi = {n: t.clone().requires_grad_(n in self.step_names) for n, t in start.items()}
        with torch.no_grad():
            lr = {n: r.detach().clone() for n, r in self._rates(start).items()}
        grad_sum = {n: torch.zeros_like(start[n]) for n in self.step_names}
        keep = cfg.keep_trajectory
        points = [{n: phi[n].detach().clone() for n in self.step_names}] if keep else None
        grads_kept: list[dict[str, Tensor]] | None = [] if keep else None
        losses: list[float] = []
        finite = True
        stepped = [phi[n] for n in self.step_names]
        functional = Functional(model, phi)
        for _ in range(cfg.student_steps):
            loss = loss_fn(functional, "train")
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                finite = False
                break
            grads = torch.autograd.grad(loss, stepped, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, stepped)]
            if not all_finite(grads):
                finite = False
                break
            with torch.no_grad():
                for n, p, g in zip(self.step_names, stepped, grads):
                    grad_sum[n].add_(g)
                    p.sub_(lr[n] * g)
            if keep:
                grads_kept.append({n: g.detach().clone() for n, g in zip(self.step_names, grads)})
                points.append({n: phi[n].detach().clone() for n in self.step_names})
        end = {n: t.detach().clone() for n, t in phi.items()}
        return StudentTrace(start=start, end=end, grad_sum=grad_sum, lr=lr, losses=losses, finite=finite,
                            points=points, grads=grads_kept)

    # -- the teacher ----------------------------------------------------------------------------------------
    def teacher(self, model: nn.Module, loss_fn: Callable[[nn.Module, str], Tensor], trace: StudentTrace
                ) -> tuple[Tensor, list[Tensor | None], list[Tensor | None]]:
        """The teacher's query loss and its gradients w.r.t. θ (``names``) and the log step sizes."""
        cfg = self.config
        theta = {n: t.clone().requires_grad_(n in self.step_names) for n, t in trace.start.items()}
        rates = self._rates(theta)
        psi: dict[str, Tensor] = {}
        for n, t in theta.items():
            if n not in self.step_names:
                psi[n] = t
            elif cfg.leap == "interpolate":     # θ + γ (sg[φ_K] − θ)
                psi[n] = t + cfg.gamma * (trace.end[n] - t)
            else:                               # follow_updates: θ − γ η Σ_k sg[g_k]
                psi[n] = t - cfg.gamma * rates[n] * trace.grad_sum[n]
        if cfg.reading == "leap_then_step":     # one differentiable step at the leap point
            support = loss_fn(Functional(model, psi), "train")
            trace.extra["support_loss"] = float(support.detach())
            keys = list(self.step_names)
            grads = torch.autograd.grad(support, [psi[n] for n in keys], create_graph=True, allow_unused=True)
            psi = dict(psi)
            for n, g in zip(keys, grads):
                if g is not None:
                    alpha = rates[n] if cfg.teacher_step_lr is None else cfg.teacher_step_lr
                    psi[n] = psi[n] - alpha * g
        query = loss_fn(Functional(model, psi), "query")
        inputs = [theta[n] for n in self.names] + list(self.lr_params)
        grads = torch.autograd.grad(query, inputs, allow_unused=True)
        return query.detach(), list(grads[:len(self.names)]), list(grads[len(self.names):])

    # -- protocol -------------------------------------------------------------------------------------------
    def accumulate(self, model: nn.Module, loss_fn: Callable[[nn.Module, str], Tensor]) -> list[float]:
        """Add one task's meta-gradient (θ and, with ``learn_lr``, the log step sizes). ``model`` must hold
        θ (``load_init``). Returns the student's loss curve followed by the teacher's query loss."""
        trace = self.student(model, loss_fn)
        self.last_trace = trace
        if not trace.finite:
            self.skipped += 1
            return list(trace.losses)
        query, g_theta, g_lr = self.teacher(model, loss_fn, trace)
        trace.extra["query_loss"] = float(query)
        with torch.no_grad():
            for acc, g in zip(self._task_acc, g_theta):
                acc.copy_(g if g is not None else torch.zeros_like(acc))
            for acc, g in zip(self._lr_task_acc, g_lr):
                acc.copy_(g if g is not None else torch.zeros_like(acc))
        self._merge_task()
        return [*trace.losses, float(query)]

    def _merge_task(self) -> None:
        tensors = self._task_acc + self._lr_task_acc
        if all_finite(tensors):
            torch._foreach_add_(self._acc, self._task_acc)
            if self._lr_acc:
                torch._foreach_add_(self._lr_acc, self._lr_task_acc)
            trace = self.last_trace
            if trace is not None and trace.losses:
                self._sums.student_loss += trace.losses[-1]
                self._sums.teacher_loss += trace.extra.get("query_loss", float("nan"))
            self.tasks += 1
        else:
            self.skipped += 1

    def all_reduce(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Also sum the step-size accumulators and the loss sums over workers (torchrun)."""
        sums = torch.tensor([self._sums.student_loss, self._sums.teacher_loss], dtype=torch.float64)
        super().all_reduce(lambda tensors: reduce([*tensors, *self._lr_acc, sums]))
        self._sums = LossSums(*sums.tolist())

    def lr_meta_gradient(self) -> list[Tensor]:
        """The accumulated gradient of the log step sizes, averaged over the finite tasks."""
        n = max(self.tasks, 1)
        return [a / n for a in self._lr_acc]

    def step_sizes(self) -> dict[str, float]:
        """η per stepped tensor, as the next student will use it."""
        if self.lr_params:
            return {n: float(p.detach().exp()) for n, p in zip(self.lr_names, self.lr_params)}
        return {n: self.config.student_lr for n in self.step_names}

    def updates(self, logs: dict[str, float]):
        """θ and the log step sizes in one step of the meta-optimiser (its two groups), clipped together."""
        tasks, sums = self.tasks, self._sums
        update = self.init_update(logs)
        if update is not None:
            logs["meta/student_loss"] = sums.student_loss / tasks
            logs["meta/teacher_loss"] = sums.teacher_loss / tasks
            if self.lr_params:
                lr_grads = self.lr_meta_gradient()
                logs["meta/lr_grad_norm"] = global_norm(lr_grads)
                update = Update(update.optimizer, [*update.params, *self.lr_params], [*update.grads, *lr_grads],
                                update.clip_grad_norm)
            yield update
        if self.lr_params:
            logs["meta/student_lr"] = float(torch.stack([p.detach().exp() for p in self.lr_params]).mean())

    def reset_meta_batch(self) -> None:
        super().reset_meta_batch()
        if self._lr_acc:
            torch._foreach_zero_(self._lr_acc)
        self._sums = LossSums()

    # -- checkpointing -------------------------------------------------------------------------------------
    # the base state (θ, the meta-optimiser — its second group holds the log step sizes —, accumulators,
    # counters) plus the log step sizes, their accumulator and the loss statistics
    saved = (Names("lr_names", mismatch="learned step sizes do not match this learner's (learn_lr differs?)"),
             Tensors("log_lr", "lr_params"), Tensors("lr_acc", "_lr_acc"),
             Record("lazy_sums", "_sums"))
