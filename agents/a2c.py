"""Synchronous advantage actor-critic (A2C) on Atari vector envs, written to be read top to bottom.

One update = ``n_steps`` steps of every env (a rollout), then one gradient step on the whole rollout:

    loss = −mean(A · log π(a|s)) − ent_coef · mean(H[π(·|s)]) + vf_coef · mean((R − V(s))²)

with n-step (``gae_lambda=1``) or GAE returns, the gradient clipped to ``max_grad_norm``, and the step taken
through the optimiser seam (``watch.report(loss)`` just before ``optimizer.step()``). Defaults are the
rl-baselines3-zoo Atari settings for SB3's A2C.

Episode bookkeeping (see ``envs/atari.py`` for the env signals):
- a step flagged ``autoreset`` (the env reset itself; action ignored, reward 0) is masked out of every mean
  in the loss and is not counted in game lengths;
- ``done`` (game over, time limit, or a lost life under episodic life) stops the return recursion; a
  time-limit end bootstraps from V of the final observation — the observation the next (reset) step sees;
- game statistics sum the *raw* reward over a whole game — across lives — and restart on a real game
  over *or* a truncation (never only on ``terminated``: cleanrl #454).

The convolutional trunk runs once per frame: the acting passes keep its graph, and the loss
runs only the rest (linear layer and heads) over the whole rollout (:func:`split`, ``reuse_forward``).

Compute and stepping can overlap when the envs come in groups (``envs.atari.make_atari_groups``): the
network picks group 1's actions while EnvPool's threads step group 0 (``A2CConfig.groups``); or with EnvPool's
asynchronous mode, where each receive returns the first envs to finish (``A2CConfig.async_batch``,
agents/async_a2c.py: rollouts indexed by env id).

Devices: the network, the rollout buffers, returns, loss and optimiser state live on the model's device;
EnvPool steps on CPU threads. On a GPU, what the envs return is written into pinned host buffers and goes
up with non-blocking copies (observations at once, rewards and flags once per rollout); the sampled actions
come back once per step — the only host sync of the rollout. Losses stay on the device until the run ends
(one transfer for all updates; each update's only when ``on_update`` asks for it). On the CPU nothing is
staged and the numbers are those of a CPU-only build.
"""

from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.seam import NULL_WATCH


@dataclass
class A2CConfig:
    num_envs: int = 16
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0          # 1.0: plain n-step returns (SB3's default); < 1: GAE
    ent_coef: float = 0.01
    vf_coef: float = 0.25
    max_grad_norm: float = 0.5
    lr: float = 7e-4
    optimizer: str = "rmsprop_tf"    # rmsprop_tf: the zoo's RMSpropTFLike; rmsprop: torch's (SB3's default)
    rms_alpha: float = 0.99
    rms_eps: float = 1e-5
    # Env groups stepped in turn: with 2, EnvPool steps one half while the network picks the other half's
    # actions. Without an idle core to overlap into, the smaller forward batches and twice the calls cost more
    # than the overlap gains (docs/RESULTS.md), so one group is the default.
    groups: int = 1
    precision: str = "fp32"          # fp32 | bf16: autocast the encoder to bfloat16 (heads, loss, optimiser fp32)
    # The loss reuses the acting passes' trunk outputs (autograd on while acting) instead of a second pass
    # over the rollout: the same numbers, since θ is fixed during a rollout.
    reuse_forward: bool = True
    # Where several agents train at once (the held-out evaluation's seeds × inits of a game): true trains them
    # as one stacked model, one forward and backward per step for all (agents/batched_a2c.py); false, one by
    # one. The same results up to float summation order (equal in distribution).
    batched: bool = False
    # EnvPool's async mode (agents/async_a2c.py): each receive returns the first ``async_batch`` envs to finish
    # their step, which act again at once, so emulation overlaps the network's work. 0: every env steps in
    # lockstep (the default). Must divide num_envs; num_envs itself gives the lockstep rollouts through the
    # async code path. Runs are no longer reproducible bit for bit: which envs finish first is up to the threads.
    async_batch: int = 0
    # CUDA graphs for the acting forward pass and the update (agents/cuda_graphs.py): one replay instead of tens
    # of kernel launches each. CUDA only; float32 only.
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"a2c.precision must be fp32 or bf16, got {self.precision!r}")
        if self.optimizer not in ("rmsprop_tf", "rmsprop"):
            raise ValueError(f"a2c.optimizer must be rmsprop_tf or rmsprop, got {self.optimizer!r}")
        if self.n_steps < 1 or self.num_envs < 1:
            raise ValueError("a2c.n_steps and a2c.num_envs must be >= 1")
        if self.groups < 1 or self.num_envs % self.groups:
            raise ValueError(f"a2c.num_envs ({self.num_envs}) must be a multiple of a2c.groups ({self.groups})")
        if self.batched and self.groups != 1:
            raise ValueError(f"a2c.batched steps one env group per agent: set a2c.groups: 1 (got {self.groups})")
        if self.async_batch < 0 or (self.async_batch and self.num_envs % self.async_batch):
            raise ValueError(f"a2c.async_batch ({self.async_batch}) must be 0 (off) or divide a2c.num_envs "
                             f"({self.num_envs})")
        if self.async_batch and (self.groups != 1 or self.batched):
            raise ValueError("a2c.async_batch steps one asynchronous env pool per agent: set a2c.groups: 1 and "
                             "a2c.batched: false")
        if self.cuda_graphs and self.precision != "fp32":
            raise ValueError("a2c.cuda_graphs captures the float32 network: set a2c.precision: fp32")
        if self.cuda_graphs and self.async_batch:
            raise ValueError("a2c.cuda_graphs and a2c.async_batch do not combine yet: set one of them")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"a2c.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"a2c.gamma must be in [0, 1], got {self.gamma}")
        if self.lr <= 0 or self.rms_eps <= 0 or not 0.0 <= self.rms_alpha < 1.0:
            raise ValueError(f"a2c.lr and a2c.rms_eps must be > 0 and a2c.rms_alpha in [0, 1), got lr={self.lr}, "
                             f"rms_eps={self.rms_eps}, rms_alpha={self.rms_alpha}")
        for key in ("ent_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ValueError(f"a2c.{key} must be >= 0, got {getattr(self, key)}")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.n_steps


# -- optimiser ------------------------------------------------------------------------------------------

class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as in TF1 and OpenAI baselines (the zoo's choice for A2C on Atari): the mean square starts at
    one, not zero, and ε sits inside the square root. Both damp the first steps compared with torch's."""

    def __init__(self, params: Iterable[Tensor], lr: float = 7e-4, alpha: float = 0.99, eps: float = 1e-5):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            square = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                square.append(state["square_avg"])
            alpha = group["alpha"]
            torch._foreach_mul_(square, alpha)
            torch._foreach_addcmul_(square, grads, grads, value=1.0 - alpha)
            denom = torch._foreach_add(square, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])
        return loss


QUANTILE_SAMPLE = 1 << 18       # coordinates drawn for rmsprop_quantiles' figures (every one of a smaller model)


def rmsprop_stats(optimizer: torch.optim.Optimizer, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float]:
    """Quantiles over every coordinate of RMSprop's mean square ``v`` and of its step multiplier ``1/denom``
    (the effective step is lr × multiplier × g): ``sqrt(v + ε)`` for :class:`RMSpropTF`, ``sqrt(v) + ε`` for
    torch's. {} for another optimiser or before its first step. Read-only: the run's numbers do not change.

    This is how the warm-up of ``rmsprop_tf`` is seen (docs/RESULTS.md): its ``v`` starts at 1, so with small
    clipped gradients the multiplier climbs from ≈ 1 towards 1/√ε over hundreds of updates; torch's starts
    at 0 and takes full-size steps from the first update."""
    if not isinstance(optimizer, (RMSpropTF, torch.optim.RMSprop)):
        return {}
    squares, eps = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            v = optimizer.state.get(p, {}).get("square_avg")
            if v is not None:
                squares.append(v)
                eps.append(group["eps"])
    return rmsprop_quantiles(squares, eps, isinstance(optimizer, RMSpropTF), quantiles)


def rmsprop_quantiles(accumulators: Sequence[Tensor], eps: Sequence[float], tf: bool,
                      quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float]:
    """:func:`rmsprop_stats` of the accumulators ``v`` (with each one's ε) of one agent: also its slices of
    a stacked model's (agents/batched_a2c.py)."""
    sizes = [a.numel() for a in accumulators]
    if sum(sizes) == 0:
        return {}
    # At most QUANTILE_SAMPLE coordinates, drawn uniformly (with replacement, a fixed seed: the same draw every
    # read; uniform rather than strided, so that no stride lines up with a kernel's layout), sent to the host,
    # where numpy selects (linear interpolation, as torch.quantile) rather than sorts: read at OPTIMIZER_POINTS
    # updates per run, torch.quantile over a million coordinates cost a short run a visible share of its time
    # (docs/RESULTS.md)
    flat = torch.cat([a.detach().reshape(-1) for a in accumulators])
    pick = (torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=torch.Generator().manual_seed(0))
            if flat.numel() > QUANTILE_SAMPLE else torch.arange(flat.numel()))
    v = flat[pick.to(flat.device)].cpu().double().numpy()
    e = np.asarray(eps, dtype=np.float64)[np.searchsorted(np.cumsum(sizes), pick.numpy(), side="right")]
    multiplier = 1.0 / (np.sqrt(v + e) if tf else np.sqrt(v) + e)
    out = {}
    for name, values in (("square_avg", v), ("step_multiplier", multiplier)):
        for q, x in zip(quantiles, np.quantile(values, quantiles).tolist()):
            out[f"{name}_q{round(q * 100):02d}"] = x
    return out


def make_optimizer(params: Iterable[nn.Parameter], cfg: A2CConfig) -> torch.optim.Optimizer:
    """The inner-loop optimiser over ``params`` (e.g. ``model.parameters()``, or the task parameters the
    meta-learner lets the task step)."""
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(params, lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps)
    if cfg.cuda_graphs:                     # its step inside a CUDA graph (agents/cuda_graphs.py)
        params = list(params)
        on_cuda = bool(params) and isinstance(params[0], Tensor) and params[0].device.type == "cuda"
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps, capturable=on_cuda)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps)


# -- episode statistics -----------------------------------------------------------------------------------

@dataclass
class Episode:
    """One finished game: raw score summed over all its lives, its length in agent steps."""
    global_step: int
    episodic_return: float
    length: int
    env: int


class EpisodeStats:
    """Per-env running game totals. Not per life: a game ends on a real game over or a time-limit cut."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def update(self, info: dict[str, np.ndarray], global_step: int, start: int = 0,
               ids: np.ndarray | None = None) -> list[Episode]:
        """Add one step of envs ``start … start+len−1`` (or of the envs ``ids``, an async batch); return the
        games that ended on it."""
        real = ~info["autoreset"]                 # reset steps: reward 0, and not part of any game
        sl = slice(start, start + len(real)) if ids is None else ids
        self.returns[sl] += info["raw_reward"] * real
        self.lengths[sl] += real
        ended = np.flatnonzero(info["terminated"] | info["truncated"])
        out = []
        for i in ended:
            j = start + int(i) if ids is None else int(ids[i])
            out.append(Episode(global_step, float(self.returns[j]), int(self.lengths[j]), j))
            self.returns[j] = 0.0
            self.lengths[j] = 0
        return out


# -- rollouts -----------------------------------------------------------------------------------------------

class Rollout:
    """Preallocated buffers for ``n_steps × num_envs`` transitions; row t holds what was seen and done at t."""

    FLAGS = ("rewards", "dones", "truncated", "valid")

    def __init__(self, n_steps: int, num_envs: int, obs_shape: Sequence[int], device: torch.device) -> None:
        def z(*shape, dtype=torch.float32):
            return torch.zeros(*shape, dtype=dtype, device=device)
        self.obs = z(n_steps, num_envs, *obs_shape, dtype=torch.uint8)
        self.last_obs = z(num_envs, *obs_shape, dtype=torch.uint8)      # s_n: bootstrap, next rollout's s_0
        self.actions = z(n_steps, num_envs, dtype=torch.int64)
        self.rewards = z(n_steps, num_envs)
        self.values = z(n_steps + 1, num_envs)                          # V(s_0) … V(s_n), detached
        self.dones = z(n_steps, num_envs, dtype=torch.bool)            # the training episode ended at t
        self.truncated = z(n_steps, num_envs, dtype=torch.bool)        # … because of the time limit
        self.valid = z(n_steps, num_envs, dtype=torch.bool)            # t was not an auto-reset step
        # With a collector that keeps the graph: the acting passes' trunk outputs, [t][group], still
        # attached to θ. The loss runs only the network's head on them instead of the whole network again.
        self.features: list[list[Tensor]] | None = None
        # On a GPU the envs' outputs are staged in pinned host memory: ``host_obs[t]`` holds the observation
        # received at step t (it goes up to obs[t + 1], or last_obs after the last step) and ``host[name]``
        # the rewards and flags, uploaded once per rollout (:meth:`upload`). Each pinned row is rewritten only
        # after a later step's action transfer has synchronised the stream, so no copy is overwritten in flight.
        self.staged = torch.device(device).type == "cuda"
        if self.staged:
            def pinned(t: Tensor) -> Tensor:
                return torch.zeros(t.shape, dtype=t.dtype, pin_memory=True)
            self.host_obs = pinned(self.obs)
            self.host = {name: pinned(getattr(self, name)) for name in self.FLAGS}

    def upload(self) -> None:
        """Staged rewards and flags of the whole rollout to the device (non-blocking; a no-op on the CPU)."""
        if self.staged:
            for name in self.FLAGS:
                getattr(self, name).copy_(self.host[name], non_blocking=True)

    def store(self, t: int, sl: slice, obs: np.ndarray, reward: np.ndarray, done: np.ndarray,
              info: dict[str, np.ndarray]) -> None:
        """What envs ``sl`` returned for step t: rewards and flags into row t, the new observation into row t+1
        (``last_obs`` after the last step)."""
        next_obs = self.obs[t + 1, sl] if t + 1 < self.obs.shape[0] else self.last_obs[sl]
        if self.staged:                         # GPU: through pinned host memory, copies in flight
            host = self.host_obs[t, sl]
            host.copy_(torch.from_numpy(obs))
            next_obs.copy_(host, non_blocking=True)
            flags = self.host
        else:                                   # CPU: straight into the rollout
            next_obs.copy_(torch.from_numpy(obs))
            flags = {name: getattr(self, name) for name in self.FLAGS}
        flags["rewards"][t, sl] = torch.from_numpy(reward)
        flags["dones"][t, sl] = torch.from_numpy(done)
        flags["truncated"][t, sl] = torch.from_numpy(info["truncated"])
        flags["valid"][t, sl] = torch.from_numpy(~info["autoreset"])

    def returns(self, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        """Returns and advantages of the rollout, (n, N) each (:func:`compute_returns`)."""
        return compute_returns(self.rewards, self.values, self.dones, self.truncated, gamma, gae_lambda)

    def kept_features(self) -> Tensor:
        """The acting passes' trunk outputs, (n·N, ...) row-major like ``obs``."""
        return torch.cat([torch.cat(row) for row in self.features])


def compute_returns(rewards: Tensor, values: Tensor, dones: Tensor, truncated: Tensor, gamma: float,
                    gae_lambda: float = 1.0) -> tuple[Tensor, Tensor]:
    """Returns and advantages, (n, N) each, from ``values`` (n+1, N) whose last row bootstraps.

    δ_t = r_t + γ·[not a real terminal at t]·V_{t+1} − V_t
    A_t = δ_t + γλ·[not done at t]·A_{t+1},    R_t = A_t + V_t
    A time-limit end is done but not terminal: its V_{t+1} is V(final observation), which the env shows
    at t+1 (the auto-reset step). With λ = 1 this is the n-step return r_t + γ r_{t+1} + … + γ^k V.
    Rows of auto-reset steps come out as garbage and must be masked by the caller; the ``done`` of the
    step before them already keeps them out of every other row.
    """
    n = rewards.shape[0]
    not_done = (~dones).to(rewards.dtype)
    bootstrap = (~(dones & ~truncated)).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(n)):
        delta = rewards[t] + gamma * bootstrap[t] * values[t + 1] - values[t]
        last = delta + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages + values[:-1], advantages


def autocast(model: nn.Module, precision: str) -> torch.autocast:
    """bfloat16 autocast for ``precision="bf16"`` (faster convolutions on CPUs with AVX512-BF16; docs/RESULTS.md)."""
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def split(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], tuple[Tensor, Tensor]]]:
    """(trunk, head) with ``model(obs) == head(trunk(obs))``: acting passes keep the trunk's graph and the
    loss runs the head once over the rollout (``ActorCritic`` splits before its big linear layer). A model
    without ``trunk``/``head`` methods is all head: the loss then runs it over the rollout's frames."""
    if hasattr(model, "trunk") and hasattr(model, "head"):
        return model.trunk, model.head
    return (lambda obs: obs), model


def sample_actions(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """a ~ softmax(logits), drawn from ``generator`` on its own device (the task adapter gives one on the
    model's device; a CPU generator with a GPU model samples on the CPU and sends the actions back)."""
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class RolloutCollector:
    """Steps env groups in turn and fills a :class:`Rollout`; keeps game statistics across rollouts.

    ``keep_graph=True`` runs the trunk of the acting forward passes (see :func:`split`) with autograd on and
    keeps its outputs in the rollout: θ does not change during a rollout, so they are exactly the trunk
    outputs the A2C loss needs, and the update skips a second pass over all n·N frames. ``graphs`` (a
    ``agents.cuda_graphs.Graphs``): the forward passes replay CUDA graphs instead (nothing kept).
    """

    def __init__(self, envs: Sequence, model: nn.Module, n_steps: int,
                 generator: torch.Generator | None = None,
                 on_episode: Callable[[Episode], None] | None = None, precision: str = "fp32",
                 keep_graph: bool = False, graphs=None) -> None:
        self.envs = list(envs)
        self.model = model
        self.graphs = graphs
        self.precision = precision
        self.keep_graph = keep_graph
        self.n_steps = n_steps
        self.generator = generator
        self.on_episode = on_episode
        self.num_actions = self.envs[0].num_actions
        sizes = [e.num_envs for e in self.envs]
        starts = np.cumsum([0, *sizes])
        self.slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.num_envs = int(starts[-1])
        device = next(model.parameters()).device
        self.rollout = Rollout(n_steps, self.num_envs, self.envs[0].observation_shape, device)
        self.stats = EpisodeStats(self.num_envs)
        self.episodes: list[Episode] = []
        self.global_step = 0
        for env, sl in zip(self.envs, self.slices):
            self.rollout.last_obs[sl] = torch.from_numpy(env.reset())

    def _act(self, t: int, sl: slice) -> np.ndarray:
        ro = self.rollout
        if self.graphs is not None:             # one replay (agents/cuda_graphs.py)
            with torch.no_grad():
                logits, value = self.graphs.run(("act", t, sl.start), lambda: self.model(ro.obs[t, sl]))
        else:
            trunk, head = split(self.model)
            with autocast(self.model, self.precision):
                with torch.set_grad_enabled(self.keep_graph):
                    features = trunk(ro.obs[t, sl])
                with torch.no_grad():
                    logits, value = head(features)
            if self.keep_graph:
                ro.features[t].append(features)
        actions = sample_actions(logits[:, : self.num_actions], self.generator)
        ro.values[t, sl] = value
        ro.actions[t, sl] = actions
        return actions.cpu().numpy()            # the step's one device → host transfer (a sync on a GPU)

    def _receive(self, t: int, g: int) -> None:
        """Result of step t for group g: rewards and flags into row t, the new observation into row t+1."""
        ro, sl, env = self.rollout, self.slices[g], self.envs[g]
        obs, reward, done, info = env.recv()
        self.global_step += env.num_envs
        ro.store(t, sl, obs, reward, done, info)
        for ep in self.stats.update(info, self.global_step, sl.start):
            self.episodes.append(ep)
            if self.on_episode is not None:
                self.on_episode(ep)

    def collect(self) -> Rollout:
        """One rollout under the current parameters. Group g+1's actions are computed while g steps."""
        ro, n = self.rollout, self.n_steps
        ro.obs[0].copy_(ro.last_obs)
        ro.features = [[] for _ in range(n)] if self.keep_graph else None
        for t in range(n):
            for g, (env, sl) in enumerate(zip(self.envs, self.slices)):
                if t > 0:
                    self._receive(t - 1, g)
                env.send(self._act(t, sl))
        with torch.no_grad(), autocast(self.model, self.precision):
            for g, sl in enumerate(self.slices):
                self._receive(n - 1, g)
                if self.graphs is not None:
                    ro.values[n, sl] = self.graphs.run(("last", sl.start), lambda: self.model(ro.last_obs[sl])[1])
                else:
                    ro.values[n, sl] = self.model(ro.last_obs[sl])[1]
        ro.upload()
        return ro


# -- the update ------------------------------------------------------------------------------------------------

def a2c_loss(model: nn.Module, ro: Rollout, cfg: A2CConfig, num_actions: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The A2C loss of a rollout; means run over valid (non-reset) transitions only. The trunk's outputs
    come from the acting passes when the collector kept them, else from one pass over the rollout."""
    n, N = ro.actions.shape
    returns, advantages = ro.returns(cfg.gamma, cfg.gae_lambda)
    trunk, head = split(model)
    with autocast(model, cfg.precision):
        features = ro.kept_features() if ro.features is not None else trunk(ro.obs.view(n * N, *ro.obs.shape[2:]))
        logits, values = head(features)
    log_probs = F.log_softmax(logits[:, :num_actions], dim=-1)
    log_prob = log_probs.gather(1, ro.actions.view(-1, 1)).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    weight = ro.valid.view(-1).to(values.dtype)
    weight = weight / weight.sum().clamp(min=1.0)
    returns, advantages = returns.view(-1), advantages.view(-1)
    policy_loss = -(advantages * log_prob * weight).sum()
    value_loss = ((returns - values).square() * weight).sum()
    entropy_mean = (entropy * weight).sum()
    loss = policy_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * value_loss
    with torch.no_grad():
        # explained variance over valid transitions: 1 − Var(R − V) / Var(R)
        mean_r = (returns * weight).sum()
        var_r = ((returns - mean_r).square() * weight).sum()
        err = returns - values.detach()
        var_err = ((err - (err * weight).sum()).square() * weight).sum()
        explained = 1.0 - var_err / var_r.clamp(min=1e-8)
    return loss, {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                  "entropy": entropy_mean.detach(), "explained_variance": explained}


def a2c_step(model: nn.Module, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: A2CConfig,
             num_actions: int, watch=NULL_WATCH) -> tuple[list[str], Tensor]:
    """One gradient step on a rollout; returns the ``losses/*`` names and their values as one float32
    tensor on the model's device (no host sync)."""
    loss, parts = a2c_loss(model, ro, cfg, num_actions)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")     # <= 0: no clipping
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    watch.report(loss)                      # f(θ_i) and the clipped ∇f(θ_i) for the meta-learner
    optimizer.step()
    parts["grad_norm"] = grad_norm
    return [f"losses/{k}" for k in parts], torch.stack([v.float() for v in parts.values()])


def graphed_a2c_step(graphs, model: nn.Module, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: A2CConfig,
                     num_actions: int, watch=NULL_WATCH) -> tuple[list[str], Tensor]:
    """:func:`a2c_step` replayed from a CUDA graph (agents/cuda_graphs.py); ``ro`` is always the same rollout."""
    from agents.cuda_graphs import graphed_step
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    return graphed_step(graphs, optimizer, lambda: a2c_loss(model, ro, cfg, num_actions),
                        lambda: nn.utils.clip_grad_norm_(model.parameters(), max_norm), watch)


def graphs_for(cfg: A2CConfig, model: nn.Module):
    """A fresh ``agents.cuda_graphs.Graphs`` for ``model`` with ``cfg.cuda_graphs``, else None."""
    if not cfg.cuda_graphs:
        return None
    from agents import cuda_graphs
    return cuda_graphs.Graphs(next(model.parameters()).device)


def a2c_update(model: nn.Module, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: A2CConfig,
               num_actions: int, watch=NULL_WATCH) -> dict[str, float]:
    """One gradient step on a rollout; returns ``losses/*`` scalars for logging (one conversion)."""
    names, values = a2c_step(model, optimizer, ro, cfg, num_actions, watch)
    return dict(zip(names, values.tolist()))


# -- the loop ----------------------------------------------------------------------------------------------------

@dataclass
class A2CResult:
    losses: list[float]                       # f(θ_0) … f(θ_{K−1}), then f(θ_K) when final_loss=True
    logs: list[dict[str, float]]              # losses/* per update
    episodes: list[Episode]                   # finished games, in order
    updates: int
    env_steps: int
    seconds: float
    sps: float                                # env steps per second
    final_loss: float | None = None
    # (env step, rmsprop_stats) at up to OPTIMIZER_POINTS updates spread over the run, the first one included
    optimizer_stats: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)


OPTIMIZER_POINTS = 20      # per run: RMSprop accumulator quantiles (rmsprop_stats) read at this many updates


def stats_updates(updates: int, points: int = OPTIMIZER_POINTS) -> set[int]:
    """The updates of a run at which :func:`rmsprop_stats` is read: ``points`` spread evenly, the first included."""
    return set(np.linspace(0, updates - 1, min(points, updates)).round().astype(int).tolist()) if points > 0 else set()


def train_agent(envs, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, watch=NULL_WATCH,
                cfg: A2CConfig | None = None, on_episode: Callable[[Episode], None] | None = None,
                on_update: Callable[[int, dict[str, float]], None] | None = None, final_loss: bool = False,
                generator: torch.Generator | None = None,
                on_progress: Callable[[int], None] | None = None,
                optimizer_points: int = OPTIMIZER_POINTS) -> A2CResult:
    """Run A2C for ``total_steps`` env steps (rounded down to whole updates, at least one).

    ``envs`` is a vector env or a list of env groups (all of one game); ``cfg.num_envs`` and ``cfg.groups``
    only say how to build them (``make_atari_groups``), the loop uses the envs it is given.
    ``on_episode(Episode)`` sees every finished game; ``on_update(global_step, logs)`` every update (reading
    its losses: one host sync per update on a GPU); ``on_progress(global_step)`` every update, no sync. With
    ``final_loss`` one more rollout is collected without a step; its loss f(θ_K) closes the watch
    (``watch.finish``) and ends the curve. ``optimizer_points``: how many updates read the optimiser's statistics
    (``A2CResult.optimizer_stats``).
    """
    envs = list(envs) if isinstance(envs, (list, tuple)) else [envs]
    cfg = cfg or A2CConfig(num_envs=sum(e.num_envs for e in envs))
    if cfg.async_batch:                     # EnvPool's async mode: agents/async_a2c.py
        from agents.async_a2c import AsyncRolloutCollector
        if len(envs) != 1:
            raise ValueError("a2c.async_batch steps one asynchronous env pool (a2c.groups: 1)")
        collector = AsyncRolloutCollector(envs[0], model, cfg.n_steps, generator, on_episode, cfg.precision)
    else:
        collector = RolloutCollector(envs, model, cfg.n_steps, generator, on_episode, cfg.precision,
                                     keep_graph=cfg.reuse_forward and not cfg.cuda_graphs,
                                     graphs=graphs_for(cfg, model))
    steps_per_update = collector.num_envs * cfg.n_steps
    updates = max(1, total_steps // steps_per_update)
    names: list[str] = []
    table: Tensor | None = None           # (updates, len(names)) losses/* on the device, read once at the end
    stats_at = stats_updates(updates, optimizer_points)
    optimizer_stats = []
    start = time.perf_counter()
    for i in range(updates):
        ro = collector.collect()
        if collector.graphs is not None and i > 0:        # agents/cuda_graphs.py: the first update is eager
            names, values = graphed_a2c_step(collector.graphs, model, optimizer, ro, cfg, collector.num_actions, watch)
        else:
            names, values = a2c_step(model, optimizer, ro, cfg, collector.num_actions, watch)
        if i in stats_at and (stats := rmsprop_stats(optimizer)):
            optimizer_stats.append((collector.global_step, stats))
        if table is None:
            table = values.new_empty(updates, len(names))
        table[i] = values
        if on_update is not None:
            on_update(collector.global_step, dict(zip(names, values.tolist())))
        if on_progress is not None:
            on_progress(collector.global_step)
    logs = [dict(zip(names, row)) for row in table.tolist()]
    losses = [out["losses/loss"] for out in logs]
    last = None
    if final_loss:
        collector.keep_graph = False
        ro = collector.collect()
        with torch.no_grad():
            last_loss = a2c_loss(model, ro, cfg, collector.num_actions)[0]
        watch.finish(last_loss)           # a tensor: on a GPU the meta-learner keeps it there
        last = float(last_loss)
        losses.append(last)
    seconds = time.perf_counter() - start
    return A2CResult(losses, logs, collector.episodes, updates, collector.global_step, seconds,
                     collector.global_step / max(seconds, 1e-9), last, optimizer_stats)
