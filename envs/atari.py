"""Atari vector environments with one API over two backends: EnvPool (fast, C++ threads) and gymnasium + ale-py.

    env = make_atari("Pong", num_envs=16, seed=0, backend="auto", train=True)
    obs = env.reset()                                  # (N, 4, 84, 84) uint8
    obs, reward, done, info = env.step(actions)        # or env.send(actions); ...; env.recv()

Preprocessing is the DQN/baselines one in both backends: frame skip 4 with a max over the last two frames,
84×84 grayscale, 4 stacked frames, up to 30 no-ops at reset, no sticky actions, minimal action set,
27,000 agent steps per game at most. ``train=True`` adds the two training-only signals: episodic life
(``done`` fires on every lost life) and reward clipping to {−1, 0, 1}. ``train=False`` (evaluation) gives
whole games and raw rewards.

Options: ``observation="rgb"`` gives one 84×84 RGB frame, (3, 84, 84) uint8 channel-first, instead of the
grey 4-stack (``"gray4"``, the default) — the Leap paper's input; with EnvPool it is ``gray_scale=False,
stack_num=1`` (its RGB stack is 3·stack_num channels). ``reward_bound=b`` (> 0) clips training rewards to
[−b, b] instead of to their sign (the Leap paper: 5); EnvPool's own clipping only knows the sign, so the bound
is applied here, to the raw reward. ``render=True`` adds ``render()``: the emulator's screen of every env as
it stands after the last step, (N, 210, 160, 3) uint8 RGB — the real game frame, not the agent's 84×84
input (EnvPool ``render_mode="rgb_array"``; gymnasium the same per env). With frame skip 4 it shows every
4th frame, so ``VIDEO_FPS`` (60 / 4) plays a recording at the game's speed.

What one ``step`` returns (arrays of length N):

- ``reward``   float32, clipped to its sign when ``train`` (the learning signal).
- ``done``     bool, the end of a *training* episode: game over, time limit, or (train) a lost life.
- ``info``     dict of arrays:
  ``raw_reward`` (float32, unclipped: what game scores sum),
  ``terminated`` (bool, the game is over: all lives lost — never a mere life loss),
  ``truncated`` (bool, the time limit cut the game),
  ``lives`` (int32),
  ``autoreset`` (bool, this step was an automatic reset: the action was ignored and the reward is 0;
  learners must mask this transition out of returns and losses, and statistics must not count it).

Auto-reset convention (EnvPool, verified on 1.2.5 with ``env_type="gymnasium"``): after a step that returns
``terminated or truncated`` the *next* ``step`` performs the reset; its action is discarded, its reward is 0
and both flags are False. With ``episodic_life`` a lost life returns ``terminated=True`` (``info["terminated"]``
stays 0 until the game is really over) and the next step is again a reset step — a soft one that keeps the
game, runs the no-ops and presses FIRE — which does not advance ``info["elapsed_step"]``. Time-limit ends come
as ``truncated=True`` with ``terminated=False``. The gymnasium backend uses ``autoreset_mode=NEXT_STEP`` (the
same convention for real episode ends) but reports a life loss by watching ``lives`` without resetting
anything, so there a life-loss ``done`` is followed by an ordinary step. ``info["autoreset"]`` makes the
difference explicit, so learners never have to guess.

Asynchronous EnvPool (``batch_size`` < ``num_envs``, EnvPool's async mode): ``recv`` returns the first
``batch_size`` envs to finish their step, in any order; ``info["env_id"]`` says which (this wrapper sorts each
batch by env id), and ``send(actions, env_ids)`` steps those envs. ``reset`` waits for every env's first
observation and returns all ``num_envs`` of them in env order. The auto-reset flags above are kept per env id.
Only EnvPool has this mode; ``num_envs`` must be a multiple of ``batch_size`` (agents/async_a2c.py says why).

Differences of the gymnasium fallback from EnvPool: no FIRE press at reset or after a lost life, and no
no-ops after a lost life (EnvPool's soft reset runs them). Observation shape, dtype, the stack padded with
the first frame (the reset observations of both backends are identical for Pong) and the signals above
are the same.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

OBS_SHAPE = (4, 84, 84)
BACKENDS = ("envpool", "gymnasium", "auto")
# observation mode → (channels, height, width) of one observation
OBSERVATIONS = {"gray4": OBS_SHAPE, "rgb": (3, 84, 84)}
VIDEO_FPS = 15                    # the ALE runs at 60 frames/s; one agent step is 4 of them (frame skip 4)


def observation_shape(observation: str = "gray4") -> tuple[int, int, int]:
    if observation not in OBSERVATIONS:
        raise ValueError(f"unknown Atari observation {observation!r}; choose one of {', '.join(OBSERVATIONS)}")
    return OBSERVATIONS[observation]


def clip_rewards(raw: np.ndarray, bound: float | None) -> np.ndarray:
    """Training rewards: the sign of ``raw`` (``bound`` None or 0, DQN), else ``raw`` clipped to [−bound, bound]."""
    if bound:
        return np.clip(raw, -bound, bound).astype(np.float32, copy=False)
    return np.sign(raw).astype(np.float32)


# -- game names -------------------------------------------------------------------------------------------

def _camel(rom: str) -> str:
    """ROM id → game name, as both EnvPool and gymnasium spell it: ``space_invaders`` → ``SpaceInvaders``."""
    return "".join(part.capitalize() for part in rom.split("_"))


def envpool_available() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def valid_games(backend: str = "auto") -> list[str]:
    """Game names the backend can run (EnvPool's registry, or ale-py's ROM list)."""
    if resolve_backend(backend) == "envpool":
        from envpool.atari.registration import atari_game_list
        roms = atari_game_list
    else:
        from ale_py.roms import get_all_rom_ids
        roms = get_all_rom_ids()
    return sorted(_camel(r) for r in roms)


def canonical_game(game: str, backend: str = "auto") -> str:
    """Accept ``Pong``, ``Pong-v5``, ``ALE/Pong-v5``, ``pong``, ``space_invaders``; return ``Pong`` style.

    Unknown names raise ``ValueError`` with a one-line message: the likely neighbours first ("did you mean"),
    then the valid names (a long list that error lines clip at the end).
    """
    name = game.strip()
    if name.startswith("ALE/"):
        name = name[len("ALE/"):]
    for suffix in ("NoFrameskip-v4", "-v5", "-v4"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    key = name.replace("_", "").lower()
    games = valid_games(backend)
    for g in games:
        if g.lower() == key:
            return g
    import difflib
    by_key = {g.lower(): g for g in games}
    near = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6)]     # closest first
    guess = f"did you mean {' or '.join(near)}? " if near else ""
    raise ValueError(f"unknown Atari game {game!r}; {guess}valid games ({len(games)}): {', '.join(games)}")


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown Atari backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "envpool" if envpool_available() else "gymnasium"
    return backend


def num_actions(game: str, backend: str = "auto") -> int:
    """Size of the game's minimal action set, without starting an emulator where the backend allows it."""
    backend = resolve_backend(backend)
    name = canonical_game(game, backend)
    if backend == "envpool":
        import envpool
        return int(envpool.make_spec(f"{name}-v5").action_space.n)
    import gymnasium as gym
    import ale_py
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{name}-v5", full_action_space=False)
    try:
        return int(env.action_space.n)
    finally:
        env.close()


# -- the vector env ---------------------------------------------------------------------------------------

StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]


class AtariVecEnv:
    """Base of both backends: the uniform ``reset / step / send / recv`` API documented in the module."""

    game: str
    backend: str
    num_envs: int
    num_actions: int
    train: bool
    observation_shape = OBS_SHAPE
    batch_size: int | None = None       # async EnvPool: envs per recv (< num_envs); None: every env, in order

    def reset(self) -> np.ndarray:
        raise NotImplementedError

    def send(self, actions: np.ndarray) -> None:
        """Start stepping every env with ``actions``; the result comes from ``recv``."""
        raise NotImplementedError

    def recv(self) -> StepResult:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> StepResult:
        self.send(actions)
        return self.recv()

    def render(self) -> np.ndarray:
        """(N, 210, 160, 3) uint8: each env's screen now (needs ``render=True`` at construction)."""
        raise NotImplementedError(f"{type(self).__name__} was built without render=True")

    def close(self) -> None:
        pass

    def __enter__(self) -> "AtariVecEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EnvPoolAtari(AtariVecEnv):
    """EnvPool in its asynchronous mode with ``batch_size == num_envs``: ``send`` returns at once and the
    C++ threads step while Python computes; ``recv`` waits for the whole batch."""

    def __init__(self, game: str, num_envs: int, seed: int, train: bool, max_episode_steps: int = 27000,
                 noop_max: int = 30, frame_skip: int = 4, num_threads: int | None = None,
                 episodic_life: bool | None = None, reward_clip: bool | None = None,
                 observation: str = "gray4", reward_bound: float | None = None, render: bool = False,
                 batch_size: int | None = None) -> None:
        import envpool

        self.game, self.backend, self.num_envs, self.train = game, "envpool", num_envs, train
        if batch_size is not None and (batch_size < 1 or num_envs % batch_size):
            raise ValueError(f"EnvPool's batch_size ({batch_size}) must divide num_envs ({num_envs})")
        self.batch_size = batch_size if batch_size is not None and batch_size < num_envs else None
        self._render = render
        self.observation_shape = observation_shape(observation)
        clip = train if reward_clip is None else reward_clip
        # A bound other than the sign is applied in recv() to the raw reward (EnvPool clips to the sign only).
        self._bound = reward_bound if clip and reward_bound else None
        rgb = observation == "rgb"
        # More threads than cores only adds contention with torch on a small machine.
        threads = num_threads or min(num_envs, _cpu_count())
        self._env = envpool.make(
            f"{game}-v5", env_type="gymnasium", num_envs=num_envs, batch_size=self.batch_size or num_envs,
            num_threads=threads,
            seed=seed, max_episode_steps=max_episode_steps, noop_max=noop_max, frame_skip=frame_skip,
            stack_num=1 if rgb else OBS_SHAPE[0], img_height=OBS_SHAPE[1], img_width=OBS_SHAPE[2],
            gray_scale=not rgb,
            episodic_life=train if episodic_life is None else episodic_life,
            reward_clip=clip and self._bound is None,
            repeat_action_probability=0.0, full_action_space=False,
            **({"render_mode": "rgb_array"} if render else {}))
        self.num_actions = int(self._env.action_space.n)
        self._env_id = np.arange(num_envs, dtype=np.int32)
        self._prev_done = np.zeros(num_envs, dtype=bool)
        self._in_flight = np.zeros(num_envs, dtype=bool)     # async: sent and not yet received

    def reset(self) -> np.ndarray:
        if self.batch_size is not None:
            return self._reset_async()
        obs, info = self._env.reset()
        self._prev_done = np.zeros(self.num_envs, dtype=bool)   # a new array: callers may hold the old one
        return self._ordered(obs, info)[0]

    def _reset_async(self) -> np.ndarray:
        """Every env's first observation, in env order (``num_envs / batch_size`` receives). Envs still stepping
        (a loop that stopped with actions sent, as the async collector does) are received first: EnvPool resetting
        an env mid-step corrupts its state buffer (the emulator hits illegal instructions, then the process dies
        or hangs)."""
        if self._in_flight.any():    # every env in flight once (the idle ones with action 0), then all received
            idle = np.flatnonzero(~self._in_flight).astype(np.int32)
            if len(idle):
                self._env.send(np.zeros(len(idle), dtype=np.int32), idle)
            for _ in range(self.num_envs // self.batch_size):
                self._env.recv()
            self._in_flight[:] = False
        self._env.async_reset()
        out = np.empty((self.num_envs, *self.observation_shape), dtype=np.uint8)
        for _ in range(self.num_envs // self.batch_size):
            obs, *_, info = self._env.recv()
            out[info["env_id"]] = obs
        self._prev_done = np.zeros(self.num_envs, dtype=bool)
        return out

    def send(self, actions: np.ndarray, env_ids: np.ndarray | None = None) -> None:
        """``env_ids`` (async mode): the envs the actions are for; default every env, in order."""
        ids = self._env_id if env_ids is None else np.asarray(env_ids, dtype=np.int32)
        if self.batch_size is not None:
            self._in_flight[ids] = True
        self._env.send(np.asarray(actions, dtype=np.int32), ids)

    def recv(self) -> StepResult:
        obs, reward, term, trunc, info = self._env.recv()
        obs, reward, term, trunc, info = self._ordered(obs, info, reward, term, trunc)
        done = term | trunc
        if self.batch_size is None:
            autoreset = self._prev_done
            self._prev_done = done
        else:                                   # async: the envs of this batch only, by id
            ids = info["env_id"]
            self._in_flight[ids] = False
            autoreset = self._prev_done[ids]
            self._prev_done[ids] = done
        out = {"raw_reward": info["reward"], "terminated": info["terminated"].astype(bool),
               "truncated": trunc, "lives": info["lives"], "autoreset": autoreset,
               "elapsed_step": info["elapsed_step"]}
        if self.batch_size is not None:
            out["env_id"] = info["env_id"].astype(np.int64)
        if self._bound is not None:
            reward = clip_rewards(info["reward"], self._bound)
        return obs, reward.astype(np.float32, copy=False), done, out

    def _ordered(self, obs, info, *arrays):
        # With batch_size == num_envs EnvPool has always returned env order here; re-sort only if it does not.
        # Async batches come in completion order: sorted by env id here.
        ids = info["env_id"]
        if np.array_equal(ids, self._env_id) or (self.batch_size is not None and np.all(ids[1:] > ids[:-1])):
            return (obs, *arrays, info)
        order = np.argsort(ids)
        info = {k: v[order] for k, v in info.items() if isinstance(v, np.ndarray) and len(v) == len(ids)}
        return (obs[order], *(a[order] for a in arrays), info)

    def render(self) -> np.ndarray:
        if not self._render:
            return super().render()
        return self._env.render(env_ids=self._env_id)

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()


class GymnasiumAtari(AtariVecEnv):
    """gymnasium ``ALE/<Game>-v5`` + ``AtariPreprocessing`` + ``FrameStackObservation`` in a vector env.

    Episodic life is computed here from ``lives`` (gymnasium's ``terminal_on_life_loss`` would make the vector
    env reset the whole game on every lost life).
    """

    def __init__(self, game: str, num_envs: int, seed: int, train: bool, max_episode_steps: int = 27000,
                 noop_max: int = 30, frame_skip: int = 4, episodic_life: bool | None = None,
                 reward_clip: bool | None = None, vectorization: str = "sync", observation: str = "gray4",
                 reward_bound: float | None = None, render: bool = False) -> None:
        import gymnasium as gym

        self.game, self.backend, self.num_envs, self.train = game, "gymnasium", num_envs, train
        self._render = render
        self.observation_shape = observation_shape(observation)
        self.rgb = observation == "rgb"
        self.episodic_life = train if episodic_life is None else episodic_life
        self.reward_clip = train if reward_clip is None else reward_clip
        self.reward_bound = reward_bound
        fns = [_gym_env_fn(game, max_episode_steps, noop_max, frame_skip, self.rgb, render) for _ in range(num_envs)]
        if vectorization == "async":
            self._env = gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        elif vectorization == "sync":
            self._env = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        else:
            raise ValueError(f"unknown vectorization {vectorization!r}; choose sync or async")
        self.num_actions = int(self._env.single_action_space.n)
        self._seed = seed
        self._seeded = False
        self._actions: np.ndarray | None = None
        self._prev_end = np.zeros(num_envs, dtype=bool)     # a real episode end: the next step resets
        self._lives = np.zeros(num_envs, dtype=np.int32)

    def reset(self) -> np.ndarray:
        # Env i gets seed + i on the first reset, as in EnvPool; later resets continue their RNG streams.
        obs, info = self._env.reset(seed=None if self._seeded else self._seed)
        self._seeded = True
        self._prev_end = np.zeros(self.num_envs, dtype=bool)
        self._lives = np.asarray(info["lives"], dtype=np.int32)
        return self._frames(obs)

    def _frames(self, obs: np.ndarray) -> np.ndarray:
        # RGB: (N, 1, 84, 84, 3) from the one-frame stack → (N, 3, 84, 84), channel-first as EnvPool
        return np.ascontiguousarray(obs[:, 0].transpose(0, 3, 1, 2)) if self.rgb else obs

    def send(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions, dtype=np.int64)
        if hasattr(self._env, "step_async"):
            self._env.step_async(actions)
        self._actions = actions

    def recv(self) -> StepResult:
        if hasattr(self._env, "step_wait"):
            obs, raw, term, trunc, info = self._env.step_wait()
        else:
            obs, raw, term, trunc, info = self._env.step(self._actions)
        raw = raw.astype(np.float32)
        term, trunc = term.astype(bool), trunc.astype(bool)
        lives = np.asarray(info["lives"], dtype=np.int32)
        autoreset = self._prev_end
        done = term | trunc
        if self.episodic_life:
            done = done | ((lives < self._lives) & ~autoreset)
        self._prev_end = term | trunc
        self._lives = lives
        reward = clip_rewards(raw, self.reward_bound) if self.reward_clip else raw
        out = {"raw_reward": raw, "terminated": term, "truncated": trunc, "lives": lives,
               "autoreset": autoreset}
        return self._frames(obs), reward, done, out

    def render(self) -> np.ndarray:
        if not self._render:
            return super().render()
        return np.stack(self._env.call("render"))

    def close(self) -> None:
        self._env.close()


def _gym_env_fn(game: str, max_episode_steps: int, noop_max: int, frame_skip: int,
                rgb: bool = False, render: bool = False) -> Callable[[], Any]:
    def make():
        import ale_py
        import gymnasium as gym
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

        gym.register_envs(ale_py)
        # frameskip=1 in ALE: AtariPreprocessing does the skipping and the max over the last two frames.
        env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                       max_num_frames_per_episode=max_episode_steps * frame_skip + 1000,
                       render_mode="rgb_array" if render else None)
        env = AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip, screen_size=OBS_SHAPE[1],
                                 terminal_on_life_loss=False, grayscale_obs=not rgb, scale_obs=False)
        env = TimeLimit(env, max_episode_steps)            # counts agent steps, like EnvPool's limit
        return FrameStackObservation(env, 1 if rgb else OBS_SHAPE[0])
    return make


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_atari(game: str, num_envs: int, seed: int, backend: str = "auto", train: bool = True,
               max_episode_steps: int = 27000, noop_max: int = 30, frame_skip: int = 4,
               num_threads: int | None = None, episodic_life: bool | None = None,
               reward_clip: bool | None = None, vectorization: str = "sync", observation: str = "gray4",
               reward_bound: float | None = None, render: bool = False, batch_size: int | None = None) -> AtariVecEnv:
    """One Atari vector env; env i is seeded with ``seed + i``.

    ``backend="auto"`` uses EnvPool when it imports, else gymnasium + ale-py. ``episodic_life`` and
    ``reward_clip`` default to ``train``. ``num_threads`` (EnvPool) defaults to min(num_envs, cores);
    ``vectorization`` (gymnasium) is ``sync`` or ``async`` (one subprocess per env). ``observation``:
    ``gray4`` (default) or ``rgb``; ``reward_bound``: clip to [−b, b] instead of the sign; ``render``: add
    ``render()``, the full-size RGB screens (module docstring); ``batch_size`` < ``num_envs``: EnvPool's async
    mode (module docstring; EnvPool only).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    observation_shape(observation)
    backend = resolve_backend(backend)
    name = canonical_game(game, backend)
    if backend == "envpool":
        return EnvPoolAtari(name, num_envs, seed, train, max_episode_steps, noop_max, frame_skip,
                            num_threads, episodic_life, reward_clip, observation, reward_bound, render, batch_size)
    if batch_size is not None and batch_size < num_envs:
        raise ValueError("asynchronous envs (batch_size < num_envs) need the EnvPool backend")
    return GymnasiumAtari(name, num_envs, seed, train, max_episode_steps, noop_max, frame_skip,
                          episodic_life, reward_clip, vectorization, observation, reward_bound, render)


def make_atari_groups(game: str, num_envs: int, seed: int, groups: int = 2, backend: str = "auto",
                      train: bool = True, num_threads: int | None = None, **kwargs: Any) -> list[AtariVecEnv]:
    """``num_envs`` envs split into ``groups`` vector envs (env i still gets ``seed + i``).

    With EnvPool a learner can step one group while its network computes the next group's actions
    (``send`` returns at once), so env stepping overlaps compute. Threads are split between the groups.
    """
    if groups < 1 or num_envs % groups:
        raise ValueError(f"num_envs ({num_envs}) must be a positive multiple of groups ({groups})")
    size = num_envs // groups
    threads = num_threads or min(num_envs, _cpu_count())
    per_group = max(1, threads // groups)
    return [make_atari(game, size, seed + g * size, backend=backend, train=train, num_threads=per_group,
                       **kwargs) for g in range(groups)]


def close_all(envs: Sequence[AtariVecEnv]) -> None:
    for env in envs:
        env.close()
