"""K A2C agents as one stacked model (agents/batched_a2c.py) against each agent trained alone: the same
parameters to 1e-5 after more than 20 updates, with games of different action counts, for both RMSprops;
per-agent gradient clipping against ``clip_grad_norm_`` on each agent's model."""

import numpy as np
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


def _models(network: str, widths: list[int], device: str = "cpu") -> list[ActorCritic]:
    channels = 3 if network == "mnih2013" else 4
    return [ActorCritic(w, in_channels=channels, network=network, generator=torch.Generator().manual_seed(k)).to(device)
            for k, w in enumerate(widths)]


def _envs(observation: str, games: list[tuple[str, int]] = GAMES) -> list:
    return [make_atari(game, 2, seed, backend="envpool", num_threads=1, observation=observation)
            for game, seed in games]


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
    _compare(optimizer, network, observation, heads, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_batched_agents_end_where_each_alone_ends_on_cuda():
    """The same on CUDA, TF32 off (cuDNN's default TF32 convolutions would round both runs to 10 bits)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare("rmsprop_tf", "nature", "gray4", "game", "cuda")
        _compare("rmsprop", "mnih2013", "rgb", "game", "cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _compare(optimizer: str, network: str, observation: str, heads: str, device: str) -> None:
    cfg = A2CConfig(num_envs=2, n_steps=5, optimizer=optimizer)
    steps = UPDATES * cfg.batch_size
    envs = _envs(observation)
    actions = [e.num_actions for e in envs]
    assert len(set(actions)) == 3
    widths = actions if heads == "game" else [max(actions)] * 3
    try:
        alone = []
        for k, (env, model) in enumerate(zip(envs, _models(network, widths, device))):
            opt = make_optimizer(model.parameters(), cfg)
            res = train_agent(env, model, opt, steps, cfg=cfg, final_loss=True,
                              generator=torch.Generator(device=device).manual_seed(100 + k))
            alone.append((model, res))
    finally:
        close_all(envs)
    envs = _envs(observation)
    try:
        batched = BatchedActorCritic(_models(network, widths, device), num_actions=actions)
        opt = make_optimizer(batched.parameters(), cfg)
        gens = [torch.Generator(device=device).manual_seed(100 + k) for k in range(3)]
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
            torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())),
                                       rtol=1e-4, atol=0)
    # padded policy rows (beyond each agent's width) never moved from zero
    for k, w in enumerate(widths):
        assert not batched.policy.weight[k, w:].any() and not batched.policy.bias[k, w:].any()
    # clipping was active (the zoo's 0.5), so the per-agent clip is what matched
    assert max(row["losses/grad_norm"] for _, res in alone for row in res.logs) > cfg.max_grad_norm


def test_batched_agents_read_the_optimiser_at_the_asked_number_of_updates(one_thread):
    """train_agents reads each agent's RMSprop statistics at the updates train_agent would (``stats_updates``):
    ``optimizer_points`` of them when given (3: the first, a middle and the last update), none with 0; the
    equality test above covers the default."""
    from agents.a2c import stats_updates
    cfg = A2CConfig(num_envs=2, n_steps=5)
    three = sorted(stats_updates(UPDATES, 3))
    assert len(three) == 3 and three[0] == 0 and three[-1] == UPDATES - 1
    for points, expected in ((3, three), (0, [])):
        envs = _envs("gray4", GAMES[:2])
        try:
            widths = [e.num_actions for e in envs]
            batched = BatchedActorCritic(_models("nature", widths), num_actions=widths)
            opt = make_optimizer(batched.parameters(), cfg)
            gens = [torch.Generator().manual_seed(k) for k in range(2)]
            results = train_agents(envs, batched, opt, UPDATES * cfg.batch_size, cfg, gens, optimizer_points=points)
        finally:
            close_all(envs)
        for res in results:
            assert [s for s, _ in res.optimizer_stats] == [(u + 1) * cfg.batch_size for u in expected]
            assert all(stats for _, stats in res.optimizer_stats)


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


@pytest.mark.parametrize("network", ["nature", "mnih2013"])
def test_loop_convolutions_are_each_single_models_and_grouped_ones_agree(network):
    """On a CPU the stacked model convolves agent by agent: each agent's trunk features are its single model's,
    bit for bit; the grouped convolutions (a GPU's choice) give the same to float tolerance, gradients included."""
    models = _models(network, [4, 6, 9])
    channels = models[0].encoder.conv[0].in_channels
    obs = torch.randint(0, 256, (3, 5, channels, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    loop, grouped = (BatchedActorCritic(models, convolutions=c) for c in ("loop", "grouped"))
    auto = BatchedActorCritic(models)
    with torch.no_grad():
        features = loop.trunk(obs)
        for k, m in enumerate(models):
            assert torch.equal(features[k], m.trunk(obs[k]))
        torch.testing.assert_close(grouped.trunk(obs), features, rtol=1e-5, atol=1e-6)
        assert torch.equal(auto.trunk(obs), features)                        # "auto" on a CPU: the loop
    for model in (loop, grouped):
        model.trunk(obs).square().sum().backward()
    for (name, a), b in zip(loop.named_parameters(), grouped.parameters()):
        if name.startswith("encoder.conv"):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="convolutions"):
        BatchedActorCritic(models, convolutions="vmap")


def test_stacking_round_trips_and_pads_to_the_widest():
    models = _models("nature", [4, 18])
    batched = BatchedActorCritic(models)
    assert batched.policy.weight.shape == (2, 18, 512)
    assert getattr(batched.encoder.conv, "0").weight.shape == (2, 32, 4, 8, 8)
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


def test_held_out_evaluation_batched_gives_the_per_seed_results_of_one_by_one(tmp_path, one_thread):
    """``atari.a2c.batched: true`` trains a held-out game's (init, seed) runs as one stacked model; each run
    gives the numbers of its run alone: here the same games (so the same curves and scores, exactly: the same
    actions were drawn) and RMSprop statistics to float tolerance. The parts record the switch; one-by-one
    parts keep the settings they had before it existed (no ``batched`` key)."""
    import json
    from pathlib import Path

    from train.config import load_config
    from train.tasks.atari_eval import evaluate_atari
    from train.trainer import setup

    configs = Path(__file__).resolve().parent.parent / "configs"
    tiny = ["atari.train_games=[Pong]", "atari.test_games=[Breakout]", "atari.a2c.num_envs=2", "eval.tasks=2",
            "eval.steps=800", "run.progress=false"]
    out = {}
    for batched in (False, True):
        cfg = load_config(configs / "atari_leap.yaml", [*tiny, f"atari.a2c.batched={str(batched).lower()}"])
        adapter, meta = setup(cfg)
        with torch.no_grad():                         # θ⁰ unlike the random init's encoder
            for p in meta.params:
                p.mul_(0.9)
        run_dir = tmp_path / f"batched_{batched}"
        run_dir.mkdir()
        result = evaluate_atari(cfg, adapter, meta, run_dir, 0)
        parts = {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "eval_parts" / "test").glob("*.json"))}
        out[batched] = result, parts
    (one, parts_one), (many, parts_many) = out[False], out[True]
    assert one["games"]["Breakout"].keys() == {"meta_init", "random_init"}
    for init in ("meta_init", "random_init"):
        a, b = one["games"]["Breakout"][init], many["games"]["Breakout"][init]
        assert np.isfinite(a["final_scores"]).all()
        np.testing.assert_array_equal(a["final_scores"], b["final_scores"])
        np.testing.assert_array_equal(a["auc_scores"], b["auc_scores"])
    assert parts_one.keys() == parts_many.keys() and len(parts_one) == 4
    for name, a in parts_one.items():
        b = parts_many[name]
        assert a["curve"] == b["curve"] and a["final_score"] == b["final_score"] and a["games"] == b["games"]
        assert a["env_steps"] == b["env_steps"] == 810          # 80 updates and the final-loss rollout
        assert "batched" not in a["settings"]["atari"]["a2c"] and b["settings"]["atari"]["a2c"]["batched"] is True
        assert [s for s, _ in a["optimizer"]] == [s for s, _ in b["optimizer"]]
        for (_, x), (_, y) in zip(a["optimizer"], b["optimizer"]):
            torch.testing.assert_close(torch.tensor(list(y.values())), torch.tensor(list(x.values())),
                                       rtol=1e-4, atol=0)


def test_agents_benchmark_reports_its_keys(capsys):
    """`metarl bench a2c-throughput --agents K` at tiny settings: its last line is a JSON object with the keys
    the issue names (no timing is asserted)."""
    import json

    from cli_helpers import cli

    code, out, err = cli(["bench", "a2c-throughput", "--agents", "2", "--games", "Pong,Breakout", "--num-envs", "2",
                          "--steps", "20", "--rounds", "1", "--threads", "1", "--env-threads", "1"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"agents", "per_agent_sps_single", "per_agent_sps_batched", "batched_cost_ratio",
            "envpool_random_sps_agents"} <= result.keys()
    assert result["agents"] == 2 and result["games"] == ["Pong", "Breakout"]
    # an agent's cost per env step batched over alone: the two agents' steps together per second against one
    # agent's (the maze bench's per-seed ratio), not each agent's own rate, which would overstate it K times.
    # The ratios are taken before the rates are rounded to 0.1 (a few steps/s on a loaded machine: 5% apart).
    assert result["per_agent_sps_batched"] == pytest.approx(2 * result["each_agent_sps_batched"], abs=0.15)
    assert result["batched_cost_ratio"] == pytest.approx(
        result["per_agent_sps_single"] / result["per_agent_sps_batched"], rel=0.1)
    assert result["batched_of_bound"] == pytest.approx(
        result["per_agent_sps_batched"] / result["envpool_random_sps_agents"], rel=0.1, abs=1e-3)
    assert all(result[k] > 0 for k in ("per_agent_sps_single", "per_agent_sps_batched", "envpool_random_sps_agents"))
    # each variant's process: CPU seconds (all its threads) over wall seconds and cores, a fraction of the machine
    assert set(result["cores_busy"]) == {"agents_random", "agents_single", "agents_batched"}
    assert all(0 < b <= 1.05 for b in result["cores_busy"].values())


def test_stacking_benchmark_times_every_form_of_the_same_networks(capsys):
    """`metarl bench agents-stacking` at tiny settings: grouped convolutions, each agent's own and vmap are checked
    equal before timing, and the last line carries every pass's times and each form's ratio to the grouped one."""
    import json

    from cli_helpers import cli

    code, out, err = cli(["bench", "agents-stacking", "--agents", "3", "--num-envs", "2", "--n-steps", "2",
                          "--rounds", "1", "--threads", "1", "--network", "mnih2013"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["agents"] == 3 and result["device"] == "cpu"
    for ps in ("act", "update", "update_reused"):
        assert set(result["ms"][ps]) == {"grouped", "vmap", "loop"} and min(result["ms"][ps].values()) > 0
        for v in ("vmap", "loop"):
            assert result[f"{v}_over_grouped"][ps] == pytest.approx(
                result["ms"][ps][v] / result["ms"][ps]["grouped"], rel=0.05)
    code, _, err = cli(["bench", "agents-stacking", "--agents", "0"], capsys)
    assert code == 2 and "at least 1" in err


@pytest.mark.parametrize("method,extra", [("leap", ["leap.p=2"]), ("leap", ["leap.p=1"]), ("reptile", [])])
def test_meta_batch_batched_gives_each_task_its_own_meta_gradient(one_thread, method, extra):
    """A meta-batch of 3 games (4, 6, 9 actions) adapted at once (``run_tasks_batched``: one stacked model,
    ``watch_stacked``) against the same tasks adapted one by one (``run_task``, each under its own watch):
    the same meta-gradient sum, task count, displacement and loss curves to float tolerance."""
    from pathlib import Path

    from train.config import load_config
    from train.seeding import step_generators
    from train.trainer import run_task, run_tasks_batched, setup

    configs = Path(__file__).resolve().parent.parent / "configs"
    overrides = ["atari.train_games=[Breakout,Pong,BeamRider]", "atari.test_games=[Atlantis]",
                 "atari.a2c.num_envs=2", f"method={method}", "run.progress=false", *extra]
    out = {}
    for batched in (False, True):
        cfg = load_config(configs / "atari_leap.yaml", [*overrides, f"atari.a2c.batched={str(batched).lower()}"])
        adapter, meta = setup(cfg)
        tasks = [adapter.game(g, 20 + k) for k, g in enumerate(["Breakout", "Pong", "BeamRider"])]
        gens = [step_generators(cfg.seed, 1, 1 + k)[1] for k in range(3)]
        steps = 22 * 10
        if batched:
            curves = run_tasks_batched(cfg, adapter, meta, tasks, gens, steps)
        else:
            curves = [run_task(cfg, adapter, meta, t, g, steps)[1] for t, g in zip(tasks, gens)]
        out[batched] = meta, curves
    (a, ca), (b, cb) = out[False], out[True]
    assert a.tasks == b.tasks == 3 and a.skipped == b.skipped == 0
    for u, v in zip(a._acc, b._acc):
        if "leap.p=1" in extra:
            # the length metric sums Δθ_i/ℓ_i: differences of nearly equal parameters, so the batched forward's
            # other summation order (≈ 1e-7 in θ) is ≈ 1e-4 of each increment; measured 1.5e-4–3.5e-4 of the norm
            assert float((v - u).norm() / u.norm()) < 1e-3
        else:
            torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)
    assert b.displacement == pytest.approx(a.displacement, rel=1e-4)
    for x, y in zip(ca, cb):
        assert len(x) == len(y) == 23
        torch.testing.assert_close(torch.tensor(y), torch.tensor(x), rtol=1e-4, atol=1e-5)
