"""Multi-headed fine-tuning: one shared trunk trained on the stream of meta-training tasks, one output
head per task key (e.g. per alphabet). There is no meta-gradient: the initialisation *is* the trunk
after the latest task (θ⁰ ← θ^K at the end of every task)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner, all_finite, select
from .seam import Observer, OptimizerWatch
from .state import Bank


class FineTuning(MetaLearner):
    """Refused under torchrun (:meth:`distributed_refusal`): the tasks of a meta-batch form a chain — each
    starts where the previous one ended (θ⁰ ← θᴷ) — and ranks sharing a meta-batch would each start their
    share from the same θ⁰. No reduction of their end points (a mean, a pick) equals the chain one process
    runs, so a distributed run cannot be made to equal a one-process run; it is refused at launch."""

    name = "finetune"

    @classmethod
    def distributed_refusal(cls, cfg: Any) -> str:
        return ("fine-tuning chains the tasks of a meta-batch (each starts from the last one's end), which ranks "
                "cannot split")

    @classmethod
    def check_config(cls, cfg: Any, task: Any) -> None:
        # a learned head follows the trunk into θ⁰ (TaskHeads.task_end), so it needs one shape for every task
        varies = task.head_shape_varies(cfg.task_config)
        if cfg.meta.head == "learned" and varies:
            raise ValueError(f"method finetune with meta.head: learned needs one head shape for every task: {varies}")

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head: Sequence[str] = ("head.",), **common: Any) -> "FineTuning":
        return cls(model, head=tuple(head), learned_head=cfg.meta.head == "learned", **common)

    def __init__(self, model: nn.Module, head: Sequence[str] = ("head.",), learned_head: bool = True,
                 **kwargs: Any) -> None:
        kwargs["exclude"] = tuple(kwargs.get("exclude", ())) + tuple(head)
        super().__init__(model, **kwargs)
        # Under meta.head: reset a task never starts from θ⁰'s head, and per-game heads (Atari) need not
        # even have its shape: only a learned head follows the trunk into θ⁰.
        self.learned_head = learned_head
        self.head_names = select([n for n, _ in model.named_parameters()], include=head)
        self.heads: dict[str, dict[str, Tensor]] = {}

    def observers(self, task=None) -> list:
        return []

    def prepare(self, model: nn.Module, task: Any = None) -> None:
        """Install the head of this task's key, if the trunk has met the task before."""
        task_key = str(getattr(task, "key", task))
        if task_key in self.heads:
            named = dict(model.named_parameters())
            with torch.no_grad():
                for n, v in self.heads[task_key].items():
                    named[n].copy_(v)

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Any = None) -> OptimizerWatch:
        return OptimizerWatch(optimizer, self.watched(model), [_Continue(self, model, str(getattr(task, "key", task)))])

    def updates(self, logs: dict[str, float]) -> tuple:
        logs["meta/heads"] = float(len(self.heads))
        return ()                       # θ⁰ moved at every task's end (_Continue)

    saved = (Bank("heads", keys="head_keys"),)     # the task heads by task key


class _Continue(Observer):
    """θ⁰ ← θ^K for the trunk (and the learned head); the task's head goes to the bank."""

    def __init__(self, ft: FineTuning, model: nn.Module, task_key: str | None) -> None:
        self.ft, self.model, self.task_key = ft, model, task_key

    @torch.no_grad()
    def task_end(self, params, final_loss) -> None:
        state = self.model.state_dict()
        finite = all_finite([state[n] for n in self.ft.names])
        if not finite:
            self.ft.skipped += 1
            return
        # Parameters only: buffers (BatchNorm statistics) stay at their initial values, so every task
        # starts with fresh statistics, as for every other method.
        for n in (*self.ft.names, *(self.ft.head_names if self.ft.learned_head else ())):
            self.ft.init_state[n].copy_(state[n])
        self.ft.heads[str(self.task_key)] = {n: state[n].clone() for n in self.ft.head_names}
        self.ft.tasks += 1
