"""K A2C agents as one stacked model (agents/batched_a2c.py) against each agent trained alone: the same
parameters to 1e-5 after more than 20 updates, with games of different action counts, for both RMSprops;
per-agent gradient clipping against ``clip_grad_norm_`` on each agent's model."""

import pytest
import torch

pytest.importorskip("envpool")

from agents.a2c import A2CConfig, make_optimizer, train_agent  # noqa: E402
from agents.batched_a2c import BatchedActorCritic, clip_grad_norm_agents, train_agents  # noqa: E402
from agents.nets import ActorCritic  # noqa: E402
from envs.atari import close_all, make_atari  # noqa: E402

# different action counts (4, 6, 9): the heads are padded to 9
GAMES = [("Breakout", 11), ("Pong", 12), ("BeamRider", 13)]
UPDATES = 22


def _models(network: str, widths: list[int]) -> list[ActorCritic]:
    channels = 3 if network == "mnih2013" else 4
    return [ActorCritic(w, in_channels=channels, network=network, generator=torch.Generator().manual_seed(k))
            for k, w in enumerate(widths)]


def _envs(observation: str) -> list:
    return [make_atari(game, 2, seed, backend="envpool", num_threads=1, observation=observation)
            for game, seed in GAMES]


@pytest.mark.parametrize("optimizer,network,observation,heads", [
    ("rmsprop_tf", "nature", "gray4", "game"),
    ("rmsprop", "mnih2013", "rgb", "game"),
    ("rmsprop_tf", "nature", "gray4", "max"),
])
def test_batched_agents_end_where_each_alone_ends(one_thread, optimizer, network, observation, heads):
    """Torch's RMSprop divides each coordinate by its own running RMS from zero, so a near-zero gradient made
    of cancelling terms turns a last-bit difference into a visible step: with the Nature CNN on Pong a single
    agent run twice, with and without ``reuse_forward`` (another summation order, nothing else), already
    differs by 1.3e-4 after 22 updates, and so does its batched run. Its case here is the paper's network."""
    cfg = A2CConfig(num_envs=2, n_steps=5, optimizer=optimizer)
    steps = UPDATES * cfg.batch_size
    envs = _envs(observation)
    actions = [e.num_actions for e in envs]
    assert len(set(actions)) == 3
    widths = actions if heads == "game" else [max(actions)] * 3
    try:
        alone = []
        for k, (env, model) in enumerate(zip(envs, _models(network, widths))):
            opt = make_optimizer(model.parameters(), cfg)
            res = train_agent(env, model, opt, steps, cfg=cfg, generator=torch.Generator().manual_seed(100 + k),
                              final_loss=True)
            alone.append((model, res))
    finally:
        close_all(envs)
    envs = _envs(observation)
    try:
        batched = BatchedActorCritic(_models(network, widths), num_actions=actions)
        opt = make_optimizer(batched.parameters(), cfg)
        gens = [torch.Generator().manual_seed(100 + k) for k in range(3)]
        results = train_agents(envs, batched, opt, steps, cfg, gens, final_loss=True)
    finally:
        close_all(envs)
    assert all(r.updates == UPDATES for r in results)
    for k, ((model, res), out) in enumerate(zip(alone, results)):
        # the same actions were drawn: the same games, at the same env steps
        assert [(e.global_step, e.episodic_return, e.length, e.env) for e in res.episodes] == \
               [(e.global_step, e.episodic_return, e.length, e.env) for e in out.episodes]
        assert out.env_steps == res.env_steps
        state = batched.agent_state_dict(k)
        for name, p in model.named_parameters():
            assert state[name].shape == p.shape
            torch.testing.assert_close(state[name], p.detach(), rtol=0, atol=1e-5, msg=f"agent {k} {name}")
        torch.testing.assert_close(torch.tensor(out.losses), torch.tensor(res.losses), rtol=1e-4, atol=1e-5)
        grad_norms = torch.tensor([[row["losses/grad_norm"]] for row in out.logs])
        torch.testing.assert_close(grad_norms, torch.tensor([[row["losses/grad_norm"]] for row in res.logs]),
                                   rtol=1e-4, atol=1e-6)
        assert [s for s, _ in out.optimizer_stats] == [s for s, _ in res.optimizer_stats]
        for (_, a), (_, b) in zip(out.optimizer_stats, res.optimizer_stats):
            assert a.keys() == b.keys()
            torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())), rtol=1e-4, atol=0)
    # padded policy rows (beyond each agent's width) never moved from zero
    for k, w in enumerate(widths):
        assert not batched.policy.weight[k, w:].any() and not batched.policy.bias[k, w:].any()
    # clipping was active (the zoo's 0.5), so the per-agent clip is what matched
    assert max(row["losses/grad_norm"] for _, res in alone for row in res.logs) > cfg.max_grad_norm


def test_per_agent_clipping_is_clip_grad_norm_of_each_agent():
    torch.manual_seed(0)
    models = _models("mnih2013", [4, 6, 9])
    batched = BatchedActorCritic(models)
    for p in batched.parameters():
        p.grad = torch.randn_like(p) * torch.rand(3).view(-1, *([1] * (p.dim() - 1))) * 0.1
        if p is batched.policy.weight or p is batched.policy.bias:
            for k, w in enumerate(batched.widths):
                p.grad[k, w:] = 0.0                       # as the masked loss leaves them
    expected, norms = [], []
    for k, m in enumerate(models):
        for (name, q), g in zip(m.named_parameters(), [p.grad for p in batched.parameters()]):
            q.grad = (g[k][: batched.widths[k]] if name.startswith("policy.") else g[k]).clone()
        norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05))
        expected.append([q.grad for q in m.parameters()])
    got = clip_grad_norm_agents(list(batched.parameters()), 0.05, 3)
    torch.testing.assert_close(got, torch.stack(norms), rtol=1e-6, atol=0)
    for k in range(3):
        grads = [g[k] for g in (p.grad for p in batched.parameters())]
        for (name, _), g, e in zip(models[k].named_parameters(), grads, expected[k]):
            torch.testing.assert_close(g[: e.shape[0]] if name.startswith("policy.") else g, e, rtol=1e-6, atol=1e-9)


def test_stacking_round_trips_and_pads_to_the_widest():
    models = _models("nature", [4, 18])
    batched = BatchedActorCritic(models)
    assert batched.policy.weight.shape == (2, 18, 512) and getattr(batched.encoder.conv, "0").weight.shape == (2, 32, 4, 8, 8)
    for k, m in enumerate(batched.unstack()):
        for (name, a), b in zip(m.named_parameters(), models[k].parameters()):
            assert torch.equal(a, b), name
    obs = torch.randint(0, 255, (2, 3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        logits, values = batched(obs)
        for k, m in enumerate(models):
            lk, vk = m(obs[k])
            torch.testing.assert_close(logits[k, :, : lk.shape[1]], lk, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(values[k], vk, rtol=1e-5, atol=1e-6)
        assert torch.isinf(batched.masked(logits)[0, :, 4:]).all()
