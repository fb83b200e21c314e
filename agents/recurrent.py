"""Recurrent actor-critic networks for the Miconi maze (docs/protocols.md §4, docs/warpgrad.md §9).

Every model maps the 17-dim maze observation through a recurrent cell with ``hidden_size`` units (100 by
default) and reads a linear policy head (4 logits) and a linear value head (1) off the hidden state.

- ``TanhRNN``     plain RNN, h_t = tanh(W_ih x_t + W_hh h_{t−1} + b) (the L2RL baseline of WarpGrad).
- ``LSTMActorCritic``  an LSTM cell baseline.
- ``WarpRNN``     WarpGrad's Warp-RNN: the same tanh cell, every factor of it multiplied by gates that a
                  meta-learned adaptation LSTM produces from [x_t, h_{t−1}] (a HyperNetwork-style warp).
- ``WarpLSTM``    the same warp gates around an LSTM task cell.
- ``ModulatedPlasticRNN``  Backpropamine's simple neuromodulated plastic RNN ("plastic-rnn"), a further
                  baseline.
- ``RetroactivePlasticRNN``  Backpropamine's retroactive neuromodulation ("plastic-rnn-retroactive"): the
                  modulator acts on an eligibility trace of past co-activity instead of the current one.

Seeds as a batch dimension: ``agents.seed_batched`` stacks S of these models (parameters [S, ...]) into one
module with the same interface over (S, B) batches.

Interface used by the rollout (agents.maze_a2c): ``initial_state(batch)``; ``cell(x, state) -> (h, state)``,
the recurrent core; ``heads(h) -> (logits, value)``, which accepts any leading dims so the rollout can apply
the heads to all T × B hidden states in one call; ``forward_step(obs, state) -> (logits, value, state)``;
``fused_unroll(batch, steps)``, an optional faster training unroll (Warp-RNN, Warp-LSTM and the plastic RNNs
have one, float32 on the CPU only), None otherwise. The models run on any device (``model.to(device)``; states follow
the heads' device).
Parameter groups for WarpGrad: ``task_parameters()`` (the cell + heads — adapted by the task optimiser) and
``warp_parameters()`` (adaptation LSTM + projection — meta-learned; empty for the baselines).

The cells call fused ATen kernels (``torch.rnn_tanh_cell``, ``torch.lstm_cell``) and fused multiply-adds
where they can: at 30 × 100 per step, per-operation overhead is a large share of a 200-step rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.fused_unroll import WorkspaceSlot
from agents.plastic_rnn_fused import PlasticRNNUnroll
from agents.warp_rnn_fused import WarpLSTMUnroll, WarpRNNUnroll

State = tuple[Tensor, ...]


class SequenceUnroll(Protocol):
    """A recorded unroll: ``step(x)`` → h_t without a graph; ``finish()`` → (T, B, H) with the graph."""

    def step(self, x: Tensor) -> Tensor: ...

    def finish(self) -> Tensor: ...


@dataclass
class RecurrentConfig:
    obs_dim: int = 17
    hidden_size: int = 100
    n_actions: int = 4
    warp_hidden_size: int = 100  # hidden size of the adaptation (warp) LSTM
    init: str = "default"  # plain RNN only: default (orthogonal) | backpropamine (W ~ 0.01·U(0, 1))

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")


INITS = ("default", "backpropamine")


class RecurrentActorCritic(nn.Module):
    """Shared heads and interface; subclasses define the cell."""

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__()
        self.config = config or RecurrentConfig()
        self.policy_head = nn.Linear(self.config.hidden_size, self.config.n_actions)
        self.value_head = nn.Linear(self.config.hidden_size, 1)

    # --- to implement -------------------------------------------------------------------------------
    def state_sizes(self) -> tuple[int, ...]:
        """Width of each tensor in the recurrent state; the first is the hidden state h read by the heads."""
        raise NotImplementedError

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One recurrent step on a (B, obs_dim) observation. Returns (h_t, new state)."""
        raise NotImplementedError

    def cell_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> State:
        """All-zero state: recurrent (and plastic) state is reset at the start of every episode."""
        device = self.policy_head.weight.device
        return tuple(torch.zeros(batch, n, device=device) for n in self.state_sizes())

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Policy logits (..., n_actions) and value (...) from hidden states (..., hidden_size)."""
        return self.policy_head(h), self.value_head(h).squeeze(-1)

    def forward_step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        h, state = self.cell(obs, state)
        logits, value = self.heads(h)
        return logits, value, state

    def fused_unroll(self, batch: int, steps: int) -> SequenceUnroll | None:
        """An optional faster training unroll (graph-free forward + hand-written BPTT); None = use ``cell``."""
        return None

    def task_parameters(self) -> list[nn.Parameter]:
        return self.cell_parameters() + list(self.policy_head.parameters()) + list(self.value_head.parameters())

    def warp_parameters(self) -> list[nn.Parameter]:
        return []


class TanhRNN(RecurrentActorCritic):
    """h_t = tanh(W_ih x_t + W_hh h_{t−1} + b); W_ih, W_hh orthogonal, b = 0 (as Warp-RNN's base cell).

    ``init: backpropamine`` draws the plain RNN as Backpropamine's non-plastic baseline: the recurrent W_hh
    ~ 0.01·U(0, 1) elementwise, W_ih as PyTorch's default Linear (kaiming-uniform, a = √5), b = 0 (the
    constant-1 input carries a learned bias too)."""

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c.init == "backpropamine" and type(self) is TanhRNN:
            self.weight_ih = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(c.hidden_size, c.obs_dim), a=5**0.5))
            self.weight_hh = nn.Parameter(0.01 * torch.rand(c.hidden_size, c.hidden_size))
        else:
            self.weight_ih = nn.Parameter(nn.init.orthogonal_(torch.empty(c.hidden_size, c.obs_dim)))
            self.weight_hh = nn.Parameter(nn.init.orthogonal_(torch.empty(c.hidden_size, c.hidden_size)))
        self.bias = nn.Parameter(torch.zeros(c.hidden_size))

    def state_sizes(self) -> tuple[int, ...]:
        return (self.config.hidden_size,)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h = torch.rnn_tanh_cell(x, state[0], self.weight_ih, self.weight_hh, self.bias)
        return h, (h,)

    def cell_parameters(self) -> list[nn.Parameter]:
        return [self.weight_ih, self.weight_hh, self.bias]


class LSTMActorCritic(RecurrentActorCritic):
    """LSTM cell baseline (PyTorch's default LSTMCell initialisation)."""

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)
        self.lstm = nn.LSTMCell(self.config.obs_dim, self.config.hidden_size)

    def state_sizes(self) -> tuple[int, ...]:
        return (self.config.hidden_size, self.config.hidden_size)  # (h, c)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        m = self.lstm
        h, c = torch.lstm_cell(x, (state[0], state[1]), m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
        return h, (h, c)

    def cell_parameters(self) -> list[nn.Parameter]:
        return list(self.lstm.parameters())


class WarpGates(nn.Module):
    """The warp: an adaptation LSTM over [x_t, h_{t−1}] whose hidden state z_t is projected by a bias-free
    linear map and squashed by tanh into multiplicative gates U = tanh(P z_t) (docs/warpgrad.md §9)."""

    def __init__(self, input_size: int, hidden_size: int, gate_sizes: list[int]) -> None:
        super().__init__()
        self.gate_sizes = gate_sizes
        self.lstm = nn.LSTMCell(input_size, hidden_size)
        self.projection = nn.Linear(hidden_size, sum(gate_sizes), bias=False)

    def forward(self, x: Tensor, h: Tensor, z: Tensor, zc: Tensor) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        m = self.lstm
        z, zc = torch.lstm_cell(torch.cat((x, h), 1), (z, zc), m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
        gates = torch.tanh(F.linear(z, self.projection.weight)).split(self.gate_sizes, 1)
        return gates, z, zc


def _warped_preactivation(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, gates: tuple[Tensor, ...]
) -> Tensor:
    """(W_ih (x ⊙ p_x)) ⊙ p_i + (W_hh (h ⊙ p_h)) ⊙ p_hh + b ⊙ p_b, as two fused multiply-adds."""
    p_x, p_h, p_i, p_hh, p_b = gates
    pre = torch.addcmul(b * p_b, F.linear(x * p_x, w_ih), p_i)
    return torch.addcmul(pre, F.linear(h * p_h, w_hh), p_hh)


class WarpRNN(TanhRNN):
    """Warp-RNN (WarpGrad App. I, Eq. 16; code architecture in docs/warpgrad.md §9).

    Base (task) cell: h_t = tanh((W_ih (x_t ⊙ p_x)) ⊙ p_i + (W_hh (h_{t−1} ⊙ p_h)) ⊙ p_hh + b ⊙ p_b), W_ih and
    W_hh orthogonal, b = 0. Gates [p_x (obs), p_h, p_i, p_hh, p_b (hidden each)] = tanh(P z_t), z_t from the
    adaptation LSTMCell over [x_t, h_{t−1}]. The original projection's unused 100-wide chunk is left out.
    State: (h, z, z_cell).
    """

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)            # the base cell's W_ih, W_hh, b: the plain RNN's task parameters
        c = self.config
        H = c.hidden_size
        self.warp = WarpGates(c.obs_dim + H, c.warp_hidden_size, [c.obs_dim, H, H, H, H])
        self.fused_slot = WorkspaceSlot()  # buffers reused by successive fused unrolls (not model state)

    def state_sizes(self) -> tuple[int, ...]:
        c = self.config
        return (c.hidden_size, c.warp_hidden_size, c.warp_hidden_size)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, z, zc = state
        gates, z, zc = self.warp(x, h, z, zc)
        h = torch.tanh(_warped_preactivation(x, h, self.weight_ih, self.weight_hh, self.bias, gates))
        return h, (h, z, zc)

    def fused_unroll(self, batch: int, steps: int) -> SequenceUnroll | None:
        """Same maths as ``cell`` from a zero state, faster to train (agents.warp_rnn_fused); float32 CPU only:
        None on any other device or dtype, where the rollout takes the autograd ``cell`` path."""
        return WarpRNNUnroll.where_supported(self, self.weight_hh, batch, steps)

    def warp_parameters(self) -> list[nn.Parameter]:
        return list(self.warp.parameters())


class WarpLSTM(RecurrentActorCritic):
    """Warp-LSTM: an LSTM task cell whose gate pre-activations carry the same multiplicative warp gates,
    (W_ih (x ⊙ p_x)) ⊙ p_i + (W_hh (h ⊙ p_h)) ⊙ p_hh + b ⊙ p_b, with p_i, p_hh, p_b as wide as the 4
    stacked LSTM gates (4 × hidden). W_ih, W_hh orthogonal, b = 0, like Warp-RNN. State: (h, c, z, z_cell).
    """

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        H4 = 4 * c.hidden_size
        self.weight_ih = nn.Parameter(nn.init.orthogonal_(torch.empty(H4, c.obs_dim)))
        self.weight_hh = nn.Parameter(nn.init.orthogonal_(torch.empty(H4, c.hidden_size)))
        self.bias = nn.Parameter(torch.zeros(H4))
        self.warp = WarpGates(c.obs_dim + c.hidden_size, c.warp_hidden_size, [c.obs_dim, c.hidden_size, H4, H4, H4])
        self.fused_slot = WorkspaceSlot()  # buffers reused by successive fused unrolls (not model state)

    def state_sizes(self) -> tuple[int, ...]:
        c = self.config
        return (c.hidden_size, c.hidden_size, c.warp_hidden_size, c.warp_hidden_size)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c, z, zc = state
        gates, z, zc = self.warp(x, h, z, zc)
        pre = _warped_preactivation(x, h, self.weight_ih, self.weight_hh, self.bias, gates)
        # PyTorch's gate order (input, forget, cell, output).
        i, f, g, o = pre.chunk(4, 1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c, z, zc)

    def fused_unroll(self, batch: int, steps: int) -> SequenceUnroll | None:
        """Same maths as ``cell`` from a zero state, faster to train (agents.warp_rnn_fused); float32 CPU only:
        None on any other device or dtype, where the rollout takes the autograd ``cell`` path."""
        return WarpLSTMUnroll.where_supported(self, self.weight_hh, batch, steps)

    def cell_parameters(self) -> list[nn.Parameter]:
        return [self.weight_ih, self.weight_hh, self.bias]

    def warp_parameters(self) -> list[nn.Parameter]:
        return list(self.warp.parameters())


class ModulatedPlasticRNN(RecurrentActorCritic):
    """Backpropamine's simple neuromodulated plastic RNN (docs/protocols.md §4), a further baseline.

    h_t = tanh(W_in x_t + (W + α ⊙ Hebb_{t−1}) h_{t−1}),  M_t = tanh(w · h_t),
    Hebb_t = clip(Hebb_{t−1} + M_t h_t h_{t−1}ᵀ, −1, 1), one Hebbian trace per batch element, reset to 0 each
    episode. W and α are initialised 0.01·U(0, 1) as in Backpropamine; the constant-1 input acts as the bias.
    State: (h, Hebb flattened to H·H). Memory grows by a B × H × H trace per step of an unroll.
    """

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.weight_in = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(c.hidden_size, c.obs_dim), a=5**0.5))
        self.weight = nn.Parameter(0.01 * torch.rand(c.hidden_size, c.hidden_size))
        self.alpha = nn.Parameter(0.01 * torch.rand(c.hidden_size, c.hidden_size))
        self.modulation = nn.Parameter(nn.init.uniform_(torch.empty(c.hidden_size), -0.1, 0.1))  # w of M_t
        self.fused_slot = WorkspaceSlot()  # buffers reused by successive fused unrolls (not model state)

    def state_sizes(self) -> tuple[int, ...]:
        H = self.config.hidden_size
        return (H, H * H)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h_prev, hebb = state
        H = self.config.hidden_size
        hebb = hebb.view(-1, H, H)
        plastic = torch.bmm(self.alpha * hebb, h_prev.unsqueeze(2)).squeeze(2)
        h = torch.tanh(F.linear(x, self.weight_in) + F.linear(h_prev, self.weight) + plastic)
        m = torch.tanh(h @ self.modulation)  # one neuromodulatory scalar per batch element
        hebb = torch.clamp(hebb + m[:, None, None] * h.unsqueeze(2) * h_prev.unsqueeze(1), -1.0, 1.0)
        return h, (h, hebb.reshape(-1, H * H))

    def fused_unroll(self, batch: int, steps: int) -> SequenceUnroll | None:
        """Same maths as ``cell`` from a zero state, faster to train (agents.plastic_rnn_fused; also the
        retroactive subclass); float32 CPU only: None elsewhere, where the rollout takes the ``cell`` path."""
        return PlasticRNNUnroll.where_supported(self, self.weight, batch, steps)

    def cell_parameters(self) -> list[nn.Parameter]:
        return [self.weight_in, self.weight, self.alpha, self.modulation]


class RetroactivePlasticRNN(ModulatedPlasticRNN):
    """Backpropamine's retroactive neuromodulation (docs/protocols.md §4), a further baseline.

    In our words: with simple modulation the neuromodulator M_t gates the co-activity of this very step. Here
    co-activity first accumulates in a decaying eligibility trace E — a running average with rate η of the
    products of post-synaptic h_t and pre-synaptic h_{t−1} — and M_t turns what the trace holds into a lasting
    change of the plastic component, so a signal that arrives later (e.g. after a reward) can still reinforce
    the co-activity that preceded it:

        h_t    = tanh(W_in x_t + (W + α ⊙ Hebb_{t−1}) h_{t−1})
        M_t    = tanh(w · h_t)
        Hebb_t = clip(Hebb_{t−1} + M_t E_{t−1}, −1, 1)
        E_t    = (1 − η) E_{t−1} + η h_t h_{t−1}ᵀ

    Hebb and E are updated together from their previous values (the paper writes both as functions of time
    t), so M_t acts on the trace as it stood before this step's co-activity. η is one learned scalar; W and α
    ~ 0.01·U(0, 1) as in Backpropamine; W_in as PyTorch's default Linear; w ~ U(−0.1, 0.1); η starts at
    ``ETA_INIT`` (protocols.md gives no initial value: our choice). One Hebb and one E per batch element,
    reset to 0 every episode. State: (h, Hebb, E), the matrices flattened to H·H.
    """

    ETA_INIT = 0.1

    def __init__(self, config: RecurrentConfig | None = None) -> None:
        super().__init__(config)
        self.eta = nn.Parameter(torch.full((1,), self.ETA_INIT))

    def state_sizes(self) -> tuple[int, ...]:
        H = self.config.hidden_size
        return (H, H * H, H * H)

    def cell(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        H = self.config.hidden_size
        h, hebb, trace = plastic_step(x, state[0], state[1].view(-1, H, H), state[2].view(-1, H, H),
                                      self.weight_in, self.weight, self.alpha, self.modulation.unsqueeze(-1), self.eta)
        return h, (h, hebb.reshape(-1, H * H), trace.reshape(-1, H * H))

    def cell_parameters(self) -> list[nn.Parameter]:
        return [*super().cell_parameters(), self.eta]


def plastic_step(x: Tensor, h_prev: Tensor, hebb: Tensor, trace: Tensor | None, w_in: Tensor, w: Tensor,
                 alpha: Tensor, modulation: Tensor, eta: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One step of a neuromodulated plastic RNN, for one model or S stacked seeds.

    Shapes: x (..., B, nx), h_prev (..., B, H), hebb / trace (..., B, H, H); w_in (..., H, nx) and w (..., H, H)
    as stored; α broadcast against hebb ((H, H), or (S, 1, H, H) for seeds), modulation as a column
    ((H, 1) or (S, H, 1)), η against trace ((1,) or (S, 1, 1, 1)). Simple modulation when ``trace`` is None
    (Hebb += M_t h_t h_{t−1}ᵀ); retroactive otherwise (Hebb += M_t E_{t−1}, E moves towards h_t h_{t−1}ᵀ at
    rate η). Returns (h_t, Hebb_t, E_t or None)."""
    plastic = ((alpha * hebb) @ h_prev.unsqueeze(-1)).squeeze(-1)
    h = torch.tanh(x @ w_in.mT + h_prev @ w.mT + plastic)
    m = torch.tanh((h @ modulation).squeeze(-1))[..., None, None]    # one neuromodulator value per sequence
    if trace is None:
        return h, torch.clamp(hebb + m * h.unsqueeze(-1) * h_prev.unsqueeze(-2), -1.0, 1.0), None
    hebb = torch.clamp(hebb + m * trace, -1.0, 1.0)
    return h, hebb, torch.lerp(trace, h.unsqueeze(-1) * h_prev.unsqueeze(-2), eta)


MODELS: dict[str, type[RecurrentActorCritic]] = {
    "rnn": TanhRNN,
    "lstm": LSTMActorCritic,
    "warp-rnn": WarpRNN,
    "warp-lstm": WarpLSTM,
    "plastic-rnn": ModulatedPlasticRNN,
    "plastic-rnn-retroactive": RetroactivePlasticRNN,
}


def build_model(name: str, config: RecurrentConfig | None = None) -> RecurrentActorCritic:
    """Model by name: one of ``MODELS`` ("rnn", "lstm", "warp-rnn", "warp-lstm", "plastic-rnn",
    "plastic-rnn-retroactive")."""
    if name not in MODELS:
        raise ValueError(f"unknown maze model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](config)
