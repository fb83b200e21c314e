"""Recurrent A2C for the Miconi maze: the episode-batch rollout and the Backpropamine loss (docs/protocols.md §4).

Loss over one batch of B episodes of T steps, with returns R_t = r_t + γ R_{t+1}, R_T = 0 (no bootstrap,
γ = 0.9) and advantages A_t = R_t − V_t:

    L = (1/T) Σ_t [ −(1/B) Σ_b log π(a_t^b) · sg(A_t^b) + 0.1 · (1/B) Σ_b (A_t^b)² + 0.03 · (1/B) Σ_b Σ_a π(a|·)² ]

The last term penalises Σ_a π² (pushing towards high entropy) in place of an entropy bonus. The value
baseline is per element by default; ``value_baseline="element0"`` reproduces both original codebases, which
take V_t from batch element 0 and broadcast it, so only element 0's value prediction is trained.

Seeds as a batch dimension: with a seed-batched model (agents.seed_batched, S seeds) and a
``SeedMazeBatch`` (S × B mazes), ``rollout`` runs all seeds in one loop — every tensor gains a seed axis after
time, (T, S, B, ·), each seed's actions are sampled from its own generator — and the loss is one value per
seed (S,), each the formula above over that seed's own B episodes: the gradient of their sum is each seed's
own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.recurrent import RecurrentActorCritic
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
    seeds: int = 0  # S > 0: S stacked seeds, every (T, B, ·) above is (T, S, B, ·) and returns (S, B)

    @property
    def mean_return(self) -> float:
        return float(self.episode_returns.mean())

    @property
    def seed_mean_returns(self) -> np.ndarray:
        """(S,) each seed's mean episode return (seed-batched rollouts)."""
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
    drives the action sampling. The recurrent cell runs step by step with autograd; the heads are applied
    once to all T × B hidden states afterwards (actions are drawn from an identical head computation made
    without a graph), which keeps per-step work to the cell. With ``fused`` (default) a model that offers
    ``fused_unroll`` (Warp-RNN) runs its graph-free forward with one hand-written BPTT node instead.

    Seed-batched: ``model`` of S stacked seeds, ``maze_batch`` a ``SeedMazeBatch`` of S × B mazes and
    ``generator`` a list of S generators; seed s's Gumbel noise is drawn from its generator exactly as a
    rollout of that seed alone draws it.
    """
    T = maze_batch.episode_length if T is None else T
    if T != maze_batch.episode_length:
        raise ValueError(f"rollout length {T} != maze episode length {maze_batch.episode_length}")
    seeds = getattr(model, "seeds", 0)
    if seeds:
        if not isinstance(maze_batch, SeedMazeBatch) or maze_batch.seeds != seeds:
            raise ValueError(f"a model of {seeds} stacked seeds needs a SeedMazeBatch of {seeds} seeds")
        if not isinstance(generator, (list, tuple)) or len(generator) != seeds:
            raise ValueError(f"a model of {seeds} stacked seeds needs a list of {seeds} generators")
        B = maze_batch.mazes_per_seed
        lead: tuple[int, ...] = (seeds, B)
    else:
        B = maze_batch.num_mazes
        lead = (B,)
    device = model.policy_head.weight.device
    if device.type != "cpu":
        raise ValueError("the maze rollout runs on CPU (NumPy environment, per-step sampling)")

    # Preallocated buffers shared with NumPy: the env writes observation t+1 straight into obs[t + 1] and the
    # sampler writes a_t into actions[t], so each step moves no data between NumPy and torch.
    obs = torch.empty(T + 1, *lead, maze_batch.obs_dim)
    obs_np = obs.numpy().reshape(T + 1, -1, maze_batch.obs_dim)
    actions = torch.empty(T, *lead, dtype=torch.int64)
    actions_np = actions.numpy().reshape(T, -1)
    rewards = np.empty((T, maze_batch.num_mazes), dtype=np.float32)
    # Gumbel-max sampling: argmax(logits + g), g = −log(Exp(1)), draws a ~ softmax(logits) exactly.
    A = model.config.n_actions
    if seeds:
        gumbel = torch.stack([torch.empty(T, B, A).exponential_(generator=g).log_().neg_() for g in generator], 1)
        w_pi = model.policy_head.weight.detach().mT
        b_pi = model.policy_head.bias.detach().unsqueeze(1)
    else:
        gumbel = torch.empty(T, B, A).exponential_(generator=generator).log_().neg_()
        w_pi = model.policy_head.weight.detach().t()
        b_pi = model.policy_head.bias.detach()

    maze_batch.reset(out=obs_np[0])
    unroll = model.fused_unroll(B, T) if fused else None
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
            if seeds:
                torch.argmax(torch.baddbmm(b_pi, h, w_pi).add_(gumbel[t]), -1, out=actions[t])
            else:
                torch.argmax(torch.addmm(b_pi, h, w_pi).add_(gumbel[t]), 1, out=actions[t])
        _, r, _, _, info = maze_batch.step(actions_np[t], out=obs_np[t + 1])
        rewards[t] = r
    logits, values = model.heads(unroll.finish() if unroll is not None else torch.stack(hidden))
    return MazeRollout(
        observations=obs[:T],
        actions=actions,
        rewards=torch.from_numpy(rewards).view(T, *lead),
        logits=logits,
        values=values,
        episode_returns=info["episode_return"].reshape(lead),
        seeds=seeds,
    )


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """R_t = r_t + γ R_{t+1} with R_T = 0 (no bootstrap), over the leading time axis of (T, ...) rewards."""
    r = rewards.detach().cpu().double().numpy()
    out = np.empty_like(r)
    acc = np.zeros(r.shape[1:])
    for t in range(r.shape[0] - 1, -1, -1):
        acc = r[t] + gamma * acc
        out[t] = acc
    return torch.from_numpy(out).to(rewards.dtype)


def maze_a2c_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    config: MazeA2CConfig | None = None,
    seed_axis: bool = False,
) -> MazeA2CLoss:
    """The Backpropamine A2C loss on (T, B, A) logits, (T, B) values, actions and rewards (module docstring).
    ``seed_axis``: the inputs are (T, S, B, ·) and every term is one value per seed, (S,)."""
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
    def mean(x: Tensor) -> Tensor:
        return x.mean((0, 2)) if seed_axis else x.mean()

    policy = -mean(log_pi_a * advantage.detach())
    value = mean(advantage.pow(2))
    prob_sq = mean(log_probs.exp().pow(2).sum(-1))
    total = policy + config.value_coef * value + config.prob_sq_coef * prob_sq
    return MazeA2CLoss(total=total, policy=policy, value=value, prob_sq=prob_sq)


def rollout_loss(rollout_result: MazeRollout, config: MazeA2CConfig | None = None) -> MazeA2CLoss:
    r = rollout_result
    return maze_a2c_loss(r.logits, r.values, r.actions, r.rewards, config, seed_axis=bool(r.seeds))
