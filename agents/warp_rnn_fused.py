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

Seeds as a batch dimension: a seed-batched Warp-RNN (agents.seed_batched) keeps every parameter stacked
along a leading seed dimension, [S, ...]; the same code then runs with a (S, B) lead instead of (B,) — every
matrix product becomes its batched form (bmm / baddbmm) and the buffers gain a seed axis after time,
(T, S, B, ·). The layout (agents.fused_unroll: ``OneModel`` or ``StackedSeeds``) holds these choices; a single
model takes exactly the calls it took before seeds were added.

Notation (per step t; nx = obs size, H = hidden, K = warp hidden, G = nx + 4H gates):
    u_t = [x_t, h_{t−1}, z_{t−1}]                        warp-LSTM input and recurrent state, one row
    a_t = u_t Aᵀ + a_b,  (i, f, g, o) = (σ, σ, tanh, σ)(a_t),  c_t = f c_{t−1} + i g,  z_t = o tanh(c_t)
    p_t = tanh(P z_t) = [p_x, p_h, p_i, p_hh, p_b]
    m1 = W_ih (x ⊙ p_x),  m2 = W_hh (h_{t−1} ⊙ p_h),  h_t = tanh(m1 ⊙ p_i + m2 ⊙ p_hh + b ⊙ p_b)

Warp-LSTM (``WarpLSTMUnroll``) warps an LSTM task cell the same way: the task pre-activation y_t = m1 ⊙ p_i +
m2 ⊙ p_hh + b ⊙ p_b is W = 4H wide (p_i, p_hh, p_b likewise; G = nx + H + 3W), and
(i, f, g, o) = (σ, σ, tanh, σ)(y_t),  c_t = f c_{t−1} + i g,  h_t = o tanh(c_t)  (``WarpLSTM.cell``). The two LSTM
cells (the warp's and the task's) share their forward and backward pieces, ``_lstm_local`` and ``_lstm_back``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from agents.fused_unroll import FusedUnroll, OneModel, layout_of

if TYPE_CHECKING:
    from agents.recurrent import WarpLSTM, WarpRNN


def _lstm_cell(s: Tensor, c_prev: Tensor, c_out: Tensor, tc_out: Tensor, h_out: Tensor) -> Tensor:
    """One LSTM cell step from its gates in σ-form, ``s`` = σ of the pre-activations with the g chunk doubled (tanh
    a = 2σ(2a) − 1; fixed here, in place): c_t = f c_{t−1} + i g into ``c_out``, tanh(c_t) into ``tc_out``,
    h_t = o tanh(c_t) into ``h_out``, which is returned."""
    i, f, g, o = s.split(s.shape[-1] // 4, -1)
    g.mul_(2).sub_(1)
    c = torch.mul(f, c_prev, out=c_out).addcmul_(i, g)
    return torch.mul(o, torch.tanh(c, out=tc_out), out=h_out)


def _lstm_local(S: Tensor, C: Tensor, TC: Tensor, SD: Tensor, OD: Tensor, OSD: Tensor, GCI: Tensor) -> None:
    """An LSTM cell's local derivatives for all T steps at once, in place: S the activated gates (i, f, g, o)
    (T, ·, 4K), C the cell states c_0 … c_T, TC = tanh(c_t). Into SD the gates' own derivatives (σ' = s − s², and
    tanh' for g), OD = ∂h/∂c = o (1 − tanh² c), OSD = ∂h/∂a_o and GCI = ∂c/∂a_{i,f,g} (T, ·, 3, K)."""
    K = S.shape[-1] // 4
    Ig, _, Gc, Og = S.split(K, -1)
    torch.mul(S, S, out=SD).neg_().add_(S)
    SD[..., 2 * K : 3 * K].fill_(1).addcmul_(Gc, Gc, value=-1)
    torch.mul(TC, TC, out=OD).neg_().add_(1).mul_(Og)
    torch.mul(TC, SD[..., 3 * K :], out=OSD)
    torch.stack((Gc, C[:-1], Ig), -2, out=GCI).mul_(SD[..., : 3 * K].view(*GCI.shape))


def _lstm_back(dh: Tensor, carry_c: Tensor, OD: Tensor, GCI: Tensor, OSD: Tensor, F: Tensor, da: Tensor) -> Tensor:
    """One step of an LSTM cell's BPTT: from ∂L/∂h_t and ∂L/∂c_t arriving from step t + 1 (``carry_c``), the
    gate pre-activations' gradient into ``da``; returns ∂L/∂c_{t−1}. Operands are step t's rows of
    :func:`_lstm_local`'s outputs and of the forget gate F."""
    K = dh.shape[-1]
    dc = torch.addcmul(carry_c, dh, OD)
    torch.mul(GCI, dc.unsqueeze(-2), out=da[..., : 3 * K].view(*GCI.shape))
    torch.mul(dh, OSD, out=da[..., 3 * K :])
    return dc * F


class _Workspace:
    """Every (T, B, ·) buffer — (T, S, B, ·) for S stacked seeds — of one unroll and its backward pass."""

    def __init__(self, T: int, nx: int, H: int, K: int, layout: OneModel, W: int, lstm: bool) -> None:
        G = nx + H + 3 * W
        self.key = (T, nx, H, K, layout.lead, W, lstm)
        self.in_use = False

        e = layout.buffer  # seed_major=False: written by a batched product at each step, one block per step
        # Forward. Row t of U is [x_t, h_{t−1}, z_{t−1}]; h_t and z_t are written into row t + 1.
        self.U = e(T + 1, nx + H + K)
        self.S = e(T, 4 * K, seed_major=False)  # LSTM gates (i, f, g, o), activated
        self.C = e(T + 1, K)  # C[t + 1] = c_t
        self.TC = e(T, K)  # tanh(c_t)
        self.PG = e(T, G, seed_major=False)  # warp gates p_t
        self.XS = e(T, nx)  # x ⊙ p_x
        self.HS = e(T, H)  # h_{t−1} ⊙ p_h
        self.MMB = e(T, 3, W, seed_major=False)  # (m1, m2, b): what p_i, p_hh, p_b multiply
        # Backward: local derivatives, then per-step gradients kept for the weight products.
        self.Dh = None if lstm else e(T, H)  # tanh' of the RNN task cell
        self.Dp = e(T, G)
        self.SD = e(T, 4 * K)
        self.OD = e(T, K)
        self.GCI = e(T, 3, K)
        self.MMBD = e(T, 3, W)
        self.XHD = e(T, nx + H)
        self.OSD = e(T, K)
        self.DPRE = e(T, W)
        self.DM1 = e(T, W)
        self.DM2 = e(T, W)
        self.DQ = e(T, G)
        self.DA = e(T, 4 * K)
        if lstm:  # the task LSTM's activated gates, cell states c_t (row t + 1), tanh(c_t); then their derivatives
            self.TS = e(T, W, seed_major=False)
            self.TCC = e(T + 1, H)
            self.TTC = e(T, H)
            self.TSD = e(T, W)
            self.TOD = e(T, H)
            self.TOSD = e(T, H)
            self.TGCI = e(T, 3, H)


class WarpRNNUnroll(FusedUnroll):
    """Record one Warp-RNN unroll of ``steps`` steps over ``batch`` sequences from a zero state.

    ``step(x)`` returns h_t (a view into the buffers: read it, do not keep or modify it). ``finish()``
    returns the (T, B, H) hidden states, differentiable w.r.t. the model's task and warp parameters, for one
    backward pass. The parameters must not change between the first ``step`` and that backward pass.
    With S seeds stacked (parameters [S, ...]) x is (S, B, nx), h_t (S, B, H) and ``finish()`` (T, S, B, H).
    """

    name = "fused Warp-RNN"
    lstm = False  # the task cell: tanh RNN (here) or LSTM (WarpLSTMUnroll)

    def __init__(self, model: "WarpRNN | WarpLSTM", batch: int, steps: int) -> None:
        c = model.config
        nx, H, K = c.obs_dim, c.hidden_size, c.warp_hidden_size
        W = model.weight_hh.shape[-2]  # the task pre-activation's width: H, or 4H for the LSTM's gates
        self.nx, self.H, self.K, self.W, self.B, self.T, self.G = nx, H, K, W, batch, steps, nx + H + 3 * W
        self.layout = layout = layout_of(model.weight_hh, batch)
        self.lead = layout.lead
        self.mm, self.addmm = layout.mm, layout.addmm
        lstm, proj = model.warp.lstm, model.warp.projection
        self.params = (
            model.weight_ih, model.weight_hh, model.bias,
            lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh, proj.weight,
        )  # fmt: skip
        with torch.no_grad():
            self.w_ih = model.weight_ih.detach()
            self.w_hh = model.weight_hh.detach()
            self.b = layout.over_batch(model.bias.detach())  # per seed: broadcast over its B sequences
            self.A = torch.cat((lstm.weight_ih, lstm.weight_hh), -1)  # (4K, nx + H + K)
            self.A_rec = layout.prepare(self.A[..., nx:])  # the columns acting on [h_{t−1}, z_{t−1}]
            self.P = proj.weight.detach()  # (G, K)
            # σ-form: one sigmoid over all four LSTM gates, the g rows scaled by 2 (tanh a = 2σ(2a) − 1);
            # the projection likewise.
            scale = torch.ones(4 * K, 1)
            scale[2 * K : 3 * K] = 2.0
            self.A_fwd_t = (self.A * scale).mT
            self.a_bias_fwd = layout.over_batch((lstm.bias_ih + lstm.bias_hh) * scale.squeeze(1))
            self.P2_t = (2.0 * self.P).mT
            self.w_ih_t = self.w_ih.mT
            self.w_hh_t = self.w_hh.mT
        # Reuse the model's workspace unless another unroll still holds it.
        ws = self._take_workspace(model.fused_slot, (steps, nx, H, K, layout.lead, W, self.lstm),
                                  lambda: _Workspace(steps, nx, H, K, layout, W, self.lstm))
        ws.U[0, ..., nx:] = 0.0  # h_0 = z_0 = 0
        ws.C[0] = 0.0
        if self.lstm:
            ws.TCC[0] = 0.0  # the task cell's c_0
        ws.MMB[..., 2, :] = self.b

    def step(self, x: Tensor) -> Tensor:
        t, nx, H, W = self.t, self.nx, self.H, self.W
        ws = self._next_step()
        u, nxt = ws.U[t], ws.U[t + 1]
        u[..., :nx].copy_(x)
        s = self.addmm(self.a_bias_fwd, u, self.A_fwd_t, out=ws.S[t]).sigmoid_()
        z = _lstm_cell(s, ws.C[t], ws.C[t + 1], ws.TC[t], nxt[..., nx + H :])
        p = self.mm(z, self.P2_t, out=ws.PG[t]).sigmoid_().mul_(2).sub_(1)
        p_x, p_h, p_i, p_hh, p_b = p.split((nx, H, W, W, W), -1)
        mmb = ws.MMB[t]
        m1 = self.mm(torch.mul(u[..., :nx], p_x, out=ws.XS[t]), self.w_ih_t, out=mmb[..., 0, :])
        m2 = self.mm(torch.mul(u[..., nx : nx + H], p_h, out=ws.HS[t]), self.w_hh_t, out=mmb[..., 1, :])
        h_out = nxt[..., nx : nx + H]
        if self.lstm:  # the gates' pre-activation, then the cell in σ-form (the g chunk doubled)
            pre = torch.mul(self.b, p_b, out=ws.TS[t]).addcmul_(m1, p_i).addcmul_(m2, p_hh)
            pre[..., 2 * H : 3 * H].mul_(2)
            h = _lstm_cell(pre.sigmoid_(), ws.TCC[t], ws.TCC[t + 1], ws.TTC[t], h_out)
        else:
            h = torch.mul(self.b, p_b, out=h_out).addcmul_(m1, p_i).addcmul_(m2, p_hh).tanh_()
        self.t = t + 1
        return h

    def hidden(self) -> Tensor:
        return self.ws.U[1:, ..., self.nx : self.nx + self.H]

    # ------------------------------------------------------------------------------------------------
    def backward(self, dH: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
        ws = self._backward_workspace()
        T, nx, H, K, W = self.T, self.nx, self.H, self.K, self.W
        lead, layout, mm = self.lead, self.layout, self.mm
        U, S, PG = ws.U, ws.S, ws.PG
        Fg = S[..., K : 2 * K]  # the warp LSTM's forget gate
        # Local derivatives for all steps at once, in place in the workspace.
        if self.lstm:
            _lstm_local(ws.TS, ws.TCC, ws.TTC, ws.TSD, ws.TOD, ws.TOSD, ws.TGCI)  # the task LSTM's
            TF = ws.TS[..., H : 2 * H]
        else:
            Dh = torch.mul(U[1:, ..., nx : nx + H], U[1:, ..., nx : nx + H], out=ws.Dh).neg_().add_(1)  # tanh' (base)
        Dp = torch.mul(PG, PG, out=ws.Dp).neg_().add_(1)  # tanh' (warp gates)
        _lstm_local(S, ws.C, ws.TC, ws.SD, ws.OD, ws.OSD, ws.GCI)  # the warp LSTM's
        torch.mul(ws.MMB, Dp[..., nx + H :].view(T, *lead, 3, W), out=ws.MMBD)  # ∂pre/∂q_{i,hh,b} per unit ∂L/∂pre
        torch.mul(U[:-1, ..., : nx + H], Dp[..., : nx + H], out=ws.XHD)  # ∂(x⊙p_x, h⊙p_h)/∂q_{x,h}
        P_i, P_hh, P_h = PG[..., nx + H : nx + H + W], PG[..., nx + H + W : nx + H + 2 * W], PG[..., nx : nx + H]
        DQ, DA = ws.DQ, ws.DA

        carry_h = torch.zeros(*lead, H)  # ∂L/∂h_t arriving from step t + 1
        carry_z = torch.zeros(*lead, K)  # ∂L/∂z_t from step t + 1
        carry_c = torch.zeros(*lead, K)  # ∂L/∂c_t from step t + 1 (the warp LSTM's)
        carry_tc = torch.zeros(*lead, H) if self.lstm else None  # the task LSTM's
        for t in range(T - 1, -1, -1):
            if self.lstm:
                dpre = ws.DPRE[t]
                carry_tc = _lstm_back(dH[t] + carry_h, carry_tc, ws.TOD[t], ws.TGCI[t], ws.TOSD[t], TF[t], dpre)
            else:
                dpre = torch.mul(dH[t] + carry_h, Dh[t], out=ws.DPRE[t])
            dm1 = torch.mul(dpre, P_i[t], out=ws.DM1[t])
            dm2 = torch.mul(dpre, P_hh[t], out=ws.DM2[t])
            dq = DQ[t]
            xhd = ws.XHD[t]
            torch.mul(mm(dm1, self.w_ih), xhd[..., :nx], out=dq[..., :nx])
            dhs = mm(dm2, self.w_hh)
            torch.mul(dhs, xhd[..., nx:], out=dq[..., nx : nx + H])
            torch.mul(ws.MMBD[t], dpre.unsqueeze(-2), out=dq[..., nx + H :].view(*lead, 3, W))
            dz = self.addmm(carry_z, dq, self.P)
            da = DA[t]
            carry_c = _lstm_back(dz, carry_c, ws.OD[t], ws.GCI[t], ws.OSD[t], Fg[t], da)
            du = mm(da, self.A_rec)
            carry_h = torch.addcmul(du[..., :H], dhs, P_h[t])
            carry_z = du[..., H:]

        # Σ_rows aᵀ b over all T·B rows (each seed's own when stacked, as S large products)
        weight_grad, row_sum = layout.seed_weight_grads, layout.row_sum
        grads: list[Tensor | None] = [None] * 8
        if needs[0]:
            grads[0] = weight_grad(ws.DM1, ws.XS)
        if needs[1]:
            grads[1] = weight_grad(ws.DM2, ws.HS)
        if needs[2]:  # into a spent buffer (a fresh one, 24 MB seed-batched, page-faults on every unroll)
            grads[2] = row_sum(torch.mul(ws.DPRE, PG[..., nx + H + 2 * W :], out=ws.DM1))
        if any(needs[3:7]):
            dA = weight_grad(DA, U[:-1])
            d_bias = row_sum(DA)
            grads[3], grads[4] = dA[..., : nx + H].contiguous(), dA[..., nx + H :].contiguous()
            grads[5], grads[6] = d_bias, d_bias.clone()
        if needs[7]:
            grads[7] = weight_grad(DQ, U[1:, ..., nx + H :])
        self.release()
        return tuple(grads)


class WarpLSTMUnroll(WarpRNNUnroll):
    """:class:`WarpRNNUnroll` for Warp-LSTM (``WarpLSTM.cell``): the same warp on an LSTM task cell (module
    docstring); the parameters, shapes and contract are Warp-RNN's, with the gates 4H wide."""

    name = "fused Warp-LSTM"
    lstm = True
