"""First-order MAML: the meta-gradient of a task is the gradient of its last inner step, ∇f(θ^{K−1}).

This is the multi-step first-order variant the Leap experiments used (100 inner steps, the final-step
gradient with ∂θ^{K−1}/∂θ⁰ ≈ I).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import MetaLearner
from .seam import Observer


class FOMAMLObjective(Observer):
    def __init__(self, acc: Sequence[Tensor]) -> None:
        self.acc = list(acc)

    def before_step(self, params, grads: Sequence[Tensor], loss) -> None:
        with torch.no_grad():   # keep only the latest gradient: the task accumulator holds g_i
            torch._foreach_copy_(self.acc, list(grads))



class FOMAML(MetaLearner):
    name = "fomaml"
    measures_displacement = True

    def observers(self, task=None) -> list:
        return [FOMAMLObjective(self._task_acc)]

    def task_observers(self, acc, task=None) -> list:
        return [FOMAMLObjective(acc)]
