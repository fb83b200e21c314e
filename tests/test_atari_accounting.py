"""Episode accounting and return masking of the A2C loop, against a scripted fake vector env.

The fake env follows EnvPool's conventions (envs/atari.py): after a done step the next step is an
auto-reset (action ignored, reward 0, flagged ``autoreset``); with episodic life a lost life is a done
step while ``terminated`` (game over) stays False; a time-limit end is ``truncated``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agents.a2c import (A2CConfig, EpisodeStats, RolloutCollector, a2c_loss, compute_returns, make_optimizer,
                        train_agent)

OBS = (4, 84, 84)

# One scripted step per row: (raw reward, done, game over, truncated). An auto-reset step follows every
# done row automatically, as in EnvPool.
LIFE, OVER, CUT = "life", "over", "cut"


def script(*events):
    """Rows from ('r', reward) / (LIFE, reward) / (OVER, reward) / (CUT, reward)."""
    rows = []
    for kind, r in events:
        rows.append((float(r), kind in (LIFE, OVER, CUT), kind == OVER, kind == CUT))
    return rows


class FakeAtari:
    """Vector env replaying one script per env, with EnvPool's auto-reset steps inserted after dones.

    The observation's pixel [0, 0, 0] carries a per-env step counter so a stub model can read
    "values" from it; the script repeats when it runs out.
    """

    observation_shape = OBS

    def __init__(self, scripts: list[list[tuple]], num_actions: int = 3, clip: bool = True) -> None:
        self.scripts = scripts
        self.num_envs = len(scripts)
        self.num_actions = num_actions
        self.clip = clip
        self.pos = [0] * self.num_envs
        self.pending_reset = np.zeros(self.num_envs, dtype=bool)
        self.counter = np.zeros(self.num_envs, dtype=np.int64)
        self.lives = np.full(self.num_envs, 3, dtype=np.int32)
        self.sent = None

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, *OBS), dtype=np.uint8)
        obs[:, 0, 0, 0] = self.counter % 256
        return obs

    def reset(self) -> np.ndarray:
        return self._obs()

    def send(self, actions: np.ndarray) -> None:
        assert len(actions) == self.num_envs and (np.asarray(actions) < self.num_actions).all()
        self.sent = actions

    def recv(self):
        n = self.num_envs
        raw = np.zeros(n, dtype=np.float32)
        done, over, cut = (np.zeros(n, dtype=bool) for _ in range(3))
        autoreset = self.pending_reset.copy()
        for i in range(n):
            self.counter[i] += 1
            if autoreset[i]:                    # EnvPool: this step resets; nothing else happens
                if self.lives[i] == 0:
                    self.lives[i] = 3
                continue
            r, d, o, c = self.scripts[i][self.pos[i] % len(self.scripts[i])]
            self.pos[i] += 1
            raw[i], done[i], over[i], cut[i] = r, d, o, c
            if d and not (o or c):
                self.lives[i] -= 1
            if o:
                self.lives[i] = 0
        self.pending_reset = done.copy()
        reward = np.sign(raw).astype(np.float32) if self.clip else raw
        info = {"raw_reward": raw, "terminated": over, "truncated": cut, "lives": self.lives.copy(),
                "autoreset": autoreset}
        return self._obs(), reward, done, info

    def step(self, actions):
        self.send(actions)
        return self.recv()


class PixelValue(nn.Module):
    """Uniform policy over 3 actions; V(s) = pixel[0, 0, 0] / 10 (lets tests hand-compute bootstraps)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, obs: torch.Tensor):
        n = obs.shape[0]
        return self.bias.expand(n, 3), obs[:, 0, 0, 0].float() / 10.0


# -- game statistics -----------------------------------------------------------------------------------------

def run_stats(env: FakeAtari, steps: int):
    stats, games = EpisodeStats(env.num_envs), []
    for t in range(steps):
        _, _, _, info = env.step(np.zeros(env.num_envs, dtype=np.int64))
        games += stats.update(info, global_step=t + 1)
    return games


def test_return_summed_over_lives_and_reset_steps_not_counted():
    # life 1: +1, +2 then lost; life 2: +3, +10 (clipped to 1 for learning, raw 10 for the score), game over
    env = FakeAtari([script(("r", 1), (LIFE, 2), ("r", 3), (OVER, 10), ("r", 0), ("r", 0))])
    games = run_stats(env, 8)
    assert len(games) == 1
    g = games[0]
    assert g.episodic_return == 16.0            # raw, across both lives
    assert g.length == 4                        # 4 real steps; the auto-reset after the lost life is not one
    assert g.global_step == 5                   # step 5 of the stream (one reset step inside the game)


def test_truncation_restarts_the_totals():
    # cleanrl #454: resetting only on `terminated` would add game 2 to game 1 after a time-limit cut
    env = FakeAtari([script(("r", 1), (CUT, 1), ("r", 5), (OVER, 5))])
    games = run_stats(env, 6)
    assert [(g.episodic_return, g.length) for g in games] == [(2.0, 2), (10.0, 2)]
    assert [g.global_step for g in games] == [2, 5]


def test_life_loss_alone_never_ends_a_game():
    env = FakeAtari([script(("r", 1), (LIFE, 0), (LIFE, 1), ("r", 0))])
    assert run_stats(env, 9) == []


# -- returns ------------------------------------------------------------------------------------------------

def test_n_step_returns_hand_computed():
    g = 0.9
    # env 0: no episode end; env 1: terminal at t=1, reset step at t=2; env 2: truncated at t=1
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [0.7, 0.7, 0.7], [0.8, 0.8, 0.8], [3.0, 3.0, 3.0]])
    dones = torch.zeros(4, 3, dtype=torch.bool)
    truncs = torch.zeros(4, 3, dtype=torch.bool)
    dones[1, 1] = True
    dones[1, 2] = truncs[1, 2] = True
    returns, adv = compute_returns(rewards, values, dones, truncs, g, 1.0)

    full = 1 + g * 2 + g**2 * 0 + g**3 * 4 + g**4 * 3.0
    assert returns[0, 0].item() == pytest.approx(full)
    assert returns[3, 0].item() == pytest.approx(4 + g * 3.0)
    # terminal at t=1: no bootstrap, nothing from after the reset leaks back
    assert returns[1, 1].item() == pytest.approx(2.0)
    assert returns[0, 1].item() == pytest.approx(1 + g * 2.0)
    assert returns[3, 1].item() == pytest.approx(4 + g * 3.0)
    # truncated at t=1: bootstrap from V(final observation) = values[2] (seen at the reset step)
    assert returns[1, 2].item() == pytest.approx(2 + g * 0.7)
    assert returns[0, 2].item() == pytest.approx(1 + g * (2 + g * 0.7))
    torch.testing.assert_close(adv, returns - values[:-1])


def test_gae_matches_its_recursion():
    g, lam = 0.99, 0.95
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    dones = torch.tensor([[False], [True], [False]])
    truncs = torch.zeros(3, 1, dtype=torch.bool)
    returns, adv = compute_returns(rewards, values, dones, truncs, g, lam)
    d2 = 2.0 + g * 0.4 - 0.3
    d1 = 0.0 - 0.2                          # terminal: no bootstrap
    d0 = 1.0 + g * 0.2 - 0.1
    expected = [d0 + g * lam * d1, d1, d2]
    assert adv[:, 0].tolist() == pytest.approx(expected)


# -- the collector and the loss --------------------------------------------------------------------------

def test_collector_masks_reset_transitions_and_bootstraps():
    # env 0 loses a life at its 2nd step -> step t=2 is an auto-reset; env 1 never ends
    env = FakeAtari([script(("r", 1), (LIFE, 2), ("r", 3), ("r", 4), ("r", 5), ("r", 6)),
                     script(("r", 1))])
    collector = RolloutCollector([env], PixelValue(), n_steps=4, generator=torch.Generator().manual_seed(0))
    ro = collector.collect()
    assert ro.valid[:, 0].tolist() == [True, True, False, True]
    assert ro.valid[:, 1].tolist() == [True] * 4
    assert ro.dones[:, 0].tolist() == [False, True, False, False]
    assert ro.rewards[:, 0].tolist() == [1.0, 1.0, 0.0, 1.0]       # clipped; 0 on the reset step
    # values were read at s_0..s_4: counters 0..4 -> V = 0.0 .. 0.4
    assert ro.values[:, 0].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    g = 0.99
    returns, _ = compute_returns(ro.rewards, ro.values, ro.dones, ro.truncated, g)
    assert returns[0, 0].item() == pytest.approx(1 + g * 1)
    assert returns[3, 0].item() == pytest.approx(1 + g * 0.4)
    assert returns[0, 1].item() == pytest.approx(1 + g + g**2 + g**3 + g**4 * 0.4)
    # next rollout starts from the last observation
    ro2 = collector.collect()
    assert ro2.obs[0, :, 0, 0, 0].tolist() == [4, 4]


def test_loss_ignores_reset_transitions():
    env = FakeAtari([script(("r", 1), (OVER, 1), ("r", 1), ("r", 1))] * 2)
    cfg = A2CConfig(num_envs=2, n_steps=4)
    collector = RolloutCollector([env], PixelValue(), n_steps=4)
    ro = collector.collect()
    assert not ro.valid[2].any()
    loss, parts = a2c_loss(collector.model, ro, cfg, 3)
    # garbage in the masked row (its reward, action, and its stop-value) changes nothing
    ro.rewards[2] = 100.0
    ro.actions[2] = 2
    ro.values[2] = -50.0
    loss2, parts2 = a2c_loss(collector.model, ro, cfg, 3)
    assert loss2.item() == pytest.approx(loss.item())
    assert parts2["value_loss"].item() == pytest.approx(parts["value_loss"].item())
    # while corrupting a valid row does change it
    ro.rewards[1] = 100.0
    assert a2c_loss(collector.model, ro, cfg, 3)[0].item() != pytest.approx(loss.item())


def test_train_agent_reports_games_with_global_steps():
    env = FakeAtari([script(("r", 2), (LIFE, 1), (OVER, 3)), script(("r", 1), ("r", 1), (CUT, 1))])
    model = PixelValue()
    cfg = A2CConfig(num_envs=2, n_steps=5)
    seen = []
    result = train_agent(env, model, make_optimizer(model.parameters(), cfg), total_steps=30, cfg=cfg,
                         on_episode=seen.append, final_loss=True)
    assert result.updates == 3 and result.env_steps == 40     # 3 updates + the final-loss rollout
    assert len(result.losses) == 4 and result.final_loss == result.losses[-1]
    assert seen == result.episodes
    env0 = [(e.episodic_return, e.length) for e in seen if e.env == 0]
    env1 = [(e.episodic_return, e.length) for e in seen if e.env == 1]
    assert env0 and set(env0) == {(6.0, 3)}
    assert env1 and set(env1) == {(3.0, 3)}
    # global steps count every env step of every env: env 1's first game ends at its 3rd step (3 × 2 envs);
    # env 0's at its 4th (one reset step inside the game)
    first = {e.env: e.global_step for e in reversed(seen)}
    assert first == {0: 8, 1: 6}


def test_optimizer_statistics_are_read_at_the_asked_number_of_updates():
    """train_agent reads RMSprop's accumulator quantiles at OPTIMIZER_POINTS updates spread over the run (the
    first and the last included) by default, at ``optimizer_points`` when given (the throughput benchmark's rounds
    read as often as a long run), never with 0."""
    from agents.a2c import OPTIMIZER_POINTS, stats_updates
    cfg = A2CConfig(num_envs=2, n_steps=5)
    steps_at = {}
    for points in (None, 3, 0):
        env = FakeAtari([script(("r", 1), ("r", 0))] * 2)
        model = PixelValue()
        kw = {} if points is None else {"optimizer_points": points}
        res = train_agent(env, model, make_optimizer(model.parameters(), cfg), 30 * 10, cfg=cfg,
                          generator=torch.Generator().manual_seed(0), **kw)
        steps_at[points] = [s for s, _ in res.optimizer_stats]
        assert all(st.keys() for _, st in res.optimizer_stats)
    assert len(steps_at[None]) == OPTIMIZER_POINTS and steps_at[None][0] == 10 and steps_at[None][-1] == 300
    assert steps_at[3] == [10, 150, 300] and steps_at[0] == []      # updates 0, 14 (14.5 to even), 29
    assert stats_updates(30, 3) == {0, 14, 29} and stats_updates(2, 20) == {0, 1}
