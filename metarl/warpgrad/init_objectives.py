"""Init objectives, C in Eq. 9: none (fixed θ⁰), Leap (Warp-Leap) or MAML (Warp-MAML)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from ..leap import LeapConfig, LeapObjective
from ..functional import Functional
from ..seam import Observer
from .config import WarpGradConfig
from .inner import InnerSGD
from .objective import train_mode

if TYPE_CHECKING:
    from .learner import WarpGrad


class NoInit:
    """λC = 0: the initialisation stays where it is (warp-only; continual sine, Table 4)."""
    name = "none"

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD", acc: Sequence[Tensor]) -> Any:
        return None


class LeapInit:
    """Warp-Leap: the Leap pull-forward gradient (Eq. 13 with the loss term when ``config.loss``) of the
    observed trajectory, measured in θ-space, i.e. in the warped geometry. One :class:`LeapObjective`
    per meta-learner, watching the meta-learned subset of θ."""
    name = "leap"

    def __init__(self, config: LeapConfig | None = None) -> None:
        self.config = config or LeapConfig()
        self._objective: LeapObjective | None = None

    def objective(self, acc: Sequence[Tensor]) -> LeapObjective:
        if self._objective is None:
            self._objective = LeapObjective(self.config, acc)
        return self._objective

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD", acc: Sequence[Tensor]) -> Any:
        index = [task_names.index(n) for n in wg.names]
        obs = self.objective(acc)
        return obs if index == list(range(len(task_names))) else _Subset(obs, index)

    def pop_logs(self) -> dict[str, float]:
        obs = self._objective
        if obs is None:
            return {}
        path_length, segments = obs.reset_stats()
        return {"meta/path_length": path_length, "meta/segments": float(segments)}


class MAMLInit:
    """Warp-MAML: ∇_θ⁰ L_query(θ_S) after S differentiable SGD steps from θ⁰ through the warped model
    (φ held constant), computed when the task starts. ``lr=None`` uses the inner optimiser's rate."""
    name = "maml"

    def __init__(self, steps: int = 5, lr: float | None = None, first_order: bool = False,
                 query_split: str = "query") -> None:
        self.steps, self.lr, self.first_order, self.query_split = steps, lr, first_order, query_split

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD", acc: Sequence[Tensor]) -> Any:
        return _MAMLObserver(self, wg, model, task, task_names, inner, acc)


class _Subset:
    """Forwards the seam's events for a subset of the watched tensors."""

    def __init__(self, observer: Any, index: Sequence[int]) -> None:
        self.observer, self.index = observer, list(index)

    def _pick(self, xs: Sequence[Tensor]) -> list[Tensor]:
        return [xs[i] for i in self.index]

    def task_start(self, params) -> None:
        self.observer.task_start(self._pick(params))

    def before_step(self, params, grads, loss) -> None:
        self.observer.before_step(self._pick(params), self._pick(grads), loss)

    def after_step(self, params) -> None:
        self.observer.after_step(self._pick(params))

    def task_end(self, params, final_loss) -> None:
        self.observer.task_end(self._pick(params), final_loss)


class _MAMLObserver(Observer):
    def __init__(self, init: MAMLInit, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD", acc: Sequence[Tensor]) -> None:
        self.init, self.wg, self.model, self.task, self.names = init, wg, model, task, task_names
        self.inner, self.acc = inner, acc      # the task's θ⁰ meta-gradient accumulator
        self.index = [task_names.index(n) for n in wg.names]

    def task_start(self, params) -> None:
        init, wg, task = self.init, self.wg, self.task
        rules = self.inner.rules()
        lrs = [init.lr if init.lr is not None else r.lr for r in rules]
        with torch.enable_grad(), train_mode(self.model):
            start = [p.detach().requires_grad_(True) for p in params]
            fixed = {**{n: w.detach() for n, w in zip(wg.warp_names, wg.warp_params)},
                     **{k: b.detach().clone() for k, b in self.model.named_buffers()}}
            fast = list(start)
            for _ in range(init.steps):
                loss = task.loss(Functional(self.model, {**fixed, **dict(zip(self.names, fast))}),
                                 task.batch(wg.config.task_split))
                g = torch.autograd.grad(loss, fast, create_graph=not init.first_order, allow_unused=True)
                fast = [f if gi is None else f - lr * gi for f, gi, lr in zip(fast, g, lrs)]
            query = task.loss(Functional(self.model, {**fixed, **dict(zip(self.names, fast))}),
                              task.batch(init.query_split))
            meta = torch.autograd.grad(query, [start[i] for i in self.index], allow_unused=True)
        with torch.no_grad():
            for acc, g in zip(self.acc, meta):
                if g is not None:
                    acc.add_(g)


def make_init_objective(config: WarpGradConfig, leap: LeapConfig | None = None) -> NoInit | LeapInit | MAMLInit:
    if config.init_objective == "leap":
        return LeapInit(leap)
    if config.init_objective == "maml":
        return MAMLInit(config.maml_steps, config.maml_lr, config.maml_first_order, config.maml_query_split)
    return NoInit()
