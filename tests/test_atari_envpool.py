"""Real Atari envs: EnvPool conventions, a short end-to-end A2C run, the Atari adapter with Leap, the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.a2c import A2CConfig, make_optimizer, train_agent
from agents.nets import ActorCritic
from envs.atari import canonical_game, make_atari, make_atari_groups
from metarl.base import MetaOptimizerConfig
from metarl.leap import Leap, LeapConfig
from train.tasks.atari import AtariAdapter, AtariTaskConfig

pytest.importorskip("envpool")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_unknown_game_lists_valid_names_on_one_line():
    with pytest.raises(ValueError) as err:
        make_atari("Pongg", num_envs=1, seed=0, backend="envpool")
    msg = str(err.value)
    assert "\n" not in msg and "'Pongg'" in msg
    assert "did you mean Pong?" in msg                          # the likely neighbour before the list
    assert "Pong" in msg.split("valid games (")[1] and "SpaceInvaders" in msg
    with pytest.raises(ValueError, match=r"valid games \(\d+\): .*Breakout"):
        AtariTaskConfig(train_games=["Pong"], test_games=["NotAGame-v5"])


def test_game_name_spellings():
    for name in ("Pong", "Pong-v5", "ALE/Pong-v5", "pong", "PongNoFrameskip-v4"):
        assert canonical_game(name, "envpool") == "Pong"
    assert canonical_game("space_invaders", "envpool") == "SpaceInvaders"


def test_envpool_truncation_then_autoreset_step():
    env = make_atari("Pong", num_envs=2, seed=0, backend="envpool", train=True, max_episode_steps=20)
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    for t in range(1, 21):
        obs, reward, done, info = env.step(np.zeros(2, dtype=np.int64))
        assert done.any() == (t == 20)
    assert info["truncated"].all() and not info["terminated"].any() and not info["autoreset"].any()
    obs, reward, done, info = env.step(np.ones(2, dtype=np.int64))
    assert info["autoreset"].all() and not done.any() and (reward == 0).all()
    assert (info["elapsed_step"] == 0).all()
    env.close()


def test_envpool_life_loss_is_done_but_not_game_over():
    env = make_atari("Breakout", num_envs=1, seed=0, backend="envpool", train=True)
    env.reset()
    lives_before = None
    for _ in range(200):
        obs, reward, done, info = env.step(np.zeros(1, dtype=np.int64))   # NOOP: the ball is never served
        if lives_before is None:
            lives_before = int(info["lives"][0])
        if done[0]:
            break
    assert done[0] and not info["terminated"][0] and not info["truncated"][0]
    assert int(info["lives"][0]) == lives_before - 1
    _, _, done, info = env.step(np.zeros(1, dtype=np.int64))
    assert info["autoreset"][0] and not done[0]


def _pong_run(groups: int):
    cfg = A2CConfig(num_envs=4, n_steps=5, groups=groups)
    envs = make_atari_groups("Pong", cfg.num_envs, seed=1, groups=groups, backend="envpool")
    model = ActorCritic(envs[0].num_actions, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    result = train_agent(envs, model, make_optimizer(model.parameters(), cfg), total_steps=200, cfg=cfg,
                         final_loss=True, generator=torch.Generator().manual_seed(0))
    return result, before, model


def test_short_pong_run_trains_end_to_end():
    result, before, model = _pong_run(groups=1)
    assert result.updates == 10 and result.env_steps == 220
    assert len(result.losses) == 11 and all(np.isfinite(result.losses))
    assert all(np.isfinite(list(log.values())).all() for log in result.logs)
    assert result.logs[0]["losses/entropy"] == pytest.approx(np.log(6), abs=0.01)   # near-uniform policy at init
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # stepping two env groups in turn (overlap) is the same computation: same seeds, same run
    grouped, _, grouped_model = _pong_run(groups=2)
    assert grouped.losses == pytest.approx(result.losses, rel=1e-4, abs=1e-6)
    for a, b in zip(model.parameters(), grouped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_kept_acting_graph_gives_the_recomputed_loss_and_gradient(groups):
    """The loss built on the acting passes' outputs equals one forward over the rollout, with its gradient."""
    from agents.a2c import RolloutCollector, a2c_loss

    envs = make_atari_groups("Pong", 4, seed=3, groups=groups, backend="envpool")
    model = ActorCritic(6, generator=torch.Generator().manual_seed(0))
    cfg = A2CConfig(num_envs=4, n_steps=5, groups=groups)
    ro = RolloutCollector(envs, model, n_steps=5, generator=torch.Generator().manual_seed(0),
                          keep_graph=True).collect()
    results = []
    for keep in (True, False):
        if not keep:
            ro.features = None                        # forces the second forward pass
        loss, parts = a2c_loss(model, ro, cfg, 6)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss, parts, grads))
    (l1, p1, g1), (l2, p2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p1["entropy"], p2["entropy"], rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_encoder_gives_nearly_the_fp32_loss():
    from agents.a2c import RolloutCollector, a2c_loss

    envs = make_atari_groups("Pong", 4, seed=3, groups=1, backend="envpool")
    model = ActorCritic(6, generator=torch.Generator().manual_seed(0))
    ro = RolloutCollector(envs, model, n_steps=5, generator=torch.Generator().manual_seed(0),
                          precision="bf16").collect()
    fp32 = a2c_loss(model, ro, A2CConfig(num_envs=4, precision="fp32"), 6)[1]
    bf16 = a2c_loss(model, ro, A2CConfig(num_envs=4, precision="bf16"), 6)[1]
    assert bf16["entropy"].dtype == torch.float32
    for k in ("entropy", "value_loss"):
        assert bf16[k].item() == pytest.approx(fp32[k].item(), rel=0.05, abs=1e-3), k


def test_adapter_with_leap_on_the_encoder_only():
    a2c = A2CConfig(num_envs=4, n_steps=5, groups=1)
    adapter = AtariAdapter(AtariTaskConfig(train_games=["Breakout"], test_games=["pong"], a2c=a2c,
                                           backend="envpool"))
    assert adapter.games["test"] == ["Pong"] and adapter.max_actions == 6
    template = adapter.make_model(torch.Generator().manual_seed(0))
    assert template.policy.out_features == 6
    meta = Leap(template, LeapConfig(p=2, loss=False), include=["encoder."],
                meta_optimizer=MetaOptimizerConfig(name="sgd", lr=1.0))
    init = {k: v.clone() for k, v in meta.init_state.items()}
    (task,) = adapter.sample_tasks("train", 1, np.random.default_rng(0))
    assert task.key == "Breakout" and task.num_actions == 4
    # the trainer's flow under `meta.head: reset`: a task model with its own head, the init without the head
    model = adapter.make_model(torch.Generator().manual_seed(1), task)
    assert model.policy.out_features == 4
    meta.load_init(model, skip=adapter.head)
    optimizer = adapter.make_optimizer(model, meta.task_parameters(model), None)   # A2C RMSprop: inner.* unused
    with meta.watch(model, optimizer, task) as watch:
        curve = adapter.adapt(task, model, optimizer, steps=100, watch=watch)
    assert len(curve) == 6 and all(np.isfinite(curve))
    # loss off, p = 2: the task's meta-gradient is θ⁰ − θ^K of the encoder
    trained = {n: p.detach() for n, p in model.named_parameters()}
    for name, got in zip(meta.names, meta.meta_gradient()):
        torch.testing.assert_close(got, init[name] - trained[name], rtol=0, atol=1e-6)
    meta.meta_step()
    for name in meta.names:                                 # SGD lr 1 moves the encoder init to θ^K
        torch.testing.assert_close(meta.init_state[name], trained[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(meta.init_state["policy.weight"], init["policy.weight"], rtol=0, atol=0)
    # finished games are kept for logging; evaluate works off the recent ones
    assert adapter.global_step == 120
    assert all(r.task == "Breakout" for r in adapter.drain_games()) and adapter.drain_games() == []
    assert set(adapter.evaluate(task, model)) == {"score", "length", "games"}


def test_max_heads_leave_unused_logits_untouched():
    adapter = AtariAdapter(AtariTaskConfig(train_games=["Breakout", "Pong"], test_games=[], heads="max",
                                           a2c=A2CConfig(num_envs=2, n_steps=5, groups=1)))
    task = next(t for t in adapter.sample_tasks("train", 2, np.random.default_rng(0)) if t.key == "Breakout")
    model = adapter.make_model(torch.Generator().manual_seed(0), task)
    assert model.policy.out_features == 6                   # Pong's 6; Breakout uses the first 4
    before = model.policy.weight.detach().clone()
    adapter.adapt(task, model, adapter.make_optimizer(model, model.parameters(), None), steps=30)
    after = model.policy.weight.detach()
    assert not torch.equal(after[:4], before[:4])
    torch.testing.assert_close(after[4:], before[4:], rtol=0, atol=0)


def test_trainer_meta_trains_atari_end_to_end(tmp_path):
    from train.config import build_config
    from train.errors import ConfigError
    from train.trainer import train

    data = {"name": "atari_smoke", "task": "atari", "method": "leap", "seed": 0,
            "inner": {"optimizer": "rmsprop", "lr": 7e-4, "steps": 40},
            "meta": {"meta_batch": 2, "steps": 1, "include": ["encoder."], "optimizer": {"lr": 0.1}},
            "leap": {"p": 2, "loss": False},
            "eval": {"every": 0, "tasks": 1, "steps": 40},
            "run": {"progress": False, "threads": 1},
            "atari": {"train_games": ["Breakout", "Pong"], "test_games": ["SpaceInvaders"],
                      "a2c": {"num_envs": 4, "n_steps": 5, "groups": 2}}}
    result = train(build_config(data), tmp_path)
    # the held-out protocol: the test game from the meta-learned and from a random init
    assert set(result["games"]["SpaceInvaders"]) == {"meta_init", "random_init"} and result["seeds"] == 1
    assert (tmp_path / "eval.json").is_file() and "SpaceInvaders" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"^config section 'atari': unknown Atari game 'Pongo'; did you mean Pong\? "
                                          r"valid games \(\d+\): "):
        build_config({**data, "atari": {"train_games": ["Pongo"]}})


def test_gymnasium_fallback_matches_shapes_and_signals():
    env = make_atari("Pong", num_envs=2, seed=0, backend="gymnasium", train=True, max_episode_steps=10)
    ref = make_atari("Pong", num_envs=2, seed=0, backend="envpool", train=True, max_episode_steps=10)
    obs, ref_obs = env.reset(), ref.reset()
    assert obs.shape == ref_obs.shape == (2, 4, 84, 84) and obs.dtype == ref_obs.dtype == np.uint8
    assert env.num_actions == ref.num_actions == 6
    for t in range(1, 12):
        out, ref_out = env.step(np.zeros(2, dtype=np.int64)), ref.step(np.zeros(2, dtype=np.int64))
        for a, b in zip(out[:3], ref_out[:3]):
            assert a.shape == b.shape and a.dtype == b.dtype
        assert set(ref_out[3]) >= set(out[3]) >= {"raw_reward", "terminated", "truncated", "lives", "autoreset"}
        for k in out[3]:
            assert out[3][k].dtype == ref_out[3][k].dtype, k
        # both backends: truncated at step 10, auto-reset at step 11
        assert out[2].all() == ref_out[2].all() == (t == 10)
        assert out[3]["autoreset"].all() == ref_out[3]["autoreset"].all() == (t == 11)
    env.close()
    ref.close()
