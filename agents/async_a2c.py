"""A2C on EnvPool's asynchronous mode: emulation overlaps the network's work (``A2CConfig.async_batch``).

With ``num_envs`` = M envs and ``async_batch`` = B < M, EnvPool's ``recv`` returns the first B envs to finish
their step (envs/atari.py). Each received env acts again at once, so while the network picks actions for one
batch the other M − B envs keep stepping on EnvPool's threads. The A2C maths stays that of ``agents/a2c.py``;
what changes is which transitions make up a rollout and which parameters sampled them.

The rollout is indexed by env id. One update takes T = n·M / B receives, hence n·M transitions, as a lockstep
rollout does. Row t of :class:`AsyncRollout` is the batch of the t-th receive: the transitions those envs just
completed (the observation they acted on, the action, V, and what the step returned), and ``env_ids[t]`` says
whose they are. Read down the rows, an env's transitions are consecutive steps of its own stream, and the
return recursion runs over them and nothing else (:func:`compute_returns_by_env`):

    δ_j = r_j + γ·[not a real terminal at j]·V_next(j) − V_j,    A_j = δ_j + γλ·[not done at j]·A_next(j)

where next(j) is the same env's next transition in the rollout, and an env's last one bootstraps from V of that
env's latest observation (``bootstrap``). The loss — log-probabilities, entropy and the value error averaged over
the valid transitions — is ``agents.a2c.a2c_loss`` unchanged; it runs its own forward pass over the rollout's
frames (``reuse_forward`` does not apply, see below).

What changes in the sampling, against lockstep A2C with the same n and M:
- each env contributes a varying number of transitions to an update (n on average; a slow env fewer, a fast
  one more), so an env's return horizon within an update varies around n instead of being n;
- at an update the M − B envs still stepping were sent actions drawn from the parameters before it: their
  first transition of the next rollout was sampled by θ_{i−1} and is learned from under θ_i without correction
  (a policy lag of one update for at most (M − B) of n·M transitions; the B envs in hand act under θ_i). For
  the same reason the acting passes' trunk outputs cannot be kept for the loss (their graph belongs to θ_{i−1});
- which envs finish first depends on EnvPool's threads, so a seeded run is not reproducible bit for bit.
With B = M every receive returns every env: the transitions, their order, the sampling and the numbers are those
of lockstep A2C with ``reuse_forward=False`` (tests/test_atari_async.py checks it bit for bit).

Only EnvPool has the async mode; M must be a multiple of B (every env's first observation is collected in
M / B receives before anything acts).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from agents.a2c import Episode, EpisodeStats, autocast, sample_actions, split


class AsyncRollout:
    """T × B completed transitions in receive order (module docstring); ``bootstrap`` (M,) holds V of each env's
    latest observation. The same fields as ``agents.a2c.Rollout`` where the loss reads them."""

    FLAGS = ("rewards", "dones", "truncated", "valid")

    def __init__(self, rows: int, batch: int, num_envs: int, obs_shape: Sequence[int], device: torch.device) -> None:
        def z(*shape, dtype=torch.float32):
            return torch.zeros(*shape, dtype=dtype, device=device)
        self.obs = z(rows, batch, *obs_shape, dtype=torch.uint8)          # the observation each env acted on
        self.env_ids = z(rows, batch, dtype=torch.int64)
        self.actions = z(rows, batch, dtype=torch.int64)
        self.values = z(rows, batch)                                     # V of ``obs``, when it acted
        self.rewards = z(rows, batch)
        self.dones = z(rows, batch, dtype=torch.bool)
        self.truncated = z(rows, batch, dtype=torch.bool)
        self.valid = z(rows, batch, dtype=torch.bool)
        self.bootstrap = z(num_envs)
        self.features = None                    # the loss runs its own pass (module docstring)
        # On a GPU, as agents.a2c.Rollout: what the envs return goes through pinned rows; flags once per rollout.
        self.staged = torch.device(device).type == "cuda"
        if self.staged:
            def pinned(shape, dtype) -> Tensor:
                return torch.zeros(shape, dtype=dtype, pin_memory=True)
            self.host_obs = pinned((rows, batch, *obs_shape), torch.uint8)
            self.host_ids = pinned((rows, batch), torch.int64)
            self.host = {name: pinned(getattr(self, name).shape, getattr(self, name).dtype) for name in self.FLAGS}

    def upload(self) -> None:
        if self.staged:
            for name in self.FLAGS:
                getattr(self, name).copy_(self.host[name], non_blocking=True)

    def returns(self, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        return compute_returns_by_env(self.rewards, self.values, self.dones, self.truncated, self.env_ids,
                                      self.bootstrap, gamma, gae_lambda)


def compute_returns_by_env(rewards: Tensor, values: Tensor, dones: Tensor, truncated: Tensor, env_ids: Tensor,
                           bootstrap: Tensor, gamma: float, gae_lambda: float = 1.0) -> tuple[Tensor, Tensor]:
    """``agents.a2c.compute_returns`` of transitions in receive order, (T, B) each: the recursion carries one
    advantage and one next value per env id (``bootstrap`` (M,) to start), so each env's transitions are chained
    only to its own. An env appears at most once per row. With ``env_ids[t] = 0 … M−1`` on every row this is
    ``compute_returns`` over ``values`` with ``bootstrap`` as its last row, operation for operation."""
    not_done = (~dones).to(rewards.dtype)
    real_end = (~(dones & ~truncated)).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(bootstrap)            # A of each env's next transition (0 after its last)
    next_value = bootstrap.clone()                # V of each env's next observation
    for t in reversed(range(rewards.shape[0])):
        ids = env_ids[t]
        delta = rewards[t] + gamma * real_end[t] * next_value[ids] - values[t]
        advantage = delta + gamma * gae_lambda * not_done[t] * last[ids]
        advantages[t] = advantage
        last[ids] = advantage
        next_value[ids] = values[t]
    return advantages + values, advantages


class AsyncRolloutCollector:
    """Fills an :class:`AsyncRollout` from one asynchronous env (``env.batch_size`` envs per ``recv``; None: all)
    and keeps game statistics across rollouts. Envs received by the last receive of a rollout stay in hand and
    act at the start of the next one, under the updated parameters."""

    def __init__(self, env, model: nn.Module, n_steps: int, generator: torch.Generator | None = None,
                 on_episode: Callable[[Episode], None] | None = None, precision: str = "fp32") -> None:
        self.env, self.model, self.generator = env, model, generator
        self.on_episode, self.precision = on_episode, precision
        self.keep_graph = False                 # never: module docstring
        self.graphs = None                      # no CUDA graphs (A2CConfig refuses them with async envs)
        M = self.num_envs = env.num_envs
        B = env.batch_size or M
        if M % B:
            raise ValueError(f"async envs: batch_size ({B}) must divide num_envs ({M})")
        self.rows = n_steps * M // B
        self.num_actions = env.num_actions
        self.device = next(model.parameters()).device
        self.rollout = AsyncRollout(self.rows, B, M, env.observation_shape, self.device)
        self.current = torch.zeros(M, *env.observation_shape, dtype=torch.uint8, device=self.device)
        self.pending_actions = torch.zeros(M, dtype=torch.int64, device=self.device)     # sent, not yet received
        self.pending_values = torch.zeros(M, device=self.device)
        self.stats = EpisodeStats(M)
        self.episodes: list[Episode] = []
        self.global_step = 0
        self.current.copy_(torch.from_numpy(env.reset()))
        self.hand = (np.arange(M), torch.arange(M, device=self.device))     # received, not yet sent (ids)

    def _act(self, ids: np.ndarray, index: Tensor) -> None:
        """Actions for envs ``ids`` (``index`` on the device) from their latest observations; sent at once."""
        trunk, head = split(self.model)
        with autocast(self.model, self.precision), torch.no_grad():
            logits, value = head(trunk(self.current[index]))
        actions = sample_actions(logits[:, : self.num_actions], self.generator)
        self.pending_actions[index] = actions
        self.pending_values[index] = value
        self.env.send(actions.cpu().numpy(), ids)     # the step's one device → host transfer (a sync on a GPU)

    def _receive(self, t: int) -> tuple[np.ndarray, Tensor]:
        """The t-th receive of the rollout: the completed transitions into row t, the new observations into
        ``current``. Returns the envs received (ids, and as a device index)."""
        ro = self.rollout
        obs, reward, done, info = self.env.recv()
        ids = info.get("env_id")
        ids = np.arange(self.num_envs) if ids is None else ids
        self.global_step += len(ids)
        if ro.staged:
            ro.host_ids[t].copy_(torch.from_numpy(ids))
            ro.env_ids[t].copy_(ro.host_ids[t], non_blocking=True)
        else:
            ro.env_ids[t] = torch.from_numpy(ids)
        index = ro.env_ids[t]
        ro.obs[t] = self.current[index]
        ro.actions[t] = self.pending_actions[index]
        ro.values[t] = self.pending_values[index]
        if ro.staged:
            ro.host_obs[t].copy_(torch.from_numpy(obs))
            self.current[index] = ro.host_obs[t].to(self.device, non_blocking=True)
            flags = ro.host
        else:
            self.current[index] = torch.from_numpy(obs)
            flags = {name: getattr(ro, name) for name in ro.FLAGS}
        flags["rewards"][t] = torch.from_numpy(reward)
        flags["dones"][t] = torch.from_numpy(done)
        flags["truncated"][t] = torch.from_numpy(info["truncated"])
        flags["valid"][t] = torch.from_numpy(~info["autoreset"])
        for ep in self.stats.update(info, self.global_step, ids=ids):
            self.episodes.append(ep)
            if self.on_episode is not None:
                self.on_episode(ep)
        return ids, index

    def collect(self) -> AsyncRollout:
        """One rollout: the envs in hand act under the current parameters, then T receives, each batch acting
        again at once except the last, which stays in hand."""
        ro = self.rollout
        self._act(*self.hand)
        for t in range(self.rows):
            ids, index = self._receive(t)
            if t + 1 < self.rows:
                self._act(ids, index)
            else:
                self.hand = (ids, index.clone())
        with torch.no_grad(), autocast(self.model, self.precision):
            ro.bootstrap.copy_(self.model(self.current)[1])
        ro.upload()
        return ro
