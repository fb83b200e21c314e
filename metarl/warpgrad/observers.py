"""The seam observers :meth:`WarpGrad.watch` assembles: task begin / end bookkeeping, the selection of
trajectory points and the online warp gradient (Algorithm 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from torch import Tensor, nn

from ..seam import Observer
from .inner import InnerSGD

if TYPE_CHECKING:
    from .learner import WarpGrad
    from .replay import Trajectory


class TaskBegin(Observer):
    def __init__(self, wg: "WarpGrad") -> None:
        self.wg = wg

    def task_start(self, params) -> None:
        self.wg.begin_task()


class TaskEnd(Observer):
    def __init__(self, wg: "WarpGrad", trajectory: Trajectory | None) -> None:
        self.wg, self.trajectory = wg, trajectory

    def task_end(self, params, final_loss) -> None:
        self.wg.end_task(self.trajectory)


class PointSelector(Observer):
    """Calls ``visit(params, k)`` at the selected points θ_k: every stride-th step and θ_K."""

    def __init__(self, wg: "WarpGrad") -> None:
        self.wg, self.k, self.last = wg, 0, -1

    def before_step(self, params, grads, loss) -> None:
        k, self.k = self.k, self.k + 1
        if k % self.wg.config.stride == 0:
            self.last = k
            self.visit(params, k)

    def task_end(self, params, final_loss) -> None:
        if self.wg.config.final_point and self.last != self.k:
            self.last = self.k
            self.visit(params, self.k)

    def visit(self, params: Sequence[Tensor], k: int) -> None:
        raise NotImplementedError


class OnlineWarp(PointSelector):
    """Algorithm 1: the warp gradient at every selected θ_k, accumulated for the task."""

    def __init__(self, wg: "WarpGrad", model: nn.Module, task: Any, names: list[str], inner: InnerSGD) -> None:
        super().__init__(wg)
        self.model, self.task, self.names, self.inner = model, task, names, inner

    def visit(self, params, k) -> None:
        wg = self.wg
        value = wg.point_value(self.model, self.task, self.names, [p.detach() for p in params],
                                self.inner.momentum(), dict(self.model.named_buffers()), self.inner.rules(), k)
        wg.add_task_point(value)
