"""Several tasks stepped by one optimiser over stacked parameters, watched per task (metarl/seam.py
``StackedWatch``, ``MetaLearner.watch_stacked``): Leap (both metrics), Reptile and FOMAML accumulate, task by
task, what they accumulate when each task runs alone under its own optimiser — checked against those
independent single-task runs — and a task with a non-finite meta-gradient is dropped alone."""

import pytest
import torch
from torch import nn

from metarl.fomaml import FOMAML
from metarl.leap import Leap, LeapConfig
from metarl.reptile import Reptile

K, STEPS = 3, 6


class Stacked(nn.Module):
    """K linear models stacked along a leading dimension, under the single model's names."""

    def __init__(self, single: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(single.weight.detach().repeat(K, 1, 1))
        self.bias = nn.Parameter(single.bias.detach().repeat(K, 1))

    def agent_view(self, name, tensor, k):
        return tensor[k]

    def losses(self, x, y):                 # x (K, B, 5), y (K, B, 4) → (K,)
        return (torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.mT) - y).square().mean((1, 2))


def _data(nan_task=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(K, 8, 5, generator=g), torch.randn(K, 8, 4, generator=g)
    if nan_task is not None:
        y[nan_task, 0, 0] = float("nan")
    return x, y


def _template():
    torch.manual_seed(1)
    return nn.Linear(5, 4)


METHODS = {
    "leap_p1": lambda m: Leap(m, LeapConfig(p=1)),
    "leap_p2": lambda m: Leap(m, LeapConfig(p=2)),
    "reptile": lambda m: Reptile(m),
    "fomaml": lambda m: FOMAML(m),
}


def _alone(method, x, y):
    meta = METHODS[method](_template())
    for k in range(K):
        model = nn.Linear(5, 4)
        meta.load_init(model)
        opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
        with meta.watch(model, opt) as watch:
            for _ in range(STEPS):
                loss = (model(x[k]) - y[k]).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                watch.report(loss)
                opt.step()
            with torch.no_grad():
                watch.finish((model(x[k]) - y[k]).square().mean())
    return meta


def _stacked(method, x, y):
    from agents.batched_a2c import clip_grad_norm_agents

    meta = METHODS[method](_template())
    model = Stacked(_template())
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with meta.watch_stacked(model, opt, list(range(K))) as watch:
        for _ in range(STEPS):
            losses = model.losses(x, y)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            clip_grad_norm_agents(list(model.parameters()), 0.5, K)
            watch.report(losses)
            opt.step()
        with torch.no_grad():
            watch.finish(model.losses(x, y))
    return meta


@pytest.mark.parametrize("method", list(METHODS))
def test_each_stacked_task_accumulates_as_it_does_alone(method):
    x, y = _data()
    a, b = _alone(method, x, y), _stacked(method, x, y)
    assert a.tasks == b.tasks == K and a.skipped == b.skipped == 0
    for u, v in zip(a._acc, b._acc):
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)
    assert b.displacement == pytest.approx(a.displacement, rel=1e-5)
    if method.startswith("leap"):
        assert b.objective.segments == a.objective.segments == K * STEPS
        assert float(b.objective.path_length) == pytest.approx(float(a.objective.path_length), rel=1e-5)
    la, lb = a.meta_step(), b.meta_step()
    assert lb["meta/grad_norm"] == pytest.approx(la["meta/grad_norm"], rel=1e-5)


@pytest.mark.parametrize("method", ["leap_p1", "reptile"])
def test_a_non_finite_task_is_dropped_alone(method):
    x, y = _data(nan_task=1)
    a, b = _alone(method, x, y), _stacked(method, x, y)
    assert (a.tasks, a.skipped) == (b.tasks, b.skipped) == (2, 1)
    for u, v in zip(a._acc, b._acc):
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)
