"""Leap against independent computations: the autograd surrogate, Reptile, and the SGD identities."""

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from metarl import Leap, LeapConfig, MetaOptimizerConfig, Reptile




def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def batches(seed: int, steps: int, n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 1, generator=g, dtype=torch.float64)
    out = []
    for _ in range(steps + 1):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        out.append((x, torch.sin(x @ w)))
    return out


def loss_of(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def inner_loop(meta, model, data, opt_name="sgd", lr=0.1, clip=None, set_to_none=True):
    """K = len(data) - 1 steps; the last batch gives f(θ_K)."""
    meta.load_init(model)
    params = list(model.parameters())
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=lr),
           "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
           "adam": lambda: torch.optim.Adam(params, lr=lr),
           "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr)}[opt_name]()
    trajectory = [[p.detach().clone() for p in params]]
    with meta.watch(model, opt) as watch:
        for batch in data[:-1]:
            loss = loss_of(model, batch)
            opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            watch.report(loss)
            opt.step()
            trajectory.append([p.detach().clone() for p in params])
        with torch.no_grad():
            watch.finish(loss_of(model, data[-1]))
    return trajectory


def surrogate_gradient(model, init, trajectory, data, cfg: LeapConfig, learned=None):
    """∇_θ⁰ of (1/p) Σ_i ‖γ̄^{i+1} − γ^i‖^p with θ^i = θ⁰ + const (Jacobian = I), by autograd.

    The frozen forward point is γ̄^{i+1} = (θ^{i+1}, f_i + Δf̃_i) where Δf̃_i = −|Δf_i| under the
    stabilizer; the loss coordinate of γ^i is f(θ^i) evaluated with autograd on batch i. ``learned``: which of
    the model's parameters are meta-learned (default all; the gradient is theirs): the others are outside the
    path and stay at their trajectory values in f."""
    learned = [True] * len(init) if learned is None else learned
    theta0 = [p.detach().clone().requires_grad_(True) for p, keep in zip(init, learned) if keep]
    names = [n for n, _ in model.named_parameters()]
    K = len(trajectory) - 1
    total = torch.zeros(())
    for i in range(K):
        t0 = iter(theta0)
        theta_i = [next(t0) + (ti - ti0) if keep else ti
                   for keep, ti, ti0 in zip(learned, trajectory[i], trajectory[0])]
        d_theta = [n - t for n, t, keep in zip(trajectory[i + 1], theta_i, learned) if keep]
        sq = sum((d ** 2).sum() for d in d_theta)
        if cfg.loss:
            f_i = torch.func.functional_call(model, dict(zip(names, theta_i)), (data[i][0],))
            f_i = ((f_i - data[i][1]) ** 2).mean()
            with torch.no_grad():
                f_next = torch.func.functional_call(model, dict(zip(names, trajectory[i + 1])), (data[i + 1][0],))
                f_next = ((f_next - data[i + 1][1]) ** 2).mean()
                f_now = f_i.detach()
                d_f = f_next - f_now
                target = f_now - d_f.abs() if cfg.stabilizer else f_next
            sq = sq + (target - f_i) ** 2
        total = total + (sq + cfg.eps ** 2) ** (cfg.p / 2) / cfg.p
    return torch.autograd.grad(total, theta0)


@pytest.mark.parametrize("p,loss,stabilizer", list(itertools.product([1, 2], [True, False], [True, False])))
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_leap_matches_autograd_surrogate(p, loss, stabilizer, opt_name):
    cfg = LeapConfig(p=p, loss=loss, stabilizer=stabilizer)
    model = mlp()
    meta = Leap(model, cfg)
    init = [t.clone() for t in meta.params]
    expected = [torch.zeros_like(t) for t in init]
    for task in range(3):   # mean over the tasks of a meta-batch
        data = batches(task, steps=7)
        traj = inner_loop(meta, model, data, opt_name, lr=0.05)
        for e, g in zip(expected, surrogate_gradient(model, init, traj, data, cfg)):
            e += g / 3
    for got, want in zip(meta.meta_gradient(), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert meta.meta_step()["meta/tasks"] == 3


@pytest.mark.parametrize("p", [1, 2])
def test_gradients_zeroed_in_place(p):
    """Leap holds g_i by reference only while the optimiser frees gradients; zeroing in place
    (set_to_none=False) is detected and gives the same meta-gradient."""
    cfg = LeapConfig(p=p, loss=True, stabilizer=True)
    grads = {}
    for set_to_none in (True, False):
        model = mlp()
        meta = Leap(model, cfg)
        for task in range(2):
            inner_loop(meta, model, batches(task, steps=5), "adam", lr=0.05, set_to_none=set_to_none)
        grads[set_to_none] = meta.meta_gradient()
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_held_gradient_changed_in_place_is_an_error():
    """A gradient Leap holds by reference that is then zeroed in place cannot give a silent wrong answer."""
    model = mlp()
    meta = Leap(model, LeapConfig(p=1, loss=True))
    meta.load_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(0, steps=4)
    with pytest.raises(RuntimeError, match="changed in place"):
        with meta.watch(model, opt) as watch:
            for i, batch in enumerate(data[:-1]):
                loss = loss_of(model, batch)
                opt.zero_grad(set_to_none=i < 2)       # frees g for two steps, then zeroes the held one
                loss.backward()
                watch.report(loss)
                opt.step()


def test_leap_energy_without_loss_is_reptile():
    model = mlp()
    leap = Leap(model, LeapConfig(p=2, loss=False, stabilizer=False))
    reptile = Reptile(model)
    for task in range(2):
        data = batches(task, steps=5)
        traj = inner_loop(leap, model, data, "momentum")
        inner_loop(reptile, model, data, "momentum")
        # θ⁰ − θ^K, final step included (docs/leap.md §7, defect #1 counts only θ⁰ − θ^{K−1})
        if task == 0:
            first = [a - b for a, b in zip(traj[0], traj[-1])]
    for a, b in zip(leap.meta_gradient(), reptile.meta_gradient()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    model = mlp()
    leap1 = Leap(model, LeapConfig(p=2, loss=False, stabilizer=False))
    inner_loop(leap1, model, batches(0, steps=5), "momentum")
    for a, b in zip(leap1.meta_gradient(), first):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("p", [1, 2])
def test_sgd_stabilizer_increment_is_positive_gradient_multiple(p):
    """Plain SGD, loss on, stabilizer on: δ_i = (α + |Δf_i|)·g_i / ℓ_i^{2−p} (docs/leap.md §5)."""
    lr = 0.1
    model = mlp(1)
    meta = Leap(model, LeapConfig(p=p, loss=True, stabilizer=True))
    data = batches(3, steps=1)
    meta.load_init(model)
    g = torch.autograd.grad(loss_of(model, data[0]), list(model.parameters()))
    f0 = float(loss_of(model, data[0]).detach())
    traj = inner_loop(meta, model, data, "sgd", lr=lr)
    with torch.no_grad():
        for p_, t in zip(model.parameters(), traj[-1]):
            p_.copy_(t)
        f1 = float(loss_of(model, data[1]))
    d_f = f1 - f0
    norm = 1.0
    if p == 1:
        norm = (lr ** 2 * sum((x ** 2).sum() for x in g) + d_f ** 2 + 1e-18).sqrt()
    for got, gi in zip(meta.meta_gradient(), g):
        torch.testing.assert_close(got, (lr + abs(d_f)) * gi / norm, atol=1e-12, rtol=1e-9)


def test_zero_step_is_finite():
    """A zero step with zero Δf gives 0/0 without ε (docs/leap.md §7, defect #2)."""
    model = mlp()
    meta = Leap(model, LeapConfig(p=1, loss=True))
    data = batches(0, steps=3)
    inner_loop(meta, model, [data[0]] * 4, "sgd", lr=0.0)
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in meta.meta_gradient())


def test_clipped_gradient_and_subset():
    """The watch sees the clipped gradient, and include= restricts Leap to a parameter subset."""
    model = mlp()
    meta = Leap(model, LeapConfig(p=2, loss=True, stabilizer=False), include=["0."])
    assert meta.names == ["0.weight", "0.bias"]
    data = batches(0, steps=1)
    meta.load_init(model)
    params = list(model.parameters())
    loss = loss_of(model, data[0])
    g = torch.autograd.grad(loss, params)
    scale = min(1.0, 0.01 / (float(torch.stack([x.norm() for x in g]).norm()) + 1e-6))  # torch's clip rule
    traj = inner_loop(meta, model, data, "sgd", lr=0.1, clip=0.01)
    model2 = mlp()
    with torch.no_grad():
        for p_, t in zip(model2.parameters(), traj[-1]):
            p_.copy_(t)
    d_f = float(loss_of(model2, data[1]).detach() - loss.detach())
    for got, gi in zip(meta.meta_gradient(), g[:2]):
        torch.testing.assert_close(got, (0.1 - d_f) * scale * gi, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "adam", "rmsprop"])
def test_leap_runs_under_every_optimizer(opt_name):
    model = mlp()
    meta = Leap(model, LeapConfig())
    before = [p.clone() for p in meta.params]
    for t in range(2):
        inner_loop(meta, model, batches(t, 4), opt_name, lr=0.01)
    meta.meta_step()
    meta.meta_step()   # an empty meta-batch (grads None after zero_grad) must not fail (docs/leap.md §7, defect #4)
    inner_loop(meta, model, batches(5, 4), opt_name, lr=0.01)
    meta.meta_step()
    assert any((a != b).any() for a, b in zip(before, meta.params))


def test_pull_forward_on_quadratics_shortens_paths():
    """Leap meta-steps on a family of quadratic tasks shorten the mean path and keep the final loss."""
    torch.manual_seed(0)
    dim = 6
    centres = torch.randn(8, dim) + 3.0
    scales = torch.rand(8, dim) + 0.5

    class Point(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(dim))

    model = Point()
    meta = Leap(model, LeapConfig(p=1, loss=True, stabilizer=True),
                meta_optimizer=MetaOptimizerConfig(name="sgd", lr=0.05))

    def run(task: int) -> tuple[float, float]:
        meta.load_init(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        def f():
            return 0.5 * (scales[task] * (model.theta - centres[task]) ** 2).sum()
        with meta.watch(model, opt) as watch:
            for _ in range(30):
                loss = f()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                watch.report(loss)
                opt.step()
            final = f().detach()
            watch.finish(final)
        return float(final), float(meta.objective.path_length)

    history = []
    for _ in range(40):
        meta.objective.reset_stats()
        finals = [run(t)[0] for t in range(8)]
        history.append((float(meta.objective.path_length) / 8, sum(finals) / 8))
        meta.meta_step()
    lengths = [h[0] for h in history]
    assert lengths[-1] < 0.5 * lengths[0]
    assert all(b <= a + 1e-9 for a, b in zip(lengths[:10], lengths[1:11]))   # monotone early on
    assert history[-1][1] <= history[0][1] + 1e-6


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from torch import nn
    from metarl import Leap, LeapConfig
    torch.manual_seed(0)
    steps = int(sys.argv[1])
    model = nn.Linear(512, 512)
    meta = Leap(model, LeapConfig(p=1, loss=True))
    meta.load_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(1, 512)
    with meta.watch(model, opt) as watch:
        for _ in range(steps):
            loss = model(x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            watch.report(loss)
            opt.step()
        watch.finish(model(x).square().mean().detach())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_memory_independent_of_steps():
    peaks = {}
    for steps in (100, 10_000):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(steps)], capture_output=True, text=True,
                             check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
        peaks[steps] = int(out.stdout.strip())
    assert abs(peaks[10_000] - peaks[100]) <= 0.05 * peaks[100], peaks


@pytest.mark.parametrize("p", [1, 2])
def test_channels_last_parameters(p):
    """Leap's flat buffers follow each parameter's memory layout (channels_last convs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 1)).double()
    model = model.to(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    leap = Leap(model, LeapConfig(p=p, loss=False))
    leap.load_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    traj = [[q.detach().clone() for q in model.parameters()]]
    x = torch.randn(3, 5, 2, 6, 6, dtype=torch.float64)
    with leap.watch(model, opt) as watch:
        for i in range(3):
            loss = model(x[i]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            watch.report(loss)
            opt.step()
            traj.append([q.detach().clone() for q in model.parameters()])
    want = [torch.zeros_like(t) for t in traj[0]]
    for i in range(3):
        d = [a - b for a, b in zip(traj[i], traj[i + 1])]
        n = torch.sqrt(sum((t ** 2).sum() for t in d) + 1e-18) if p == 1 else 1.0
        want = [w + t / n for w, t in zip(want, d)]
    for got, w in zip(leap.meta_gradient(), want):
        torch.testing.assert_close(got, w, atol=1e-12, rtol=1e-9)
