"""``run.device``: every job keeps the tensors of a step on the configured device; checkpoints are saved on
the CPU and mapped on load; CUDA asked for where there is none is one line and exit code 2.

The CPU tests run everywhere. Tests marked ``cuda`` need a GPU and are skipped when torch sees none: the
same jobs on ``cuda`` (then the device check is not trivially met), A2C updates and Leap meta-gradients on
CUDA against the CPU on the same batch, a maze iteration (rollout, A2C loss, gradient, Adam step) on CUDA
against the CPU given the same noise, and a run started on CUDA resumed on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import train.trainer as trainer_module
from train.checkpoint import load_latest
from train.config import build_config
from train.config_yaml import read_yaml
from train.device import check_device_name, resolve_device, to_cpu, to_device
from train.errors import ConfigError
from train.tasks import build_adapter

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")
DEVICES = ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]


# ------------------------------------------------------------------------------------------------
# resolving run.device


def test_device_names_and_resolution():
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        check_device_name(name)
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(ConfigError, match="run.device"):
            check_device_name(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    if not HAS_CUDA:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="CUDA") as info:
                resolve_device(name)
            assert "\n" not in str(info.value)


def test_config_refuses_an_unknown_device():
    with pytest.raises(ConfigError, match="run.device"):
        build_config(read_yaml(CONFIGS / "sine_leap.yaml"), ["run.device=gpu"])


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "train.cli", "train", str(CONFIGS / "sine_leap.yaml"),
                          "run.device=cuda", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.device=cuda" in lines[0] and "CUDA" in lines[0]
    assert not (tmp_path / "run").exists()          # refused before the run directory is touched


def test_to_cpu_and_to_device_walk_containers():
    state = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(()), 3)], "c": "x"}
    out = to_cpu(state)
    assert out["c"] == "x" and out["b"][1][1] == 3 and torch.equal(out["a"], state["a"])
    moved = to_device(state, "cpu")
    assert moved["a"] is state["a"]                 # nothing is copied where the tensor already is


# ------------------------------------------------------------------------------------------------
# every job keeps every tensor of a step on the device


def _is_task(obj) -> bool:
    return hasattr(obj, "batch") and hasattr(obj, "loss")


# Kept on the host by design, by key or attribute name: pinned staging buffers; optimiser step counts (torch's
# Adam keeps ``step`` on the CPU unless capturable or fused, and SeedAdam likewise); the seed-batched warp
# meta-learner's per-seed counters (read as Python numbers).
HOST_SIDE = ("host_obs", "host", "step", "seed_tasks", "seed_skipped", "seed_warp_steps")


def tensors_of(obj, out: list, seen: set, depth: int = 0, skip: tuple[str, ...] = ()) -> list:
    """The tensors reachable from ``obj``: module parameters, buffers and gradients, optimiser states and
    the attributes of the package's own objects (meta-learners, their observers, rollouts). Tasks (they
    hold the CPU data pools their batches are drawn from) and pinned staging buffers are not walked."""
    if obj is None or id(obj) in seen or depth > 6 or _is_task(obj) or isinstance(obj, torch.Generator):
        return out
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        if obj.is_leaf and obj.grad is not None:
            out.append(obj.grad)
    elif isinstance(obj, nn.Module):
        for t in (*obj.parameters(), *obj.buffers()):
            tensors_of(t, out, seen, depth + 1)
    elif isinstance(obj, torch.optim.Optimizer):
        for group in obj.param_groups:
            tensors_of(group["params"], out, seen, depth + 1)
        tensors_of(list(obj.state.values()), out, seen, depth + 1, skip)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                tensors_of(v, out, seen, depth + 1, skip)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_of(v, out, seen, depth + 1, skip)
    elif type(obj).__module__.split(".")[0] in ("metarl", "agents", "train") and hasattr(obj, "__dict__"):
        tensors_of(vars(obj), out, seen, depth + 1, skip)
    return out


class DeviceSpy:
    """Wraps a run's adapter, meta-learner and A2C update so that every step's model, batch, optimiser
    state, rollout and meta-learner state are checked to be on ``device``."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.meta = None
        self.checked = 0
        self.where: set[str] = set()

    def check(self, *objects, what: str) -> None:
        found = []
        for obj in objects:
            tensors_of(obj, found, set(), skip=HOST_SIDE)
        bad = {str(t.device) for t in found if t.device.type != self.device.type
               or (self.device.index is not None and t.device.index != self.device.index)}
        assert not bad, f"{what}: tensors on {sorted(bad)}, expected {self.device}"
        self.checked += len(found)
        self.where.add(what)

    def spy_task(self, task, model) -> None:
        if not _is_task(task) or "loss" in getattr(task, "__dict__", {"loss": 0}):
            return
        original = task.loss

        def loss(m, batch):
            self.check(batch, what="batch")
            value = original(m, batch)
            self.check(value, model, self.meta, what="step")
            return value
        try:
            task.loss = loss
        except (AttributeError, TypeError, dataclasses.FrozenInstanceError):    # Atari's frozen Game: no batches
            pass

    def install(self, monkeypatch, adapter_factory=None) -> None:
        build_meta = trainer_module.build_meta_learner

        def build_meta_learner(cfg, model, adapter):
            self.meta = build_meta(cfg, model, adapter)
            run_task = self.meta.run_task

            def spied_run_task(adapter, task, model, optimizer, steps, clip=None):
                self.spy_task(task, model)
                curve = run_task(adapter, task, model, optimizer, steps, clip)
                self.check(model, optimizer, self.meta, what="task end")
                return curve
            self.meta.run_task = spied_run_task
            return self.meta

        def make_adapter(name, config, seed):
            adapter = adapter_factory(config, seed) if adapter_factory else build_adapter(name, config, seed)
            adapt = adapter.adapt

            def spied_adapt(task, model, optimizer, steps, *args, **kwargs):
                self.spy_task(task, model)
                curve = adapt(task, model, optimizer, steps, *args, **kwargs)
                self.check(model, optimizer, what="adapt end")
                return curve
            adapter.adapt = spied_adapt
            return adapter

        import agents.a2c as a2c
        a2c_step = a2c.a2c_step

        def spied_a2c_step(model, optimizer, ro, cfg, num_actions, watch=a2c.NULL_WATCH):
            self.check(model, ro, what="rollout")
            names, values = a2c_step(model, optimizer, ro, cfg, num_actions, watch)
            self.check(model, optimizer, values, self.meta, what="a2c update")
            return names, values

        import train.tasks.maze as maze
        maze_loss = maze.rollout_loss

        def spied_rollout_loss(episodes, config=None):      # the maze: rollout buffers, logits, values, loss
            self.check(episodes, what="rollout")
            loss = maze_loss(episodes, config)
            self.check(loss, what="maze loss")
            return loss

        monkeypatch.setattr(trainer_module, "build_meta_learner", build_meta_learner)
        monkeypatch.setattr(trainer_module, "build_adapter", make_adapter)
        monkeypatch.setattr(a2c, "a2c_step", spied_a2c_step)
        monkeypatch.setattr(maze, "rollout_loss", spied_rollout_loss)


SMALL = ["meta.steps=1", "meta.meta_batch=2", "eval.every=0", "eval.tasks=1", "run.progress=false",
         "run.checkpoint_every=1"]
SINE = [*SMALL, "inner.steps=3", "eval.steps=3"]


def _continual_sine(method: str) -> tuple[dict, list[str]]:
    data = read_yaml(CONFIGS / "continual_sine_warp_cpu.yaml")
    data["continual_sine"].update(subtasks=5, steps_per_subtask=1, hidden=[8, 8], warp_hidden=4)
    data["warpgrad"]["stride"] = 1
    over = [*SMALL, "meta.meta_batch=1", "inner.steps=5"]
    if method == "no_pretraining":                  # continual mode: one never-reset learner (the trainer's Stream)
        data.pop("warpgrad")
        data["method"] = "no_pretraining"
        over += ["meta.every=5", "meta.steps=2"]
    return data, over


def _tiered(tmp_path, method: str, algorithm: str = "online") -> tuple[dict, list[str]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiered_fixture import make_tiny_tiered
    root = make_tiny_tiered(tmp_path / "data", seed=0, categories=2, classes_per_category=6, images_per_class=20)
    data = read_yaml(CONFIGS / "tiered_leap_tiny.yaml")
    over = [*SMALL, f"tiered.root={root}", "tiered.shots=8", "tiered.test_per_class=4", "inner.steps=2",
            "eval.steps=2", "tiered.ways=3"]
    if method == "warpgrad":
        over += ["method=warpgrad", "tiered.warp=linear", f"warpgrad.algorithm={algorithm}"]
    return data, over


def _maze(job: str) -> tuple[dict, list[str]]:
    """A tiny maze run: Warp-RNN under Algorithm 3 with the meta-batch objective (its query rollouts go through
    the task's loss), the LSTM baseline, or two seeds of Warp-RNN trained as one batch."""
    data = {"name": job, "seed": 3, "task": "maze", "method": "warpgrad_continual",
            "warpgrad_continual": {"objective": "meta_batch"},
            "maze": {"model": "warp-rnn", "hidden_size": 8, "warp_hidden_size": 6, "batch": 3,
                     "episode_length": 8, "burn_in": 1, "clip_grad_norm": 1.0},
            "meta": {"every": 2, "steps": 2, "include": ["warp."], "head": "learned",
                     "optimizer": {"name": "adam", "lr": 1e-3}},
            "run": {"checkpoint_every": 1, "progress": False, "threads": 1}}
    if job == "maze_lstm":
        data.update(method="no_pretraining")
        data.pop("warpgrad_continual")
        data["maze"]["model"] = "lstm"
        data["meta"].pop("include")
    elif job == "maze_warp_rnn_seeds":
        data["maze"]["seeds"] = [0, 1]
    return data, []


JOBS = ["sine_leap", "sine_reptile", "sine_fomaml", "sine_maml", "sine_finetune", "sine_lazy",
        "sine_no_pretraining", "continual_sine_warpgrad", "continual_mode_no_pretraining", "omniglot_leap",
        "tiered_leap", "tiered_warpgrad_online", "tiered_warpgrad_offline", "atari_leap", "maze_warp_rnn",
        "maze_lstm", "maze_warp_rnn_seeds"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("job", JOBS)
def test_every_job_keeps_a_step_on_its_device(job, device, tmp_path, monkeypatch, one_thread):
    factory = None
    if job.startswith("sine_"):
        data, over = read_yaml(CONFIGS / f"{job}.yaml"), list(SINE)
        if job == "sine_lazy":
            over.append("lazy.student_steps=3")
    elif job == "continual_sine_warpgrad":
        data, over = _continual_sine("warpgrad")
    elif job == "continual_mode_no_pretraining":
        data, over = _continual_sine("no_pretraining")
    elif job == "omniglot_leap":
        from train.benchmarks.omniglot_meta_step import synthetic_data
        from train.tasks.omniglot import OmniglotAdapter
        pool = synthetic_data(alphabets=12, characters=20, drawings=20)
        data = read_yaml(CONFIGS / "omniglot_dev_leap.yaml")
        over = [*SMALL, "inner.steps=2", "eval.steps=2", "omniglot.filters=8", "omniglot.num_pretrain=4",
                "omniglot.num_test=4"]
        factory = lambda config, seed: OmniglotAdapter(config, seed, data=pool)      # noqa: E731
    elif job.startswith("tiered_"):
        method = "warpgrad" if "warpgrad" in job else "leap"
        data, over = _tiered(tmp_path, method, job.rsplit("_", 1)[-1])
    elif job.startswith("maze_"):
        data, over = _maze(job)
    else:
        pytest.importorskip("envpool")
        data = read_yaml(CONFIGS / "atari_leap.yaml")
        over = [*SMALL, "meta.meta_batch=1", "atari.train_games=[Breakout]", "atari.test_games=[Breakout]",
                "atari.a2c.num_envs=4", "inner.steps=40", "eval.steps=40", "atari.backend=envpool",
                "atari.test_on_train_games=true"]
    cfg = build_config(data, [*over, f"run.device={device}"])
    spy = DeviceSpy(device)
    spy.install(monkeypatch, factory)
    trainer_module.train(cfg, tmp_path / "run")
    expected = {"atari_leap": {"rollout", "a2c update", "adapt end"},
                "maze_lstm": {"rollout", "maze loss", "adapt end"}}.get(job, {"batch", "step"})
    if job.startswith("maze_"):
        expected = expected | {"rollout", "maze loss", "adapt end"}
    assert expected <= spy.where and spy.checked > 0
    # the meta-learner's whole state, and what the checkpoint holds (CPU tensors only)
    spy.check(spy.meta, what="meta-learner")
    state, _ = load_latest(tmp_path / "run")
    assert all(t.device.type == "cpu" for t in tensors_of(state, [], set()))


# ------------------------------------------------------------------------------------------------
# checkpoints: saved on the CPU, mapped on load, resumed exactly


def _sine(device: str, steps: int, *extra: str):
    return build_config(read_yaml(CONFIGS / "sine_leap.yaml"),
                        [f"meta.steps={steps}", "meta.meta_batch=2", "inner.steps=4", "eval.every=0",
                         "eval.tasks=1", "run.progress=false", "run.checkpoint_every=1", f"run.device={device}",
                         *extra])


def _assert_same_init(a: dict, b: dict, atol: float = 0.0) -> None:
    assert set(a["meta"]["init"]) == set(b["meta"]["init"])
    for k, v in a["meta"]["init"].items():
        if atol:
            torch.testing.assert_close(b["meta"]["init"][k], v, atol=atol, rtol=0)
        else:
            assert torch.equal(b["meta"]["init"][k], v), k


def test_resume_through_the_device_mapping_is_exact(tmp_path):
    """2 + 2 meta-steps (stopped, checkpoint on the CPU, mapped on load, resumed with run.device=auto) equal
    4 meta-steps in one go; the checkpoint holds CPU tensors only."""
    trainer_module.train(_sine("cpu", 4, "meta.optimizer.name=adam"), tmp_path / "once")
    trainer_module.train(_sine("cpu", 4, "meta.optimizer.name=adam"), tmp_path / "twice", stop_after=2)
    state, _ = load_latest(tmp_path / "twice")
    assert state["step"] == 2 and all(t.device.type == "cpu" for t in tensors_of(state, [], set()))
    trainer_module.train(_sine("auto" if not HAS_CUDA else "cpu", 4, "meta.optimizer.name=adam"),
                         tmp_path / "twice", resume=True)
    once, _ = load_latest(tmp_path / "once")
    twice, _ = load_latest(tmp_path / "twice")
    _assert_same_init(once, twice)
    assert torch.equal(once["meta"]["counters"], twice["meta"]["counters"])
    for a, b in zip(once["meta"]["meta_optimizer"]["state"].values(),
                    twice["meta"]["meta_optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_device_may_change_on_resume():
    from train.config import check_resume_overrides
    saved = _sine("cpu", 4)
    assert check_resume_overrides(saved, _sine("auto", 4, "run.tf32=true")) == ["run.device", "run.tf32"]


def test_maze_device_returns_equal_the_host_loop():
    """The returns a GPU rollout computes on the device (one float64 product) are the CPU loop's."""
    from agents.maze_a2c import discounted_returns, discounted_returns_product

    g = torch.Generator().manual_seed(0)
    rewards = torch.where(torch.rand(40, 2, 5, generator=g) < 0.1, 10.0, 0.0) - 0.1 * (torch.rand(40, 2, 5) < 0.3)
    for gamma in (0.0, 0.9, 1.0):
        torch.testing.assert_close(discounted_returns_product(rewards, gamma), discounted_returns(rewards, gamma),
                                   atol=1e-6, rtol=0)


def test_maze_sampler_is_a_cpu_generator_and_cpu_rollouts_stage_nothing():
    """The maze's action samplers are CPU generators on every device (agents.maze_a2c, "Devices"); a CPU
    rollout's buffers are plain (unpinned) CPU tensors."""
    from agents.maze_a2c import rollout
    from agents.recurrent import RecurrentConfig, build_model
    from envs.maze import MazeConfig
    from envs.maze_vector import MazeBatch
    from train.tasks.maze import MazeAdapter, MazeTaskConfig

    assert tuple(MazeAdapter.device_types) == ("cpu", "cuda")
    adapter = MazeAdapter(MazeTaskConfig(batch=2, episode_length=4), seed=0)
    assert adapter.sampler.device.type == "cpu" and adapter.meta_sampler.device.type == "cpu"
    torch.manual_seed(0)
    model = build_model("rnn", RecurrentConfig(hidden_size=4))
    ro = rollout(model, MazeBatch(2, MazeConfig(episode_length=4), seed=0), generator=torch.Generator())
    for t in (ro.observations, ro.actions, ro.rewards, ro.logits, ro.values):
        assert t.device.type == "cpu" and not t.is_pinned()


# ------------------------------------------------------------------------------------------------
# CUDA against the CPU (skipped without a GPU)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a2c_update_on_cuda_equals_cpu(precision):
    from agents.a2c import A2CConfig, Rollout, a2c_step, make_optimizer
    from agents.nets import ActorCritic

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    n, N, A = 5, 8, 6
    cfg = A2CConfig(num_envs=N, n_steps=n, precision=precision, reuse_forward=False)
    rollouts = {}
    for dev in ("cpu", "cuda"):
        ro = Rollout(n, N, (4, 84, 84), torch.device(dev))
        rollouts[dev] = ro
    src = Rollout(n, N, (4, 84, 84), torch.device("cpu"))
    src.obs.copy_(torch.randint(0, 256, src.obs.shape, generator=g, dtype=torch.uint8))
    src.actions.copy_(torch.randint(0, A, src.actions.shape, generator=g))
    src.rewards.copy_(torch.randn(n, N, generator=g).sign())
    src.values.copy_(torch.randn(n + 1, N, generator=g))
    src.dones.copy_(torch.rand(n, N, generator=g) < 0.1)
    src.valid.fill_(True)
    for ro in rollouts.values():
        for name in ("obs", "actions", "rewards", "values", "dones", "truncated", "valid"):
            getattr(ro, name).copy_(getattr(src, name))
    base = ActorCritic(A, generator=torch.Generator().manual_seed(1))
    models = {dev: copy.deepcopy(base).to(dev) for dev in rollouts}
    out = {}
    for dev, model in models.items():
        opt = make_optimizer(model.parameters(), cfg)
        _, values = a2c_step(model, opt, rollouts[dev], cfg, A)
        out[dev] = values.cpu()
    tol = dict(atol=1e-4, rtol=1e-3) if precision == "fp32" else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out["cuda"], out["cpu"], **tol)
    for (name, p), q in zip(models["cpu"].named_parameters(), models["cuda"].parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), **tol, msg=name)


@cuda
@pytest.mark.cuda
def test_leap_meta_gradient_on_cuda_equals_cpu():
    from train.trainer import setup, run_task
    from train.seeding import step_generators

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    grads = {}
    for dev in ("cpu", "cuda"):
        cfg = _sine(dev, 1, "inner.steps=20")
        adapter, meta = setup(cfg)
        assert meta.device.type == dev and adapter.device.type == dev
        rng, _ = step_generators(cfg.seed, 0)
        for k, task in enumerate(adapter.sample_tasks("train", 2, rng)):
            run_task(cfg, adapter, meta, task, step_generators(cfg.seed, 0, 1 + k)[1], cfg.inner.steps)
        grads[dev] = [g.detach().cpu() for g in meta.meta_gradient()]
        assert all(a.device.type == dev for a in meta._acc)
    for a, b in zip(grads["cpu"], grads["cuda"]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


@cuda
@pytest.mark.cuda
def test_resume_a_cuda_checkpoint_on_cpu(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    trainer_module.train(_sine("cuda", 4), tmp_path / "gpu", stop_after=2)
    state, _ = load_latest(tmp_path / "gpu")
    assert all(t.device.type == "cpu" for t in tensors_of(state, [], set()))
    trainer_module.train(_sine("cpu", 4), tmp_path / "gpu", resume=True)      # continued on the CPU
    trainer_module.train(_sine("cpu", 4), tmp_path / "cpu")
    gpu, _ = load_latest(tmp_path / "gpu")
    cpu, _ = load_latest(tmp_path / "cpu")
    assert int(gpu["meta"]["counters"][2]) == 4
    _assert_same_init(cpu, gpu, atol=1e-4)
    assert np.isfinite(float(gpu["meta"]["counters"][2]))


def _maze_iteration(model, mazes, generators, device: str) -> dict:
    """One maze iteration on ``device``: rollout, A2C loss, backward, one Adam step (agents.maze_a2c). Adam with
    Backpropamine's ε = 1e-4 (a first Adam step is ≈ lr · sign(g) where |g| ≪ ε is not: tiny gradients' rounding
    differences would otherwise decide whole steps)."""
    from agents.maze_a2c import rollout, rollout_loss, rollout_seeds
    from metarl.seed_batch import SeedAdam

    model = model.to(device)
    seeds = getattr(model, "seeds", 0)
    opt = (SeedAdam(model.parameters(), seeds, lr=1e-3, eps=1e-4) if seeds
           else torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4))
    ro = rollout_seeds(model, mazes, generators=generators) if seeds else rollout(model, mazes, generator=generators)
    assert all(t.device.type == device for t in (ro.observations, ro.actions, ro.rewards, ro.logits, ro.values))
    loss = rollout_loss(ro)
    opt.zero_grad()
    loss.total.sum().backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters()}
    opt.step()
    return {"actions": ro.actions.cpu(), "rewards": ro.rewards.cpu(), "observations": ro.observations.cpu(),
            "logits": ro.logits.detach().cpu(), "values": ro.values.detach().cpu(),
            "loss": loss.total.detach().cpu(), "returns": ro.episode_returns, "grads": grads,
            "params": {n: p.detach().cpu() for n, p in model.named_parameters()}}


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["warp-rnn", "lstm", "plastic-rnn-retroactive", "warp-rnn-seeds"])
def test_maze_iteration_on_cuda_equals_cpu(name):
    """The same agent, mazes and sampler seeds: on CUDA (autograd cell path, observations through pinned
    staging) the iteration takes the CPU's actions (the Gumbel noise is drawn on the CPU on both) and its
    logits, loss, gradients and Adam step agree with the CPU's (fused unrolls for Warp-RNN, plastic RNNs)
    within tolerance."""
    from agents.recurrent import RecurrentConfig, build_model
    from agents.seed_batched import build_seed_batched
    from envs.maze import MazeConfig
    from envs.maze_vector import MazeBatch, SeedMazeBatch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config, maze = RecurrentConfig(hidden_size=16, warp_hidden_size=12), MazeConfig(episode_length=20)
    seeds = [4, 7] if name.endswith("-seeds") else []
    out = {}
    for dev in ("cpu", "cuda"):
        if seeds:
            model = build_seed_batched(name.removesuffix("-seeds"), config, seeds)
            mazes = SeedMazeBatch([10 + k for k in seeds], 5, maze)
            gens = [torch.Generator().manual_seed(20 + k) for k in seeds]
        else:
            torch.manual_seed(0)
            model = build_model(name, config)
            mazes, gens = MazeBatch(5, maze, seed=11), torch.Generator().manual_seed(21)
        out[dev] = _maze_iteration(model, mazes, gens, dev)
    cpu, gpu = out["cpu"], out["cuda"]
    for key in ("actions", "rewards", "observations"):
        assert torch.equal(gpu[key], cpu[key]), key
    np.testing.assert_array_equal(gpu["returns"], cpu["returns"])
    tol = dict(atol=1e-4, rtol=1e-3)
    for key in ("logits", "values", "loss"):
        torch.testing.assert_close(gpu[key], cpu[key], **tol, msg=key)
    for n in cpu["grads"]:
        torch.testing.assert_close(gpu["grads"][n], cpu["grads"][n], **tol, msg=n)
        torch.testing.assert_close(gpu["params"][n], cpu["params"][n], **tol, msg=n)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["warp-rnn", "lstm"])
def test_maze_on_cuda_syncs_once_per_step(name):
    """A CUDA maze rollout synchronises with the host exactly once per env step: the copy of the sampled
    actions back to the host (torch's sync debug mode warns at every synchronising call)."""
    import warnings

    from agents.maze_a2c import rollout
    from agents.recurrent import RecurrentConfig, build_model
    from envs.maze import MazeConfig
    from envs.maze_vector import MazeBatch

    T = 6
    torch.manual_seed(0)
    model = build_model(name, RecurrentConfig(hidden_size=8, warp_hidden_size=6)).to("cuda")
    mazes = MazeBatch(3, MazeConfig(episode_length=T), seed=0)
    gen = torch.Generator().manual_seed(0)
    rollout(model, mazes, generator=gen)                   # warm-up (lazy initialisation)
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            ro = rollout(model, mazes, generator=gen)
            torch.cuda.set_sync_debug_mode(before)
    finally:
        torch.cuda.set_sync_debug_mode(before)
    # (torch's notice that the debug mode is a prototype also says "synchronizing"; it names no sync.)
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == T, [str(w.message) for w in syncs]
    assert ro.actions.is_cuda and ro.observations.is_cuda and ro.rewards.is_cuda
