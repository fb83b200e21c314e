"""Lazy teacher–student leap: meta-gradients of the readings interpolate / follow_updates / leap_then_step
against autograd on an explicit model, the (1 − γ) identity of interpolate, the learned step sizes' signal,
graph size independent of K, skipped tasks, checkpoints, and a few meta-steps on sine regression."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from metarl.lazy import Lazy, LazyConfig

GAMMA = 0.4
LR = 0.05


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def f(ps, batch):
    """The tiny model's loss written out directly: tanh MLP 2-4-1, mean squared error."""
    x, y = batch
    h = torch.tanh(x @ ps[0].T + ps[1])
    return ((h @ ps[2].T + ps[3] - y) ** 2).mean()


def make_data(seed: int, k: int):
    g = torch.Generator().manual_seed(seed)

    def batch():
        x = torch.randn(6, 2, generator=g, dtype=torch.float64)
        return x, torch.sin(x.sum(1, keepdim=True))

    return {"train": [batch() for _ in range(k + 1)], "query": [batch()]}


def loss_fn_for(data, log=None):
    """``loss_fn(model, split)`` drawing the split's batches in order; ``log`` collects (split, loss)."""
    its = {s: iter(b) for s, b in data.items()}

    def loss_fn(m, split):
        x, y = next(its[split])
        loss = ((m(x) - y) ** 2).mean()
        if log is not None:
            log.append((split, loss))
        return loss

    return loss_fn


def run(cfg: LazyConfig, data, model=None) -> tuple[Lazy, nn.Module]:
    model = model or tiny()
    meta = Lazy(model, cfg)
    meta.load_init(model)
    meta.accumulate(model, loss_fn_for(data))
    return meta, model


def reference(cfg: LazyConfig, init, trace, data):
    """∇_θ L_query and ∇_s L_query (s: log step sizes) with ψ built explicitly from the recorded student."""
    theta = [t.detach().clone().requires_grad_(True) for t in init]
    s = [torch.tensor(math.log(cfg.student_lr), dtype=torch.float64, requires_grad=True) for _ in init]
    eta = [si.exp() for si in s] if cfg.learn_lr else [torch.tensor(cfg.student_lr, dtype=torch.float64)] * 4
    names = list(trace.points[0])
    end = [trace.points[-1][n] for n in names]
    gsum = [sum(g[n] for g in trace.grads) for n in names]
    if cfg.leap == "interpolate":
        psi = [t + cfg.gamma * (e - t) for t, e in zip(theta, end)]
    else:
        psi = [t - cfg.gamma * r * g for t, r, g in zip(theta, eta, gsum)]
    if cfg.reading == "leap_then_step":
        grads = torch.autograd.grad(f(psi, data["train"][cfg.student_steps]), psi, create_graph=True)
        alphas = eta if cfg.teacher_step_lr is None else [cfg.teacher_step_lr] * 4
        psi = [p - a * g for p, a, g in zip(psi, alphas, grads)]
    q = f(psi, data["query"][0])
    out = torch.autograd.grad(q, theta + s, allow_unused=True)
    return list(out[:4]), [g if g is not None else torch.zeros((), dtype=torch.float64) for g in out[4:]]


INTERPOLATE, FOLLOW, STEP = "interpolate", "follow_updates", "leap_then_step"
CASES = [(INTERPOLATE, INTERPOLATE, False, None), (INTERPOLATE, INTERPOLATE, True, None),
         (FOLLOW, FOLLOW, False, None), (FOLLOW, FOLLOW, True, None),
         (STEP, INTERPOLATE, False, None), (STEP, INTERPOLATE, True, None), (STEP, FOLLOW, False, None),
         (STEP, FOLLOW, True, None), (STEP, FOLLOW, True, 0.2)]


@pytest.mark.parametrize("reading,base,learn_lr,alpha", CASES)
def test_meta_gradient_matches_autograd_from_the_recorded_trajectory(reading, base, learn_lr, alpha):
    k = 6
    cfg = LazyConfig(reading=reading, base=base, gamma=GAMMA, student_steps=k, student_lr=LR,
                     learn_lr=learn_lr, teacher_step_lr=alpha, keep_trajectory=True)
    data = make_data(1, k)
    meta, model = run(cfg, data)
    trace = meta.last_trace
    init = [p.detach().clone() for p in meta.params]
    # the recorded trajectory is plain SGD from θ, checked against an independent loop
    phi = [t.clone() for t in init]
    for i in range(k):
        ps = [p.requires_grad_(True) for p in phi]
        grads = torch.autograd.grad(f(ps, data["train"][i]), ps)
        for g, n in zip(grads, trace.points[0]):
            torch.testing.assert_close(trace.grads[i][n], g, rtol=1e-12, atol=1e-12)
        phi = [(p - LR * g).detach() for p, g in zip(ps, grads)]
        for p, n in zip(phi, trace.points[0]):
            torch.testing.assert_close(trace.points[i + 1][n], p, rtol=1e-12, atol=1e-12)
    g_theta, g_s = reference(cfg, init, trace, data)
    for a, b in zip(meta.meta_gradient(), g_theta):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert sum(float(g.norm()) for g in g_theta) > 1e-6
    if learn_lr:
        mine = meta.lr_meta_gradient()
        assert len(mine) == 4
        for a, b in zip(mine, g_s):
            torch.testing.assert_close(a, b.reshape(()), rtol=1e-10, atol=1e-12)
        if reading == INTERPOLATE:
            assert all(float(g) == 0.0 for g in mine)           # exactly no signal to the step sizes
        else:
            assert float(torch.stack(mine).norm()) > 1e-6       # follow_updates / leap_then_step: a real signal


def test_interpolate_is_one_minus_gamma_times_the_gradient_at_the_leap_point():
    k = 8
    cfg = LazyConfig(reading=INTERPOLATE, gamma=GAMMA, student_steps=k, student_lr=LR, keep_trajectory=True)
    data = make_data(2, k)
    meta, _ = run(cfg, data)
    theta = [p.detach() for p in meta.params]
    end = [meta.last_trace.points[-1][n] for n in meta.names]
    psi = [(t + GAMMA * (e - t)).requires_grad_(True) for t, e in zip(theta, end)]
    grad_psi = torch.autograd.grad(f(psi, data["query"][0]), psi)
    for a, g in zip(meta.meta_gradient(), grad_psi):
        torch.testing.assert_close(a, (1 - GAMMA) * g, rtol=1e-12, atol=1e-14)
    # follow_updates reaches the same point with a constant step size and passes the gradient through unscaled
    meta_b, _ = run(LazyConfig(reading=FOLLOW, gamma=GAMMA, student_steps=k, student_lr=LR), data)
    for a, g in zip(meta_b.meta_gradient(), grad_psi):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)


def graph(t: torch.Tensor) -> tuple[int, set[int]]:
    """Number of autograd nodes behind ``t`` and the data pointers of its leaves."""
    seen, leaves, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(fn.variable.data_ptr())
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return len(seen), leaves


@pytest.mark.parametrize("reading,base,learn_lr", [(INTERPOLATE, INTERPOLATE, True), (FOLLOW, FOLLOW, True),
                                                   (STEP, FOLLOW, True), (STEP, INTERPOLATE, False)])
def test_student_holds_no_graph_and_teacher_graph_does_not_grow_with_k(reading, base, learn_lr):
    sizes = []
    for k in (3, 30):
        cfg = LazyConfig(reading=reading, base=base, gamma=GAMMA, student_steps=k, student_lr=LR,
                         learn_lr=learn_lr, keep_trajectory=True)
        data = make_data(3, k)
        model = tiny()
        meta = Lazy(model, cfg)
        meta.load_init(model)
        log = []
        meta.accumulate(model, loss_fn_for(data, log))
        trace = meta.last_trace
        recorded = [*trace.start.values(), *trace.end.values(), *trace.grad_sum.values(), *trace.lr.values(),
                    *(t for d in trace.points + trace.grads for t in d.values())]
        assert recorded and not any(t.requires_grad for t in recorded)
        assert [s for s, _ in log].count("train") == k + (reading == STEP)
        query = [loss for s, loss in log if s == "query"]
        assert len(query) == 1
        nodes, teacher_leaves = graph(query[0])
        sizes.append(nodes)
        # each student step's graph starts at its own detached copies, never at the teacher's leaves
        for _, loss in log[:k]:
            assert not graph(loss)[1] & teacher_leaves
    assert sizes[0] == sizes[1]


def test_non_finite_tasks_are_skipped():
    k = 5
    model = tiny()
    meta = Lazy(model, LazyConfig(reading=FOLLOW, student_steps=k, student_lr=LR, learn_lr=True))
    before = [p.detach().clone() for p in meta.params] + [p.detach().clone() for p in meta.lr_params]
    good = make_data(4, k)
    bad = make_data(4, k)
    x, y = bad["train"][2]
    bad["train"][2] = (x, y * float("nan"))              # the student diverges at its third step
    bad_query = make_data(4, k)
    x, y = bad_query["query"][0]
    bad_query["query"][0] = (x, y * float("inf"))        # the student is fine, the teacher's loss is not
    for data in (bad, bad_query):
        meta.load_init(model)
        curve = meta.accumulate(model, loss_fn_for(data))
        assert not math.isfinite(curve[-1])
    assert (meta.tasks, meta.skipped) == (0, 2)
    logs = meta.meta_step()
    assert logs["meta/skipped_tasks"] == 2.0 and logs["meta/tasks"] == 0.0
    for a, b in zip([*meta.params, *meta.lr_params], before):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)
    # a finite task next to a diverged one: the meta-gradient is the finite task's alone
    ref, _ = run(LazyConfig(reading=FOLLOW, student_steps=k, student_lr=LR, learn_lr=True), good)
    for data in (bad, good):
        meta.load_init(model)
        meta.accumulate(model, loss_fn_for(data))
    assert (meta.tasks, meta.skipped) == (1, 1)
    for a, b in zip(meta.meta_gradient() + meta.lr_meta_gradient(), ref.meta_gradient() + ref.lr_meta_gradient()):
        torch.testing.assert_close(a, b)


def test_meta_step_moves_step_sizes_and_state_round_trips():
    k = 4
    cfg = LazyConfig(reading=FOLLOW, student_steps=k, student_lr=LR, learn_lr=True, lr_meta_lr=0.5)
    model = tiny()
    meta = Lazy(model, cfg)
    assert len(meta.meta_optimizer.param_groups) == 2 and meta.meta_optimizer.param_groups[1]["lr"] == 0.5
    meta.load_init(model)
    meta.accumulate(model, loss_fn_for(make_data(5, k)))
    g = [x.clone() for x in meta.lr_meta_gradient()]
    logs = meta.meta_step()
    assert {"meta/lr_grad_norm", "meta/student_lr", "meta/teacher_loss", "meta/student_loss"} <= set(logs)
    for p, gi in zip(meta.lr_params, g):                 # plain SGD on the log step sizes
        torch.testing.assert_close(p.detach(), torch.tensor(math.log(LR), dtype=torch.float64) - 0.5 * gi)
    meta.load_init(model)
    meta.accumulate(model, loss_fn_for(make_data(6, k)))
    buf = io.BytesIO()
    torch.save(meta.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = Lazy(tiny(7), cfg)
    other.load_state_dict(state)
    for a, b in zip([*other.params, *other.lr_params, *other._lr_acc, *other._acc],
                    [*meta.params, *meta.lr_params, *meta._lr_acc, *meta._acc]):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
    assert other.tasks == meta.tasks == 1
    assert other._sums == meta._sums and meta._sums.student_loss > 0 and meta._sums.teacher_loss > 0
    with pytest.raises(ValueError):
        Lazy(tiny(), LazyConfig(learn_lr=False)).load_state_dict(state)


def test_config_validation():
    for bad in (dict(reading="A"), dict(reading="C"), dict(base=STEP), dict(base="B"), dict(gamma=0.0),
                dict(reading=INTERPOLATE, gamma=1.0), dict(reading=STEP, base=INTERPOLATE, gamma=1.0),
                dict(student_steps=0), dict(student_lr=0.0), dict(teacher_step_lr=-1.0)):
        with pytest.raises(ValueError):
            LazyConfig(**bad)
    assert LazyConfig(reading=FOLLOW, gamma=1.0).leap == FOLLOW
    assert LazyConfig().reading == STEP and LazyConfig().leap == FOLLOW


def test_lazy_meta_trains_on_sine():
    from train.tasks.sine import SineAdapter, SineConfig

    torch.manual_seed(0)
    adapter = SineAdapter(SineConfig(batch_size=10))
    template = adapter.make_model(torch.Generator().manual_seed(0))
    meta = Lazy(template, LazyConfig(reading=STEP, student_steps=20, student_lr=0.01, learn_lr=True))
    init = [p.detach().clone() for p in meta.params]
    for step in range(3):
        tasks = adapter.sample_tasks("train", 2, np.random.default_rng([0, step]))
        for task in tasks:
            model = adapter.make_model(torch.Generator().manual_seed(step))
            meta.load_init(model)
            curve = meta.accumulate(model, lambda m, split: task.loss(m, task.batch(split)))
            assert len(curve) == 21 and all(math.isfinite(c) for c in curve)
        logs = meta.meta_step()
        assert logs["meta/tasks"] == 2.0 and math.isfinite(logs["meta/grad_norm"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(init, meta.params))
    assert set(meta.step_sizes()) == {n for n, _ in template.named_parameters()}
