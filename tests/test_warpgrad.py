"""WarpGrad: warp meta-gradients against an independent autograd computation, preconditioning by a linear
warp, offline replay vs online accumulation, Warp-Leap / Warp-MAML composition, checkpoints."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metarl.base import MetaOptimizerConfig
from metarl.leap import Leap, LeapConfig
from metarl.warp_layers import ChannelScale, ResidualMLPWarp, WarpConv2d, WarpLinear, make_warp
from metarl.warpgrad import (SGDRule, WarpGrad, WarpGradConfig, WarpObjective, warp_leap_config,
                             warp_maml_config)
from train.tasks.base import supervised_adapt

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 models: intra-op threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# tiny models and a replayable task


class TinyWarpNet(nn.Module):
    """h = W₂ tanh(ω(W₁x + c₁)) + c₂ with one linear warp ω(z) = Ωz + o."""

    def __init__(self, d_in: int = 3, width: int = 4, d_out: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(d_in, width)
        self.warps = nn.ModuleList([WarpLinear(width)])
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        return self.head(torch.tanh(self.warps[0](self.layer(x))))


class TinyConvNet(nn.Module):
    """conv → BN → ReLU → warp (3×3 conv + warp BN + ReLU) → linear: task BN and warp BN buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.warps = nn.ModuleList([make_warp("nonlinear", 3, batch_norm=True)])
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = self.warps[0](F.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


class FixedTask:
    """Deterministic batches: the inner loop cycles a fixed list; the warp objective's two batches for
    point k are fixed functions of k (see ``warp_batches``)."""

    def __init__(self, key: str, inputs: tuple[int, ...], d_out: int, n: int = 9, bs: int = 5,
                 seed: int = 0, dtype=DT) -> None:
        g = torch.Generator().manual_seed(seed)
        self.key = key
        self.batches = [(torch.randn(bs, *inputs, generator=g, dtype=dtype),
                         torch.randn(bs, d_out, generator=g, dtype=dtype)) for _ in range(n)]
        self.i = 0

    def batch(self, split):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)


def warp_batches(task, k):
    n = len(task.batches)
    return task.batches[(3 * k + 1) % n], task.batches[(3 * k + 2) % n]


def make_tasks(n_tasks=2, inputs=(3,), d_out=2, dtype=DT):
    return [FixedTask(f"t{i}", inputs, d_out, seed=10 + i, dtype=dtype) for i in range(n_tasks)]


def run_meta_batch(wg, template, tasks, steps=4, lr=0.1, momentum=0.0):
    """One meta-batch through the real inner loop (``supervised_adapt``) under ``wg.watch``."""
    for task in tasks:
        model = _clone_model(template)
        wg.load_init(model)
        wg.prepare(model, task)
        opt = torch.optim.SGD(wg.task_parameters(model), lr=lr, momentum=momentum)
        with wg.watch(model, opt, task) as watch:
            supervised_adapt(task, model, opt, steps, watch)


def _clone_model(template):
    buf = io.BytesIO()
    torch.save(template, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _close(a, b, tol):
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=tol, atol=tol), (x - y).abs().max()


# ------------------------------------------------------------------------------------------------
# 1. warp meta-gradient = independent autograd computation


def _hand_forward(W1, c1, Om, o, W2, c2, x):
    return torch.tanh((x @ W1.T + c1) @ Om.T + o) @ W2.T + c2


@pytest.mark.parametrize("kind", ["full", "first_order"])
@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_warp_gradient_matches_independent_autograd(kind, mu):
    torch.manual_seed(0)
    model = TinyWarpNet().to(DT)
    (x1, y1), (x2, y2) = [(torch.randn(6, 3, dtype=DT), torch.randn(6, 2, dtype=DT)) for _ in range(2)]
    alpha = 0.3
    named = dict(model.named_parameters())
    theta_names = ["layer.weight", "layer.bias", "head.weight", "head.bias"]
    phi_names = ["warps.0.linear.weight", "warps.0.linear.bias"]
    moms = [torch.randn_like(named[n]) for n in theta_names] if mu else None

    # independent: write the objective directly
    th = [named[n].detach().clone().requires_grad_(True) for n in theta_names]
    ph = [named[n].detach().clone().requires_grad_(True) for n in phi_names]
    W1, c1, W2, c2 = th
    Om, o = ph
    l_task = F.mse_loss(_hand_forward(W1, c1, Om, o, W2, c2, x1), y1)
    g = torch.autograd.grad(l_task, th, create_graph=True)
    d = [gi + mu * b for gi, b in zip(g, moms)] if mu else list(g)     # torch SGD: b ← μb + g; step b
    new = [t - alpha * di for t, di in zip(th, d)]
    if kind == "first_order":
        new = [t.detach() for t in new]
    l_meta = F.mse_loss(_hand_forward(*new[:2], Om, o, *new[2:], x2), y2)
    expected = torch.autograd.grad(l_meta, ph)

    obj = WarpObjective(kind)
    value = obj(model, {n: named[n] for n in theta_names}, {n: named[n] for n in phi_names},
                lambda m, b: F.mse_loss(m(b[0]), b[1]), (x1, y1), (x2, y2), SGDRule(alpha, mu), moms)
    _close(value.grads, expected, 1e-10)
    assert torch.allclose(value.meta_loss, l_meta.detach(), atol=1e-12)
    if kind == "full":   # the second-order mixed term is really there
        fo = WarpObjective("first_order")(model, {n: named[n] for n in theta_names},
                                          {n: named[n] for n in phi_names},
                                          lambda m, b: F.mse_loss(m(b[0]), b[1]), (x1, y1), (x2, y2),
                                          SGDRule(alpha, mu), moms)
        assert (fo.grads[0] - value.grads[0]).abs().max() > 1e-6


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_online_warpgrad_equals_independent_computation_through_the_seam(mu):
    """Points θ_0 (no momentum buffer yet) and θ_1 (buffer b_0 = g_0) of a 2-step task, read live."""
    torch.manual_seed(1)
    template = TinyWarpNet().to(DT)
    cfg = WarpGradConfig(algorithm="online", init_objective="none", final_point=False)
    wg = WarpGrad(template, cfg, warp_batches=warp_batches)
    task = make_tasks(1)[0]
    run_meta_batch(wg, template, [task], steps=2, lr=0.2, momentum=mu)
    wg.meta_step()
    got = [g.clone() for g in wg.last_warp_grad]

    named = dict(template.named_parameters())
    theta_names = ["layer.weight", "layer.bias", "head.weight", "head.bias"]
    phi = [named[n].detach().clone().requires_grad_(True) for n in ["warps.0.linear.weight", "warps.0.linear.bias"]]
    theta0 = [named[n].detach().clone() for n in theta_names]

    def loss(th, b, ph=phi):
        return F.mse_loss(_hand_forward(th[0], th[1], ph[0], ph[1], th[2], th[3], b[0]), b[1])

    th0 = [t.clone().requires_grad_(True) for t in theta0]
    g0 = torch.autograd.grad(loss(th0, task.batches[0], [p.detach() for p in phi]), th0)   # inner step 0
    theta1 = [t - 0.2 * g for t, g in zip(theta0, g0)]                # first SGD step: b_0 = g_0
    expected = [torch.zeros_like(p) for p in phi]
    for k, (theta, buf) in enumerate([(theta0, None), (theta1, g0)]):
        bt, bm = warp_batches(task, k)
        th = [t.clone().requires_grad_(True) for t in theta]
        g = torch.autograd.grad(loss(th, bt), th, create_graph=True)
        d = [gi + mu * b for gi, b in zip(g, buf)] if (mu and buf is not None) else g
        new = [t - 0.2 * di for t, di in zip(th, d)]
        for e, gp in zip(expected, torch.autograd.grad(loss(new, bm), phi)):
            e += gp / 2
    _close(got, expected, 1e-10)


# ------------------------------------------------------------------------------------------------
# 2. a linear warp preconditions the task gradient


def test_linear_warp_preconditions_the_gradient():
    """h = W₂ ω(W₁x), ω(z) = Ωz: ∇_{W₁}L = Ωᵀ(∇_u L)xᵀ = DΩᵀ ∇_γ L with γ = ΩW₁ (Eq. 3), and a gradient
    step on W₁ moves γ by the preconditioned step −α (ΩΩᵀ ⊗ I) ∇_γ L (Eq. 4, G⁻¹ = DΩ DΩᵀ)."""
    torch.manual_seed(2)
    d, m, o, n = 3, 4, 2, 7
    W1 = torch.randn(m, d, dtype=DT, requires_grad=True)
    W2 = torch.randn(o, m, dtype=DT)
    warp = WarpLinear(m, bias=False).to(DT)
    Om = warp.linear.weight.detach()
    x, y = torch.randn(n, d, dtype=DT), torch.randn(n, o, dtype=DT)

    z = x @ W1.T
    u = warp(z)
    u.retain_grad()
    loss = F.mse_loss(u @ W2.T, y)
    loss.backward()
    grad_w1 = W1.grad.clone()
    # by hand: Ωᵀ (∇_u L) summed over examples with xᵀ
    assert torch.allclose(grad_w1, Om.T @ u.grad.T @ x, atol=1e-12)

    # the unwarped model at γ = ΩW₁ computes the same function; its native gradient is ∇_γ L
    gamma = (Om @ W1.detach()).requires_grad_(True)
    F.mse_loss(x @ gamma.T @ W2.T, y).backward()
    grad_gamma = gamma.grad
    D = torch.kron(Om, torch.eye(d, dtype=DT))                    # DΩ: vec(W₁) ↦ vec(ΩW₁), row-major vec
    jac = torch.autograd.functional.jacobian(lambda w: (Om @ w.reshape(m, d)).reshape(-1),
                                             W1.detach().reshape(-1))
    assert torch.allclose(D, jac, atol=1e-12)
    assert torch.allclose(grad_w1.reshape(-1), D.T @ grad_gamma.reshape(-1), atol=1e-12)   # P∇ by hand

    alpha = 0.05
    stepped = Om @ (W1.detach() - alpha * grad_w1)                  # γ after a plain step on θ = W₁
    G_inv = D @ D.T                                                 # = (ΩΩᵀ) ⊗ I
    assert torch.allclose(G_inv, torch.kron(Om @ Om.T, torch.eye(d, dtype=DT)), atol=1e-12)
    preconditioned = gamma.detach().reshape(-1) - alpha * G_inv @ grad_gamma.reshape(-1)
    assert torch.allclose(stepped.reshape(-1), preconditioned, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 3. offline replay == online accumulation


def _pair(template, cfg_kwargs, tasks_fn, steps, mu, warp_lr=0.1, dtype=DT):
    out = {}
    for algo in ("online", "offline"):
        cfg = WarpGradConfig(algorithm=algo, warp_optimizer=MetaOptimizerConfig(lr=warp_lr), **cfg_kwargs)
        wg = WarpGrad(template, cfg, leap=LeapConfig(loss=True), warp_batches=warp_batches)
        run_meta_batch(wg, template, tasks_fn(), steps=steps, momentum=mu)
        init_grad = [g.clone() for g in wg.meta_gradient()]
        logs = wg.meta_step()
        out[algo] = (wg, logs, init_grad)
    return out


@pytest.mark.parametrize("mu", [0.0, 0.9])
@pytest.mark.parametrize("model", ["mlp", "conv_bn"])
def test_offline_replay_equals_online_accumulation(mu, model):
    torch.manual_seed(3)
    if model == "mlp":
        template, tasks_fn = TinyWarpNet().to(DT), lambda: make_tasks(2)
    else:
        template, tasks_fn = TinyConvNet().to(DT), lambda: make_tasks(2, inputs=(1, 4, 4))
    # one φ step over all points (eta ≥ #points): identical step; SGD init: identical θ⁰
    pair = _pair(template, dict(eta=1000, stride=1, fp16=False, init_schedule="eta"), tasks_fn, 4, mu)
    (on, on_logs, on_init), (off, off_logs, off_init) = pair["online"], pair["offline"]
    assert on_logs["meta/warp_points"] == off_logs["meta/warp_points"] == 2 * 5      # θ_0 … θ_K per task
    _close(on.last_warp_grad, off.last_warp_grad, 1e-10)
    _close(on.warp_params, off.warp_params, 1e-10)
    _close(on_init, off_init, 1e-12)
    _close(on.params, off.params, 1e-10)
    assert on_logs["meta/warp_loss"] == pytest.approx(off_logs["meta/warp_loss"], rel=1e-10)


def test_offline_eta1_and_stride_and_fp16():
    torch.manual_seed(4)
    template = TinyWarpNet().to(DT)
    tasks_fn = lambda: make_tasks(2)                                     # noqa: E731
    # η = 1 with a frozen φ (lr 0): the mean of the per-sample gradients equals online's mean
    pair = _pair(template, dict(eta=1, init_schedule="eta"), tasks_fn, 5, 0.9, warp_lr=0.0)
    assert pair["offline"][1]["meta/warp_steps"] == 12
    _close(pair["online"][0].last_warp_grad, pair["offline"][0].last_warp_grad, 1e-10)
    # η = 1, φ moving: 12 steps, and the per-η init schedule lands where one mean step does (SGD)
    pair = _pair(template, dict(eta=1, init_schedule="eta"), tasks_fn, 5, 0.9)
    meta_batch = _pair(template, dict(eta=1, init_schedule="meta_batch"), tasks_fn, 5, 0.9)
    _close(pair["offline"][0].params, pair["online"][0].params, 1e-12)
    _close(meta_batch["offline"][0].params, pair["online"][0].params, 1e-12)
    # stride: the same points are selected online and offline (θ_0, θ_2, θ_4, and θ_5 = θ_K)
    pair = _pair(template, dict(eta=1000, stride=2), tasks_fn, 5, 0.9)
    assert pair["online"][1]["meta/warp_points"] == pair["offline"][1]["meta/warp_points"] == 2 * 4
    _close(pair["online"][0].last_warp_grad, pair["offline"][0].last_warp_grad, 1e-10)
    # fp16 storage: within a tolerance of the exact value
    exact = _pair(template, dict(eta=1000), tasks_fn, 5, 0.9)["online"][0].last_warp_grad
    half = _pair(template, dict(eta=1000, fp16=True), tasks_fn, 5, 0.9)["offline"][0].last_warp_grad
    err = torch.stack([(a - b).norm() for a, b in zip(exact, half)]).norm()
    ref = torch.stack([a.norm() for a in exact]).norm()
    assert 1e-7 * ref < err < 1e-2 * ref                               # really stored in half precision


@pytest.mark.parametrize("algorithm", ["online", "offline"])
def test_watching_leaves_the_task_trajectory_and_bn_statistics_untouched(algorithm):
    """The warp objective runs on clones of the buffers: the live model ends exactly as unwatched."""
    torch.manual_seed(11)
    template = TinyConvNet().to(DT)
    wg = WarpGrad(template, WarpGradConfig(algorithm=algorithm, init_objective="none"), warp_batches=warp_batches)
    states = []
    for watched in (True, False):
        task = make_tasks(1, inputs=(1, 4, 4))[0]
        model = _clone_model(template)
        wg.load_init(model)
        wg.prepare(model, task)
        opt = torch.optim.SGD(wg.task_parameters(model), lr=0.1, momentum=0.9)
        if watched:
            with wg.watch(model, opt, task) as watch:
                supervised_adapt(task, model, opt, 3, watch)
        else:
            supervised_adapt(task, model, opt, 3)
        states.append(model.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert wg.meta_step()["meta/warp_points"] == 4


# ------------------------------------------------------------------------------------------------
# 4. composition with init objectives


@pytest.mark.parametrize("algorithm", ["online", "offline"])
@pytest.mark.parametrize("loss", [True, False])
def test_warp_leap_init_gradient_equals_leap_and_warps_stay_fixed(algorithm, loss):
    torch.manual_seed(5)
    template = TinyWarpNet().to(DT)
    leap_cfg = LeapConfig(loss=loss)
    wg = WarpGrad(template, WarpGradConfig(algorithm=algorithm, init_objective="leap"), leap=leap_cfg,
                  warp_batches=warp_batches)
    leap = Leap(template, leap_cfg, exclude=["warps."])
    for task_wg, task_leap in zip(make_tasks(2), make_tasks(2)):
        models = []
        for meta, task in ((wg, task_wg), (leap, task_leap)):
            model = _clone_model(template)
            meta.load_init(model)
            meta.prepare(model, task)
            params = wg.task_parameters(model)
            assert not any(p is w for p in params for w in wg.warp_parameters(model))
            opt = torch.optim.SGD(params, lr=0.1)
            before = [w.detach().clone() for w in wg.warp_parameters(model)]
            with meta.watch(model, opt, task) as watch:
                supervised_adapt(task, model, opt, 4, watch)
            _close(before, wg.warp_parameters(model), 0.0)          # φ did not move during adaptation
            models.append(model)
        _close(models[0].parameters(), models[1].parameters(), 0.0)  # the same trajectory
    _close(wg.meta_gradient(), leap.meta_gradient(), 1e-12)
    logs = wg.meta_step()
    assert logs["meta/tasks"] == 2 and "meta/path_length" in logs and logs["meta/init_grad_norm"] > 0


def test_watch_rejects_warps_in_the_inner_optimizer_and_mismatched_rules():
    template = TinyWarpNet().to(DT)
    wg = WarpGrad(template, WarpGradConfig(inner_lr=0.1))
    task = make_tasks(1)[0]
    model = _clone_model(template)
    with pytest.raises(ValueError, match="warp parameters must stay fixed"):
        wg.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), task)
    with pytest.raises(ValueError, match="inner_lr"):
        wg.watch(model, torch.optim.SGD(wg.task_parameters(model), lr=0.5), task)
    with pytest.raises(TypeError):
        wg.watch(model, torch.optim.SGD(wg.task_parameters(model), lr=0.1), "t0")
    with pytest.raises(ValueError, match="not SGD|Adam"):
        WarpGrad(template).watch(model, torch.optim.Adam(wg.task_parameters(model)), task)


def test_warp_maml_init_gradient_is_maml_through_the_warped_model():
    torch.manual_seed(6)
    template = TinyWarpNet().to(DT)
    wg = WarpGrad.warp_maml(template, config=warp_maml_config(maml_steps=1, maml_query_split="query"),
                            warp_batches=warp_batches)
    task = make_tasks(1)[0]
    # the MAML observer draws task.batch twice at task start: batches[0] (train), batches[1] (query)
    named = dict(template.named_parameters())
    th = [named[n].detach().clone().requires_grad_(True)
          for n in ["layer.weight", "layer.bias", "head.weight", "head.bias"]]
    Om, o = named["warps.0.linear.weight"].detach(), named["warps.0.linear.bias"].detach()

    def loss(t, b):
        return F.mse_loss(_hand_forward(t[0], t[1], Om, o, t[2], t[3], b[0]), b[1])

    g = torch.autograd.grad(loss(th, task.batches[0]), th, create_graph=True)
    expected = torch.autograd.grad(loss([t - 0.1 * gi for t, gi in zip(th, g)], task.batches[1]), th)
    run_meta_batch(wg, template, [task], steps=2, lr=0.1)
    _close(wg.meta_gradient(), expected, 1e-10)
    logs = wg.meta_step()
    assert logs["meta/warp_steps"] == 1.0 and logs["meta/init_grad_norm"] > 0


def test_non_finite_tasks_are_skipped_and_counted():
    torch.manual_seed(7)
    template = TinyWarpNet().to(DT)
    for algorithm in ("online", "offline"):
        wg = WarpGrad(template, WarpGradConfig(algorithm=algorithm), warp_batches=warp_batches)
        good, bad = make_tasks(2)
        bad.batches = [(x, torch.full_like(y, float("nan"))) for x, y in bad.batches]
        before = [p.detach().clone() for p in wg.warp_params]
        run_meta_batch(wg, template, [bad], steps=3)
        logs = wg.meta_step()
        assert logs["meta/skipped_tasks"] == 1 and logs["meta/tasks"] == 0
        _close(before, wg.warp_params, 0.0)
        run_meta_batch(wg, template, [good, bad], steps=3)
        logs = wg.meta_step()
        assert logs["meta/skipped_tasks"] == 1 and logs["meta/tasks"] == 1
        assert all(p.isfinite().all() for p in wg.warp_params + wg.params)
        assert logs["meta/warp_grad_norm"] > 0


def _moved(before, after):
    return float(torch.stack([(a.detach() - b).norm() for a, b in zip(after, before)]).norm())


@pytest.mark.parametrize("algorithm", ["online", "offline"])
def test_meta_gradient_clipping_bounds_the_init_and_warp_steps(algorithm):
    """meta.optimizer.clip_grad_norm clips θ⁰'s meta-gradient and warp_optimizer.clip_grad_norm φ's: with SGD
    (no momentum) one step moves each by lr × min(‖g‖, clip), so by lr × clip when the gradient is larger."""
    torch.manual_seed(11)
    template = TinyWarpNet().to(DT)
    lr, clip = 0.1, 1e-4
    # offline: one φ step and one θ⁰ step per meta-step (η beyond the points, θ⁰ once per meta-batch)
    cfg = warp_leap_config(algorithm=algorithm, eta=1000, init_schedule="meta_batch",
                           warp_optimizer=MetaOptimizerConfig(lr=lr, clip_grad_norm=clip))
    wg = WarpGrad(template, cfg, meta_optimizer=MetaOptimizerConfig(lr=lr, clip_grad_norm=clip),
                  warp_batches=warp_batches)
    theta, phi = [p.detach().clone() for p in wg.params], [p.detach().clone() for p in wg.warp_params]
    run_meta_batch(wg, template, make_tasks(2), steps=3)
    logs = wg.meta_step()
    assert logs["meta/warp_steps"] == 1 and logs["meta/init_grad_norm"] > 10 * clip
    assert logs["meta/warp_grad_norm"] > 10 * clip
    for before, after in ((theta, wg.params), (phi, wg.warp_params)):
        assert _moved(before, after) == pytest.approx(lr * clip, rel=1e-4)     # clip_grad_norm_'s 1e-6


@pytest.mark.parametrize("algorithm", ["online", "offline"])
def test_an_overflowing_meta_step_is_undone_and_counted(algorithm):
    """A finite meta-gradient that overflows θ⁰ or φ (float32, a huge lr) leaves both, and both optimisers'
    states, as they were; the undone steps are logged and no φ step is counted."""
    torch.manual_seed(12)
    f32 = torch.float32
    template = TinyWarpNet().to(f32)
    huge = MetaOptimizerConfig(lr=1e38, momentum=0.9)
    cfg = warp_leap_config(algorithm=algorithm, eta=1000, init_schedule="meta_batch", warp_optimizer=huge)
    wg = WarpGrad(template, cfg, meta_optimizer=huge, warp_batches=warp_batches)
    tasks = make_tasks(2, dtype=f32)
    for t in tasks:             # targets far from the outputs: meta-gradients of order 1e4, finite
        t.batches = [(x, 1e4 * y) for x, y in t.batches]
    theta, phi = [p.detach().clone() for p in wg.params], [p.detach().clone() for p in wg.warp_params]
    run_meta_batch(wg, template, tasks, steps=2, lr=1e-9)
    logs = wg.meta_step()
    assert logs["meta/tasks"] == 2 and logs["meta/skipped_step"] == 2
    assert logs["meta/warp_steps"] == 0 and wg.warp_updates == 0
    assert _moved(theta, wg.params) == 0 and _moved(phi, wg.warp_params) == 0
    assert wg.meta_optimizer.state_dict()["state"] == {} and wg.warp_optimizer.state_dict()["state"] == {}
    assert all(torch.equal(v, wg.init_state[k]) for k, v in zip(wg.names, theta))


# ------------------------------------------------------------------------------------------------
# 5. checkpoints


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(8)
    template = TinyWarpNet().to(DT)
    cfg = warp_leap_config(eta=3, warp_optimizer=MetaOptimizerConfig(name="adam", lr=0.01))
    wg = WarpGrad(template, cfg, meta_optimizer=MetaOptimizerConfig(momentum=0.9), warp_batches=warp_batches)
    run_meta_batch(wg, template, make_tasks(2), steps=3, momentum=0.5)
    wg.meta_step()
    buf = io.BytesIO()
    torch.save(wg.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = WarpGrad(TinyWarpNet().to(DT), cfg, meta_optimizer=MetaOptimizerConfig(momentum=0.9),
                     warp_batches=warp_batches)
    fresh.load_state_dict(state)
    for k, v in wg.init_state.items():
        assert torch.equal(v, fresh.init_state[k]), k
    _close(wg.warp_params, fresh.warp_params, 0.0)
    assert fresh.warp_updates == wg.warp_updates > 0 and fresh.meta_steps == wg.meta_steps == 1
    # resumed and uninterrupted runs continue identically (Adam moments, SGD momentum restored)
    for meta in (wg, fresh):
        torch.manual_seed(9)
        run_meta_batch(meta, template, make_tasks(2), steps=3, momentum=0.5)
        meta.meta_step()
    _close(wg.warp_params, fresh.warp_params, 0.0)
    _close(wg.params, fresh.params, 0.0)


# ------------------------------------------------------------------------------------------------
# 6. warp layers


def test_warp_layers():
    x = torch.randn(2, 4, 5, 5)
    lin = make_warp("linear", 4)
    assert isinstance(lin, WarpConv2d) and lin(x).shape == x.shape
    assert [n for n, _ in lin.named_parameters()] == ["body.0.weight", "body.0.bias"]
    assert lin.body[0].kernel_size == (3, 3) and lin.act is None and lin.skip is None and lin.norm is None
    res = make_warp("residual", 4, 6, batch_norm=True)
    assert res(x).shape == (2, 6, 5, 5) and isinstance(res.skip, nn.Conv2d) and res.skip.kernel_size == (1, 1)
    two = make_warp("residual", 4, hidden=8, batch_norm=True)
    assert two(x).shape == x.shape and two.body[0].out_channels == 8
    assert torch.allclose(make_warp("linear", 4, init="identity")(x), x, atol=1e-6)
    assert torch.allclose(make_warp("residual_mlp", 4, init="identity")(x[:, :, 0, 0]), x[:, :, 0, 0])
    assert isinstance(make_warp("scale", 4), ChannelScale) and torch.equal(make_warp("scale", 4)(x), x)
    assert isinstance(make_warp("residual_mlp", 4), ResidualMLPWarp)
    assert make_warp("residual_mlp", 4).inner.out_features == 100
    with pytest.raises(ValueError):
        make_warp("bogus", 4)


def test_warp_batchnorm_statistics_reset_every_task():
    torch.manual_seed(10)
    template = TinyConvNet().to(DT)
    wg = WarpGrad(template, WarpGradConfig(algorithm="online", init_objective="none"), warp_batches=warp_batches)
    init_stats = wg.init_state["warps.0.norm.running_mean"].clone()
    model = _clone_model(template)
    wg.load_init(model)
    run_meta_batch(wg, template, make_tasks(1, inputs=(1, 4, 4)), steps=2)
    model(torch.randn(5, 1, 4, 4, dtype=DT))                        # train mode: the stats move …
    assert not torch.equal(model.warps[0].norm.running_mean, init_stats)
    wg.meta_step()
    wg.load_init(model)                                             # … and the next task starts afresh
    assert torch.equal(model.warps[0].norm.running_mean, init_stats)
    assert torch.equal(wg.init_state["warps.0.norm.running_mean"], init_stats)


# ------------------------------------------------------------------------------------------------
# memory layout of replayed parameters


class _LayoutProbe(nn.Module):
    """A channels_last conv (one input channel: its NCHW and channels_last weights differ in strides only)
    whose forward records the weight strides it is called with, then a warp scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.warp = ChannelScale(4)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(self.conv.weight.stride())
        return self.warp(self.conv(x)).mean((1, 2, 3))


@pytest.mark.parametrize("kind", ["full", "first_order"])
def test_replayed_points_and_the_lookahead_keep_the_parameters_memory_layout(kind):
    """A stored point comes back, and θ' = θ − α∇L is handed to the model, in the parameter's layout
    (channels_last here), so replayed convolutions run as the inner loop's do (and max-pooling stays fast)."""
    from metarl.warpgrad.replay import flat, Trajectory

    torch.manual_seed(0)
    model = _LayoutProbe().to(memory_format=torch.channels_last)
    cl = model.conv.weight.stride()
    assert cl != torch.empty(model.conv.weight.shape).stride()      # the probe can tell the two layouts apart
    names = ["conv.weight", "conv.bias"]
    params = [model.conv.weight, model.conv.bias]
    traj = Trajectory(None, model, names, params)
    theta = traj.unpack(flat(params, torch.float32, torch.device("cpu")))
    assert [t.stride() for t in theta] == [p.stride() for p in params]
    assert all(torch.equal(t, p) for t, p in zip(theta, params))
    x1, x2 = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    y1, y2 = torch.randn(3), torch.randn(3)
    def loss(m, b):
        return F.mse_loss(m(b[0]), b[1])
    phi = {n: p for n, p in model.named_parameters() if n.startswith("warp.")}
    value = WarpObjective(kind)(model, dict(zip(names, theta)), phi, loss, (x1, y1), (x2, y2), SGDRule(0.1))
    assert model.seen == [cl, cl]                              # the task loss at θ and the meta loss at θ'
    # the relaid θ' still carries the gradient: the same as an NCHW model's
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    params = [nchw.conv.weight.detach().clone(), nchw.conv.bias]   # NCHW strides (the probe's weight has C=1)
    ref = WarpObjective(kind)(nchw, dict(zip(names, params)), {n: p for n, p in nchw.named_parameters()
                              if n.startswith("warp.")}, loss, (x1, y1), (x2, y2), SGDRule(0.1))
    assert nchw.seen[-1] != cl and all(g.abs().sum() > 0 for g in value.grads)
    for g, r in zip(value.grads, ref.grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
