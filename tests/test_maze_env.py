"""The Miconi maze: hand-worked dynamics, gymnasium conformance, the batched env, calibration."""

from __future__ import annotations

import importlib
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.maze import MazeConfig, MiconiMaze, build_layout, teleport_targets
from envs.maze_vector import MazeBatch, ShortestPathOracle

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
T = 200


def obs17(patch, t, prev_reward, prev_action):
    """The 17 observation values written out from their definition."""
    one_hot = [0.0] * 4
    one_hot[prev_action] = 1.0
    return np.array(list(patch) + [0.0, 1.0, t / T, prev_reward] + one_hot, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- layout


def test_layout_13x13_counts():
    lay = build_layout(13)
    assert lay.walls.shape == (13, 13)
    assert lay.walls[0].all() and lay.walls[-1].all() and lay.walls[:, 0].all() and lay.walls[:, -1].all()
    interior = lay.walls[1:-1, 1:-1]
    assert interior.sum() == 24  # 25 even/even pillars minus the cleared centre
    assert len(lay.free_cells) == 97
    assert len(lay.goal_cells) == 96 and lay.centre not in lay.goal_cells
    assert not lay.walls[6, 6] and lay.walls[4, 6] and lay.walls[6, 8] and not lay.walls[5, 6]


def test_layout_other_odd_size_and_rejects_even():
    lay = build_layout(9)  # the Backpropamine script default
    assert len(lay.free_cells) == 7 * 7 - 9 + 1
    with pytest.raises(ValueError):
        MazeConfig(size=12)


# ------------------------------------------------------------------------------------ hand-worked steps


def test_start_observation_is_all_free_patch_bias_and_action0():
    env = MiconiMaze()
    obs, info = env.reset(seed=0)
    expected = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0], dtype=np.float32)
    np.testing.assert_array_equal(obs, expected)
    assert obs.dtype == np.float32 and env.t == 0 and info["position"] == (6, 6)


def test_step_right_sees_pillar_and_records_time_and_action():
    env = MiconiMaze()
    env.reset(seed=0, options={"goal": (1, 1)})
    obs, reward, terminated, truncated, info = env.step(RIGHT)
    # At (6, 7): rows 5..7, columns 6..8; (6, 8) is a pillar, the centre (6, 6) is free.
    np.testing.assert_array_equal(obs, obs17([0, 0, 0, 0, 0, 1, 0, 0, 0], 1, 0.0, RIGHT))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["position"] == (6, 7) and env.t == 1


def test_step_up_sees_pillar_above_and_free_centre_below():
    env = MiconiMaze()
    env.reset(seed=0, options={"goal": (1, 1)})
    obs, *_ = env.step(UP)
    # At (5, 6): (4, 6) is a pillar; the centre (6, 6) below is free.
    np.testing.assert_array_equal(obs, obs17([0, 1, 0, 0, 0, 0, 0, 0, 0], 1, 0.0, UP))


def test_pillar_bump_and_corner_wall_bump_with_penalty():
    env = MiconiMaze(wall_penalty=0.05)
    env.reset(seed=0, options={"goal": (11, 11)})
    env.step(UP)  # (5, 6)
    obs, reward, *_, info = env.step(UP)  # (4, 6) is a pillar: stay
    assert info["position"] == (5, 6)
    assert reward == pytest.approx(-0.05)
    np.testing.assert_allclose(obs, obs17([0, 1, 0, 0, 0, 0, 0, 0, 0], 2, -0.05, UP), atol=1e-7)
    for a in [LEFT] * 5 + [UP] * 4:
        env.step(a)
    assert env.position == (1, 1)
    obs, reward, *_, info = env.step(UP)  # outer wall: stay
    assert info["position"] == (1, 1) and reward == pytest.approx(-0.05)
    np.testing.assert_allclose(obs, obs17([1, 1, 1, 1, 0, 0, 1, 0, 1], 12, -0.05, UP), atol=1e-7)


def test_wall_bump_costs_nothing_by_default():
    env = MiconiMaze()
    env.reset(seed=0, options={"goal": (11, 11)})
    env.step(UP)
    _, reward, *_, info = env.step(UP)
    assert reward == 0.0 and info["position"] == (5, 6)


def test_reaching_goal_pays_10_and_teleports_to_free_non_goal_cell():
    env = MiconiMaze()
    env.reset(seed=3, options={"goal": (5, 6)})
    obs, reward, terminated, truncated, info = env.step(UP)
    assert reward == 10.0 and info["reached_goal"] and not terminated and not truncated
    new = info["position"]
    assert new != (5, 6) and not env.layout.walls[new]
    # The observation is taken after the teleport: the new cell's patch, previous reward 10.
    r, c = new
    patch = env.layout.walls[r - 1 : r + 2, c - 1 : c + 2].reshape(-1).astype(np.float32)
    np.testing.assert_array_equal(obs, obs17(patch, 1, 10.0, UP))
    _, reward2, *_ = env.step(DOWN if new != (4, 6) else UP)
    assert reward2 in (0.0, 10.0)


def test_teleport_is_uniform_over_free_cells_other_than_goal():
    lay = build_layout(13)
    rng = np.random.default_rng(0)
    goal = lay.cell(5, 6)
    n = 96 * 200
    draws = teleport_targets(lay, np.full(n, goal), rng)
    counts = np.bincount(draws, minlength=169)
    assert counts[goal] == 0 and counts[lay.wall_flat].sum() == 0
    others = counts[lay.free_cells[lay.free_cells != goal]]
    assert len(others) == 96 and (others > 0).all()  # includes the centre
    chi2 = ((others - 200.0) ** 2 / 200.0).sum()  # 95 degrees of freedom; 99.9% quantile ≈ 145
    assert chi2 < 145


def test_time_counter_and_truncation_at_exactly_200_steps():
    env = MiconiMaze()
    obs, _ = env.reset(seed=1)
    assert obs[11] == 0.0
    rng = np.random.default_rng(0)
    for k in range(1, T + 1):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        assert obs[11] == np.float32(k / T) and env.t == k
        assert terminated is False
        assert truncated is (k == T)
    assert obs[11] == 1.0
    with pytest.raises(RuntimeError):
        env.step(0)


def test_same_seed_same_trajectory_different_seed_different_goals():
    def trajectory(seed):
        env = MiconiMaze()
        obs, info = env.reset(seed=seed)
        oracle = ShortestPathOracle()
        out = [info["goal"]]
        for _ in range(T):  # oracle actions: many goal hits, so teleport draws are exercised
            a = int(oracle.actions(env._pos, env._goal)[0])
            obs, r, *_, info = env.step(a)
            out.append((info["position"], r))
        return out

    a, b = trajectory(7), trajectory(7)
    assert a == b
    assert sum(r for _, r in a[1:]) >= 100  # teleports happened
    env0, env1 = MiconiMaze(), MiconiMaze()
    env0.reset(seed=0)
    env1.reset(seed=1)
    goals0 = [env0.reset()[1]["goal"] for _ in range(10)]
    goals1 = [env1.reset()[1]["goal"] for _ in range(10)]
    assert goals0 != goals1


# ------------------------------------------------------------------------------------ gymnasium API


def test_check_env_passes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gymnasium.make("metarl/MiconiMaze-v0").unwrapped, skip_render_check=True)
        check_env(MiconiMaze(size=9, wall_penalty=0.05), skip_render_check=True)


def test_registration_via_gymnasium_make_and_double_import():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)  # registering twice must be a no-op
    env = gymnasium.make("metarl/MiconiMaze-v0", size=9, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (17,) and env.unwrapped.config.size == 9
    assert env.render().count("A") == 1
    assert env.action_space.n == 4


# ------------------------------------------------------------------------------------ batched env


def test_vector_env_equals_single_env_for_one_maze_same_seed():
    oracle = ShortestPathOracle()
    single, batch = MiconiMaze(), MazeBatch(1)
    obs_s, _ = single.reset(seed=11)
    obs_b = batch.reset(seed=11)
    np.testing.assert_array_equal(obs_s, obs_b[0])
    assert single._goal[0] == batch.goals[0]
    total = 0.0
    for t in range(T):
        a = oracle.actions(batch.positions, batch.goals)
        if t % 7 == 3:
            a = np.array([UP])  # some wall bumps too
        obs_s, r_s, _, tr_s, _ = single.step(int(a[0]))
        obs_b, r_b, _, tr_b, info = batch.step(a)
        np.testing.assert_array_equal(obs_s, obs_b[0])
        assert r_s == r_b[0] and tr_s == tr_b[0]
        total += r_s
    assert total >= 100 and info["episode_return"][0] == total


class FixedDraws:
    """A stand-in Generator whose draws are a fixed offset: same teleport rule, deterministic targets."""

    def integers(self, low, high, size):
        return np.full(size, low + 13 % (high - low), dtype=np.int64)


def test_vector_env_equals_independent_single_envs_with_injected_goals_and_draws():
    B = 5
    goal_rc = [(5, 6), (6, 5), (1, 1), (11, 11), (7, 7)]
    batch = MazeBatch(B, wall_penalty=0.05)
    lay = batch.layout
    batch.reset(goals=np.array([lay.cell(*g) for g in goal_rc]))
    batch.rng = FixedDraws()
    singles = []
    for g in goal_rc:
        env = MiconiMaze(wall_penalty=0.05)
        env.reset(seed=0, options={"goal": g})
        env._np_random = FixedDraws()
        singles.append(env)
    rng = np.random.default_rng(5)
    oracle = ShortestPathOracle()
    hits = 0
    for t in range(T):
        a = oracle.actions(batch.positions, batch.goals) if t % 2 else rng.integers(0, 4, B)
        obs_b, r_b, _, _, _ = batch.step(a)
        for b, env in enumerate(singles):
            obs_s, r_s, *_ = env.step(int(a[b]))
            np.testing.assert_array_equal(obs_s, obs_b[b])
            assert np.float32(r_s) == r_b[b]
            hits += r_s == 10.0
    assert hits > 10


def test_vector_env_shapes_seeding_and_end_of_episode():
    a = MazeBatch(8, seed=3)
    b = MazeBatch(8)
    obs_a, _ = a.reset(), b.reset(seed=3)
    assert obs_a.shape == (8, 17) and obs_a.dtype == np.float32
    np.testing.assert_array_equal(a.goals, b.goals)
    assert len(set(a.goals.tolist())) > 1
    acts = np.random.default_rng(0).integers(0, 4, (T, 8))
    for t in range(T):
        oa, ra, term, trunc, info = a.step(acts[t])
        ob, rb, *_ = b.step(acts[t])
        np.testing.assert_array_equal(oa, ob)
        assert not term.any() and trunc.all() == (t == T - 1)
    assert info["episode_return"].shape == (8,)
    with pytest.raises(RuntimeError):
        a.step(acts[0])
    with pytest.raises(ValueError):
        a.reset()
        a.step(np.zeros(3, dtype=np.int64))


# ------------------------------------------------------------------------------------ calibration


def _mean_return(policy: str, episodes: int, seed: int) -> tuple[float, float]:
    batch = MazeBatch(episodes, seed=seed)
    batch.reset()
    rng = np.random.default_rng(seed + 1)
    oracle = ShortestPathOracle() if policy == "oracle" else None
    for _ in range(T):
        a = rng.integers(0, 4, episodes) if oracle is None else oracle.actions(batch.positions, batch.goals)
        *_, info = batch.step(a)
    returns = info["episode_return"]
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(episodes))


@pytest.mark.parametrize(
    "policy, reference_mean, reference_sd, episodes",
    [("random", 5.8, 8.3, 4000), ("oracle", 270.0, 50.0, 2000)],
)
def test_calibration_against_protocol_reference(policy, reference_mean, reference_sd, episodes):
    # Reference (docs/protocols.md §4): an independent re-implementation, 2000 episodes each; its own mean
    # carries a standard error sd/√2000. Allow 4 combined standard errors.
    mean, se = _mean_return(policy, episodes, seed=0)
    tolerance = 4.0 * np.hypot(se, reference_sd / np.sqrt(2000))
    assert abs(mean - reference_mean) < tolerance, (mean, tolerance)
