"""MAML against finite differences; Reptile / FOMAML / fine-tuning / no pre-training on the seam."""

import torch
from torch import nn

from metarl import FOMAML, MAML, FineTuning, NoPretraining, Reptile


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def make_batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(4)]
    return [(x, torch.sin(x.sum(1, keepdim=True))) for x in xs]


def maml_objective(model: nn.Module, init: list[torch.Tensor], data, lr: float, steps: int,
                   clip: float = 0.0) -> torch.Tensor:
    """L_query(θ_K), θ_{k+1} = θ_k − lr ∇L_train(θ_k), written out directly (no functional_call); ``clip`` > 0:
    ∇L_train scaled by min(1, clip / (‖∇L_train‖ + 1e-6)), torch's clip_grad_norm_ rule."""
    params = [p.detach().requires_grad_(True) for p in init]

    def f(ps, batch):
        x, y = batch
        h = torch.tanh(x @ ps[0].T + ps[1])
        return ((h @ ps[2].T + ps[3] - y) ** 2).mean()

    for k in range(steps):
        grads = torch.autograd.grad(f(params, data[k]), params, create_graph=True)
        if clip:
            norm = sum((g ** 2).sum() for g in grads).sqrt()
            grads = [g * min(1.0, clip / (float(norm.detach()) + 1e-6)) for g in grads]
        params = [p - lr * g for p, g in zip(params, grads)]
    return f(params, data[-1])


def test_maml_matches_finite_differences():
    model = tiny()
    meta = MAML(model, inner_lr=0.3, inner_steps=3)
    data = make_batches(0)
    it = {"train": iter(data[:3]), "query": iter(data[3:])}
    meta.load_init(model)
    meta.accumulate(model, lambda m, split: _loss(m, split, it))
    grad = meta.meta_gradient()
    init = [p.detach().clone() for p in meta.params]
    eps = 1e-6
    checked = 0
    for t in range(len(init)):
        flat = init[t].view(-1)
        for j in range(flat.numel()):
            plus = [x.clone() for x in init]
            minus = [x.clone() for x in init]
            plus[t].view(-1)[j] += eps
            minus[t].view(-1)[j] -= eps
            fd = (maml_objective(model, plus, data, 0.3, 3) - maml_objective(model, minus, data, 0.3, 3)) / (2 * eps)
            assert abs(float(fd.detach()) - float(grad[t].view(-1)[j])) < 1e-7
            checked += 1
    assert checked == sum(p.numel() for p in init)


def test_maml_honours_the_inner_clip_and_matches_finite_differences():
    """The trainer's inner.clip_grad_norm reaches MAML's differentiable loop through run_task: the meta-gradient
    is that of the clipped loop (finite differences of a directly written clipped loop), not the unclipped one."""
    model = tiny()
    data = make_batches(0)
    clip = 0.05

    class Task:
        def __init__(self):
            self.it = {"train": iter(data[:3]), "query": iter(data[3:])}

        def batch(self, split):
            return next(self.it[split])

        def loss(self, m, batch):
            x, y = batch
            return ((m(x) - y) ** 2).mean()

    meta = MAML(model, inner_lr=0.3, inner_steps=3)
    meta.load_init(model)
    meta.run_task(None, Task(), model, None, 3, clip_grad_norm=clip)
    grad = torch.cat([g.reshape(-1) for g in meta.meta_gradient()])
    init = [p.detach().clone() for p in meta.params]
    eps = 1e-6
    fd = []
    for t in range(len(init)):
        for j in range(init[t].numel()):
            plus, minus = [x.clone() for x in init], [x.clone() for x in init]
            plus[t].view(-1)[j] += eps
            minus[t].view(-1)[j] -= eps
            fd.append(float((maml_objective(model, plus, data, 0.3, 3, clip)
                             - maml_objective(model, minus, data, 0.3, 3, clip)).detach()) / (2 * eps))
    torch.testing.assert_close(grad, torch.tensor(fd, dtype=grad.dtype), atol=1e-7, rtol=0)
    unclipped = MAML(tiny(), inner_lr=0.3, inner_steps=3)
    unclipped.load_init(model)
    unclipped.run_task(None, Task(), model, None, 3)
    assert (torch.cat([g.reshape(-1) for g in unclipped.meta_gradient()]) - grad).abs().max() > 1e-3


def _loss(m, split, it):
    x, y = next(it[split])
    return ((m(x) - y) ** 2).mean()


def test_first_order_maml_drops_second_order_terms():
    model = tiny()
    data = make_batches(1)
    full, first = MAML(model, inner_lr=0.3, inner_steps=2), MAML(model, inner_lr=0.3, inner_steps=2, first_order=True)
    for meta in (full, first):
        it = {"train": iter(data[:2]), "query": iter(data[3:])}
        meta.load_init(model)
        meta.accumulate(model, lambda m, s: _loss(m, s, it))
    diff = sum(float((a - b).abs().sum()) for a, b in zip(full.meta_gradient(), first.meta_gradient()))
    assert diff > 1e-6


def run(meta, model, data, lr=0.1):
    meta.load_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with meta.watch(model, opt) as watch:
        for x, y in data[:-1]:
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            watch.report(loss)
            opt.step()
    return loss


def test_reptile_and_fomaml_and_no_pretraining():
    model = tiny()
    data = make_batches(2)
    reptile, fomaml, none = Reptile(model), FOMAML(model), NoPretraining(model)
    init = [p.detach().clone() for p in reptile.params]
    run(reptile, model, data)
    final = [p.detach().clone() for p in model.parameters()]
    for g, a, b in zip(reptile.meta_gradient(), init, final):
        torch.testing.assert_close(g, a - b)
    run(fomaml, model, data)
    # FOMAML: the gradient of the last inner step, at θ^{K−1}
    model2 = tiny()
    fomaml.load_init(model2)
    opt = torch.optim.SGD(model2.parameters(), lr=0.1)
    for x, y in data[:-2]:
        opt.zero_grad()
        ((model2(x) - y) ** 2).mean().backward()
        opt.step()
    opt.zero_grad()
    x, y = data[-2]
    ((model2(x) - y) ** 2).mean().backward()
    for g, p in zip(fomaml.meta_gradient(), model2.parameters()):
        torch.testing.assert_close(g, p.grad)
    run(none, model, data)
    none.meta_step()
    for a, b in zip(none.params, init):
        torch.testing.assert_close(a, b)


def test_finetune_continues_trunk_and_keeps_one_head_per_task():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Linear(2, 4).double()
            self.head = nn.Linear(4, 1).double()

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    model = Net()
    ft = FineTuning(model, head=("head.",))
    assert ft.names == ["body.weight", "body.bias"]

    class T:
        def __init__(self, key):
            self.key = key

    data = make_batches(3)
    ft.load_init(model)
    ft.prepare(model, T("a"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ft.watch(model, opt, T("a")) as watch:
        for x, y in data[:-1]:
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            watch.report(loss)
            opt.step()
    torch.testing.assert_close(ft.init_state["body.weight"], model.body.weight.detach())
    assert set(ft.heads) == {"a"}
    fresh = Net()
    ft.load_init(fresh)
    ft.prepare(fresh, T("a"))
    torch.testing.assert_close(fresh.head.weight, model.head.weight)
    state = ft.state_dict()
    ft2 = FineTuning(Net(), head=("head.",))
    ft2.load_state_dict(state)
    torch.testing.assert_close(ft2.heads["a"]["head.weight"], model.head.weight.detach())


def test_finetune_counts_a_diverged_task_once_and_resets_the_count_every_meta_step():
    """A task whose trunk ends non-finite leaves θ⁰ alone and is counted in that meta-step's
    meta/skipped_tasks only (the count used to carry over into every later meta-step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    ft = FineTuning(model, head=("2.",))
    before = {k: v.clone() for k, v in ft.init_state.items()}

    def task(key, lr):
        ft.load_init(model)
        ft.prepare(model, key)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with ft.watch(model, opt, key) as watch:
            for x, y in make_batches(3):
                loss = ((model(x) - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                watch.report(loss)
                opt.step()

    task("a", float("inf"))             # the trunk ends non-finite
    logs = ft.meta_step()
    assert (logs["meta/tasks"], logs["meta/skipped_tasks"], ft.skipped) == (0, 1, 0)
    assert all(torch.equal(v, ft.init_state[k]) for k, v in before.items())
    task("b", 0.1)
    logs = ft.meta_step()
    assert (logs["meta/tasks"], logs["meta/skipped_tasks"]) == (1, 0)
