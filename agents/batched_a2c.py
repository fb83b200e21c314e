"""K independent A2C agents as one stacked model: one forward and one backward per step for all K
(docs/architecture.md, "Stacked agents").

Each agent is an :class:`~agents.nets.ActorCritic` of the same network; agent k has its own parameters (slice
k of every stacked tensor), its own EnvPool env (one game each, all with the same number of envs), its own
action-sampling generator, episode statistics and env-step counter. What is shared is only the arithmetic:

- :class:`BatchedActorCritic` stacks the K models' parameters along a leading dimension under the single
  model's names (``encoder.conv.0.weight`` is (K, 32, 4, 8, 8), ``policy.weight`` (K, A_max, F), ...).
  On a GPU the convolutions run as one grouped convolution (``groups=K``: the K agents' channels side by
  side); on a CPU, where oneDNN's grouped convolutions measured slower than the K agents' own convolutions one
  after another (`metarl bench agents-stacking`, docs/RESULTS.md), agent by agent on views of the stacked
  weights, each exactly as its single model computes (``convolutions``: "auto", "grouped" or "loop"). The
  linear layers run as batched matrix products. Why not ``torch.func.vmap`` over ``functional_call``: its
  batching rule for ``conv2d`` with batched weights lowers to the same grouped convolution, it cannot ask for
  the channels-last layout oneDNN is fast on inside the map, and it measured slower than both forms on the CPU;
  the explicit forms keep ordinary ``nn.Parameter`` leaves (any torch optimiser, ``clip``, checkpoints and the
  meta-learner's views work on them unchanged).
- Policy heads of different widths (games with different action counts) are padded to the widest; each
  agent's logits past its game's action count are set to −inf before the softmax, so padded actions are
  never sampled and their rows get exactly zero gradient (hence no RMSprop movement either).
- The optimiser is the single agent's (``agents.a2c.make_optimizer``: ``rmsprop_tf`` or torch's ``rmsprop``)
  over the stacked tensors: RMSprop is elementwise, so it *is* K separate RMSprops, state included.
- Gradient clipping is per agent: agent k's gradient is scaled by its own global norm, as
  ``clip_grad_norm_`` on agent k's model alone would (:func:`clip_grad_norm_agents`).
- The loss is the sum of the K agents' A2C losses (each with its own means over its own valid
  transitions), so the gradient of agent k's slice is the gradient of agent k's loss alone.

What holds: agent k of a batch ends at the parameters it reaches trained alone (the same model draw, env
seed and sampling generator) up to floating-point summation order — the batched products (and on a GPU the
grouped convolution) add in another order than the single model's kernels. Over tens of updates that stays below 1e-5
(tests/test_atari_batched.py, both optimisers, games with different action counts). Beyond that the runs
are equal in distribution, not bitwise: a last-bit difference can eventually flip a sampled action (the
categorical draw compares a uniform number with cumulative probabilities) or the sign of a near-zero
RMSprop step, after which the two trajectories are different samples of the same process.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.a2c import (
    OPTIMIZER_POINTS,
    A2CConfig,
    A2CResult,
    Episode,
    EpisodeStats,
    RMSpropTF,
    Rollout,
    autocast,
    compute_returns,
    graphs_for,
    rmsprop_quantiles,
    sample_actions,
    stats_updates,
)
from agents.nets import ActorCritic, frames_in
from metarl.seam import NULL_WATCH


class BatchedActorCritic(nn.Module):
    """K :class:`ActorCritic` models of one network as one module (build with ``BatchedActorCritic(models)``).

    ``trunk(obs (K, N, C, H, W) uint8) -> (K, N, D)``, ``head(features (K, M, D)) -> (logits (K, M, A_max),
    values (K, M))``; ``masked(logits)`` sets each agent's logits past its game's action count to −inf.
    ``agent_state_dict(k)`` / ``unstack()`` give agent k back as its single model; ``load_agent(k, state)``
    writes one in.
    """

    CONVOLUTIONS = ("auto", "grouped", "loop")

    def __init__(self, models: Sequence[ActorCritic], num_actions: Sequence[int] | None = None,
                 convolutions: str = "auto") -> None:
        super().__init__()
        if convolutions not in self.CONVOLUTIONS:
            raise ValueError(f"BatchedActorCritic: convolutions {convolutions!r}, not one of {self.CONVOLUTIONS}")
        # "auto": one convolution per agent on a CPU, one grouped convolution for all on a GPU (docstring above)
        self.convolutions = convolutions
        if not models or any(not isinstance(m, ActorCritic) for m in models):
            raise ValueError("BatchedActorCritic stacks ActorCritic models")
        first = models[0]
        if any(m.network != first.network or m.policy.in_features != first.policy.in_features
               or m.encoder.conv[0].in_channels != first.encoder.conv[0].in_channels for m in models):
            raise ValueError("BatchedActorCritic: every agent needs the same network, features and input channels")
        self.agents = len(models)
        self.network = first.network
        self.in_channels = first.encoder.conv[0].in_channels
        self.widths = [m.policy.out_features for m in models]           # each single model's policy width
        self.num_actions = list(num_actions) if num_actions is not None else [m.num_actions for m in models]
        if len(self.num_actions) != self.agents or any(not 1 <= a <= w for a, w in zip(self.num_actions, self.widths)):
            raise ValueError(f"BatchedActorCritic: action counts {self.num_actions} do not fit the policy "
                             f"widths {self.widths}")
        self.max_actions = max(self.widths)
        self._strides = [m.stride for m in first.encoder.conv if isinstance(m, nn.Conv2d)]
        device = first.policy.weight.device
        names = [n for n, _ in first.named_parameters()]            # the single model's order: optimiser state too
        for name in names:
            tensors = [dict(m.named_parameters())[name].detach() for m in models]
            if name.startswith("policy."):
                tensors = [F.pad(t, (0, 0) * (t.dim() - 1) + (0, self.max_actions - t.shape[0])) for t in tensors]
            *path, leaf = name.split(".")
            owner: nn.Module = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(torch.stack(tensors).clone()))
        # True where agent k's logit j is past its game's action count (never sampled, zero gradient)
        self.register_buffer("pad", torch.arange(self.max_actions, device=device)[None, :]
                             >= torch.tensor(self.num_actions, device=device)[:, None], persistent=False)

    # -- the network ------------------------------------------------------------------------------------------
    def _convs(self) -> list[tuple[Tensor, Tensor, int]]:
        layers = [m for _, m in sorted(self.encoder.conv.named_children(), key=lambda c: int(c[0]))]
        return [(m.weight, m.bias, s) for m, s in zip(layers, self._strides)]

    def trunk(self, obs: Tensor) -> Tensor:
        """(K, N, C, H, W) uint8 frames → (K, N, D) flattened convolutional features."""
        loop = self.convolutions == "loop" or (self.convolutions == "auto" and obs.device.type == "cpu")
        return self._trunk_loop(obs) if loop else self._trunk_grouped(obs)

    def _trunk_loop(self, obs: Tensor) -> Tensor:
        """Agent by agent, each exactly as its single model computes (the same convolutions on the same layout)."""
        layers = [(w.unbind(0), b.unbind(0), s) for w, b, s in self._convs()]     # unbind: one stack backward
        out = []
        for k in range(self.agents):
            x = frames_in(obs[k])
            for weight, bias, stride in layers:
                x = F.relu(F.conv2d(x, weight[k], bias[k], stride=stride))
            out.append(x.flatten(1))
        return torch.stack(out)

    def _trunk_grouped(self, obs: Tensor) -> Tensor:
        K, N = obs.shape[:2]
        # The K agents' channels side by side: one grouped convolution per layer. Channels-last, as the single
        # model's input (oneDNN's fast layout), made in one copy of the uint8 frames before the float conversion.
        C, H, W = obs.shape[2:]
        x = obs.permute(1, 3, 4, 0, 2).reshape(N, H, W, K * C).permute(0, 3, 1, 2).float().div_(255.0)
        for weight, bias, stride in self._convs():
            x = F.relu(F.conv2d(x, weight.flatten(0, 1), bias.flatten(), stride=stride, groups=K))
        _, KO, h, w = x.shape
        # agent k's (N, O, h, w) flattened in the single model's (o, h, w) order
        return x.reshape(N, K, KO // K, h, w).transpose(0, 1).reshape(K, N, -1)

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(K, M, D) → logits (K, M, A_max) and values (K, M); heads in float32 as the single model's."""
        fc = getattr(self.encoder.fc, "0")
        h = F.relu(torch.baddbmm(fc.bias.unsqueeze(1), features, fc.weight.mT))
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            weight = torch.cat((self.policy.weight, self.value.weight), 1)      # (K, A_max + 1, F)
            bias = torch.cat((self.policy.bias, self.value.bias), 1).unsqueeze(1)
            out = torch.baddbmm(bias, h, weight.mT)
        return out[..., :-1], out[..., -1]

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.trunk(obs))

    def masked(self, logits: Tensor) -> Tensor:
        """Logits (K, M, A_max) with each agent's padded actions at −inf."""
        return logits.masked_fill(self.pad.unsqueeze(1), float("-inf"))

    # -- agents in and out ------------------------------------------------------------------------------------
    def agent_state_dict(self, k: int) -> dict[str, Tensor]:
        """Agent k's parameters in its single model's ``state_dict`` format (copies; policy at its own width)."""
        out = {}
        for name, p in self.named_parameters():
            t = p.detach()[k]
            out[name] = (t[: self.widths[k]] if name.startswith("policy.") else t).clone()
        return out

    @torch.no_grad()
    def load_agent(self, k: int, state: dict[str, Tensor]) -> None:
        """Write a single model's parameters (``state_dict`` format) into agent k's slice."""
        for name, p in self.named_parameters():
            v = state[name]
            (p[k, : v.shape[0]] if name.startswith("policy.") else p[k]).copy_(v)

    def agent_view(self, name: str, tensor: Tensor, k: int) -> Tensor:
        """Agent k's part of ``tensor``, the stacked parameter ``name`` or its gradient or state: slice k, the
        policy's at the agent's own width. A view: live, written by the optimiser in place (the meta-learner's
        per-agent watch, metarl/seam.py ``StackedWatch``)."""
        return tensor[k][: self.widths[k]] if name.startswith("policy.") else tensor[k]

    def agent_parameters(self, k: int) -> list[Tensor]:
        """Agent k's part of every parameter, in the single model's order (views)."""
        return [self.agent_view(name, p.detach(), k) for name, p in self.named_parameters()]

    def unstack(self) -> list[ActorCritic]:
        """The K single models (copies), on this module's device."""
        out = []
        device = self.policy.weight.device
        for k in range(self.agents):
            m = ActorCritic(self.widths[k], in_channels=self.in_channels, features=self.policy.weight.shape[-1],
                            network=self.network).to(device)
            m.load_state_dict(self.agent_state_dict(k))
            out.append(m)
        return out


@torch.no_grad()
def clip_grad_norm_agents(params: Sequence[Tensor], max_norm: float, agents: int) -> Tensor:
    """``clip_grad_norm_`` per agent: agent k's gradient (slice k of every ``.grad``) is scaled by
    min(1, max_norm / (‖g_k‖ + 1e-6)), ‖g_k‖ the global 2-norm over all its tensors (the norm of the per-tensor
    norms, as ``clip_grad_norm_`` takes it). Returns the (K,) norms before clipping, on the gradients' device
    (no host sync). Padded policy rows have zero gradient and do not change a norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(agents)
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(agents, -1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return total


def agent_rmsprop_stats(optimizer: torch.optim.Optimizer, model: BatchedActorCritic, k: int,
                        quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float]:
    """``agents.a2c.rmsprop_stats`` of agent k alone (its slice of the accumulators, its own policy width)."""
    tf = isinstance(optimizer, RMSpropTF)
    if not tf and not isinstance(optimizer, torch.optim.RMSprop):
        return {}
    squares, eps = [], []
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            v = optimizer.state.get(p, {}).get("square_avg")
            if v is None:
                continue
            v = v[k][: model.widths[k]] if names.get(id(p), "").startswith("policy.") else v[k]
            squares.append(v)
            eps.append(group["eps"])
    return rmsprop_quantiles(squares, eps, tf, quantiles)


# -- rollouts ------------------------------------------------------------------------------------------------

class BatchedRolloutCollector:
    """Steps K agents' envs and fills one :class:`~agents.a2c.Rollout` of ``n_steps × (K·N)``: agent k owns
    columns k·N … (k+1)·N − 1. All K envs step at once (each ``send`` returns at once, EnvPool's threads run
    while the others are sent); one forward pass picks all K agents' actions. Agent k's actions are drawn from
    its own generator on its own logits, as its collector alone would draw them."""

    def __init__(self, envs: Sequence, model: BatchedActorCritic, n_steps: int,
                 generators: Sequence[torch.Generator | None],
                 on_episode: Callable[[int, Episode], None] | None = None, precision: str = "fp32",
                 keep_graph: bool = False, graphs=None) -> None:
        self.envs = list(envs)
        self.graphs = graphs                    # agents/cuda_graphs.py: forward passes replayed (nothing kept)
        K = model.agents
        if len(self.envs) != K or len(generators) != K:
            raise ValueError(f"{K} agents need {K} envs and {K} generators, got {len(self.envs)} and {len(generators)}")
        self.num_envs = self.envs[0].num_envs               # per agent
        if any(e.num_envs != self.num_envs or e.observation_shape != self.envs[0].observation_shape for e in self.envs):
            raise ValueError("every agent's env needs the same number of envs and observation shape")
        for k, e in enumerate(self.envs):
            if e.num_actions != model.num_actions[k]:
                raise ValueError(f"agent {k}: its env has {e.num_actions} actions, its model {model.num_actions[k]}")
        self.model, self.agents, self.n_steps = model, K, n_steps
        self.generators = list(generators)
        self.on_episode = on_episode
        self.precision = precision
        self.keep_graph = keep_graph
        N = self.num_envs
        self.slices = [slice(k * N, (k + 1) * N) for k in range(K)]
        device = next(model.parameters()).device
        self.rollout = Rollout(n_steps, K * N, self.envs[0].observation_shape, device)
        self.stats = [EpisodeStats(N) for _ in range(K)]
        self.episodes: list[list[Episode]] = [[] for _ in range(K)]
        self.global_steps = [0] * K                           # env steps of each agent
        for env, sl in zip(self.envs, self.slices):
            self.rollout.last_obs[sl] = torch.from_numpy(env.reset())

    def _view(self, x: Tensor) -> Tensor:
        """(K·N, ...) → (K, N, ...)."""
        return x.view(self.agents, self.num_envs, *x.shape[1:])

    def _act(self, t: int) -> None:
        ro, model = self.rollout, self.model
        if self.graphs is not None:
            with torch.no_grad():
                logits, value = self.graphs.run(("act", t), lambda: model(self._view(ro.obs[t])))
        else:
            with autocast(model, self.precision):
                with torch.set_grad_enabled(self.keep_graph):
                    features = model.trunk(self._view(ro.obs[t]))
                with torch.no_grad():
                    logits, value = model.head(features)
            if self.keep_graph:
                ro.features[t] = features
        ro.values[t] = value.reshape(-1)
        actions = torch.cat([sample_actions(logits[k, :, : model.num_actions[k]], g)
                             for k, g in enumerate(self.generators)])
        ro.actions[t] = actions
        host = actions.cpu().numpy()            # the step's one device → host transfer (a sync on a GPU)
        for env, sl in zip(self.envs, self.slices):
            env.send(host[sl])

    def _receive(self, t: int, k: int) -> None:
        """Agent k's result of step t: rewards and flags into row t, the new observation into row t+1."""
        ro, sl, env = self.rollout, self.slices[k], self.envs[k]
        obs, reward, done, info = env.recv()
        self.global_steps[k] += env.num_envs
        ro.store(t, sl, obs, reward, done, info)
        for ep in self.stats[k].update(info, self.global_steps[k]):
            self.episodes[k].append(ep)
            if self.on_episode is not None:
                self.on_episode(k, ep)

    def collect(self) -> Rollout:
        ro, n = self.rollout, self.n_steps
        ro.obs[0].copy_(ro.last_obs)
        ro.features = [None] * n if self.keep_graph else None
        for t in range(n):
            self._act(t)
            for k in range(self.agents):
                self._receive(t, k)
        with torch.no_grad(), autocast(self.model, self.precision):
            if self.graphs is not None:
                ro.values[n] = self.graphs.run("last", lambda: self.model(self._view(ro.last_obs))[1]).reshape(-1)
            else:
                ro.values[n] = self.model(self._view(ro.last_obs))[1].reshape(-1)
        ro.upload()
        return ro


# -- the update ------------------------------------------------------------------------------------------------

def batched_a2c_loss(model: BatchedActorCritic, ro: Rollout, cfg: A2CConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The K agents' A2C losses, (K,), each exactly ``agents.a2c.a2c_loss`` of agent k's columns (means over
    its own valid transitions); and the ``losses/*`` parts, (K,) each."""
    n, KN = ro.actions.shape
    K = model.agents
    N = KN // K
    returns, advantages = compute_returns(ro.rewards, ro.values, ro.dones, ro.truncated, cfg.gamma, cfg.gae_lambda)

    def per_agent(x: Tensor) -> Tensor:          # (n, K·N, ...) → (K, n·N, ...), agent k's rows in (t, env) order
        return x.reshape(n, K, N, *x.shape[2:]).transpose(0, 1).reshape(K, n * N, *x.shape[2:])

    with autocast(model, cfg.precision):
        if ro.features is not None:
            features = torch.stack(ro.features, 1).flatten(1, 2)      # (K, n, N, D) → (K, n·N, D)
        else:
            features = model.trunk(per_agent(ro.obs))
        logits, values = model.head(features)
    log_probs = F.log_softmax(model.masked(logits), dim=-1)
    log_prob = log_probs.gather(2, per_agent(ro.actions).unsqueeze(2)).squeeze(2)
    # padded actions: probability exactly 0, and their −inf log kept out of the product (0·−inf is NaN)
    entropy = -(log_probs.exp() * log_probs.masked_fill(model.pad.unsqueeze(1), 0.0)).sum(-1)
    weight = per_agent(ro.valid).to(values.dtype)
    weight = weight / weight.sum(1, keepdim=True).clamp(min=1.0)
    returns, advantages = per_agent(returns), per_agent(advantages)
    policy_loss = -(advantages * log_prob * weight).sum(1)
    value_loss = ((returns - values).square() * weight).sum(1)
    entropy_mean = (entropy * weight).sum(1)
    loss = policy_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * value_loss
    with torch.no_grad():
        mean_r = (returns * weight).sum(1, keepdim=True)
        var_r = ((returns - mean_r).square() * weight).sum(1)
        err = returns - values.detach()
        var_err = ((err - (err * weight).sum(1, keepdim=True)).square() * weight).sum(1)
        explained = 1.0 - var_err / var_r.clamp(min=1e-8)
    return loss, {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                  "entropy": entropy_mean.detach(), "explained_variance": explained}


def batched_a2c_step(model: BatchedActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: A2CConfig,
                     watch=NULL_WATCH) -> tuple[list[str], Tensor]:
    """One gradient step of all K agents (one backward); returns the ``losses/*`` names and a (K, names)
    float32 tensor on the model's device. ``watch.report`` gets the (K,) losses."""
    loss, parts = batched_a2c_loss(model, ro, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()            # agent k's slice gets the gradient of agent k's loss only
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    parts["grad_norm"] = clip_grad_norm_agents(list(model.parameters()), max_norm, model.agents)
    watch.report(loss)
    optimizer.step()
    return [f"losses/{k}" for k in parts], torch.stack([v.float() for v in parts.values()], 1)


def graphed_batched_a2c_step(graphs, model: BatchedActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout,
                             cfg: A2CConfig, watch=NULL_WATCH) -> tuple[list[str], Tensor]:
    """:func:`batched_a2c_step` replayed from a CUDA graph (agents/cuda_graphs.py); ``ro`` is always the same."""
    from agents.cuda_graphs import graphed_step
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    return graphed_step(graphs, optimizer, lambda: batched_a2c_loss(model, ro, cfg),
                        lambda: clip_grad_norm_agents(list(model.parameters()), max_norm, model.agents), watch)


# -- the loop ----------------------------------------------------------------------------------------------------

def train_agents(envs: Sequence, model: BatchedActorCritic, optimizer: torch.optim.Optimizer, total_steps: int,
                 cfg: A2CConfig, generators: Sequence[torch.Generator | None], watch=NULL_WATCH,
                 on_episode: Callable[[int, Episode], None] | None = None,
                 on_update: Callable[[int, dict[str, float]], None] | None = None, final_loss: bool = False,
                 on_progress: Callable[[int], None] | None = None,
                 optimizer_points: int = OPTIMIZER_POINTS) -> list[A2CResult]:
    """K agents (``envs[k]``: agent k's vector env, one game each) trained together for ``total_steps`` env
    steps *each*, as :func:`agents.a2c.train_agent` trains one; returns one :class:`A2CResult` per agent.

    ``on_episode(k, Episode)``; ``on_update(step, logs)`` and ``on_progress(step)`` with each agent's env steps
    (all agents step alike) — ``logs`` maps ``losses/*`` to lists of K values. With ``final_loss`` one more
    rollout without a step gives each agent's f(θ_K); ``watch.finish`` gets the (K,) tensor. ``seconds`` of
    every result is the batch's wall time, so ``sps`` is per agent. ``optimizer_points`` as in ``train_agent``.
    """
    if cfg.groups != 1:
        raise ValueError("batched A2C steps one env group per agent (a2c.groups: 1)")
    collector = BatchedRolloutCollector(envs, model, cfg.n_steps, generators, on_episode, cfg.precision,
                                        keep_graph=cfg.reuse_forward and not cfg.cuda_graphs,
                                        graphs=graphs_for(cfg, model))
    K = model.agents
    updates = max(1, total_steps // (collector.num_envs * cfg.n_steps))
    names: list[str] = []
    table: Tensor | None = None               # (updates, K, len(names)) on the device, read once at the end
    stats_at = stats_updates(updates, optimizer_points)
    optimizer_stats: list[list] = [[] for _ in range(K)]
    start = time.perf_counter()
    for i in range(updates):
        ro = collector.collect()
        if collector.graphs is not None and i > 0:        # agents/cuda_graphs.py: the first update is eager
            names, values = graphed_batched_a2c_step(collector.graphs, model, optimizer, ro, cfg, watch)
        else:
            names, values = batched_a2c_step(model, optimizer, ro, cfg, watch)
        if i in stats_at:
            for k in range(K):
                if stats := agent_rmsprop_stats(optimizer, model, k):
                    optimizer_stats[k].append((collector.global_steps[k], stats))
        if table is None:
            table = values.new_empty(updates, K, len(names))
        table[i] = values
        if on_update is not None:
            on_update(collector.global_steps[0], dict(zip(names, values.T.tolist())))
        if on_progress is not None:
            on_progress(collector.global_steps[0])
    rows = table.tolist()
    last = [None] * K
    if final_loss:
        collector.keep_graph = False
        ro = collector.collect()
        with torch.no_grad():
            last_loss = batched_a2c_loss(model, ro, cfg)[0]
        watch.finish(last_loss)
        last = last_loss.tolist()
    seconds = time.perf_counter() - start
    results = []
    for k in range(K):
        logs = [dict(zip(names, row[k])) for row in rows]
        losses = [out["losses/loss"] for out in logs] + ([last[k]] if final_loss else [])
        steps = collector.global_steps[k]
        results.append(A2CResult(losses, logs, collector.episodes[k], updates, steps, seconds,
                                 steps / max(seconds, 1e-9), last[k], optimizer_stats[k]))
    return results
