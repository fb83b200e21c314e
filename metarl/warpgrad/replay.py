"""The offline replay buffer (Algorithm 2): a task's stored trajectory points and their recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..functional import laid_out
from .inner import InnerSGD, SGDRule
from .observers import PointSelector

if TYPE_CHECKING:
    from .learner import WarpGrad


class ReplayPoint(NamedTuple):
    index: int                           # k: the step the point was taken before (K for θ_K)
    theta: Tensor                        # flat θ_k (storage dtype)
    momentum: Tensor | None              # flat momentum buffers present before step k
    has_momentum: tuple[bool, ...]       # which parameters had a buffer
    buffers: dict[str, Tensor]           # model buffers at θ_k (BN running statistics)
    rules: tuple[SGDRule, ...]


class Trajectory:
    """One task's stored points plus what replaying them needs."""

    def __init__(self, task: Any, model: nn.Module, names: list[str], params: Sequence[Tensor]) -> None:
        self.task, self.model, self.names = task, model, names
        self.shapes = [p.shape for p in params]
        self.strides = [p.stride() for p in params]      # memory layouts (e.g. channels_last), see unpack
        self.numels = [p.numel() for p in params]
        self.dtypes = [p.dtype for p in params]
        self.device = params[0].device if params else torch.device("cpu")
        self.points: list[ReplayPoint] = []
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)   # on device: no sync per point
        self.init_grad: list[Tensor] | None = None

    def unpack(self, flat: Tensor, present: Sequence[bool] | None = None) -> list[Tensor | None]:
        present = present or [True] * len(self.numels)
        sizes = [n for n, keep in zip(self.numels, present) if keep]
        chunks = iter(flat.split(sizes)) if sizes else iter(())
        out: list[Tensor | None] = []
        for keep, shape, stride, dtype in zip(present, self.shapes, self.strides, self.dtypes):
            out.append(laid_out(next(chunks).to(self.device, dtype).reshape(shape), stride) if keep else None)
        return out


def flat(tensors: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(device, dtype) for t in tensors])


class Recorder(PointSelector):
    """Algorithm 2: store the selected θ_k with the model buffers and the momentum buffers before step k."""

    def __init__(self, wg: "WarpGrad", trajectory: Trajectory, inner: InnerSGD) -> None:
        super().__init__(wg)
        self.trajectory, self.inner = trajectory, inner
        self._rules: tuple[SGDRule, ...] | None = None

    def visit(self, params, k) -> None:
        wg, traj = self.wg, self.trajectory
        device = torch.device(wg.config.replay_device) if wg.config.replay_device else traj.device
        dtype = torch.float16 if wg.config.fp16 else _common_dtype(traj.dtypes)
        theta = flat(params, dtype, device)
        finite = theta.isfinite().all()
        moms = self.inner.momentum()
        has = tuple(m is not None for m in moms)
        mom = flat([m for m in moms if m is not None], dtype, device) if any(has) else None
        if mom is not None:
            finite = finite & mom.isfinite().all()
        buffers = {}
        for name, b in self.model_buffers():
            keep = b.detach().to(device, torch.float16 if wg.config.fp16 and b.is_floating_point() else b.dtype)
            buffers[name] = keep.clone() if keep.data_ptr() == b.data_ptr() else keep
        rules = tuple(self.inner.rules())
        if rules == self._rules:
            rules = self._rules          # share one tuple across points while the rule is unchanged
        self._rules = rules
        traj.finite = traj.finite & finite.to(traj.finite.device)
        traj.points.append(ReplayPoint(k, theta, mom, has, buffers, rules))

    def model_buffers(self):
        return self.trajectory.model.named_buffers()


def _common_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    out = dtypes[0] if dtypes else torch.get_default_dtype()
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out
