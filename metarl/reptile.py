"""Reptile (Nichol et al., 2018): the meta-gradient of a task is θ⁰ − θ^K.

With meta step β the update is θ⁰ ← θ⁰ − β·mean_τ(θ⁰ − θ_τ^K) = θ⁰ + β·mean_τ(θ_τ^K − θ⁰).
It equals Leap with p = 2 and the loss term off (docs/leap.md §5).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import MetaLearner
from .seam import Observer


class ReptileObjective(Observer):
    def __init__(self, acc: Sequence[Tensor]) -> None:
        self.acc = list(acc)

    def task_start(self, params: Sequence[Tensor]) -> None:
        with torch.no_grad():
            torch._foreach_add_(self.acc, [p.detach() for p in params])      # + θ⁰

    def task_end(self, params: Sequence[Tensor], final_loss) -> None:
        with torch.no_grad():
            torch._foreach_sub_(self.acc, [p.detach() for p in params])      # − θ^K


class Reptile(MetaLearner):
    name = "reptile"
    measures_displacement = True

    def observers(self, task=None) -> list:
        return [ReptileObjective(self._task_acc)]

    def task_observers(self, acc, task=None) -> list:
        return [ReptileObjective(acc)]
