"""A2C on asynchronous envs (agents/async_a2c.py): rollouts indexed by env id.

A stand-in async pool, which returns a random batch of the envs in flight on each receive, checks what the
sampling may change and what it may not: each env's stored transitions are consecutive steps of its own stream
(within and across rollouts), with the action it was sent; returns and advantages per env id equal each env's own
recursion. With a batch of every env, the async path is lockstep A2C bit for bit (real EnvPool)."""

import numpy as np
import pytest
import torch

from agents.a2c import A2CConfig, compute_returns, make_optimizer, train_agent
from agents.async_a2c import AsyncRolloutCollector, compute_returns_by_env
from agents.nets import ActorCritic


class RandomOrderPool:
    """M envs, ``batch_size`` returned per receive, picked at random among those in flight. Env e's observation
    holds its step count in pixel [0, 0, 0] and e in [0, 0, 1]; it ends an episode at random, and the step after
    an end is an auto-reset step, as EnvPool's."""

    observation_shape = (4, 84, 84)
    num_actions = 5

    def __init__(self, num_envs: int, batch_size: int, seed: int = 0) -> None:
        self.num_envs, self.batch_size = num_envs, batch_size
        self.rng = np.random.default_rng(seed)
        self.count = np.zeros(num_envs, dtype=np.int64)
        self.in_flight: dict[int, int] = {}
        self.sent: list[list[int]] = [[] for _ in range(num_envs)]          # actions each env received, in order
        self.prev_done = np.zeros(num_envs, dtype=bool)

    def _obs(self, ids) -> np.ndarray:
        obs = np.zeros((len(ids), *self.observation_shape), dtype=np.uint8)
        obs[:, 0, 0, 0] = self.count[ids] % 256
        obs[:, 0, 0, 1] = ids
        return obs

    def reset(self) -> np.ndarray:
        return self._obs(np.arange(self.num_envs))

    def send(self, actions, env_ids) -> None:
        for a, e in zip(actions, env_ids):
            assert int(e) not in self.in_flight, "an env was sent twice before its result came back"
            self.in_flight[int(e)] = int(a)
            self.sent[int(e)].append(int(a))

    def recv(self):
        ids = np.sort(self.rng.choice(sorted(self.in_flight), size=self.batch_size, replace=False))
        for e in ids:
            del self.in_flight[int(e)]
        self.count[ids] += 1
        autoreset = self.prev_done[ids]
        terminated = self.rng.random(len(ids)) < 0.1
        truncated = ~terminated & (self.rng.random(len(ids)) < 0.05)
        done = (terminated | truncated) & ~autoreset
        self.prev_done[ids] = done
        reward = np.where(autoreset, 0.0, self.rng.normal(size=len(ids))).astype(np.float32)
        info = {"env_id": ids, "autoreset": autoreset, "raw_reward": reward, "terminated": terminated & done,
                "truncated": truncated & done}
        return self._obs(ids), reward, done, info


def _counts(obs: torch.Tensor) -> np.ndarray:
    return obs[..., 0, 0, 0].numpy().astype(np.int64)


@pytest.mark.parametrize("num_envs,batch", [(8, 2), (6, 3), (4, 1)])
def test_each_env_stores_its_own_consecutive_steps(num_envs, batch):
    n = 5
    env = RandomOrderPool(num_envs, batch, seed=num_envs)
    model = ActorCritic(env.num_actions, generator=torch.Generator().manual_seed(0))
    collector = AsyncRolloutCollector(env, model, n, torch.Generator().manual_seed(1))
    stored: list[list[tuple[int, int]]] = [[] for _ in range(num_envs)]    # (step count, action) per env
    for _ in range(3):
        ro = collector.collect()
        assert ro.obs.shape[:2] == (n * num_envs // batch, batch)
        ids = ro.env_ids.numpy()
        assert all(len(set(row)) == batch for row in ids)                  # an env at most once per receive
        assert (ro.obs[..., 0, 0, 1].numpy() == ids).all()                  # row, column and frame agree
        for t in range(ids.shape[0]):
            for b, e in enumerate(ids[t]):
                stored[e].append((int(_counts(ro.obs)[t, b]), int(ro.actions[t, b])))
        # the bootstrap is V of each env's latest observation: the one after its last stored step
        with torch.no_grad():
            assert torch.equal(ro.bootstrap, model(collector.current)[1])
        assert (_counts(collector.current) == [s[-1][0] + 1 for s in stored]).all()
    assert sum(len(s) for s in stored) == 3 * n * num_envs
    for e, steps in enumerate(stored):
        counts = [c for c, _ in steps]
        assert counts == list(range(len(counts))), f"env {e}: stored steps {counts} are not consecutive"
        assert [a for _, a in steps] == env.sent[e][: len(steps)]         # the action each step was sent


def _random_rollout(T: int, B: int, M: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(M, generator=g)[:B] for _ in range(T)])
    dones = torch.rand(T, B, generator=g) < 0.2
    truncated = dones & (torch.rand(T, B, generator=g) < 0.3)
    return (torch.randn(T, B, generator=g), torch.randn(T, B, generator=g), dones, truncated, ids,
            torch.randn(M, generator=g))


@pytest.mark.parametrize("gae_lambda", [1.0, 0.95])
def test_returns_by_env_id_are_each_envs_own_recursion(gae_lambda):
    T, B, M = 12, 3, 5
    rewards, values, dones, truncated, ids, bootstrap = _random_rollout(T, B, M, seed=3)
    returns, advantages = compute_returns_by_env(rewards, values, dones, truncated, ids, bootstrap, 0.9, gae_lambda)
    for e in range(M):
        where = (ids == e).nonzero().tolist()                     # env e's transitions, in receive order
        pick = [tuple(w) for w in where]
        col = lambda x: torch.stack([x[t, b] for t, b in pick]).unsqueeze(1)       # noqa: E731
        r, a = compute_returns(col(rewards), torch.cat([col(values), bootstrap[e].view(1, 1)]), col(dones),
                               col(truncated), 0.9, gae_lambda)
        assert torch.allclose(col(returns), r, atol=1e-6) and torch.allclose(col(advantages), a, atol=1e-6), e


def test_returns_by_env_id_with_every_env_in_every_row_are_compute_returns_exactly():
    T, M = 7, 4
    rewards, values, dones, truncated, _, bootstrap = _random_rollout(T, M, M, seed=4)
    ids = torch.arange(M).expand(T, M)
    by_env = compute_returns_by_env(rewards, values, dones, truncated, ids, bootstrap, 0.99, 0.9)
    lockstep = compute_returns(rewards, torch.cat([values, bootstrap[None]]), dones, truncated, 0.99, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(by_env, lockstep))


def test_config_refuses_what_async_envs_cannot_do():
    with pytest.raises(ValueError, match="divide a2c.num_envs"):
        A2CConfig(num_envs=16, async_batch=5)
    with pytest.raises(ValueError, match="groups: 1"):
        A2CConfig(num_envs=16, async_batch=8, groups=2)
    with pytest.raises(ValueError, match="batched: false"):
        A2CConfig(num_envs=16, async_batch=8, batched=True)


# -- real EnvPool ---------------------------------------------------------------------------------------------

def _train(cfg: A2CConfig, updates: int, batch_size: int | None = None):
    from envs.atari import make_atari

    env = make_atari("Breakout", cfg.num_envs, 7, backend="envpool", num_threads=2, batch_size=batch_size)
    model = ActorCritic(env.num_actions, generator=torch.Generator().manual_seed(0))
    try:
        result = train_agent(env, model, make_optimizer(model.parameters(), cfg), updates * cfg.batch_size, cfg=cfg,
                             final_loss=True, generator=torch.Generator().manual_seed(5))
    finally:
        env.close()
    return model, result


def test_async_path_with_a_batch_of_every_env_is_lockstep_a2c_bit_for_bit(one_thread):
    pytest.importorskip("envpool")
    lockstep, a = _train(A2CConfig(num_envs=4, reuse_forward=False), 12)
    asynchronous, b = _train(A2CConfig(num_envs=4, async_batch=4), 12, batch_size=4)
    assert a.losses == b.losses and a.env_steps == b.env_steps
    assert [(e.global_step, e.episodic_return, e.env) for e in a.episodes] == \
        [(e.global_step, e.episodic_return, e.env) for e in b.episodes]
    for (name, p), q in zip(lockstep.named_parameters(), asynchronous.parameters()):
        assert torch.equal(p, q), name


def test_async_envpool_trains_on_the_first_envs_to_finish(one_thread):
    pytest.importorskip("envpool")
    cfg = A2CConfig(num_envs=8, async_batch=2)
    model, result = _train(cfg, 6, batch_size=2)
    assert result.updates == 6 and result.env_steps == 7 * 8 * 5          # 6 updates and the final-loss rollout
    assert all(np.isfinite(result.losses)) and len(result.losses) == 7
    for p in model.parameters():
        assert torch.isfinite(p).all()


ASYNC_RESETS = """
import numpy as np
from agents.a2c import A2CConfig, make_optimizer, train_agent
from agents.nets import ActorCritic
from envs.atari import make_atari

env = make_atari("Pong", 16, 0, backend="envpool", batch_size=8)
rng = np.random.default_rng(0)
for _ in range(20):         # reset with 8 envs still stepping, as a loop that stopped mid-stream leaves the pool
    env.reset()
    env.send(rng.integers(0, env.num_actions, 16))
    for i in range(8):
        _, _, _, info = env.recv()
        if i < 7:
            env.send(rng.integers(0, env.num_actions, len(info["env_id"])), info["env_id"])
cfg = A2CConfig(num_envs=16, async_batch=8)           # one pool, successive runs (each collector resets it)
model = ActorCritic(env.num_actions)
optimizer = make_optimizer(model.parameters(), cfg)
for _ in range(2):
    train_agent([env], model, optimizer, 2 * cfg.batch_size, cfg=cfg)
print("ok")
"""


def test_resetting_an_async_pool_with_envs_still_stepping_receives_them_first():
    """EnvPool resets an env that is mid-step into a corrupt state buffer (illegal emulator instructions, then a
    crash or a hang), so the wrapper receives every env in flight before an async reset. Run in a child process
    with a time limit: without that, this loop killed the process or hung (20 resets, or the async collector's
    successive runs on one pool, as `metarl bench a2c-throughput --variants ours_async` runs them)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("envpool")
    done = subprocess.run([sys.executable, "-c", ASYNC_RESETS], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])


def test_benchmark_measures_the_async_variant_and_refuses_graphs_on_the_cpu(capsys):
    """`metarl bench a2c-throughput --variants ...,ours_async` at tiny settings reports its figures (no timing is
    asserted); `ours_graphs` without a CUDA device is refused in one line."""
    import json

    from cli_helpers import cli, one_line

    pytest.importorskip("envpool")
    code, out, err = cli(["bench", "a2c-throughput", "--variants", "ours,ours_async", "--num-envs", "4",
                          "--steps", "40", "--rounds", "1", "--threads", "1", "--env-threads", "1"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["async_batch"] == 2 and result["ours_async_sps"] > 0 and "ratio_async" in result
    code, _, err = cli(["bench", "a2c-throughput", "--variants", "ours_graphs", "--device", "cpu"], capsys)
    assert code == 2 and "need a CUDA --device" in one_line(err)
