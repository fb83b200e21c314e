"""Leap attached to a Stable-Baselines3 A2C through the optimiser seam, with no change to SB3.

SB3's ``A2C.train()`` calls ``policy.optimizer.step()`` itself and reports no loss, so Leap runs with the
loss term off; with p = 2 its meta-gradient must then be exactly θ⁰ − θ^K of the watched parameters
(docs/leap.md §5). SB3 names the shared Nature-CNN ``features_extractor`` (its state_dict also lists the same
tensors as ``pi_features_extractor.*`` and ``vf_features_extractor.*``; ``named_parameters`` does not).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("envpool")
sb3 = pytest.importorskip("stable_baselines3")

from envs.atari import make_atari  # noqa: E402
from metarl.base import MetaOptimizerConfig  # noqa: E402
from metarl.leap import Leap, LeapConfig  # noqa: E402
from envs.atari_sb3 import SB3AtariVecEnv  # noqa: E402

UPDATES = 6
META_LR = 0.5


@pytest.fixture(scope="module")
def sb3_run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = SB3AtariVecEnv(make_atari("Pong", num_envs=2, seed=0, backend="envpool", train=True))
    model = sb3.A2C("CnnPolicy", env, n_steps=5, ent_coef=0.01, vf_coef=0.25, seed=0, device="cpu", verbose=0)
    policy = model.policy
    meta = Leap(policy, LeapConfig(p=2, loss=False), include=["features_extractor."],
                meta_optimizer=MetaOptimizerConfig(name="sgd", lr=META_LR))
    init = {k: v.clone() for k, v in meta.init_state.items()}
    meta.load_init(policy)
    with meta.watch(policy, policy.optimizer, "Pong") as watch:
        model.learn(total_timesteps=UPDATES * 2 * 5)
    final = {n: p.detach().clone() for n, p in policy.named_parameters()}
    yield meta, policy, watch, init, final
    env.close()
    torch.set_num_threads(threads)


def test_watched_parameters_are_sb3s_shared_encoder(sb3_run):
    meta, policy, *_ = sb3_run
    assert meta.names == [n for n, _ in policy.named_parameters() if n.startswith("features_extractor.")]
    assert len(meta.names) == 8                     # 3 convs + 1 linear, weights and biases


def test_meta_gradient_is_theta0_minus_thetaK(sb3_run):
    meta, policy, watch, init, final = sb3_run
    assert watch.steps == UPDATES                   # one optimiser step per SB3 update, each one observed
    grads = meta.meta_gradient()
    total = torch.stack([g.norm() for g in grads]).norm()
    assert total > 0
    for name, g in zip(meta.names, grads):
        # the independent expectation: the end points of SB3's own training run
        torch.testing.assert_close(g, init[name] - final[name], rtol=0, atol=1e-6)


def test_meta_step_moves_the_encoder_init_only(sb3_run):
    meta, policy, watch, init, final = sb3_run
    logs = meta.meta_step()
    assert logs["meta/tasks"] == 1.0
    for name in meta.names:
        expected = init[name] - META_LR * (init[name] - final[name])
        torch.testing.assert_close(meta.init_state[name], expected, rtol=0, atol=1e-6)
        assert not torch.equal(meta.init_state[name], init[name])
    for name in ("action_net.weight", "value_net.weight"):     # heads: trained by SB3, not meta-learned
        torch.testing.assert_close(meta.init_state[name], init[name], rtol=0, atol=0)
        assert not torch.equal(final[name], init[name])


def test_load_init_puts_the_moved_init_into_the_sb3_policy(sb3_run):
    meta, policy, *_ = sb3_run
    if meta.meta_steps == 0:
        meta.meta_step()
    meta.load_init(policy)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.detach(), meta.init_state[name], rtol=0, atol=0)
