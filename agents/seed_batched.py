"""Independent seeds as a batch dimension of the maze agents (docs/architecture.md, "Stacked agents").

:func:`stack_models` turns S single-seed models of one class (agents.recurrent) into one module whose every
parameter is the S models' tensors stacked along a new leading dimension ([S, ...]), under the same names
(``weight_hh``, ``warp.lstm.weight_ih``, ``policy_head.bias``, ...): seed k's slice *is* seed k's model, and
:meth:`SeedBatchedModel.seed_state_dict` gives it back in the single model's format.

The batched module has the single models' interface over (S, B) batches: ``initial_state(B)`` → tensors
(S, B, n); ``cell(x (S, B, nx), state)``; ``heads(h (..., S, B, H))``; ``fused_unroll`` (Warp-RNN, Warp-LSTM
and the plastic RNNs: the same fused BPTT, batched, agents.warp_rnn_fused / agents.plastic_rnn_fused);
``task_parameters()`` / ``warp_parameters()``. Each cell is its single model's maths with every matrix
product batched over seeds (bmm / matmul broadcasting), so no operation mixes seeds: the gradient of the
sum of the S seeds' losses is, slice by slice, each seed's own gradient (up to floating-point summation
order).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from agents.fused_unroll import WorkspaceSlot
from agents.plastic_rnn_fused import PlasticRNNUnroll
from agents.recurrent import (
    LSTMActorCritic,
    ModulatedPlasticRNN,
    RecurrentActorCritic,
    RecurrentConfig,
    RetroactivePlasticRNN,
    State,
    TanhRNN,
    WarpLSTM,
    WarpRNN,
    build_model,
    plastic_step,
)
from agents.warp_rnn_fused import WarpLSTMUnroll, WarpRNNUnroll


def _row(v: Tensor) -> Tensor:
    """A per-seed vector (S, n) as (S, 1, n): it broadcasts over the B sequences of its seed."""
    return v.unsqueeze(1)


class SeedBatchedModel(nn.Module):
    """S stacked models of one class (build with :func:`stack_models`)."""

    single: type[RecurrentActorCritic] = RecurrentActorCritic

    def __init__(self, models: list[RecurrentActorCritic]) -> None:
        super().__init__()
        if not models or any(type(m) is not self.single for m in models):
            raise ValueError(f"{type(self).__name__} stacks {self.single.__name__} models")
        self.config: RecurrentConfig = models[0].config
        self.seeds = len(models)
        named = [dict(m.named_parameters()) for m in models]
        for name in named[0]:
            *path, leaf = name.split(".")
            owner: nn.Module = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(torch.stack([n[name].detach() for n in named]).clone()))

    # --- interface (see agents.recurrent) ---------------------------------------------------------------
    def state_sizes(self) -> tuple[int, ...]:
        raise NotImplementedError

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def initial_state(self, batch: int) -> State:
        device = self.policy_head.weight.device
        return tuple(torch.zeros(self.seeds, batch, n, device=device) for n in self.state_sizes())

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Policy logits (S, B, n_actions) and value (S, B) from hidden states (S, B, H); for a rollout's
        (T, S, B, H), (T, S, B, n_actions) and (T, S, B): each seed's T·B rows in one product (one bmm for
        both heads)."""
        p, v = self.policy_head, self.value_head
        weight = torch.cat((p.weight, v.weight), 1).mT                 # (S, H, n_actions + 1)
        bias = _row(torch.cat((p.bias, v.bias), 1))
        if h.dim() == 3:
            out = torch.baddbmm(bias, h, weight)
        else:
            T, S, B, H = h.shape
            rows = h.transpose(0, 1).reshape(S, T * B, H)
            out = torch.baddbmm(bias, rows, weight).view(S, T, B, -1).transpose(0, 1)
        return out[..., :-1], out[..., -1]

    def forward_step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        h, state = self.cell(obs, state)
        logits, value = self.heads(h)
        return logits, value, state

    def fused_unroll(self, batch: int, steps: int):
        return None

    def warp_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith("warp.")]

    def task_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("warp.")]

    def seed_state_dict(self, k: int) -> dict[str, Tensor]:
        """Seed k's parameters in its single model's ``state_dict`` format (copies)."""
        return {n: p.detach()[k].clone() for n, p in self.named_parameters()}

    def unstack(self) -> list[RecurrentActorCritic]:
        """The S single models (copies)."""
        out = []
        for k in range(self.seeds):
            m = self.single(self.config)
            m.load_state_dict(self.seed_state_dict(k))
            out.append(m)
        return out


class SeedBatchedTanhRNN(SeedBatchedModel):
    single = TanhRNN

    def state_sizes(self) -> tuple[int, ...]:
        return (self.config.hidden_size,)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        pre = torch.baddbmm(_row(self.bias), x, self.weight_ih.mT)
        h = torch.baddbmm(pre, state[0], self.weight_hh.mT).tanh()
        return h, (h,)


class SeedBatchedLSTM(SeedBatchedModel):
    single = LSTMActorCritic

    def state_sizes(self) -> tuple[int, ...]:
        return (self.config.hidden_size, self.config.hidden_size)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        m = self.lstm
        gates = torch.baddbmm(_row(m.bias_ih + m.bias_hh), x, m.weight_ih.mT)
        gates = torch.baddbmm(gates, state[0], m.weight_hh.mT)
        i, f, g, o = gates.chunk(4, -1)          # PyTorch's gate order
        c = torch.addcmul(torch.sigmoid(f) * state[1], torch.sigmoid(i), torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


def _warp_gates(warp: nn.Module, x: Tensor, h: Tensor, z: Tensor, zc: Tensor, sizes: list[int]):
    """The warp (agents.recurrent.WarpGates) with per-seed weights."""
    m = warp.lstm
    gates = torch.baddbmm(_row(m.bias_ih + m.bias_hh), torch.cat((x, h), -1), m.weight_ih.mT)
    gates = torch.baddbmm(gates, z, m.weight_hh.mT)
    i, f, g, o = gates.chunk(4, -1)
    zc = torch.addcmul(torch.sigmoid(f) * zc, torch.sigmoid(i), torch.tanh(g))
    z = torch.sigmoid(o) * torch.tanh(zc)
    return torch.tanh(torch.bmm(z, warp.projection.weight.mT)).split(sizes, -1), z, zc


def _warped_preactivation(x, h, w_ih, w_hh, b, gates):
    p_x, p_h, p_i, p_hh, p_b = gates
    pre = torch.addcmul(_row(b) * p_b, torch.bmm(x * p_x, w_ih.mT), p_i)
    return torch.addcmul(pre, torch.bmm(h * p_h, w_hh.mT), p_hh)


class SeedBatchedWarpRNN(SeedBatchedModel):
    single = WarpRNN

    def __init__(self, models: list[RecurrentActorCritic]) -> None:
        super().__init__(models)
        c = self.config
        self._gate_sizes = [c.obs_dim, *[c.hidden_size] * 4]
        self.fused_slot = WorkspaceSlot()

    def state_sizes(self) -> tuple[int, ...]:
        c = self.config
        return (c.hidden_size, c.warp_hidden_size, c.warp_hidden_size)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, z, zc = state
        gates, z, zc = _warp_gates(self.warp, x, h, z, zc, self._gate_sizes)
        h = torch.tanh(_warped_preactivation(x, h, self.weight_ih, self.weight_hh, self.bias, gates))
        return h, (h, z, zc)

    def fused_unroll(self, batch: int, steps: int):
        """The batched fused unroll (agents.warp_rnn_fused); float32 CPU only, None elsewhere (cell path)."""
        return WarpRNNUnroll.where_supported(self, self.weight_hh, batch, steps)


class SeedBatchedWarpLSTM(SeedBatchedModel):
    single = WarpLSTM

    def __init__(self, models: list[RecurrentActorCritic]) -> None:
        super().__init__(models)
        c = self.config
        self._gate_sizes = [c.obs_dim, c.hidden_size, *[4 * c.hidden_size] * 3]
        self.fused_slot = WorkspaceSlot()

    def state_sizes(self) -> tuple[int, ...]:
        c = self.config
        return (c.hidden_size, c.hidden_size, c.warp_hidden_size, c.warp_hidden_size)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c, z, zc = state
        gates, z, zc = _warp_gates(self.warp, x, h, z, zc, self._gate_sizes)
        pre = _warped_preactivation(x, h, self.weight_ih, self.weight_hh, self.bias, gates)
        i, f, g, o = pre.chunk(4, -1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c, z, zc)

    def fused_unroll(self, batch: int, steps: int):
        """The batched fused unroll (agents.warp_rnn_fused); float32 CPU only, None elsewhere (cell path)."""
        return WarpLSTMUnroll.where_supported(self, self.weight_hh, batch, steps)


class SeedBatchedPlasticRNN(SeedBatchedModel):
    single = ModulatedPlasticRNN

    def __init__(self, models: list[RecurrentActorCritic]) -> None:
        super().__init__(models)
        self.fused_slot = WorkspaceSlot()

    def state_sizes(self) -> tuple[int, ...]:
        H = self.config.hidden_size
        return (H, H * H)

    def _step(self, x: Tensor, h: Tensor, hebb: Tensor, trace: Tensor | None):
        S, B, H = h.shape
        eta = self.eta.view(S, 1, 1, 1) if trace is not None else None
        return plastic_step(x, h, hebb.view(S, B, H, H), None if trace is None else trace.view(S, B, H, H),
                            self.weight_in, self.weight, self.alpha.unsqueeze(1), self.modulation.unsqueeze(-1), eta)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, hebb, _ = self._step(x, state[0], state[1], None)
        return h, (h, hebb.flatten(-2))

    def fused_unroll(self, batch: int, steps: int):
        """The batched fused unroll (agents.plastic_rnn_fused; also the retroactive subclass); float32 CPU
        only, None elsewhere (cell path)."""
        return PlasticRNNUnroll.where_supported(self, self.weight, batch, steps)


class SeedBatchedRetroactivePlasticRNN(SeedBatchedPlasticRNN):
    single = RetroactivePlasticRNN

    def state_sizes(self) -> tuple[int, ...]:
        H = self.config.hidden_size
        return (H, H * H, H * H)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, hebb, trace = self._step(x, state[0], state[1], state[2])
        return h, (h, hebb.flatten(-2), trace.flatten(-2))


BATCHED: dict[type, type[SeedBatchedModel]] = {
    cls.single: cls for cls in (SeedBatchedTanhRNN, SeedBatchedLSTM, SeedBatchedWarpRNN, SeedBatchedWarpLSTM,
                                SeedBatchedPlasticRNN, SeedBatchedRetroactivePlasticRNN)
}


def stack_models(models: list[RecurrentActorCritic]) -> SeedBatchedModel:
    """S single models of one class as one seed-batched module (parameters copied, stacked)."""
    if not models:
        raise ValueError("stack_models needs at least one model")
    cls = BATCHED.get(type(models[0]))
    if cls is None:
        raise ValueError(f"no seed-batched form of {type(models[0]).__name__}")
    return cls(models)


def build_seed_batched(name: str, config: RecurrentConfig, seeds: list[int]) -> SeedBatchedModel:
    """S models named ``name``, seed k's drawn exactly as ``torch.manual_seed(seeds[k]); build_model(name,
    config)`` draws it alone, then stacked. Torch's global generator is left as it was."""
    state = torch.get_rng_state()
    try:
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(build_model(name, config))
    finally:
        torch.set_rng_state(state)
    return stack_models(models)
