"""Fused unroll of Warp-RNN for training rollouts: a graph-free forward plus one hand-written BPTT node.

Why: with 30 mazes and 100 units the per-step matrices are tiny, so a step-by-step autograd unroll spends
about as long creating and running ~35 graph nodes per step as on arithmetic. Here the forward pass of a
whole episode batch runs without autograd, writing every intermediate into preallocated (T, B, ·) buffers;
``finish()`` then attaches one autograd node whose backward does back-propagation through time by hand:
per step only the recurrent (input-gradient) products, then one large matrix product per weight over all
T × B rows. Local derivatives are computed for all steps at once before the backward loop. The buffers are
kept on the model and reused by the next unroll (fresh 10 MB allocations page-fault on every rollout).

The maths is ``WarpRNN.cell``'s (agents.recurrent), which stays the reference; the test suite checks this
path against autograd through ``WarpRNN.cell``. tanh of the wide gate vectors is evaluated as 2σ(2y) − 1
because this torch build's CPU tanh kernel is several times slower than its sigmoid kernel.

Notation (per step t; nx = obs size, H = hidden, K = warp hidden, G = nx + 4H gates):
    u_t = [x_t, h_{t−1}, z_{t−1}]                        warp-LSTM input and recurrent state, one row
    a_t = u_t Aᵀ + a_b,  (i, f, g, o) = (σ, σ, tanh, σ)(a_t),  c_t = f c_{t−1} + i g,  z_t = o tanh(c_t)
    p_t = tanh(P z_t) = [p_x, p_h, p_i, p_hh, p_b]
    m1 = W_ih (x ⊙ p_x),  m2 = W_hh (h_{t−1} ⊙ p_h),  h_t = tanh(m1 ⊙ p_i + m2 ⊙ p_hh + b ⊙ p_b)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from agents.recurrent import WarpRNN


class _Workspace:
    """Every (T, B, ·) buffer of one unroll and its backward pass."""

    def __init__(self, T: int, B: int, nx: int, H: int, K: int) -> None:
        G = nx + 4 * H
        self.key = (T, B, nx, H, K)
        self.in_use = False
        e = torch.empty
        # Forward. Row t of U is [x_t, h_{t−1}, z_{t−1}]; h_t and z_t are written into row t + 1.
        self.U = e(T + 1, B, nx + H + K)
        self.S = e(T, B, 4 * K)  # LSTM gates (i, f, g, o), activated
        self.C = e(T + 1, B, K)  # C[t + 1] = c_t
        self.TC = e(T, B, K)  # tanh(c_t)
        self.PG = e(T, B, G)  # warp gates p_t
        self.XS = e(T, B, nx)  # x ⊙ p_x
        self.HS = e(T, B, H)  # h_{t−1} ⊙ p_h
        self.MMB = e(T, B, 3, H)  # (m1, m2, b): what p_i, p_hh, p_b multiply
        # Backward: local derivatives, then per-step gradients kept for the weight products.
        self.Dh = e(T, B, H)
        self.Dp = e(T, B, G)
        self.SD = e(T, B, 4 * K)
        self.OD = e(T, B, K)
        self.GCI = e(T, B, 3, K)
        self.MMBD = e(T, B, 3, H)
        self.XHD = e(T, B, nx + H)
        self.OSD = e(T, B, K)
        self.DPRE = e(T, B, H)
        self.DM1 = e(T, B, H)
        self.DM2 = e(T, B, H)
        self.DQ = e(T, B, G)
        self.DA = e(T, B, 4 * K)


class WorkspaceSlot:
    """Where a model keeps its reusable workspace (~115 MB at B = 30, T = 200). Not model state: it
    deep-copies and pickles as an empty slot, so copying a model does not copy the buffers."""

    def __init__(self) -> None:
        self.workspace: _Workspace | None = None

    def __deepcopy__(self, memo: dict) -> "WorkspaceSlot":
        return WorkspaceSlot()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.workspace = None


class WarpRNNUnroll:
    """Record one Warp-RNN unroll of ``steps`` steps over ``batch`` sequences from a zero state.

    ``step(x)`` returns h_t (a view into the buffers: read it, do not keep or modify it). ``finish()``
    returns the (T, B, H) hidden states, differentiable w.r.t. the model's task and warp parameters, for one
    backward pass. The parameters must not change between the first ``step`` and that backward pass.
    """

    def __init__(self, model: "WarpRNN", batch: int, steps: int) -> None:
        c = model.config
        nx, H, K = c.obs_dim, c.hidden_size, c.warp_hidden_size
        self.nx, self.H, self.K, self.B, self.T, self.G = nx, H, K, batch, steps, nx + 4 * H
        lstm, proj = model.warp.lstm, model.warp.projection
        self.params = (
            model.weight_ih, model.weight_hh, model.bias,
            lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh, proj.weight,
        )  # fmt: skip
        with torch.no_grad():
            self.w_ih = model.weight_ih.detach()
            self.w_hh = model.weight_hh.detach()
            self.b = model.bias.detach()
            self.A = torch.cat((lstm.weight_ih, lstm.weight_hh), 1)  # (4K, nx + H + K)
            self.A_rec = self.A[:, nx:]  # the columns acting on [h_{t−1}, z_{t−1}]
            self.P = proj.weight.detach()  # (G, K)
            # σ-form: one sigmoid over all four LSTM gates, the g rows scaled by 2 (tanh a = 2σ(2a) − 1);
            # the projection likewise.
            scale = torch.ones(4 * K, 1)
            scale[2 * K : 3 * K] = 2.0
            self.A_fwd_t = (self.A * scale).t()
            self.a_bias_fwd = (lstm.bias_ih + lstm.bias_hh) * scale.squeeze(1)
            self.P2_t = (2.0 * self.P).t()
            self.w_ih_t = self.w_ih.t()
            self.w_hh_t = self.w_hh.t()
        # Reuse the model's workspace unless another unroll still holds it.
        slot: WorkspaceSlot = model._fused_slot
        ws = slot.workspace
        key = (steps, batch, nx, H, K)
        if ws is None or ws.key != key or ws.in_use:
            ws = _Workspace(*key)
            if slot.workspace is None or not slot.workspace.in_use:
                slot.workspace = ws
        ws.in_use = True
        self.ws: _Workspace | None = ws
        ws.U[0, :, nx:] = 0.0  # h_0 = z_0 = 0
        ws.C[0] = 0.0
        ws.MMB[:, :, 2] = self.b
        self.t = 0

    def release(self) -> None:
        if self.ws is not None:
            self.ws.in_use = False
            self.ws = None

    def __del__(self) -> None:
        self.release()

    def step(self, x: Tensor) -> Tensor:
        t, nx, H, K = self.t, self.nx, self.H, self.K
        ws = self.ws
        if ws is None or t >= self.T:
            raise RuntimeError(f"unroll already has its {self.T} steps")
        u, nxt = ws.U[t], ws.U[t + 1]
        u[:, :nx].copy_(x)
        s = torch.addmm(self.a_bias_fwd, u, self.A_fwd_t, out=ws.S[t]).sigmoid_()
        i, f, g, o = s.split(K, 1)
        g.mul_(2).sub_(1)
        c = torch.mul(f, ws.C[t], out=ws.C[t + 1]).addcmul_(i, g)
        z = torch.mul(o, torch.tanh(c, out=ws.TC[t]), out=nxt[:, nx + H :])
        p = torch.mm(z, self.P2_t, out=ws.PG[t]).sigmoid_().mul_(2).sub_(1)
        p_x, p_h, p_i, p_hh, p_b = p.split((nx, H, H, H, H), 1)
        mmb = ws.MMB[t]
        m1 = torch.mm(torch.mul(u[:, :nx], p_x, out=ws.XS[t]), self.w_ih_t, out=mmb[:, 0])
        m2 = torch.mm(torch.mul(u[:, nx : nx + H], p_h, out=ws.HS[t]), self.w_hh_t, out=mmb[:, 1])
        h = torch.mul(self.b, p_b, out=nxt[:, nx : nx + H]).addcmul_(m1, p_i).addcmul_(m2, p_hh).tanh_()
        self.t = t + 1
        return h

    def finish(self) -> Tensor:
        if self.t != self.T:
            raise RuntimeError(f"unroll has {self.t} of {self.T} steps")
        out = _WarpRNNBPTT.apply(self, *self.params)
        if not out.requires_grad:  # no backward will come (e.g. evaluation under no_grad)
            self.release()
        return out

    # ------------------------------------------------------------------------------------------------
    def backward(self, dH: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
        ws = self.ws
        if ws is None:
            raise RuntimeError("a fused Warp-RNN unroll supports a single backward pass")
        T, B, nx, H, K, G = self.T, self.B, self.nx, self.H, self.K, self.G
        U, S, PG = ws.U, ws.S, ws.PG
        I, Fg, Gc, O = S.split(K, -1)
        # Local derivatives for all steps at once, in place in the workspace.
        Dh = torch.mul(U[1:, :, nx : nx + H], U[1:, :, nx : nx + H], out=ws.Dh).neg_().add_(1)  # tanh' (base)
        Dp = torch.mul(PG, PG, out=ws.Dp).neg_().add_(1)  # tanh' (warp gates)
        SD = torch.mul(S, S, out=ws.SD).neg_().add_(S)  # σ' = s − s² for i, f, o ...
        SD[..., 2 * K : 3 * K].fill_(1).addcmul_(Gc, Gc, value=-1)  # tanh' for g
        torch.mul(ws.TC, ws.TC, out=ws.OD).neg_().add_(1).mul_(O)  # ∂z/∂c = o (1 − tanh² c)
        torch.mul(ws.TC, SD[..., 3 * K :], out=ws.OSD)  # ∂z/∂a_o
        torch.stack((Gc, ws.C[:-1], I), 2, out=ws.GCI).mul_(SD[..., : 3 * K].view(T, B, 3, K))  # ∂c/∂a_{i,f,g}
        torch.mul(ws.MMB, Dp[..., nx + H :].view(T, B, 3, H), out=ws.MMBD)  # ∂pre/∂q_{i,hh,b} per unit ∂L/∂pre
        torch.mul(U[:-1, :, : nx + H], Dp[..., : nx + H], out=ws.XHD)  # ∂(x⊙p_x, h⊙p_h)/∂q_{x,h}
        P_i, P_hh, P_h = PG[..., nx + H : nx + 2 * H], PG[..., nx + 2 * H : nx + 3 * H], PG[..., nx : nx + H]
        DQ, DA = ws.DQ, ws.DA

        carry_h = torch.zeros(B, H)  # ∂L/∂h_t arriving from step t + 1
        carry_z = torch.zeros(B, K)  # ∂L/∂z_t from step t + 1
        carry_c = torch.zeros(B, K)  # ∂L/∂c_t from step t + 1
        for t in range(T - 1, -1, -1):
            dpre = torch.mul(dH[t] + carry_h, Dh[t], out=ws.DPRE[t])
            dm1 = torch.mul(dpre, P_i[t], out=ws.DM1[t])
            dm2 = torch.mul(dpre, P_hh[t], out=ws.DM2[t])
            dq = DQ[t]
            xhd = ws.XHD[t]
            torch.mul(torch.mm(dm1, self.w_ih), xhd[:, :nx], out=dq[:, :nx])
            dhs = torch.mm(dm2, self.w_hh)
            torch.mul(dhs, xhd[:, nx:], out=dq[:, nx : nx + H])
            torch.mul(ws.MMBD[t], dpre.unsqueeze(1), out=dq[:, nx + H :].view(B, 3, H))
            dz = torch.addmm(carry_z, dq, self.P)
            dc = torch.addcmul(carry_c, dz, ws.OD[t])
            da = DA[t]
            torch.mul(ws.GCI[t], dc.unsqueeze(1), out=da[:, : 3 * K].view(B, 3, K))
            torch.mul(dz, ws.OSD[t], out=da[:, 3 * K :])
            carry_c = dc * Fg[t]
            du = torch.mm(da, self.A_rec)
            carry_h = torch.addcmul(du[:, :H], dhs, P_h[t])
            carry_z = du[:, H:]

        def flat(x: Tensor) -> Tensor:
            return x.reshape(T * B, x.shape[-1])

        grads: list[Tensor | None] = [None] * 8
        if needs[0]:
            grads[0] = flat(ws.DM1).t() @ flat(ws.XS)
        if needs[1]:
            grads[1] = flat(ws.DM2).t() @ flat(ws.HS)
        if needs[2]:
            grads[2] = (ws.DPRE * PG[..., nx + 3 * H :]).sum((0, 1))
        if any(needs[3:7]):
            dA = flat(DA).t() @ flat(U[:-1])
            d_bias = DA.sum((0, 1))
            grads[3], grads[4] = dA[:, : nx + H].contiguous(), dA[:, nx + H :].contiguous()
            grads[5], grads[6] = d_bias, d_bias.clone()
        if needs[7]:
            grads[7] = flat(DQ).t() @ flat(U[1:, :, nx + H :])
        self.release()
        return tuple(grads)


class _WarpRNNBPTT(torch.autograd.Function):
    """One autograd node for a recorded Warp-RNN unroll: forward returns the stored h_1..h_T."""

    @staticmethod
    def forward(ctx: Any, unroll: WarpRNNUnroll, *params: Tensor) -> Tensor:
        ctx.unroll = unroll
        return unroll.ws.U[1:, :, unroll.nx : unroll.nx + unroll.H].clone()

    @staticmethod
    def backward(ctx: Any, dH: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *ctx.unroll.backward(dH.contiguous(), ctx.needs_input_grad[1:]))
