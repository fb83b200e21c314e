"""Recurrent A2C for the Miconi maze: the episode-batch rollout and the Backpropamine loss (docs/protocols.md §4).

Loss over one batch of B episodes of T steps, with returns R_t = r_t + γ R_{t+1}, R_T = 0 (no bootstrap,
γ = 0.9) and advantages A_t = R_t − V_t:

    L = (1/T) Σ_t [ −(1/B) Σ_b log π(a_t^b) · sg(A_t^b) + 0.1 · (1/B) Σ_b (A_t^b)² + 0.03 · (1/B) Σ_b Σ_a π(a|·)² ]

The last term penalises Σ_a π² (pushing towards high entropy) in place of an entropy bonus. The value
baseline is per element by default; ``value_baseline="element0"`` reproduces both original codebases, which
take V_t from batch element 0 and broadcast it, so only element 0's value prediction is trained.

Seeds as a batch dimension: with a seed-batched model (agents.seed_batched, S seeds) and a
``SeedMazeBatch`` (S × B mazes), ``rollout_seeds`` runs all seeds in one loop — every tensor gains a seed axis
after time, (T, S, B, ·), each seed's actions are sampled from its own generator — and the loss is one value
per seed (S,), each the formula above over that seed's own B episodes: the gradient of their sum is each seed's
own gradient. ``rollout`` and ``rollout_seeds`` are two thin entry points to one loop written over the leading
shape of a step's tensors, (B,) or (S, B); the rollout's type carries the loss's reduction.

Devices: the model, the rollout's observation / action / reward buffers, logits, values, returns and the
loss live on the model's device; the mazes (NumPy) step on the CPU. On a GPU the env writes each observation
into a pinned host buffer and it goes up with a non-blocking copy; the sampled actions come back once per
step, one small device → host copy, the only sync of a step (a CPU env cannot step before it has its
actions); the rewards are staged in pinned memory and go up once per rollout, and the returns are computed
on the device. On the CPU nothing is staged: the env and the sampler write straight into the rollout's
tensors, as before the GPU path existed. The Gumbel noise of the action sampler is always drawn on the CPU,
from the CPU generator (once per rollout, then moved): a CPU run keeps its numbers bit for bit, and a GPU
run given the same seed draws the same noise, so CPU and GPU runs stay comparable (a device generator would
give the GPU run a different random stream). The fused unrolls (Warp-RNN and Warp-LSTM: agents.warp_rnn_fused;
the plastic RNNs: agents.plastic_rnn_fused) are float32-CPU only; on a GPU the rollout takes the autograd cell path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.recurrent import RecurrentActorCritic
from agents.seed_batched import SeedBatchedModel
from envs.maze_vector import MazeBatch, SeedMazeBatch

ValueBaseline = Literal["per_element", "element0"]


@dataclass
class MazeA2CConfig:
    gamma: float = 0.9
    value_coef: float = 0.1
    prob_sq_coef: float = 0.03  # weight of the Σ_a π(a)² penalty
    value_baseline: ValueBaseline = "per_element"

    def __post_init__(self) -> None:
        if self.value_baseline not in ("per_element", "element0"):
            raise ValueError(f"value_baseline must be 'per_element' or 'element0', got {self.value_baseline!r}")


@dataclass
class MazeRollout:
    """One batch of B episodes of T steps. ``logits`` and ``values`` carry the autograd graph."""

    observations: Tensor  # (T, B, obs_dim): what the agent saw when choosing a_t
    actions: Tensor  # (T, B) int64
    rewards: Tensor  # (T, B) float32, r_t received after a_t
    logits: Tensor  # (T, B, n_actions)
    values: Tensor  # (T, B)
    episode_returns: np.ndarray  # (B,) total reward of each maze's episode

    # The loss's mean over (T, B): one value for the batch.
    mean = staticmethod(torch.mean)

    @property
    def mean_return(self) -> float:
        return float(self.episode_returns.mean())


def per_seed_mean(x: Tensor) -> Tensor:
    """The mean over (T, B) of a (T, S, B) tensor, one value per seed: (S,)."""
    return x.mean((0, 2))


@dataclass
class SeedMazeRollout(MazeRollout):
    """:class:`MazeRollout` of S stacked seeds (:func:`rollout_seeds`): every (T, B, ·) is (T, S, B, ·), the
    returns (S, B), and the loss's means are per seed."""

    mean = staticmethod(per_seed_mean)

    @property
    def seed_mean_returns(self) -> np.ndarray:
        """(S,) each seed's mean episode return."""
        return self.episode_returns.mean(-1)


@dataclass
class MazeA2CLoss:
    total: Tensor
    policy: Tensor  # −mean log π(a) · sg(A)
    value: Tensor  # mean A² (before value_coef)
    prob_sq: Tensor  # mean Σ_a π² (before prob_sq_coef)

    def scalars(self) -> dict[str, float]:
        return {
            "loss": float(self.total),
            "policy_loss": float(self.policy),
            "value_loss": float(self.value),
            "prob_sq_loss": float(self.prob_sq),
        }


def rollout(
    model: RecurrentActorCritic,
    maze_batch: MazeBatch,
    T: int | None = None,
    generator: torch.Generator | None = None,
    fused: bool = True,
) -> MazeRollout:
    """Run one episode in each of the B mazes (reset, then T steps), sampling a_t ~ π(·|h_t).

    T defaults to the mazes' episode length and must equal it (episodes are fixed-length). ``generator``
    drives the action sampling: a CPU generator on every device (module docstring, "Devices"). The recurrent
    cell runs step by step with autograd; the heads are applied once to all T × B hidden states afterwards
    (actions are drawn from an identical head computation made without a graph), which keeps per-step work
    to the cell. With ``fused`` (default) a model that offers ``fused_unroll`` (Warp-RNN and the plastic
    RNNs, float32 on the CPU) runs its graph-free forward with one hand-written BPTT node instead; off the
    CPU the cell path runs. Stacked seeds go through :func:`rollout_seeds`.
    """
    if isinstance(maze_batch, SeedMazeBatch):
        raise ValueError("a SeedMazeBatch is rolled out by rollout_seeds, with a seed-batched model")
    T = _episode_length(maze_batch, T)
    _check_cpu([generator])
    B = maze_batch.num_mazes
    gumbel = _gumbel(T, B, model.config.n_actions, generator)
    head = model.policy_head
    return MazeRollout(*_run(model, maze_batch, T, (B,), gumbel, torch.addmm, head.bias.detach(),
                             head.weight.detach().t(), fused))


def rollout_seeds(
    model: SeedBatchedModel,
    maze_batch: SeedMazeBatch,
    T: int | None = None,
    generators: Sequence[torch.Generator | None] = (),
    fused: bool = True,
) -> SeedMazeRollout:
    """:func:`rollout` for a model of S stacked seeds (agents.seed_batched) on a ``SeedMazeBatch`` of S × B
    mazes, with one CPU generator per seed: seed s's Gumbel noise is drawn from ``generators[s]`` exactly as a
    rollout of that seed alone draws it, and its actions come from its own slice of the batched policy head."""
    seeds = model.seeds
    if not isinstance(maze_batch, SeedMazeBatch) or maze_batch.seeds != seeds:
        raise ValueError(f"a model of {seeds} stacked seeds needs a SeedMazeBatch of {seeds} seeds")
    if not isinstance(generators, (list, tuple)) or len(generators) != seeds:
        raise ValueError(f"a model of {seeds} stacked seeds needs a list of {seeds} generators")
    T = _episode_length(maze_batch, T)
    _check_cpu(generators)
    B, A = maze_batch.mazes_per_seed, model.config.n_actions
    gumbel = torch.stack([_gumbel(T, B, A, g) for g in generators], 1)
    head = model.policy_head
    return SeedMazeRollout(*_run(model, maze_batch, T, (seeds, B), gumbel, torch.baddbmm,
                                 head.bias.detach().unsqueeze(1), head.weight.detach().mT, fused))


def _episode_length(maze_batch: MazeBatch, T: int | None) -> int:
    T = maze_batch.episode_length if T is None else T
    if T != maze_batch.episode_length:
        raise ValueError(f"rollout length {T} != maze episode length {maze_batch.episode_length}")
    return T


def _check_cpu(generators: Sequence[torch.Generator | None]) -> None:
    if any(g.device.type != "cpu" for g in generators if g is not None):
        raise ValueError("the maze's action sampler draws its noise on the CPU: pass CPU generators")


def _gumbel(T: int, B: int, A: int, generator: torch.Generator | None) -> Tensor:
    """(T, B, A) Gumbel noise g = −log(Exp(1)) from ``generator``, on the CPU (module docstring, "Devices"):
    argmax(logits + g) draws a ~ softmax(logits) exactly (Gumbel-max)."""
    return torch.empty(T, B, A).exponential_(generator=generator).log_().neg_()


def _run(model: RecurrentActorCritic | SeedBatchedModel, maze_batch: MazeBatch, T: int, lead: tuple[int, ...],
         gumbel: Tensor, addmm: Callable[..., Tensor], b_pi: Tensor, w_pi: Tensor, fused: bool) -> tuple:
    """The rollout, written once over the leading shape ``lead`` of every per-step tensor ((B,), or (S, B) for
    stacked seeds); actions a_t = argmax(``addmm``(b_pi, h_t, w_pi) + gumbel[t]). Returns the fields of a
    :class:`MazeRollout`, in order."""
    B = lead[-1]
    device = model.policy_head.weight.device
    staged = device.type != "cpu"

    # Host buffers shared with NumPy: the env writes observation t+1 straight into host_obs[t + 1] and
    # reads a_t from host_actions[t], so each step moves no data between NumPy and torch. On the CPU they are
    # the rollout's own tensors; on a GPU they are pinned staging buffers (each row written once per rollout)
    # and the rollout's tensors live on the device.
    def host(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.empty(*shape, dtype=dtype, pin_memory=staged)

    host_obs = host(T + 1, *lead, maze_batch.obs_dim)
    obs_np = host_obs.numpy().reshape(T + 1, -1, maze_batch.obs_dim)
    host_actions = host(T, *lead, dtype=torch.int64)
    actions_np = host_actions.numpy().reshape(T, -1)
    host_rewards = host(T, maze_batch.num_mazes)
    rewards_np = host_rewards.numpy()
    if staged:
        actions = torch.empty(T, *lead, dtype=torch.int64, device=device)
    else:
        actions = host_actions
    if staged:
        gumbel = gumbel.to(device, non_blocking=True)      # (the driver stages pageable memory: no stream sync)

    maze_batch.reset(out=obs_np[0])
    # On a GPU each step's observation is a device tensor of its own: the cell saves it for the backward, and
    # copying step t + 1 into a shared device buffer would be an in-place change autograd refuses. (On the
    # CPU the env writes through NumPy, which autograd does not see, into rows no one writes again.)
    obs = [host_obs[0].to(device, non_blocking=True)] if staged else host_obs
    # The fused unroll is float32-CPU only (the models return None elsewhere; checked here too).
    unroll = model.fused_unroll(B, T) if fused and not staged else None
    state = model.initial_state(B)
    hidden = []
    info: dict = {}
    for t in range(T):
        if unroll is not None:
            h = unroll.step(obs[t])
        else:
            h, state = model.cell(obs[t], state)
            hidden.append(h)
        with torch.no_grad():
            torch.argmax(addmm(b_pi, h, w_pi).add_(gumbel[t]), -1, out=actions[t])
        if staged:
            host_actions[t].copy_(actions[t])       # the step's one device → host copy (a sync)
        _, r, _, _, info = maze_batch.step(actions_np[t], out=obs_np[t + 1])
        rewards_np[t] = r
        if staged and t + 1 < T:
            obs.append(host_obs[t + 1].to(device, non_blocking=True))
    logits, values = model.heads(unroll.finish() if unroll is not None else torch.stack(hidden))
    rewards = host_rewards.view(T, *lead)
    if staged:
        rewards = rewards.to(device, non_blocking=True)     # once per rollout
    observations = torch.stack(obs) if staged else obs[:T]
    return observations, actions, rewards, logits, values, info["episode_return"].reshape(lead)


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """R_t = r_t + γ R_{t+1} with R_T = 0 (no bootstrap), over the leading time axis of (T, ...) rewards.

    On the CPU: a backward loop in float64 (NumPy). Elsewhere on the rewards' device, without a host sync:
    R = Γ r with Γ[t, t'] = γ^(t'−t) for t' ≥ t, one float64 product (equal to the loop up to rounding)."""
    if rewards.device.type != "cpu":
        return discounted_returns_product(rewards, gamma)
    r = rewards.detach().cpu().double().numpy()
    out = np.empty_like(r)
    acc = np.zeros(r.shape[1:])
    for t in range(r.shape[0] - 1, -1, -1):
        acc = r[t] + gamma * acc
        out[t] = acc
    return torch.from_numpy(out).to(rewards.dtype)


def discounted_returns_product(rewards: Tensor, gamma: float) -> Tensor:
    """:func:`discounted_returns` as one float64 product R = Γ r on the rewards' device (no host sync)."""
    T = rewards.shape[0]
    k = torch.arange(T, device=rewards.device, dtype=torch.float64)
    lag = k.unsqueeze(0) - k.unsqueeze(1)                            # lag[t, t'] = t' − t
    weights = torch.where(lag >= 0, torch.pow(gamma, lag.clamp(min=0)), 0.0)
    return torch.tensordot(weights, rewards.detach().double(), dims=1).to(rewards.dtype)


def maze_a2c_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    config: MazeA2CConfig | None = None,
    mean: Callable[[Tensor], Tensor] = torch.mean,
) -> MazeA2CLoss:
    """The Backpropamine A2C loss on (T, B, A) logits, (T, B) values, actions and rewards (module docstring).
    ``mean`` reduces each term over (T, B): to one value, or (:func:`per_seed_mean`, inputs (T, S, B, ·)) to one
    value per seed, (S,)."""
    config = config or MazeA2CConfig()
    returns = discounted_returns(rewards, config.gamma).to(values.device)
    if config.value_baseline == "element0":
        baseline = values[..., :1].expand_as(values)  # the original quirk: V_t of batch element 0 for all b
    else:
        baseline = values
    advantage = returns - baseline
    log_probs = F.log_softmax(logits, dim=-1)
    log_pi_a = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    # Means over (T, B) equal (1/T) Σ_t (1/B) Σ_b; per seed over its own (T, B).
    policy = -mean(log_pi_a * advantage.detach())
    value = mean(advantage.pow(2))
    prob_sq = mean(log_probs.exp().pow(2).sum(-1))
    total = policy + config.value_coef * value + config.prob_sq_coef * prob_sq
    return MazeA2CLoss(total=total, policy=policy, value=value, prob_sq=prob_sq)


def rollout_loss(rollout_result: MazeRollout, config: MazeA2CConfig | None = None) -> MazeA2CLoss:
    r = rollout_result
    return maze_a2c_loss(r.logits, r.values, r.actions, r.rewards, config, mean=r.mean)
