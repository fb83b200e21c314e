"""The README's Python snippets run as written and do what the README says they do.

Each snippet is taken from README.md at test time and executed; the names it assumes (``model``,
``meta_batches``) are supplied, and the SB3 snippet's sizes are shrunk by textual substitution (16 envs → 2,
100,000 steps → 20), nothing else. What they compute is checked against independent computations: the Leap
loop's step against the autograd surrogate of Leap's objective over the included parameters, the SB3 loop's
step against θ⁰ − lr · mean over games of (θ⁰ − θᴷ) (the energy metric without the loss term)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from test_leap import surrogate_gradient

ROOT = Path(__file__).resolve().parent.parent


def snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)


def snippet(marker: str) -> str:
    found = [s for s in snippets() if marker in s]
    assert len(found) == 1, f"one README Python snippet containing {marker!r}, found {len(found)}"
    return found[0]


def test_the_readme_has_the_two_snippets():
    assert len(snippets()) == 2


# ------------------------------------------------------------------------------------------------
# the Leap loop


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        with torch.no_grad():           # small outputs and gradients: the README's clip at 1.0 stays slack
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.encoder(x))


class Task:
    """K = 6 training batches and a last batch for f(θ_K); small targets keep gradients under the clip."""

    def __init__(self, seed: int, steps: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(3, 1, generator=g, dtype=torch.float64)
        xs = [torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(steps + 1)]
        self.data = [(x, 0.1 * torch.sin(x @ w)) for x in xs]

    def __iter__(self):
        return iter(self.data[:-1])

    @staticmethod
    def loss(model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    def final_loss(self, model):
        return self.loss(model, self.data[-1])


def test_leap_snippet_takes_leaps_step_on_the_encoder(monkeypatch):
    torch.manual_seed(0)
    model = Net().double()
    tasks = [Task(seed) for seed in range(3)]
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    trajectories: list[list[list[torch.Tensor]]] = []     # per task, θ_i of every parameter (model order)
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        trajectories[-1].append([p.detach().clone() for p in model.parameters()])

    class RecordingAdam(torch.optim.Adam):                  # each task's optimiser: θ⁰ first, then every step
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trajectories.append([[p.detach().clone() for p in model.parameters()]])
            self.register_step_post_hook(record)

    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_record(*args, **kwargs):
        norms.append(float(clip(*args, **kwargs)))
        return torch.tensor(norms[-1])

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_record)
    scope = {"model": model, "meta_batches": [tasks]}
    exec(snippet("leap.watch(model, opt)"), scope)

    leap = scope["leap"]
    assert len(trajectories) == 3 and all(len(t) == 7 for t in trajectories)
    assert max(norms) < 1.0             # the clip never bound: the surrogate's unclipped gradient is Leap's
    assert leap.names == ["encoder.0.weight", "encoder.0.bias"] and leap.meta_steps == 1
    # θ⁰ − lr · the mean over tasks of the autograd surrogate's gradient (tests/test_leap.py), the encoder learned
    names = [n for n, _ in model.named_parameters()]
    learned = [n.startswith("encoder.") for n in names]
    grads = [surrogate_gradient(model, list(init.values()), traj, task.data, leap.config, learned)
             for traj, task in zip(trajectories, tasks)]
    for n, *g in zip([n for n, keep in zip(names, learned) if keep], *grads):
        want = init[n] - 0.1 * sum(g) / len(g)
        assert not torch.equal(want, init[n])
        torch.testing.assert_close(leap.init_state[n], want, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(leap.init_state["head.weight"], init["head.weight"], atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------
# Leap around stable-baselines3


def test_sb3_snippet_moves_the_shared_encoder_by_the_mean_displacement(monkeypatch):
    sb3 = pytest.importorskip("stable_baselines3")
    pytest.importorskip("ale_py")
    code = snippet("from stable_baselines3 import A2C")
    for old, new in (("n_envs=16", "n_envs=2"), ("total_timesteps=100_000", "total_timesteps=20")):
        assert code.count(old) == 1
        code = code.replace(old, new)
    visits: list[tuple[dict, dict, int]] = []
    learn = sb3.A2C.learn

    def recorded_learn(self, *args, **kwargs):
        def encoder():
            return {n: p.detach().clone() for n, p in self.policy.features_extractor.named_parameters()}
        start = encoder()
        out = learn(self, *args, **kwargs)
        visits.append((start, encoder(), self.action_space.n))
        return out

    monkeypatch.setattr(sb3.A2C, "learn", recorded_learn)
    torch.manual_seed(0)
    scope: dict = {}
    exec(code, scope)

    leap = scope["leap"]
    assert [n for _, _, n in visits] == [6, 4, 6, 3]          # Pong, Breakout, DemonAttack, Freeway: own heads
    assert leap.meta_steps == 1
    theta0 = visits[0][0]
    for start, _, _ in visits:                               # each game starts from the same θ⁰
        for n in theta0:
            assert torch.equal(start[n], theta0[n])
    for n, t0 in theta0.items():
        mean_displacement = sum(t0 - end[n] for _, end, _ in visits) / len(visits)
        assert mean_displacement.abs().max() > 0
        want = t0 - 0.1 * mean_displacement                    # the default outer step: SGD, lr 0.1
        torch.testing.assert_close(leap.init_state[f"features_extractor.{n}"], want, atol=1e-6, rtol=1e-5)
