"""Atari games as tasks: each game is one task, its inner loop is A2C for a number of env steps.

Network and frames: ``atari.network`` (``nature``, default; ``mnih2013``, the Leap paper's) and
``atari.observation`` (``gray4``, default; ``rgb``, one 84×84 RGB frame) — agents/nets.py, envs/atari.py.
Models are drawn on the CPU and run on the adapter's ``device`` (``run.device``); EnvPool steps on CPU
threads, and each task's action-sampling generator lives on the model's device.

Heads across games with different action counts
-----------------------------------------------
A meta-learner stores *one* initialisation of *one* model shape, but the games' minimal action sets
differ (Breakout 4, Pong 6, BeamRider 9, Alien 18). Only the encoder can carry knowledge across games
(action k of one game and action k of another share nothing), so the Atari scheme is: meta-learn the
encoder (``include=["encoder."]``), and give every task fresh heads drawn from the task's seeded generator.
``head = ("policy.", "value.")`` names them. Two head sizes are offered (``heads``):

- ``"game"`` (default): ``make_model(generator, task)`` sizes the policy head by the task's own action
  count. The template built without a task gets ``max_actions`` logits (the largest count over every
  configured game); its head never reaches a task because the trainer's ``meta.head: reset`` (the
  default) skips the head in ``load_init`` and keeps the freshly drawn one.
- ``"max"``: every model has ``max_actions`` logits, and a game with A actions uses the first A — the A2C
  code slices ``logits[:, :A]`` before the softmax, so the other rows are never sampled and get exactly zero
  gradient. One shape for all games, so this also works with ``meta.head: learned`` (heads in θ⁰).

Game statistics
---------------
``adapt`` returns the per-update loss curve (the protocol). Finished games — raw score summed over all
lives, length, and the env-step at which they ended — are kept on the adapter for the trainer to log per
game (``drain_logs``): ``charts/<game>/episodic_return`` / ``episodic_length``, the A2C losses
``losses/<game>/{policy,value,entropy}`` (means over at most ``LOSS_POINTS`` blocks of updates per task) and
RMSprop's statistics ``optim/<game>/*`` go to a TensorBoard run per *visit* (one task: a game trained from the
initialisation), ``games/<game>/visit_<S>`` with S the run's env steps when the visit started (as if the visits of
a batched meta-batch ran one after another; zero-padded, so runs sort by time), on the visit's own env-step axis —
so each visit is a curve from 0 and no line joins two visits; one ``charts/<game>/SPS`` point per task goes to
``games/`` on the run's env-step axis. Scores of different games never share a curve. Read ``drain_games()`` after
each task (steps are cumulative over every ``adapt`` call of this adapter), or set ``on_game`` /
``on_update`` / ``on_progress`` (env steps after each update, no host sync) for live logging.
``evaluate`` returns the mean true score of the most recent games of the task's last ``adapt`` (the
convention of Atari learning curves), or of a separate evaluation run when ``eval_steps > 0``.
``record_episode`` plays one whole game with the task's policy and returns its real screens (the video of
the held-out protocol, ``eval.video``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from agents.a2c import (A2CConfig, A2CResult, Episode, RolloutCollector, autocast, make_optimizer,
                        sample_actions, train_agent)
from agents.nets import ENCODERS, ActorCritic
from envs.atari import (OBSERVATIONS, resolve_backend, canonical_game, close_all, make_atari, make_atari_groups,
                        num_actions)
from metarl.seam import NULL_WATCH

from ..errors import ConfigError
from .atari_eval import evaluate_atari
from .base import TaskAdapter

LOSS_POINTS = 50           # per task: A2C losses logged as means over at most this many blocks of updates


def _default_train_games() -> list[str]:
    return ["Pong", "Breakout", "Qbert", "BeamRider", "AirRaid", "Atlantis"]


def _default_test_games() -> list[str]:
    return ["SpaceInvaders", "Alien"]


@dataclass
class AtariTaskConfig:
    train_games: list[str] = field(default_factory=_default_train_games)
    val_games: list[str] = field(default_factory=list)
    test_games: list[str] = field(default_factory=_default_test_games)
    backend: str = "auto"                 # envpool | gymnasium | auto
    max_episode_steps: int = 27000        # agent steps per game (108k frames)
    env_threads: int | None = None        # EnvPool threads; default min(num_envs, cores)
    test_on_train_games: bool = False     # allow held-out games that are also trained on (the Leap paper does)
    eval_games: int = 20                  # evaluate(): mean over this many most recent games
    eval_steps: int = 0                   # > 0: evaluate with a separate run of this many env steps
    heads: str = "game"                   # game: policy head sized per game; max: max_actions, sliced per game
    network: str = "nature"               # nature: Nature-DQN CNN (fc 512); mnih2013: the Leap paper's (fc 256)
    observation: str = "gray4"            # gray4: 4 stacked grey 84×84 frames; rgb: one 84×84 RGB frame
    reward_clip: float = 0.0              # training rewards: 0 → their sign (DQN); c > 0 → clipped to [−c, c]
    eval_window: int = 10                 # held-out protocol: finished games in each curve's moving average
    eval_band: float = 1.0                # held-out plots: mean ± this many standard deviations over seeds
    auc_start: int = 0                    # held-out AUCs: the running curve from this env step to the horizon
    a2c: A2CConfig = field(default_factory=A2CConfig)

    def __post_init__(self) -> None:
        if isinstance(self.a2c, dict):    # built from a YAML mapping
            self.a2c = A2CConfig(**self.a2c)
        if self.heads not in ("game", "max"):
            raise ValueError(f"atari.heads must be game or max, got {self.heads!r}")
        if self.network not in ENCODERS:
            raise ValueError(f"atari.network must be one of {', '.join(ENCODERS)}, got {self.network!r}")
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"atari.observation must be one of {', '.join(OBSERVATIONS)}, got {self.observation!r}")
        if self.reward_clip < 0 or self.eval_window < 1 or self.eval_band < 0 or self.auc_start < 0:
            raise ValueError("atari.reward_clip, eval_band and auc_start must be >= 0, eval_window >= 1")
        if self.eval_games < 1 or self.eval_steps < 0 or self.max_episode_steps < 1:
            raise ValueError("atari.eval_games and max_episode_steps must be >= 1, eval_steps >= 0")
        # Unknown names fail here, at config time, with one line listing the valid names.
        for split in ("train_games", "val_games", "test_games"):
            setattr(self, split, [canonical_game(g, self.backend) for g in getattr(self, split)])
        if not (self.train_games or self.val_games or self.test_games):
            raise ValueError("atari: no games configured (train_games, val_games and test_games are all empty)")
        if self.env_threads is not None and self.env_threads < 1:
            raise ValueError(f"atari.env_threads must be >= 1 (or null: EnvPool's default), got {self.env_threads}")
        if self.a2c.async_batch and resolve_backend(self.backend) != "envpool":
            raise ValueError("atari.a2c.async_batch is EnvPool's async mode: set atari.backend: envpool")
        shared = sorted(set(self.train_games) & set(self.test_games) | set(self.val_games) & set(self.test_games))
        if shared and not self.test_on_train_games:
            raise ValueError(f"atari: {', '.join(shared)} both trained on and held out; set "
                             f"atari.test_on_train_games: true if that is intended")


@dataclass(frozen=True)
class Game:
    """One task: a game, its action count and the seed of its envs and action sampling."""
    key: str
    num_actions: int
    seed: int

    def batch(self, split: str):
        raise NotImplementedError("Atari tasks have no fixed batches: their data comes from acting (adapt)")

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError("Atari tasks have no fixed batches: their data comes from acting (adapt)")


@dataclass
class GameRecord:
    """A finished game as the trainer logs it."""
    task: str
    global_step: int          # env steps over every adapt() of this adapter, at the end of the game
    episodic_return: float
    length: int
    visit_step: int = 0       # env steps into its visit (its task), at the end of the game
    visit: int = 0            # the visit's start: this adapter's env steps when it began (module docstring)


def visit_run(game: str, start: int) -> str:
    """The TensorBoard run of the visit of ``game`` that started at env step ``start`` (module docstring)."""
    return f"games/{game}/visit_{start:012d}"


class AtariAdapter(TaskAdapter):
    config: AtariTaskConfig
    head = ("policy.", "value.")
    periodic_evaluation = False           # the held-out protocol (evaluate_run) runs once, at the end
    spreads_evaluation = True             # under torchrun every rank takes a share of the held-out runs
    clip_key = "atari.a2c.max_grad_norm"  # the one clip key (TaskAdapter.clip_key)

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        out = {k: v for k, v in super().unused_keys(cfg).items() if not v.startswith("only Atari's")}
        for k in ("optimizer", "lr", "momentum"):
            out[f"inner.{k}"] = ("Atari's A2C has its own optimiser: set atari.a2c.* instead (inner.steps is "
                                 "the env steps per game)")
        return out

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        # the lists a run will use must not be empty, or it fails only after training; eval.split's own games,
        # never the test games in their place: the results would be filed under a split they are not
        c = cfg.task_config
        if cfg.meta.steps > 0 and not c.train_games:
            raise ValueError("config key 'atari.train_games' is empty: meta-training has no games")
        if not getattr(c, f"{cfg.eval.split}_games"):
            raise ValueError(f"config key 'atari.{cfg.eval.split}_games' is empty: the {cfg.eval.split} evaluation "
                             f"(eval.split: {cfg.eval.split}) has no games")
        device = cfg.run.device
        if c.a2c.cuda_graphs and device != "cuda" and not device.startswith("cuda:") and \
                (device == "cpu" or not torch.cuda.is_available()):
            raise ValueError(f"config key 'atari.a2c.cuda_graphs' needs a CUDA device (run.device: {device} runs "
                             f"on the CPU): set it false, or run.device: cuda")

    @classmethod
    def head_shape_varies(cls, task_config: Any) -> str:
        return ("atari.heads: game sizes each game's head by its own action set; set atari.heads: max"
                if task_config.heads == "game" else "")

    def __init__(self, config: AtariTaskConfig | None = None, seed: int = 0) -> None:
        super().__init__(config or AtariTaskConfig(), seed)   # task seeds come from sample_tasks' rng
        cfg = self.config
        self.games = dict(zip(self.splits, (cfg.train_games, cfg.val_games, cfg.test_games)))
        every = sorted({g for names in self.games.values() for g in names})
        self.actions = {g: num_actions(g, cfg.backend) for g in every}
        self.max_actions = max(self.actions.values())
        self.global_step: int = 0         # env steps over every adapt() of this adapter
        self.games_played: list[GameRecord] = []
        self.recent: dict[str, list[Episode]] = {}        # finished games of each task's last adapt
        self.last_result: A2CResult | None = None
        self.on_game: Callable[[GameRecord], None] | None = None
        self.on_update: Callable[[str, int, dict[str, float]], None] | None = None
        self.on_progress: Callable[[str, int], None] | None = None       # (game, env steps so far)
        self._task_logs: list[tuple[int, dict[str, float]]] = []         # per-game SPS and losses of adapt()
        # Seconds per env step of each training game, pooled over ranks (share_costs): the meta-batch's
        # assignment to ranks (task_costs); and what this rank measured since the last pooling.
        self.costs: dict[str, float] = {}
        self._measured: dict[str, list[float]] = {}

    # -- protocol ----------------------------------------------------------------------------------------
    def make_model(self, generator: torch.Generator, task: Game | None = None) -> nn.Module:
        """Actor-critic drawn from ``generator``; policy head per ``config.heads`` (module docstring)."""
        cfg = self.config
        actions = task.num_actions if task is not None and cfg.heads == "game" else self.max_actions
        return ActorCritic(actions, in_channels=OBSERVATIONS[cfg.observation][0], generator=generator,
                           network=cfg.network)

    def make_optimizer(self, model: nn.Module, params: Iterable[nn.Parameter], inner: Any) -> torch.optim.Optimizer:
        """A2C's own optimiser (``atari.a2c``: RMSprop) over ``params``; ``inner.*`` does not apply."""
        return make_optimizer(params, self.config.a2c)

    def game(self, name: str, seed: int) -> Game:
        """The task of game ``name`` with env / sampling seed ``seed``."""
        return Game(name, self.actions[name], seed)

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[Game]:
        if split not in self.games:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(self.splits)}")
        games = self.games[split]
        if not games:
            raise ConfigError(f"atari: no {split} games configured ({split}_games is empty)")
        picks = rng.choice(len(games), size=n, replace=n > len(games))
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return [self.game(games[i], int(s)) for i, s in zip(picks, seeds)]

    def adapt(self, task: Game, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        """A2C on ``task`` for ``steps`` env steps; one watched optimiser step per update, then one more
        rollout without a step whose loss f(θ_K) closes the watch. Returns the loss curve (K+1 points).

        The gradient is clipped at ``a2c.max_grad_norm`` only (TaskAdapter.clip_key): ``clip_grad_norm`` must
        be None (``inner.clip_grad_norm`` is refused for Atari).
        """
        cfg = self.config
        if clip_grad_norm:
            raise ValueError("Atari clips at atari.a2c.max_grad_norm only; inner.clip_grad_norm is refused")
        a2c = cfg.a2c
        envs = self._envs(task, train=True, batch_size=a2c.async_batch or None)
        offset = self.global_step
        recent: list[Episode] = []

        def on_episode(ep: Episode) -> None:
            recent.append(ep)
            record = GameRecord(task.key, offset + ep.global_step, ep.episodic_return, ep.length, ep.global_step,
                                offset)
            self.games_played.append(record)
            if self.on_game is not None:
                self.on_game(record)

        on_update = None
        if self.on_update is not None:
            def on_update(step: int, logs: dict[str, float]) -> None:
                self.on_update(task.key, offset + step, logs)

        on_progress = None
        if self.on_progress is not None:
            def on_progress(step: int) -> None:
                self.on_progress(task.key, offset + step)

        try:
            result = train_agent(envs, model, optimizer, steps, watch=watch, cfg=a2c,
                                 on_episode=on_episode, on_update=on_update, final_loss=True,
                                 generator=_generator(model, task.seed), on_progress=on_progress)
        finally:
            close_all(envs)
        self._task_logs += _task_logs(task.key, offset, result)
        self._measure(task.key, result)
        self.global_step += result.env_steps
        self.recent[task.key] = recent
        self.last_result = result
        return result.losses

    @property
    def batched(self) -> bool:
        """``atari.a2c.batched``: the trainer adapts this rank's tasks of a meta-batch at once
        (:meth:`adapt_batched`)."""
        return self.config.a2c.batched

    def adapt_batched(self, tasks: list[Game], models: list[nn.Module], steps: int, watch=None,
                      clip_grad_norm: float | None = None) -> list[A2CResult]:
        """Several agents — ``tasks[k]`` from ``models[k]`` — trained at once as one stacked model
        (agents/batched_a2c.py), each as :meth:`adapt` would train it alone (same envs, sampling generator and
        A2C settings). ``watch(model, optimizer)``, when given, makes the watch of the stacked model's steps
        (a meta-learner's ``watch_stacked``: each agent its own task); ``clip_grad_norm`` as in :meth:`adapt`.
        Each model ends holding its trained parameters. Returns each agent's result; its finished games are in
        ``result.episodes`` (``evaluate(..., games=)``), not in ``recent``, where agents of one game would
        overwrite each other."""
        from agents.batched_a2c import BatchedActorCritic, train_agents

        if clip_grad_norm:
            raise ValueError("Atari clips at atari.a2c.max_grad_norm only; inner.clip_grad_norm is refused")
        cfg = self.config
        a2c = cfg.a2c
        envs = [self._envs(task, train=True)[0] for task in tasks]      # a2c.batched: one env group per agent
        offset = self.global_step
        first = len(self.games_played)                                  # this call's records start here
        K = len(tasks)

        def on_episode(k: int, ep: Episode) -> None:
            record = GameRecord(tasks[k].key, offset + ep.global_step, ep.episodic_return, ep.length, ep.global_step,
                                k)          # the agent: its visit's start is known when all have run (below)
            self.games_played.append(record)
            if self.on_game is not None:
                self.on_game(record)

        on_progress = None
        if self.on_progress is not None:
            def on_progress(step: int) -> None:           # every agent has taken ``step`` env steps
                self.on_progress(tasks[0].key, offset + K * step)

        try:
            batched = BatchedActorCritic(models, num_actions=[t.num_actions for t in tasks])
            optimizer = make_optimizer(batched.parameters(), a2c)
            generators = [_generator(m, t.seed) for m, t in zip(models, tasks)]
            with (watch(batched, optimizer) if watch is not None else NULL_WATCH) as w:
                results = train_agents(envs, batched, optimizer, steps, a2c, generators, watch=w,
                                       on_episode=on_episode, final_loss=True, on_progress=on_progress)
        finally:
            close_all(envs)
        with torch.no_grad():
            for k, model in enumerate(models):
                model.load_state_dict(batched.agent_state_dict(k))
        starts = offset + np.cumsum([0] + [r.env_steps for r in results[:-1]])    # as if one after another
        for record in self.games_played[first:]:
            record.visit = int(starts[record.visit])                            # agent k → its visit's start
        for task, result, start in zip(tasks, results, starts):
            self._task_logs += _task_logs(task.key, int(start), result)
            self._measure(task.key, result)
            self.recent[task.key] = result.episodes
        self.global_step += sum(r.env_steps for r in results)
        self.last_result = results[-1]
        return results

    def evaluate(self, task: Game, model: nn.Module, games: list[Episode] | None = None) -> dict[str, float]:
        """Mean true (raw, whole-game) score over the most recent ``eval_games`` games (``games``: the task's
        finished games, where several agents of one game ran at once)."""
        cfg = self.config
        if cfg.eval_steps > 0:
            games = self._evaluation_run(task, model)
        elif games is None:
            games = self.recent.get(task.key, [])
        games = games[-cfg.eval_games:]
        self.last_scored = games        # the games the score averages (an evaluation part records their range)
        if not games:
            return {"score": float("nan"), "length": float("nan"), "games": 0.0}
        return {"score": float(np.mean([g.episodic_return for g in games])),
                "length": float(np.mean([g.length for g in games])), "games": float(len(games))}

    @torch.no_grad()
    def record_episode(self, task: Game, model: nn.Module, max_frames: int) -> tuple[np.ndarray, float, bool]:
        """One whole game (evaluation env: all lives, raw score) with ``model``'s stochastic policy, as
        (frames (T, 210, 160, 3) uint8 — the real screens, the reset one first —, score, game over). The game is
        cut after ``max_frames`` frames (game over False, the score so far). Its own env and sampling generator:
        the runs around it are unchanged."""
        cfg = self.config
        env = make_atari(task.key, 1, task.seed, backend=cfg.backend, train=False, num_threads=1,
                         max_episode_steps=cfg.max_episode_steps, observation=cfg.observation, render=True)
        device = next(model.parameters()).device
        generator = _generator(model, task.seed + 2)      # + 1 is the evaluation run's (_evaluation_run)
        try:
            obs = env.reset()
            frames, score, over = [env.render()[0]], 0.0, False
            while len(frames) < max_frames and not over:
                with autocast(model, cfg.a2c.precision):
                    logits, _ = model(torch.from_numpy(obs).to(device))
                action = sample_actions(logits[:, : task.num_actions], generator)
                obs, _, _, info = env.step(action.cpu().numpy())
                score += float(info["raw_reward"][0])
                frames.append(env.render()[0])
                over = bool(info["terminated"][0] or info["truncated"][0])
        finally:
            env.close()
        return np.stack(frames), score, over

    def evaluate_run(self, cfg, meta, run_dir, step: int, logger=None, world=None) -> dict:
        """The held-out protocol: each held-out game from the meta-learned and from a random init (its runs
        spread over ``world``'s ranks)."""
        return evaluate_atari(cfg, self, meta, run_dir, step, logger, world=world)

    def task_costs(self, tasks: list[Game]) -> list[float] | None:
        """Each task's measured seconds per env step (games not measured yet: the mean of those that were);
        None before any was. The same on every rank: only pooled measurements enter (:meth:`share_costs`)."""
        if not self.costs:
            return None
        mean = float(np.mean(list(self.costs.values())))
        return [self.costs.get(task.key, mean) for task in tasks]

    def share_costs(self, all_reduce: Callable[[list[torch.Tensor]], None]) -> None:
        """Pool the training games' speeds measured on every rank since the last call: each game measured on
        some rank gets the mean of those measurements as its cost. In batched mode (``a2c.batched``) an agent's
        speed is its batch's, so a slow game weighs on every game batched with it."""
        games = self.games["train"]
        sums = torch.zeros(len(games), dtype=torch.float64)
        counts = torch.zeros(len(games), dtype=torch.float64)
        for i, game in enumerate(games):
            measured = self._measured.get(game, [])
            sums[i], counts[i] = sum(measured), len(measured)
        all_reduce([sums, counts])
        for game, total, n in zip(games, sums.tolist(), counts.tolist()):
            if n > 0:
                self.costs[game] = total / n
        self._measured = {}

    def _measure(self, game: str, result: A2CResult) -> None:
        if result.env_steps:
            self._measured.setdefault(game, []).append(result.seconds / result.env_steps)

    def state_dict(self) -> dict:
        return {"global_step": torch.tensor(self.global_step)}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])

    # -- helpers ---------------------------------------------------------------------------------------------
    def drain_games(self) -> list[GameRecord]:
        """Finished games since the last call, oldest first (the tasks' SPS and loss logs are dropped too:
        the held-out protocol drains games only)."""
        out, self.games_played, self._task_logs = self.games_played, [], []
        return out

    def drain_logs(self) -> list[tuple]:
        """Env-step scalars since the last call, per game: finished games, then each task's SPS and losses; as
        (step, scalars, run) on a visit's axis in its run (:func:`visit_run`), or (step, scalars) on the run's
        env-step axis (``games/``: SPS)."""
        tasks = self._task_logs
        games = [(g.visit_step, {f"charts/{g.task}/episodic_return": g.episodic_return,
                                 f"charts/{g.task}/episodic_length": float(g.length)}, visit_run(g.task, g.visit))
                 for g in self.drain_games()]
        # grouped by run, each in step order (a visit's run is written whole, then closed: trainer.Logger)
        return sorted(games + tasks, key=lambda e: (e[2] if len(e) > 2 else "", e[0]))

    def run_info(self) -> dict[str, Any]:
        """The Atari backend this run steps (``auto`` resolved) and its package's version."""
        from importlib import metadata

        from envs.atari import resolve_backend
        backend = resolve_backend(self.config.backend)
        try:
            version = metadata.version("envpool" if backend == "envpool" else "ale-py")
        except metadata.PackageNotFoundError:
            version = None
        return {"atari_backend": backend, "atari_backend_version": version}

    def _envs(self, task: Game, train: bool, batch_size: int | None = None) -> list:
        """The task's env groups; ``batch_size``: one asynchronous pool (``a2c.async_batch``, training only)."""
        cfg = self.config
        a2c = cfg.a2c
        extra = {"batch_size": batch_size} if batch_size else {}
        return make_atari_groups(task.key, a2c.num_envs, task.seed, groups=a2c.groups, backend=cfg.backend,
                                 train=train, num_threads=cfg.env_threads, max_episode_steps=cfg.max_episode_steps,
                                 observation=cfg.observation, reward_bound=cfg.reward_clip or None, **extra)

    def _evaluation_run(self, task: Game, model: nn.Module) -> list[Episode]:
        """Stochastic policy, whole games, raw rewards (train=False envs), no learning."""
        envs = self._envs(task, train=False)
        try:
            collector = RolloutCollector(envs, model, self.config.a2c.n_steps, _generator(model, task.seed + 1),
                                         precision=self.config.a2c.precision)
            while collector.global_step < self.config.eval_steps:
                collector.collect()
        finally:
            close_all(envs)
        return collector.episodes


def _task_logs(game: str, offset: int, result: A2CResult) -> list[tuple]:
    """One task's per-game env-step scalars: its SPS at its end (run's axis: env step ``offset`` + its steps), and,
    on the visit's axis in its run (:func:`visit_run`), RMSprop's statistics and its A2C losses as means over at
    most ``LOSS_POINTS`` blocks of updates, each at the env step its block ended."""
    run = visit_run(game, offset)
    out = [(step, {f"optim/{game}/{k}": v for k, v in stats.items()}, run) for step, stats in result.optimizer_stats]
    logs = result.logs
    if logs:
        per_update = result.env_steps // (len(logs) + (result.final_loss is not None))
        size = -(-len(logs) // LOSS_POINTS)
        for start in range(0, len(logs), size):
            block = logs[start:start + size]
            out.append(((start + len(block)) * per_update,
                        {f"losses/{game}/{k}": float(np.mean([row[f"losses/{k}_loss" if k != "entropy"
                                                                  else "losses/entropy"] for row in block]))
                         for k in ("policy", "value", "entropy")}, run))
    return [(offset + result.env_steps, {f"charts/{game}/SPS": float(result.sps)})] + sorted(out, key=lambda e: e[0])


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    """The action-sampling generator of a task, on the model's device (sampling needs no host round trip)."""
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
