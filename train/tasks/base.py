"""The task-adapter protocol: every task family (sine, Omniglot, tieredImageNet, Atari, maze) implements it.

The trainer composes an adapter with a meta-learner:

    tasks = adapter.sample_tasks("train", meta_batch, rng)
    for task in tasks:
        model = adapter.make_model(generator); meta.load_init(model)
        with meta.watch(model, optimizer, task.key) as watch:
            adapter.adapt(task, model, optimizer, steps, watch)
    meta.meta_step()

Adapters own data and the inner loop; they own no logging, checkpoints or meta-learning.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from metarl.seam import NULL_WATCH


class Task(Protocol):
    key: str                                   # which member of the family (alphabet, game, sine draw)

    def batch(self, split: str) -> Any:        # "train" (inner steps) | "query" (MAML outer) | "test"
        ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        ...


class TaskAdapter(Protocol):
    head: Sequence[str]                        # parameter-name prefixes of the output head
    splits: Sequence[str]                      # e.g. ("train", "val", "test")

    def make_model(self, generator: torch.Generator, task: Task | None = None) -> nn.Module: ...

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[Task]: ...

    def adapt(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]: ...

    def evaluate(self, task: Task, model: nn.Module) -> dict[str, float]: ...


def supervised_adapt(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                     watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
    """The supervised inner loop: ``steps`` optimiser steps on fresh training batches.

    Returns the training-loss curve f(θ_0), …, f(θ_{K−1}), f(θ_K); the last point is evaluated on one
    more batch and closes the final segment for the meta-learner (watch.finish).
    """
    model.train()
    curve: list[Tensor] = []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for _ in range(steps):
        loss = task.loss(model, task.batch("train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        watch.report(loss)
        optimizer.step()
        curve.append(loss.detach())
    with torch.no_grad():
        final = task.loss(model, task.batch("train"))
    watch.finish(final)
    curve.append(final)
    return torch.stack(curve).tolist()


def curve_auc(curve: Sequence[float]) -> float:
    """Area under a loss curve by the trapezoidal rule, divided by its length in steps (Leap's AUC)."""
    c = np.asarray(curve, dtype=np.float64)
    if len(c) < 2:
        return float(c[0]) if len(c) else float("nan")
    return float(np.trapezoid(c) / (len(c) - 1))
