"""Sine regression (Finn et al., 2017): y = A·sin(x − b), A ~ U[0.1, 5], b ~ U[0, π], x ~ U[−5, 5].

Learner: MLP 1-40-40-1 (``body`` + ``head``). Meta-train tasks are fresh draws from the meta-step's RNG;
validation and held-out tasks are fixed draws from the split seed, so every method and every run is
evaluated on the same tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import TaskAdapter, seeded_default_init


@dataclass
class SineConfig:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    hidden: tuple[int, ...] = (40, 40)
    batch_size: int = 10            # points per inner step
    test_points: int = 100          # held-out points per task for the final loss
    split_seed: int = 1234          # fixed validation / held-out draws

    def __post_init__(self) -> None:
        for name in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be an increasing pair, got {getattr(self, name)}")
        if self.batch_size <= 0 or self.test_points <= 0 or not self.hidden or min(self.hidden) <= 0:
            raise ValueError("batch_size, test_points and hidden sizes must be positive")


class SineTask:
    """One sine draw. Points are drawn on the CPU from the task's generator (the same numbers on every
    device) and delivered on ``device``."""

    def __init__(self, amplitude: float, phase: float, config: SineConfig, seed: int, key: str,
                 device: torch.device | str = "cpu") -> None:
        self.amplitude, self.phase, self.config, self.key = amplitude, phase, config, key
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._test = self._draw(config.test_points)

    def _draw(self, n: int) -> tuple[Tensor, Tensor]:
        lo, hi = self.config.x_range
        x = torch.rand(n, 1, generator=self.generator) * (hi - lo) + lo
        return x.to(self.device), (self.amplitude * torch.sin(x - self.phase)).to(self.device)

    def batch(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "test":
            return self._test
        return self._draw(self.config.batch_size)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)


class SineMLP(nn.Module):
    def __init__(self, hidden: tuple[int, ...], generator: torch.Generator | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        if generator is not None:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    seeded_default_init(m, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class SineAdapter(TaskAdapter):
    config: SineConfig

    def make_model(self, generator: torch.Generator, task: Any = None) -> nn.Module:   # same for every task
        return SineMLP(self.config.hidden, generator)

    def _task(self, rng: np.random.Generator, key: str) -> SineTask:
        c = self.config
        return SineTask(float(rng.uniform(*c.amplitude)), float(rng.uniform(*c.phase)), c,
                        int(rng.integers(2**62)), key, self.device)

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[SineTask]:
        if split == "train":
            return [self._task(rng, f"sine-{i}") for i in range(n)]
        offset = {"val": 1, "test": 2}[split]
        return [self._task(np.random.default_rng([self.config.split_seed, offset, i]), f"{split}-{i}")
                for i in range(n)]

    @torch.no_grad()
    def evaluate(self, task: SineTask, model: nn.Module) -> dict[str, float]:
        model.eval()
        return {"test_loss": float(task.loss(model, task.batch("test")))}
