"""B Miconi mazes stepped together in NumPy arrays (the Backpropamine "batch" of 30 episodes).

Same dynamics and observation layout as ``envs.maze.MiconiMaze`` — both call the shared functions in
``envs.maze`` — with every maze's state in one array, so a step is a handful of vectorised NumPy operations
and no per-maze Python loop. All mazes share the clock: they start together at ``reset`` and are truncated
together after ``episode_length`` steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from envs.maze import (
    N_ACTIONS,
    OBS_DIM,
    MazeConfig,
    build_layout,
    draw_goals,
    maze_step,
    observation_space,
    write_observations,
)


class MazeBatch:
    """``num_mazes`` independent mazes. Seeded with a NumPy Generator (``seed`` or ``reset(seed=...)``)."""

    def __init__(self, num_mazes: int, config: MazeConfig | None = None, seed: int | None = None, **overrides: Any):
        if num_mazes < 1:
            raise ValueError(f"num_mazes must be >= 1, got {num_mazes}")
        self.config = dataclasses.replace(config or MazeConfig(), **overrides)
        self.num_mazes = num_mazes
        self.layout = build_layout(self.config.size)
        self.single_observation_space = observation_space(self.config)
        self.obs_dim = OBS_DIM
        self.n_actions = N_ACTIONS
        self.rng = np.random.default_rng(seed)
        self.positions = np.full(num_mazes, self.layout.centre, dtype=np.int64)
        self.goals = np.zeros(num_mazes, dtype=np.int64)
        self.prev_rewards = np.zeros(num_mazes, dtype=np.float32)
        self.prev_actions = np.zeros(num_mazes, dtype=np.int64)
        self.episode_returns = np.zeros(num_mazes, dtype=np.float64)
        self.t = 0  # steps taken in the current episode (same convention as MiconiMaze)
        self._needs_reset = True

    @property
    def episode_length(self) -> int:
        return self.config.episode_length

    def reset(
        self, seed: int | None = None, goals: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Start a new episode in every maze; returns the observations (B, 17) float32 at t = 0.

        ``seed`` re-seeds the Generator (otherwise its stream continues); ``goals`` (B,) flat cell indices
        fixes the goals instead of drawing them; ``out`` is a (B, 17) float32 buffer to write into.
        """
        if seed is not None:
            self._reseed(seed)
        if goals is None:
            self.goals = self._draw_goals()
        else:
            goals = np.asarray(goals, dtype=np.int64).reshape(self.num_mazes)
            if not np.isin(goals, self.layout.goal_cells).all():
                raise ValueError("every goal must be a free non-centre cell")
            self.goals = goals.copy()
        self.positions = np.full(self.num_mazes, self.layout.centre, dtype=np.int64)
        self.prev_rewards[:] = 0.0
        self.prev_actions[:] = 0
        self.episode_returns[:] = 0.0
        self.t = 0
        self._needs_reset = False
        return self._write(out)

    def _reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _draw_goals(self) -> np.ndarray:
        return draw_goals(self.layout, self.rng, self.num_mazes)

    def _write(self, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            out = np.empty((self.num_mazes, OBS_DIM), dtype=np.float32)
        return write_observations(
            self.layout, self.config, self.positions, self.t, self.prev_rewards, self.prev_actions, out
        )

    def step(
        self, actions: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One action per maze. Returns (obs (B,17) float32, reward (B,) float32, terminated (B,) — always
        False, truncated (B,) — all True on step ``episode_length``, info). At truncation info holds
        ``episode_return`` (B,), the summed reward of each maze's episode. ``out`` as in ``reset``.
        """
        if self._needs_reset:
            raise RuntimeError("step() called before reset() or after the episode was truncated")
        actions = np.asarray(actions)
        if actions.shape != (self.num_mazes,):
            raise ValueError(f"expected actions of shape ({self.num_mazes},), got {actions.shape}")
        self.positions, reward, _ = maze_step(self.layout, self.config, self.positions, self.goals, actions, self.rng)
        self.t += 1
        self.prev_rewards[:] = reward
        self.prev_actions[:] = actions
        self.episode_returns += reward
        obs = self._write(out)
        done = self.t >= self.config.episode_length
        info: dict[str, Any] = {}
        if done:
            self._needs_reset = True
            info["episode_return"] = self.episode_returns.copy()
        terminated = np.zeros(self.num_mazes, dtype=bool)
        truncated = np.full(self.num_mazes, done, dtype=bool)
        return obs, reward, terminated, truncated, info


class SeedMazeBatch(MazeBatch):
    """S independent seeds × B mazes stepped as one batch of S·B mazes (seed-major: mazes s·B … s·B + B − 1
    belong to seed s). Every seed draws its goals and teleports from its own NumPy Generator (``rngs[s]``,
    seeded with ``seeds[s]``), in the same order as a ``MazeBatch(B, seed=seeds[s])`` alone, so each seed
    sees exactly the episodes it would see alone given the same actions."""

    def __init__(self, seeds: list[int], mazes_per_seed: int, config: MazeConfig | None = None, **overrides: Any):
        if not seeds:
            raise ValueError("SeedMazeBatch needs at least one seed")
        super().__init__(len(seeds) * mazes_per_seed, config, seed=None, **overrides)
        self.seeds = len(seeds)
        self.mazes_per_seed = mazes_per_seed
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.rng = self.rngs                # maze_step splits the mazes into one group per generator

    def _reseed(self, seed: int) -> None:
        raise ValueError("a SeedMazeBatch keeps one generator per seed: re-seed them through rngs")

    def _draw_goals(self) -> np.ndarray:
        return np.concatenate([draw_goals(self.layout, rng, self.mazes_per_seed) for rng in self.rngs])


class ShortestPathOracle:
    """A reference policy that knows each maze's goal and moves along a shortest path to it (BFS).

    Calibrates the environment (docs/protocols.md §4: ≈ 270 reward per episode) and gives an upper reference line
    for learning curves. Ties between equally short moves go to the lowest action index.
    """

    def __init__(self, config: MazeConfig | None = None) -> None:
        self.layout = build_layout((config or MazeConfig()).size)
        self.distances = self._all_pairs_distances()

    def _all_pairs_distances(self) -> np.ndarray:
        """(cells, cells) shortest-path lengths between free cells; a large number where either is a wall."""
        lay = self.layout
        n = lay.size * lay.size
        unreachable = n + 1
        dist = np.full((n, n), unreachable, dtype=np.int64)
        for src in lay.free_cells:  # BFS from every free cell: 97 × a few hundred cells, done once
            dist[src, src] = 0
            frontier = [int(src)]
            while frontier:
                nxt = []
                for cell in frontier:
                    for off in lay.move_offsets:
                        nb = cell + int(off)
                        if not lay.wall_flat[nb] and dist[src, nb] == unreachable:
                            dist[src, nb] = dist[src, cell] + 1
                            nxt.append(nb)
                frontier = nxt
        return dist

    def actions(self, positions: np.ndarray, goals: np.ndarray) -> np.ndarray:
        neighbours = positions[:, None] + self.layout.move_offsets[None, :]  # (B, 4)
        return np.argmin(self.distances[goals[:, None], neighbours], axis=1)
