"""What the fused training unrolls (agents.warp_rnn_fused, agents.plastic_rnn_fused) share: the workspace a
model keeps for them, the step bookkeeping and the one autograd node whose backward is the unroll's own BPTT.

A subclass records a whole episode batch without autograd (``step``, writing into its workspace), says where
the recorded hidden states are (``hidden``) and back-propagates through time by hand (``backward``).

Layouts (docs/architecture.md, "Stacked agents"): an unroll runs either one model, whose step tensors lead with
(B,) — B sequences — or S seed-stacked models (agents.seed_batched: every parameter [S, ...]), lead (S, B).
One seed is not the S = 1 stack (a stack of one sums in another order, and single-seed runs are reference
results kept bit for bit), so each case keeps its own kernels: :class:`OneModel` and :class:`StackedSeeds` say
how, and :func:`layout_of` picks one in the unroll's constructor from the parameters' rank. The unrolls' maths
is then written once, over ``layout.lead``, with no seed-count condition.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class WholeModel:
    """The one part of a single model's tensors: all of them."""

    @staticmethod
    def own(x: Tensor) -> Tensor:
        """This part of a per-model tensor (a parameter, a scratch buffer): all of it."""
        return x

    @staticmethod
    def steps(x: Tensor) -> Tensor:
        """This part of a (T, ·) buffer: all of it."""
        return x


class OneSeed:
    """Seed k's part of a seed-stacked unroll's tensors."""

    def __init__(self, k: int) -> None:
        self.k = k

    def own(self, x: Tensor) -> Tensor:
        """Seed k's part of a per-seed tensor [S, ...]."""
        return x[self.k]

    def steps(self, x: Tensor) -> Tensor:
        """Seed k's part of a (T, S, ·) buffer."""
        return x[:, self.k]


class OneModel:
    """One model: step tensors (B, ·), products mm / addmm, buffers (n, B, ·)."""

    mm = staticmethod(torch.mm)        # a @ b over the lead
    addmm = staticmethod(torch.addmm)  # c + a @ b over the lead

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.lead: tuple[int, ...] = (batch,)
        self.parts: tuple[WholeModel | OneSeed, ...] = (WholeModel(),)  # what a per-model loop runs over

    def buffer(self, n: int, *shape: int, dtype: torch.dtype | None = None, seed_major: bool = True) -> Tensor:
        """An (n, *lead, *shape) buffer."""
        return torch.empty(n, self.batch, *shape, dtype=dtype)

    def over_batch(self, x: Tensor) -> Tensor:
        """A per-model tensor (a bias, α, η) made to broadcast over the lead's B sequences: as it is."""
        return x

    def prepare(self, m: Tensor) -> Tensor:
        """A matrix operand of the per-step products, as it is."""
        return m

    def rows(self, x: Tensor) -> Tensor:
        """(T, B, F) → the model's T·B rows (T·B, F)."""
        return x.reshape(-1, x.shape[-1])

    def row_sum(self, x: Tensor) -> Tensor:
        """Σ over the steps and sequences of a (T, B, F) buffer: (F,)."""
        return x.sum((0, 1))

    def total(self, x: Tensor) -> Tensor:
        """Σ over the steps and sequences of a (T, B) buffer: (1,)."""
        return x.sum().view(1)

    def weight_grad(self, a: Tensor, b: Tensor) -> Tensor:
        """Σ_rows aᵀ b over all T·B rows: one product."""
        return self.rows(a).t() @ self.rows(b)

    seed_weight_grads = weight_grad  # one model: the same product


class StackedSeeds(OneModel):
    """S seed-stacked models: step tensors (S, B, ·), products bmm / baddbmm, buffers (n, S, B, ·). It takes
    only OneModel's interface (every method is its own)."""

    mm = staticmethod(torch.bmm)
    addmm = staticmethod(torch.baddbmm)

    def __init__(self, seeds: int, batch: int) -> None:
        self.seeds, self.batch = seeds, batch
        self.lead = (seeds, batch)
        self.parts = tuple(OneSeed(k) for k in range(seeds))  # seed by seed

    def buffer(self, n: int, *shape: int, dtype: torch.dtype | None = None, seed_major: bool = True) -> Tensor:
        """An (n, S, B, *shape) buffer. ``seed_major`` (for rows that enter a weight product): stored (S, n, B, ·),
        so a seed's rows over all n steps are one contiguous block that the weight products take without
        copying; else one block per step (what a batched product writes at each step)."""
        if seed_major:
            return torch.empty(self.seeds, n, self.batch, *shape, dtype=dtype).transpose(0, 1)
        return torch.empty(n, self.seeds, self.batch, *shape, dtype=dtype)

    def over_batch(self, x: Tensor) -> Tensor:
        """A per-seed tensor [S, ...] as [S, 1, ...]: it broadcasts over the B sequences of its seed."""
        return x.unsqueeze(1)

    def prepare(self, m: Tensor) -> Tensor:
        """A matrix operand of the per-step products, contiguous: bmm copies a strided one at every call."""
        return m.contiguous()

    def rows(self, x: Tensor) -> Tensor:
        """(T, S, B, F) → each seed's T·B rows (S, T·B, F) (a view of seed-major storage)."""
        return x.transpose(0, 1).reshape(self.seeds, -1, x.shape[-1])

    def row_sum(self, x: Tensor) -> Tensor:
        """Σ over the steps and sequences of a (T, S, B, F) buffer, per seed: (S, F)."""
        return self.rows(x).sum(1)

    def total(self, x: Tensor) -> Tensor:
        """Σ over the steps and sequences of a (T, S, B) buffer, per seed: (S,)."""
        return x.sum((0, 2))

    def weight_grad(self, a: Tensor, b: Tensor) -> Tensor:
        """Σ_rows aᵀ b over each seed's T·B rows: one batched product (S, ·, ·)."""
        return torch.bmm(self.rows(a).mT, self.rows(b))

    def seed_weight_grads(self, a: Tensor, b: Tensor) -> Tensor:
        """Σ_rows aᵀ b over each seed's T·B rows: S products, one per seed, stacked (S, ·, ·)."""
        ra, rb = self.rows(a), self.rows(b)
        return torch.stack([ra[k].t() @ rb[k] for k in range(self.seeds)])


def layout_of(weight: Tensor, batch: int) -> OneModel:
    """The layout of an unroll over ``batch`` sequences of the model owning ``weight``, a matrix parameter:
    (·, ·) one model, (S, ·, ·) S stacked seeds. The one place where an unroll asks for the seed count."""
    return StackedSeeds(weight.shape[0], batch) if weight.dim() == 3 else OneModel(batch)


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
