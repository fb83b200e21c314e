"""configs/atari_leap_paper.yaml is the Leap paper's Atari protocol: its pool is computed from the environments
(the 60-game benchmark set, minimal action sets of at most 10 actions, minus the held-out games); the
Mnih et al. (2013) network and the RGB observation mode give the right shapes from real EnvPool frames;
rewards clipped to [−5, 5]; human-normalised scores from the published reference table."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("envpool")

from agents.a2c import A2CConfig, make_optimizer  # noqa: E402
from agents.nets import ActorCritic  # noqa: E402
from envs.atari import canonical_game, clip_rewards, make_atari, num_actions  # noqa: E402
from train.atari_scores import BENCHMARK_60, REFERENCE, human_normalised  # noqa: E402
from train.config import load_config  # noqa: E402
from train.tasks.atari import AtariAdapter, AtariTaskConfig  # noqa: E402

PAPER = Path(__file__).resolve().parent.parent / "configs" / "atari_leap_paper.yaml"
HELD_OUT = ("Breakout", "SpaceInvaders")
EVAL_GAMES = ["Breakout", "SpaceInvaders", "Alien", "Gravitar", "RoadRunner", "KungFuMaster", "Krull", "AirRaid",
              "UpNDown", "WizardOfWor"]


def test_paper_config_pool_is_the_benchmark_games_with_at_most_10_actions():
    cfg = load_config(PAPER)
    atari = cfg.task_config
    actions = {g: num_actions(g, "envpool") for g in BENCHMARK_60}
    assert len(BENCHMARK_60) == len(set(BENCHMARK_60)) == 60
    small = [g for g in BENCHMARK_60 if actions[g] <= 10]
    assert len(small) == 27 and set(HELD_OUT) <= set(small)
    pool = [g for g in small if g not in HELD_OUT]
    assert atari.train_games == pool and len(pool) == 25
    assert all(num_actions(g, "envpool") <= 10 for g in atari.train_games)
    # the action counts listed in the config's comment are the environments' own
    listed = re.search(r"25 games \(actions\):(.*?)\(tests/", PAPER.read_text(), re.S).group(1)
    pairs = dict((g, int(n)) for g, n in re.findall(r"([A-Za-z]+) (\d+)", listed))
    assert pairs == {g: actions[g] for g in pool}
    assert atari.test_games == EVAL_GAMES and set(HELD_OUT).isdisjoint(atari.train_games)
    assert {"AirRaid", "UpNDown", "WizardOfWor"} <= set(atari.train_games)
    assert all(actions.get(g, num_actions(g, "envpool")) > 10 for g in ("Alien", "Gravitar", "RoadRunner",
                                                                         "KungFuMaster", "Krull"))


def test_paper_config_settings():
    cfg = load_config(PAPER)
    atari, a2c = cfg.task_config, cfg.task_config.a2c
    assert (atari.network, atari.observation, atari.reward_clip, atari.heads) == ("mnih2013", "rgb", 5.0, "game")
    assert (a2c.num_envs, a2c.n_steps, a2c.lr, a2c.rms_eps, a2c.rms_alpha, a2c.ent_coef, a2c.gamma) == \
        (32, 5, 1e-4, 1e-4, 0.99, 0.01, 0.99)
    assert (cfg.meta.meta_batch, cfg.meta.steps, cfg.inner.steps, cfg.meta.include) == \
        (16, 100, 5_000_000, ["encoder."])
    assert cfg.method == "leap" and cfg.leap.p == 2
    assert (cfg.eval.tasks, atari.eval_window, atari.eval_band) == (10, 500, 2.0)
    assert cfg.run.device == "auto"


def test_human_normalised_scores():
    assert human_normalised("Breakout", 1.7) == 0.0 and math.isclose(human_normalised("Breakout", 30.5), 1.0)
    assert math.isnan(human_normalised("AirRaid", 100.0))            # no published human score
    assert len(REFERENCE) == 57
    for game in REFERENCE:                                            # every name is an EnvPool game
        assert canonical_game(game, "envpool") == game
    assert [g for g in EVAL_GAMES if g not in REFERENCE] == ["AirRaid"]
    assert set(BENCHMARK_60) - set(REFERENCE) == {"AirRaid", "Carnival", "ElevatorAction", "JourneyEscape", "Pooyan"}


def test_rgb_frames_and_the_mnih2013_network(one_thread):
    env = make_atari("Breakout", 2, seed=0, backend="envpool", observation="rgb")
    try:
        obs = env.reset()
        assert obs.shape == (2, 3, 84, 84) == (2, *env.observation_shape) and obs.dtype == np.uint8
        assert not np.array_equal(obs[:, 0], obs[:, 1])               # colour channels, not one grey frame
        for _ in range(3):
            obs, reward, done, info = env.step(np.zeros(2, dtype=np.int64))
        assert obs.shape == (2, 3, 84, 84)
    finally:
        env.close()
    model = ActorCritic(4, in_channels=3, network="mnih2013", generator=torch.Generator().manual_seed(0))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["encoder.conv.0.weight"] == (16, 3, 8, 8) and shapes["encoder.conv.2.weight"] == (32, 16, 4, 4)
    assert shapes["encoder.fc.0.weight"] == (256, 32 * 9 * 9) and shapes["policy.weight"] == (4, 256)
    x = torch.from_numpy(obs)
    assert model.trunk(x).shape == (2, 2592)
    logits, value = model(x)
    assert logits.shape == (2, 4) and value.shape == (2,)
    nature = ActorCritic(4)                                           # the default is unchanged
    assert nature.network == "nature" and nature.encoder.fc[0].weight.shape == (512, 3136)


def test_paper_adapter_trains_on_rgb_frames(one_thread):
    cfg = AtariTaskConfig(train_games=["Breakout"], test_games=["Pong"], backend="envpool", network="mnih2013",
                          observation="rgb", reward_clip=5.0, a2c=A2CConfig(num_envs=4, n_steps=5))
    adapter = AtariAdapter(cfg, seed=0)
    task = adapter.game("Breakout", 3)
    model = adapter.build_model(torch.Generator().manual_seed(0), task)
    assert model.encoder.conv[0].in_channels == 3
    curve = adapter.adapt(task, model, make_optimizer(model.parameters(), cfg.a2c), 40)
    assert len(curve) == 3 and all(np.isfinite(curve))                # 2 updates + the closing loss


def test_reward_clipping_to_a_bound():
    raw = np.array([-7.0, -0.5, 0.0, 3.0, 9.0], dtype=np.float32)
    assert clip_rewards(raw, 5.0).tolist() == [-5.0, -0.5, 0.0, 3.0, 5.0]
    assert clip_rewards(raw, None).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    env = make_atari("Breakout", 4, seed=1, backend="envpool", reward_bound=5.0)
    try:
        env.reset()
        rng = np.random.default_rng(0)
        for _ in range(60):
            _, reward, _, info = env.step(rng.integers(0, env.num_actions, 4))
            assert np.array_equal(reward, np.clip(info["raw_reward"], -5, 5).astype(np.float32))
    finally:
        env.close()
