"""The optimiser-step seam.

A task learner is an ordinary model trained by an ordinary torch optimiser. A meta-learner sees the
learning process only through that optimiser's steps::

    before step i:  θ_i, ∇f(θ_i) (after any clipping), f(θ_i)
    after step i:   θ_{i+1}
    end of task:    f(θ_K) closes the last segment

``torch.optim.Optimizer.register_step_pre_hook`` / ``register_step_post_hook`` give the before/after
points for any optimiser (SGD, Adam, RMSprop, an SB3 model's optimiser). The hooks do not see the loss,
so the task loop reports it explicitly, always the same way::

    loss.backward()
    clip_grad_norm_(...)            # optional: the watch sees the clipped gradient
    watch.report(loss)              # f(θ_i) for the step about to be taken
    optimizer.step()
    ...
    watch.finish(final_loss)        # f(θ_K)

Observers (Leap, Reptile, WarpGrad, ...) implement :class:`StepObserver`; the watch fans the events out.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor


class StepObserver(Protocol):
    """Receives one task's optimiser steps. ``params`` are the live watched tensors: read, never write."""

    def task_start(self, params: Sequence[Tensor]) -> None: ...

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None: ...

    def after_step(self, params: Sequence[Tensor]) -> None: ...

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None: ...


class Observer:
    """A step observer whose hooks do nothing: subclass and override the events you need."""

    def task_start(self, params: Sequence[Tensor]) -> None:
        pass

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        pass

    def after_step(self, params: Sequence[Tensor]) -> None:
        pass

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None:
        pass


def _loss_value(loss: Tensor | float | None) -> Tensor | None:
    """Losses are detached: the meta-gradient never carries the task graph (docs/leap.md §7, defect #3)."""
    if loss is None:
        return None
    if isinstance(loss, Tensor):
        return loss.detach().reshape(())
    return torch.tensor(float(loss))


class _HookedWatch:
    """What both watches share: the optimiser's step hooks (``_pre``/``_post``) attached while the watch is
    entered, removed on exit, and a task closed without its final loss when the loop ends without ``finish``."""

    optimizer: torch.optim.Optimizer
    _handles: list
    _finished: bool

    def _attach(self) -> None:
        self._handles = [self.optimizer.register_step_pre_hook(self._pre),
                         self.optimizer.register_step_post_hook(self._post)]

    def __exit__(self, exc_type, exc, tb) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if exc_type is None and not self._finished:
            self.finish(None)


class OptimizerWatch(_HookedWatch):
    """Attaches observers to one optimiser for the duration of one task's inner loop.

    Use as a context manager; hooks are removed on exit. ``params`` are the tensors the observers track
    (e.g. only the encoder for Leap on Atari); they must be tensors the optimiser steps.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
                 observers: Sequence[StepObserver]) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self.observers = list(observers)
        self._loss: Tensor | None = None
        self._handles: list = []
        self._finished = False
        self.steps = 0

    # -- task loop API -----------------------------------------------------------------------------
    def report(self, loss: Tensor | float) -> None:
        """f(θ_i) of the step about to be taken (call after backward, before ``optimizer.step()``)."""
        self._loss = _loss_value(loss)

    def finish(self, final_loss: Tensor | float | None = None) -> None:
        """Close the task with f(θ_K); without it, objectives that need the final loss raise."""
        if self._finished:
            return
        self._finished = True
        loss = _loss_value(final_loss)
        for obs in self.observers:
            obs.task_end(self.params, loss)

    # -- hooks ---------------------------------------------------------------------------------------
    def _grads(self) -> list[Tensor]:
        # set_to_none=True leaves .grad None for a parameter that received no gradient this step.
        return [g if (g := p.grad) is not None else torch.zeros_like(p) for p in self.params]

    def _pre(self, optimizer, args, kwargs) -> None:
        loss, self._loss = self._loss, None
        grads = self._grads()
        for obs in self.observers:
            obs.before_step(self.params, grads, loss)

    def _post(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        for obs in self.observers:
            obs.after_step(self.params)

    def __enter__(self) -> "OptimizerWatch":
        for obs in self.observers:
            obs.task_start(self.params)
        if self.observers:
            self._attach()
        return self



class StackedWatch(_HookedWatch):
    """One optimiser stepping several tasks at once: the parameters of K tasks stacked along a leading
    dimension (the agents of one stacked model, agents/batched_a2c.py). Task k's observers see task k alone —
    its slice of θ, of the clipped gradient and of the (K,) losses — at the same points as an
    :class:`OptimizerWatch` on task k's own optimiser would, so every method's maths, accumulator and
    finiteness check treats each agent as its own task.

    ``view(i, tensor, k)`` is task k's part of ``tensor`` (the i-th stacked parameter or its gradient), e.g.
    ``tensor[k]``; ``observers[k]`` are task k's observers. Losses come as (K,) tensors (``report``,
    ``finish``); tasks end in order k = 0, 1, … (the order their meta-gradients are summed)."""

    def __init__(self, optimizer: torch.optim.Optimizer, stacked: Sequence[Tensor], view,
                 observers: Sequence[Sequence[StepObserver]]) -> None:
        self.optimizer = optimizer
        self.stacked = list(stacked)
        self.view = view
        self.observers = [list(o) for o in observers]
        self.params = [[view(i, p.detach(), k) for i, p in enumerate(self.stacked)] for k in range(len(self.observers))]
        self._loss: Tensor | None = None
        self._handles: list = []
        self._finished = False
        self.steps = 0

    def report(self, losses: Tensor) -> None:
        self._loss = losses.detach().reshape(-1)

    def finish(self, final_losses: Tensor | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        for k, observers in enumerate(self.observers):
            loss = None if final_losses is None else final_losses.detach().reshape(-1)[k].reshape(())
            for obs in observers:
                obs.task_end(self.params[k], loss)

    def _pre(self, optimizer, args, kwargs) -> None:
        losses, self._loss = self._loss, None
        for k, observers in enumerate(self.observers):
            grads = [self.view(i, g, k) if (g := p.grad) is not None else torch.zeros_like(self.params[k][i])
                     for i, p in enumerate(self.stacked)]
            loss = None if losses is None else losses[k].reshape(())
            for obs in observers:
                obs.before_step(self.params[k], grads, loss)

    def _post(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        for k, observers in enumerate(self.observers):
            for obs in observers:
                obs.after_step(self.params[k])

    def __enter__(self) -> "StackedWatch":
        for k, observers in enumerate(self.observers):
            for obs in observers:
                obs.task_start(self.params[k])
        self._attach()
        return self



class NullWatch:
    """The watch used when no meta-learner is attached (evaluation, plain training)."""

    steps = 0

    def report(self, loss: Tensor | float) -> None:
        pass

    def finish(self, final_loss: Tensor | float | None = None) -> None:
        pass

    def __enter__(self) -> "NullWatch":
        return self

    def __exit__(self, *exc) -> None:
        pass


NULL_WATCH = NullWatch()
