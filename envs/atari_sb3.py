"""Our Atari vector env seen as an SB3 ``VecEnv``, so SB3 agents can run on EnvPool in benchmarks and tests.

SB3 assumes that a vector env resets a finished env within the same ``step``; EnvPool resets it on the
next one (see ``envs/atari.py``). Passed through unchanged, an SB3 learner therefore sees each reset step as
an ordinary transition with reward 0. That costs nothing in throughput and does not matter to tests of the
optimiser seam, but do not compare learning curves made this way.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from envs.atari import AtariVecEnv


class SB3AtariVecEnv(VecEnv):
    def __init__(self, env: AtariVecEnv) -> None:
        self.env = env
        obs_space = spaces.Box(0, 255, env.observation_shape, dtype=np.uint8)
        super().__init__(env.num_envs, obs_space, spaces.Discrete(env.num_actions))
        self._empty_infos = [{} for _ in range(env.num_envs)]

    def reset(self) -> np.ndarray:
        return self.env.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self.env.send(actions)

    def step_wait(self):
        obs, reward, done, _ = self.env.recv()
        return obs, reward, done, [dict(d) for d in self._empty_infos]

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.env, attr_name, None) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise NotImplementedError("SB3AtariVecEnv has no per-env attributes to set")

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        raise NotImplementedError("SB3AtariVecEnv has no per-env methods")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)
