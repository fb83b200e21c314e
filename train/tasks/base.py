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

import math
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


def supervised_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, watch=NULL_WATCH,
                    clip_grad_norm: float | None = None) -> Tensor:
    """One inner step on a fresh training batch, reported through the seam; returns the detached loss."""
    loss = task.loss(model, task.batch("train"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_grad_norm)
    watch.report(loss)
    optimizer.step()
    return loss.detach()


def finish_task(task: Task, model: nn.Module, watch=NULL_WATCH) -> Tensor:
    """f(θ_K) on one more training batch; it closes the final segment for the meta-learner."""
    with torch.no_grad():
        final = task.loss(model, task.batch("train"))
    watch.finish(final)
    return final


def supervised_adapt(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                     watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
    """The supervised inner loop: ``steps`` optimiser steps on fresh training batches.

    Returns the training-loss curve f(θ_0), …, f(θ_{K−1}), f(θ_K).
    """
    model.train()
    curve = [supervised_step(task, model, optimizer, watch, clip_grad_norm) for _ in range(steps)]
    curve.append(finish_task(task, model, watch))
    return torch.stack(curve).tolist()


def seeded_default_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default conv / linear initialisation (kaiming-uniform with a = √5, bias U(±1/√fan_in)),
    every draw taken from ``generator`` so a model is a function of its seed."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            module.bias.uniform_(-bound, bound, generator=generator)


def curve_auc(curve: Sequence[float]) -> float:
    """Area under a loss curve by the trapezoidal rule, divided by its length in steps (Leap's AUC)."""
    c = np.asarray(curve, dtype=np.float64)
    if len(c) < 2:
        return float(c[0]) if len(c) else float("nan")
    return float(np.trapezoid(c) / (len(c) - 1))
