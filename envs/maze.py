"""The Miconi grid maze (Backpropamine batch version, as used by WarpGrad's Warp-RNN experiment).

Specification: docs/protocols.md §4. An msize × msize grid (13 by default) whose outer ring is wall and
whose interior cells with an even row *and* an even column are pillars; the centre is always free. Every
episode the agent starts at the centre and an invisible goal is drawn uniformly from the free cells other
than the centre. Reaching the goal pays +10 and teleports the agent to a uniformly drawn free cell other
than the goal (the original rule), so an episode of T = 200 steps can collect many rewards. Episodes never
terminate; they are truncated after exactly T steps.

Time convention: ``t`` counts the steps taken in the current episode. ``reset`` returns the observation at
t = 0; the observation returned by the k-th ``step`` is at t = k, so the agent sees t/T = 0, 1/T, …,
(T−1)/T when choosing its T actions, and the final observation (returned with truncated=True) has t/T = 1.

The dynamics are written once, vectorised over a leading batch axis, in the module-level functions below;
``MiconiMaze`` (one maze, gymnasium API) and ``envs.maze_vector.MazeBatch`` (B mazes in one array) both call
them, so they agree by construction given the same random draws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

OBS_DIM = 17
N_ACTIONS = 4
# Observation layout (docs/protocols.md §4).
OBS_PATCH = slice(0, 9)  # 3×3 wall patch around the agent, row-major, 1 = wall
OBS_ZERO = 9  # always 0
OBS_BIAS = 10  # always 1
OBS_TIME = 11  # t / T
OBS_PREV_REWARD = 12
OBS_PREV_ACTION = slice(13, 17)  # one-hot previous action; action 0 at t = 0
# Actions: 0 up (row − 1), 1 down (row + 1), 2 left (column − 1), 3 right (column + 1).
ACTION_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(frozen=True)
class MazeConfig:
    """Maze settings; the defaults are the WarpGrad / Backpropamine paper runs (docs/protocols.md §4)."""

    size: int = 13  # msize, odd
    episode_length: int = 200  # T
    goal_reward: float = 10.0
    wall_penalty: float = 0.0  # wp: a bump into a wall pays −wp (the Backpropamine script default is 0.05)

    def __post_init__(self) -> None:
        if self.size < 5 or self.size % 2 == 0:
            raise ValueError(f"maze size must be odd and >= 5, got {self.size}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if self.wall_penalty < 0:
            raise ValueError(f"wall_penalty must be >= 0, got {self.wall_penalty}")


@dataclass(frozen=True)
class MazeLayout:
    """The fixed grid, with lookup tables over flat cell indices (cell = row * size + column)."""

    size: int
    walls: np.ndarray  # (size, size) bool
    wall_flat: np.ndarray  # (size * size,) bool
    free_cells: np.ndarray  # (n_free,) flat indices of free cells, ascending; includes the centre
    free_index: np.ndarray  # (size * size,) position of a cell in free_cells, −1 for walls
    goal_cells: np.ndarray  # free cells other than the centre: where goals are drawn
    centre: int  # flat index of the start cell
    patch_table: np.ndarray  # (size * size, 9) float32: the 3×3 wall patch seen from each cell
    move_offsets: np.ndarray  # (4,) flat-index offset of each action

    def cell(self, row: int, col: int) -> int:
        return row * self.size + col

    def row_col(self, cell: int) -> tuple[int, int]:
        return divmod(int(cell), self.size)


def build_layout(size: int) -> MazeLayout:
    walls = np.zeros((size, size), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    walls[2:-1:2, 2:-1:2] = True  # pillars: interior cells with even row and even column
    c = size // 2
    walls[c, c] = False  # the start cell is always free
    wall_flat = walls.reshape(-1)
    free_cells = np.flatnonzero(~wall_flat)
    free_index = np.full(size * size, -1, dtype=np.int64)
    free_index[free_cells] = np.arange(len(free_cells))
    centre = c * size + c
    goal_cells = free_cells[free_cells != centre]
    # The patch is only ever read at free cells, which are interior, so the 3×3 window stays in the grid;
    # wall cells get a zero row that is never used.
    patch_table = np.zeros((size * size, 9), dtype=np.float32)
    for cell in free_cells:
        r, col = divmod(int(cell), size)
        patch_table[cell] = walls[r - 1 : r + 2, col - 1 : col + 2].reshape(-1)
    move_offsets = np.array([dr * size + dc for dr, dc in ACTION_DELTAS], dtype=np.int64)
    for arr in (walls, wall_flat, free_cells, free_index, goal_cells, patch_table, move_offsets):
        arr.flags.writeable = False  # shared by every env built from this layout
    return MazeLayout(size, walls, wall_flat, free_cells, free_index, goal_cells, centre, patch_table, move_offsets)


# ---------------------------------------------------------------------------------------------------------
# Dynamics, vectorised over a leading batch axis (shared by the single env and the batched env).


def draw_goals(layout: MazeLayout, rng: np.random.Generator, n: int) -> np.ndarray:
    """n goals, uniform over the free cells other than the centre (flat indices)."""
    return layout.goal_cells[rng.integers(0, len(layout.goal_cells), size=n)]


def teleport_targets(layout: MazeLayout, goals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform free cell ≠ goal per entry of ``goals`` (original Backpropamine rule)."""
    # Draw among the n_free − 1 slots and skip over the goal's slot: uniform without rejection sampling.
    u = rng.integers(0, len(layout.free_cells) - 1, size=len(goals))
    u += u >= layout.free_index[goals]
    return layout.free_cells[u]


def maze_step(
    layout: MazeLayout,
    config: MazeConfig,
    positions: np.ndarray,
    goals: np.ndarray,
    actions: np.ndarray,
    rng: np.random.Generator | Sequence[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one action per maze. Returns (new positions, rewards float32, reached-goal mask).

    ``rng`` draws the teleport targets. A list of G generators splits the mazes into G equal,
    consecutive groups (independent seeds), each drawing from its own generator exactly as it would alone.
    """
    target = positions + layout.move_offsets[actions]
    blocked = layout.wall_flat[target]
    new_pos = np.where(blocked, positions, target)
    reward = np.where(blocked, np.float32(-config.wall_penalty), np.float32(0.0))
    reached = new_pos == goals
    if reached.any():
        reward[reached] = config.goal_reward
        if not isinstance(rng, (list, tuple)):
            new_pos[reached] = teleport_targets(layout, goals[reached], rng)
        else:
            n = len(positions) // len(rng)
            for k, group_rng in enumerate(rng):
                part = slice(k * n, (k + 1) * n)
                hit = reached[part]
                if hit.any():
                    new_pos[part][hit] = teleport_targets(layout, goals[part][hit], group_rng)
    return new_pos, reward, reached


_ONE_HOT = np.eye(N_ACTIONS, dtype=np.float32)


def write_observations(
    layout: MazeLayout,
    config: MazeConfig,
    positions: np.ndarray,
    t: int,
    prev_rewards: np.ndarray,
    prev_actions: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Fill ``out`` (B, 17) with the observations and return it."""
    out[:, OBS_PATCH] = layout.patch_table[positions]
    out[:, OBS_ZERO] = 0.0
    out[:, OBS_BIAS] = 1.0
    out[:, OBS_TIME] = t / config.episode_length
    out[:, OBS_PREV_REWARD] = prev_rewards
    out[:, OBS_PREV_ACTION] = _ONE_HOT[prev_actions]
    return out


def observation_space(config: MazeConfig) -> spaces.Box:
    # Entries 9 (always 0) and 10 (always 1) keep the [0, 1] bounds: gymnasium warns on degenerate bounds.
    low = np.zeros(OBS_DIM, dtype=np.float32)
    high = np.ones(OBS_DIM, dtype=np.float32)
    low[OBS_PREV_REWARD] = min(0.0, -config.wall_penalty)
    high[OBS_PREV_REWARD] = max(0.0, config.goal_reward)
    return spaces.Box(low=low, high=high, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------


class MiconiMaze(gymnasium.Env):
    """One Miconi maze with the gymnasium API; registered as ``metarl/MiconiMaze-v0`` by ``import envs``.

    ``reset(seed=..., options={"goal": (row, col)})`` fixes the goal for the episode (for tests and
    demonstrations); otherwise it is drawn from ``self.np_random``, as are teleport targets.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, config: MazeConfig | None = None, render_mode: str | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or MazeConfig(), **overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.render_mode = render_mode
        self.layout = build_layout(self.config.size)
        self.observation_space = observation_space(self.config)
        self.action_space = spaces.Discrete(N_ACTIONS)
        # Batch-of-one state, so the shared vectorised dynamics apply unchanged.
        self._pos = np.array([self.layout.centre], dtype=np.int64)
        self._goal = np.array([self.layout.goal_cells[0]], dtype=np.int64)
        self._prev_reward = np.zeros(1, dtype=np.float32)
        self._prev_action = np.zeros(1, dtype=np.int64)
        self._t = 0
        self._obs = np.zeros((1, OBS_DIM), dtype=np.float32)
        self._needs_reset = True

    @property
    def t(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    @property
    def position(self) -> tuple[int, int]:
        return self.layout.row_col(self._pos[0])

    @property
    def goal(self) -> tuple[int, int]:
        return self.layout.row_col(self._goal[0])

    def _observation(self) -> np.ndarray:
        write_observations(self.layout, self.config, self._pos, self._t, self._prev_reward, self._prev_action,
                           self._obs)
        return self._obs[0].copy()

    def _info(self, reached: bool = False) -> dict[str, Any]:
        return {"position": self.position, "goal": self.goal, "reached_goal": reached}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        goal = (options or {}).get("goal")
        if goal is None:
            self._goal = draw_goals(self.layout, self.np_random, 1)
        else:
            cell = self.layout.cell(*goal)
            if cell not in set(self.layout.goal_cells.tolist()):
                raise ValueError(f"goal {goal} is not a free non-centre cell")
            self._goal = np.array([cell], dtype=np.int64)
        self._pos = np.array([self.layout.centre], dtype=np.int64)
        self._prev_reward[:] = 0.0
        self._prev_action[:] = 0
        self._t = 0
        self._needs_reset = False
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("step() called before reset() or after the episode was truncated")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}")
        actions = np.array([int(action)], dtype=np.int64)
        self._pos, reward, reached = maze_step(self.layout, self.config, self._pos, self._goal, actions, self.np_random)
        self._t += 1
        self._prev_reward[:] = reward
        self._prev_action[:] = actions
        truncated = self._t >= self.config.episode_length
        self._needs_reset = truncated
        return self._observation(), float(reward[0]), False, truncated, self._info(bool(reached[0]))

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        chars = np.where(self.layout.walls, "#", ".")
        chars[self.goal] = "G"
        chars[self.position] = "A"
        return "\n".join("".join(row) for row in chars)
