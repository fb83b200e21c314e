"""What the fused training unrolls (agents.warp_rnn_fused, agents.plastic_rnn_fused) share: the workspace a
model keeps for them, the step bookkeeping and the one autograd node whose backward is the unroll's own BPTT.

A subclass records a whole episode batch without autograd (``step``, writing into its workspace), says where
the recorded hidden states are (``hidden``) and back-propagates through time by hand (``backward``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def stacked_mm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b for matrices (mm) or seed-stacked matrices (bmm)."""
    return torch.mm(a, b, out=out) if a.dim() == 2 else torch.bmm(a, b, out=out)


def stacked_addmm(c: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """c + a @ b for matrices (addmm) or seed-stacked matrices (baddbmm)."""
    return torch.addmm(c, a, b, out=out) if a.dim() == 2 else torch.baddbmm(c, a, b, out=out)


class WorkspaceSlot:
    """Where a model keeps its reusable workspace (Warp-RNN ≈ 115 MB at B = 30, T = 200; a plastic RNN
    4·T·B·H² bytes per trace and seed). Not model state: it deep-copies and pickles as an empty slot, so
    copying a model does not copy the buffers."""

    def __init__(self) -> None:
        self.workspace: Any = None

    def __deepcopy__(self, memo: dict) -> "WorkspaceSlot":
        return WorkspaceSlot()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.workspace = None


class FusedUnroll:
    """One recorded unroll of ``T`` steps: subclasses set ``T`` and ``params`` (what the backward returns
    gradients for), call :meth:`_take_workspace` once, count steps with :meth:`_next_step`, and implement
    ``hidden()`` (the stored h_1..h_T) and ``backward(dH, needs)``."""

    name = "fused"  # for error messages
    T: int
    params: tuple[Tensor, ...]
    ws: Any = None  # (also when building the workspace failed: release() and __del__ still work)

    @classmethod
    def where_supported(cls, model: Any, weight: Tensor, batch: int, steps: int) -> "FusedUnroll | None":
        """``cls(model, batch, steps)`` where the fused unrolls run — float32 on the CPU, judged by one of the
        model's weights — else None: the rollout then takes the model's autograd ``cell`` path."""
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            return None
        return cls(model, batch, steps)

    def _take_workspace(self, slot: WorkspaceSlot, key: tuple, build: Callable[[], Any]) -> Any:
        """The model's workspace for ``key``, or a new one (kept in the slot unless another unroll holds it)."""
        ws = slot.workspace
        if ws is None or ws.key != key or ws.in_use:
            ws = build()
            if slot.workspace is None or not slot.workspace.in_use:
                slot.workspace = ws
        ws.in_use = True
        self.ws = ws
        self.t = 0
        # The forward keeps detached views of the parameters: an in-place update before the backward would
        # go unnoticed (autograd through the cell would raise), so the backward checks their versions.
        self._versions = [p._version for p in self.params]
        return ws

    def release(self) -> None:
        if self.ws is not None:
            self.ws.in_use = False
            self.ws = None

    def __del__(self) -> None:
        self.release()

    def _next_step(self) -> Any:
        """The workspace, checking that a step is left."""
        if self.ws is None or self.t >= self.T:
            raise RuntimeError(f"unroll already has its {self.T} steps")
        return self.ws

    def _backward_workspace(self) -> Any:
        if self.ws is None:
            raise RuntimeError(f"a {self.name} unroll supports a single backward pass")
        if [p._version for p in self.params] != self._versions:
            self.release()
            raise RuntimeError(f"a parameter of a {self.name} unroll was modified in place between its steps "
                               "and its backward pass")
        return self.ws

    def finish(self) -> Tensor:
        """The recorded hidden states, differentiable w.r.t. ``params`` through one backward pass."""
        if self.t != self.T:
            raise RuntimeError(f"unroll has {self.t} of {self.T} steps")
        out = _BPTT.apply(self, *self.params)
        if not out.requires_grad:  # no backward will come (e.g. evaluation under no_grad)
            self.release()
        return out

    def hidden(self) -> Tensor:
        raise NotImplementedError

    def backward(self, dH: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
        raise NotImplementedError


class _BPTT(torch.autograd.Function):
    """One autograd node for a recorded unroll: forward returns the stored h_1..h_T, backward is the unroll's."""

    @staticmethod
    def forward(ctx: Any, unroll: FusedUnroll, *params: Tensor) -> Tensor:
        ctx.unroll = unroll
        return unroll.hidden().clone()

    @staticmethod
    def backward(ctx: Any, dH: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *ctx.unroll.backward(dH.contiguous(), ctx.needs_input_grad[1:]))
