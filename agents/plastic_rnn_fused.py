"""Fused unroll of Backpropamine's neuromodulated plastic RNNs (docs/protocols.md §4): a graph-free forward
plus one hand-written BPTT node, for simple and retroactive modulation.

Why: a plastic step is cheap arithmetic on a B × H × H Hebbian trace (and, retroactive, an eligibility
trace), but step by step through autograd every one of those elementwise operations allocates a fresh
B × H × H tensor and several of them are saved for the backward pass. Here, as for Warp-RNN
(agents.warp_rnn_fused, whose structure and conventions this module follows), the forward pass of a whole
episode batch runs without autograd into preallocated buffers that later unrolls reuse, and ``finish()``
attaches one autograd node whose backward does back-propagation through time by hand: per step the
trace-sized products and the recurrent vector products, then one product per weight over all T × B rows.

The maths is ``plastic_step``'s (agents.recurrent; ``ModulatedPlasticRNN.cell`` for the simple single
model), which stays the reference; tests/test_plastic_fused.py checks this path against autograd through it.

Notation (per step t = 1..T; Hebb_0 = E_0 = 0, h_0 = 0; products per sequence):
    P_t    = α ⊙ Hebb_{t−1}
    h_t    = tanh(W_in x_t + W h_{t−1} + P_t h_{t−1}),   M_t = tanh(w · h_t)
    Q_t    = Hebb_{t−1} + M_t h_t h_{t−1}ᵀ   (simple)   |   Hebb_{t−1} + M_t E_{t−1}   (retroactive)
    Hebb_t = clip(Q_t, −1, 1),   E_t = lerp(E_{t−1}, h_t h_{t−1}ᵀ, η)   (retroactive)

Backward, with G_t = ∂L/∂Hebb_t, D_t = ∂L/∂E_t (both 0 at t = T: the last step's traces reach no output)
and δ_t = ∂L/∂(pre-activation of h_t):
    ∂Q_t        = G_t ⊙ [−1 ≤ Q_t ≤ 1]                   (torch.clamp's convention: the bounds pass)
    ∂M_t        = h_tᵀ ∂Q_t h_{t−1}   |   ⟨∂Q_t, E_{t−1}⟩,       ∂(w · h_t) = ∂M_t (1 − M_t²)
    ∂h_t        = ∂L/∂h_t (heads) + [M_t ∂Q_t h_{t−1} | η D_t h_{t−1}] + ∂(w · h_t) w + carry from t + 1
    δ_t         = ∂h_t (1 − h_t²)
    carry to t−1 = Wᵀ δ_t + P_tᵀ δ_t + [M_t ∂Q_tᵀ h_t  |  η D_tᵀ h_t]
    G_{t−1}     = ∂Q_t + α ⊙ (δ_t h_{t−1}ᵀ),        D_{t−1} = (1 − η) D_t + M_t ∂Q_t
    ∂α          = Σ_t Hebb_{t−1} ⊙ (δ_t h_{t−1}ᵀ),    ∂η = Σ_t ⟨D_t, h_t h_{t−1}ᵀ − E_{t−1}⟩
    ∂[W_in, W]  = Σ_t δ_t [x_t, h_{t−1}]ᵀ,            ∂w = Σ_t ∂(w · h_t) h_t
(the sums run over the sequences too).

What is stored: the clip cannot be inverted, so the forward keeps every pre-clip Q_t (T × B × H × H): the
backward reads the clip mask off it and recomputes Hebb_{t−1} = clip(Q_{t−1}) from it; retroactive also keeps
every E_{t−1} (the lerp cannot be run backwards stably: it would divide by (1 − η) at every step). In float32
that is 4·T·B·H² bytes per trace: 240 MB simple, 480 MB retroactive at T = 200, B = 30, H = 100, times S for S
stacked seeds (2.4 / 4.8 GB at S = 10); the vector buffers are small. Autograd through the cell saves more per
step (the clip's input, α ⊙ Hebb and Hebb; retroactive also the traces and h_t h_{t−1}ᵀ), so the fused path
needs less memory, not more (measured: docs/RESULTS.md, "maze-iteration, plastic RNNs fused"). The mask is
applied by ATen's hardtanh backward with bounds one ulp beyond ±1, which passes exactly the values
torch.clamp's backward passes (−1 ≤ Q ≤ 1), in one pass.

Matrix-vector products are written as row-vector × matrix (``_vec_mat``): this torch build's bmm runs a
batch of (H × H)·(H × 1) products several times slower than the same products as (1 × H)·(H × H).

Seeds as a batch dimension: as for Warp-RNN, a seed-batched model (agents.seed_batched) keeps its parameters
stacked along a leading seed dimension [S, ...], the lead (B,) becomes (S, B) and the buffers (T, S, B, ·).
The vector work of a step stays batched over seeds; the trace work (forward updates, the backward loop)
runs seed by seed (``layout.parts``: the whole model once, or each seed), so that one seed's B × H × H traces
stay in cache — all S seeds' would not.
The code is dtype-generic (the tests run it in float64); the models offer it for float32 on the CPU only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from agents.fused_unroll import FusedUnroll, OneModel, OneSeed, WholeModel, layout_of

if TYPE_CHECKING:
    from agents.recurrent import ModulatedPlasticRNN

_clip_backward = torch.ops.aten.hardtanh_backward.grad_input


def _vec_mat(v: Tensor, m: Tensor, out: Tensor | None = None) -> Tensor:
    """vᵀ m per sequence: v (..., H), m (..., H, H) (its leading dims mergeable) → (N, 1, H), N sequences;
    ``out`` a contiguous (..., H)."""
    H = m.shape[-1]
    return torch.bmm(v.reshape(-1, 1, H), m.view(-1, H, H), out=None if out is None else out.view(-1, 1, H))


def _outer(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """a bᵀ per sequence into ``out`` (..., H, H)."""
    return torch.mul(a.unsqueeze(-1), b.unsqueeze(-2), out=out)


def _dot(a: Tensor, b: Tensor, scratch: Tensor) -> Tensor:
    """⟨a, b⟩ of the (H, H) matrices of each sequence: (...). The products go into ``scratch`` (a fresh
    trace-sized temporary costs more than the arithmetic)."""
    return torch.mul(a, b, out=scratch).sum((-2, -1))


class _Workspace:
    """Every buffer of one plastic unroll and its backward pass: (T, B, ·), or (T, S, B, ·) for S seeds."""

    def __init__(self, T: int, nx: int, H: int, layout: OneModel, retroactive: bool, dtype: torch.dtype) -> None:
        self.key = (T, nx, H, layout.lead, retroactive, dtype)
        self.in_use = False
        lead = layout.lead

        def rows(n: int, width: int) -> Tensor:
            """Vectors that enter a weight product: seed-major when stacked, so a seed's rows over all steps are
            one block."""
            return layout.buffer(n, width, dtype=dtype)

        def traces(*n: int) -> Tensor:
            return torch.empty(*n, *lead, H, H, dtype=dtype)

        # Row t − 1 belongs to step t (t = 1..T as in the notation above).
        self.U = rows(T + 1, nx + H)  # [x_t, h_{t−1}]; h_t goes into the next row
        self.M = torch.empty(T, *lead, 1, dtype=dtype)  # M_t
        self.Q = traces(T)  # pre-clip Q_t (the last row unused: the last step updates no trace)
        self.E = traces(T) if retroactive else None  # E_{t−1}
        self.DPRE = rows(T, H)  # δ_t
        self.DS = rows(T, 1)  # ∂(w · h_t)
        self.DETA = torch.empty(T, *lead, dtype=dtype) if retroactive else None  # ∂η share of step t
        # Trace-sized scratch: the current Hebb (forward), and four more (also the backward's).
        self.hebb, self.a, self.b, self.c, self.d = traces(5)
        self.plastic = torch.empty(*lead, H, dtype=dtype)  # P_t h_{t−1} for the coming step
        self.D = traces() if retroactive else None  # ∂L/∂E (backward)


class PlasticRNNUnroll(FusedUnroll):
    """Record one unroll of a neuromodulated plastic RNN (simple or retroactive, from the model's ``eta``)
    of ``steps`` steps over ``batch`` sequences from a zero state.

    ``step(x)`` returns h_t (a view into the buffers: read it, do not keep or modify it). ``finish()``
    returns the (T, B, H) hidden states, differentiable w.r.t. W_in, W, α, w (and η), for one backward
    pass. The parameters must not change between the first ``step`` and that backward pass. With S seeds
    stacked (parameters [S, ...]) x is (S, B, nx), h_t (S, B, H) and ``finish()`` (T, S, B, H).
    """

    name = "fused plastic-RNN"

    def __init__(self, model: "ModulatedPlasticRNN", batch: int, steps: int) -> None:
        c = model.config
        nx, H = c.obs_dim, c.hidden_size
        self.nx, self.H, self.B, self.T = nx, H, batch, steps
        self.layout = layout = layout_of(model.weight, batch)
        self.lead = layout.lead
        eta = getattr(model, "eta", None)
        self.retroactive = eta is not None
        self.params = (model.weight_in, model.weight, model.alpha, model.modulation)
        if eta is not None:
            self.params += (eta,)
        dtype = model.weight.dtype
        with torch.no_grad():
            self.w_cat_t = layout.prepare(torch.cat((model.weight_in, model.weight), -1).detach().mT)  # [W_in, W]ᵀ
            self.w = model.weight.detach()
            # α and η broadcast against (…, B, H, H) traces (η also (…, B, H)); w as a column for the products.
            self.alpha = layout.over_batch(model.alpha.detach())
            self.w_mod = model.modulation.detach().unsqueeze(-1)  # (H, 1) or (S, H, 1)
            self.w_mod_row = model.modulation.detach().unsqueeze(-2)  # (1, H) or (S, 1, H)
            if eta is not None:
                self.eta = layout.over_batch(eta.detach())  # (1,) or (S, 1, 1)
        one = torch.tensor(1.0, dtype=dtype)
        self.bound = float(torch.nextafter(one, 2 * one))  # just above 1: hardtanh's open bound = clamp's closed one
        # Reuse the model's workspace unless another unroll still holds it.
        ws = self._take_workspace(model.fused_slot, (steps, nx, H, layout.lead, self.retroactive, dtype),
                                  lambda: _Workspace(steps, nx, H, layout, self.retroactive, dtype))
        ws.U[0, ..., nx:] = 0.0  # h_0 = 0
        ws.hebb.zero_()  # Hebb_0 = 0
        ws.plastic.zero_()  # P_1 h_0 = 0
        if ws.E is not None:
            ws.E[0] = 0.0  # E_0 = 0

    def step(self, x: Tensor) -> Tensor:
        t, nx = self.t, self.nx
        ws = self._next_step()
        u, nxt = ws.U[t], ws.U[t + 1]
        u[..., :nx].copy_(x)
        # h_t = tanh(P_t h_{t−1} + [W_in, W] [x_t, h_{t−1}]), P_t h_{t−1} prepared by the previous step
        h = self.layout.addmm(ws.plastic, u, self.w_cat_t, out=nxt[..., nx:]).tanh_()
        m = self.layout.mm(h, self.w_mod, out=ws.M[t]).tanh_()
        if t + 1 < self.T:  # the last step's traces reach no output
            # Seed by seed: one seed's traces stay in cache through all of their updates.
            for part in self.layout.parts:
                self._update_traces(t, part, part.own(h), part.own(u[..., nx:]), part.own(m))
        self.t = t + 1
        return h

    def _update_traces(self, t: int, part: WholeModel | OneSeed, h: Tensor, h_prev: Tensor, m: Tensor) -> None:
        """Hebb_t (and E_t) of one model, or of one seed of a stack, then P_{t+1} h_t for the next step (the
        ``t`` here is the 0-based step index)."""
        ws, own = self.ws, part.own
        hebb, q = own(ws.hebb), own(ws.Q[t])
        if self.retroactive:
            E, E_next = own(ws.E[t]), own(ws.E[t + 1])
            torch.addcmul(hebb, m.unsqueeze(-1), E, out=q)  # Q_t = Hebb_{t−1} + M_t E_{t−1}
            torch.lerp(E, _outer(h, h_prev, own(ws.b)), own(self.eta), out=E_next)
        else:
            # Q_t = Hebb_{t−1} + M_t h_t h_{t−1}ᵀ
            torch.addcmul(hebb, (h * m).unsqueeze(-1), h_prev.unsqueeze(-2), out=q)
        torch.clamp(q, -1.0, 1.0, out=hebb)
        P = torch.mul(own(self.alpha), hebb, out=own(ws.a))
        _vec_mat(h, P.mT, out=own(ws.plastic))

    def hidden(self) -> Tensor:
        return self.ws.U[1:, ..., self.nx :]

    # ------------------------------------------------------------------------------------------------
    def backward(self, dH: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
        ws = self._backward_workspace()
        nx = self.nx
        ws.d.zero_()  # Σ_t Hebb_{t−1} ⊙ δ_t h_{t−1}ᵀ per sequence, summed into ∂α at the end
        # Seed by seed: one seed's traces (B × H × H) stay in cache through a step; all S seeds' would not.
        for part in self.layout.parts:
            self._bptt(dH, part, needs[2])

        grads: list[Tensor | None] = [None] * len(self.params)
        U = ws.U
        if needs[0] or needs[1]:
            d_cat = self.layout.weight_grad(ws.DPRE, U[:-1])
            grads[0], grads[1] = d_cat[..., :nx].contiguous(), d_cat[..., nx:].contiguous()
        if needs[2]:
            grads[2] = ws.d.sum(-3)
        if needs[3]:
            grads[3] = self.layout.weight_grad(ws.DS, U[1:, ..., nx:]).squeeze(-2)
        if self.retroactive and needs[4]:
            grads[4] = self.layout.total(ws.DETA).view_as(self.params[4])
        self.release()
        return tuple(grads)

    def _bptt(self, dH: Tensor, part: WholeModel | OneSeed, need_alpha: bool) -> None:
        """The backward loop for one model, or one seed of a stack: fills DPRE, DS (DETA) and ∂α's accumulator."""
        ws, T, nx, retro = self.ws, self.T, self.nx, self.retroactive
        steps, own = part.steps, part.own  # this part of a (T, ·) buffer, of a per-model tensor
        U, M, Q, DPRE, DS, dH = steps(ws.U), steps(ws.M), steps(ws.Q), steps(ws.DPRE), steps(ws.DS), steps(dH)
        alpha, w, w_mod_row = own(self.alpha), own(self.w), own(self.w_mod_row)
        dQ, R, Hc, acc = own(ws.a), own(ws.b), own(ws.c), own(ws.d)  # forward scratch, reused
        if retro:
            E, DETA, D = steps(ws.E), steps(ws.DETA), own(ws.D).zero_()
            eta = own(self.eta)
            decay = 1 - eta
            DETA[T - 1] = 0.0
        DS[T - 1] = 0.0
        # Local derivatives for all steps at once: tanh' of h_t and of M_t.
        Hs = U[:, :, nx:]
        dtanh_h = torch.mul(Hs[1:], Hs[1:]).neg_().add_(1)
        dtanh_m = torch.mul(M, M).neg_().add_(1)
        carry = torch.zeros_like(dH[0])  # ∂L/∂h_t arriving from step t + 1
        # The loop's t is 0-based: it handles step t + 1 of the notation; the comments use the notation's steps.
        for t in range(T - 1, -1, -1):
            h, h_prev, m = Hs[t + 1], Hs[t], M[t]
            dh = dH[t] + carry
            to_prev = None  # the trace update's share of ∂L/∂h_{t−1}
            if t + 1 < T:  # the trace update of step t (G_t = D_t = 0 at the last step); dQ holds ∂Q_t
                if retro:
                    dm = _dot(dQ, E[t], R).unsqueeze(-1)
                    D_h = _vec_mat(h_prev, D.mT).view_as(dh)  # D_t h_{t−1}
                    dh.addcmul_(D_h, eta)
                    to_prev = _vec_mat(h, D).view_as(dh).mul_(eta)  # η D_tᵀ h_t
                    # ∂η: ⟨D_t, h_t h_{t−1}ᵀ − E_{t−1}⟩ = h_tᵀ D_t h_{t−1} − ⟨D_t, E_{t−1}⟩
                    torch.sub((D_h * h).sum(-1), _dot(D, E[t], R), out=DETA[t])
                    D.mul_(decay).addcmul_(m.unsqueeze(-1), dQ)  # D_{t−1}
                else:
                    dQ_h = _vec_mat(h_prev, dQ.mT).view_as(dh)  # ∂Q_t h_{t−1}
                    dm = (dQ_h * h).sum(-1, keepdim=True)
                    dh.addcmul_(dQ_h, m)
                    to_prev = _vec_mat(h, dQ).view_as(dh).mul_(m)  # M_t ∂Q_tᵀ h_t
                ds = torch.mul(dm, dtanh_m[t], out=DS[t])
                dh.addcmul_(ds, w_mod_row)
            dpre = torch.mul(dh, dtanh_h[t], out=DPRE[t])
            if t == 0:  # Hebb_0 = 0, and h_0 needs no gradient
                break
            carry = torch.mm(dpre, w) if to_prev is None else torch.addmm(to_prev, dpre, w)  # one part: matrices
            torch.clamp(Q[t - 1], -1.0, 1.0, out=Hc)  # Hebb_{t−1}
            _outer(dpre, h_prev, R)  # ∂L/∂P_t
            if need_alpha:
                acc.addcmul_(Hc, R)
            # G_{t−1} = ∂Q_t + α ⊙ ∂L/∂P_t, then at once (Q_{t−1} still in cache) ∂Q_{t−1}: both in dQ.
            if t + 1 < T:
                dQ.addcmul_(alpha, R)
            else:
                torch.mul(alpha, R, out=dQ)
            _clip_backward(dQ, Q[t - 1], -self.bound, self.bound, grad_input=dQ)
            carry.add_(_vec_mat(dpre, torch.mul(alpha, Hc, out=R)).view_as(dh))  # P_tᵀ δ_t
