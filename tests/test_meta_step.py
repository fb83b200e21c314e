"""The meta-step template (metarl/base.py ``MetaLearner.meta_step``): every method steps, clips, undoes a
non-finite step, resets its meta-batch and counts its meta-steps there, and supplies only its updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metarl.base import MetaLearner, MetaOptimizerConfig
from metarl.registry import METHODS, method_class


class WarpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(2, 3)
        self.warps = nn.ModuleList([nn.Linear(3, 3)])
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.warps[0](self.layer(x))))


def build(name: str, opt: MetaOptimizerConfig | None = None) -> MetaLearner:
    cls = method_class(name)
    model = WarpNet().double()
    if name == "warpgrad_continual":
        return cls(model, meta_optimizer=opt, include=["warps."])
    return cls(model, meta_optimizer=opt)


def test_no_method_writes_its_own_meta_step():
    """The bookkeeping lives in one place: a method supplies ``updates`` (and extends ``reset_meta_batch``)."""
    for name in METHODS:
        assert method_class(name).meta_step is MetaLearner.meta_step, name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_resets_its_meta_batch_and_counts_the_meta_step(name):
    """Counts of one meta-batch — merged and skipped tasks, the summed displacement — do not leak into the
    next (fine-tuning and no-pretraining used to keep their skipped count, no-pretraining its displacement)."""
    meta = build(name)
    meta.skipped, meta.displacement = 2, 1.5
    logs = meta.meta_step()
    assert logs["meta/tasks"] == 0 and logs["meta/skipped_tasks"] == 2
    assert (meta.tasks, meta.skipped, meta.displacement, meta.meta_steps) == (0, 0, 0.0, 1)
    assert meta.meta_step()["meta/skipped_tasks"] == 0


def _merge(meta: MetaLearner, grads: list[torch.Tensor]) -> None:
    """One finite task whose meta-gradient is ``grads`` (what every seam method's observers accumulate)."""
    for acc, g in zip(meta._task_acc, grads):
        acc.copy_(g)
    meta._merge_task()


@pytest.mark.parametrize("name", ["leap", "reptile", "fomaml", "maml", "warpgrad_continual"])
def test_the_template_clips_and_undoes_for_every_method_stepping_the_init(name):
    """With SGD, θ⁰ moves by lr × clip under a tiny meta.optimizer.clip_grad_norm; a step that overflows
    (float64, lr 1e308) is undone, θ⁰ and the optimiser state as they were, and logged."""
    big = [torch.full_like(p, 3.0) for p in build(name).params]
    meta = build(name, MetaOptimizerConfig(lr=0.5, clip_grad_norm=1e-3))
    start = [p.detach().clone() for p in meta.params]
    _merge(meta, big)
    logs = meta.meta_step()
    moved = math.sqrt(sum(float((p.detach() - s).square().sum()) for p, s in zip(meta.params, start)))
    assert moved == pytest.approx(0.5 * 1e-3, rel=1e-4) and logs["meta/init_displacement"] == pytest.approx(moved)
    meta = build(name, MetaOptimizerConfig(lr=1e308, momentum=0.9))
    start = [p.detach().clone() for p in meta.params]
    _merge(meta, big)
    logs = meta.meta_step()
    assert logs["meta/skipped_step"] == 1 and logs["meta/init_displacement"] == 0
    assert all(torch.equal(p, s) for p, s in zip(meta.params, start))
    assert meta.meta_optimizer.state_dict()["state"] == {}


def test_lazy_clips_and_undoes_the_log_step_sizes_with_theta():
    """Lazy steps θ and its log step sizes with one optimiser: one clip over both gradients (the meta-gradient's
    global norm), and an overflow of either is undone for both."""
    from metarl.lazy import Lazy, LazyConfig
    cfg = LazyConfig(reading="follow_updates", student_steps=2, learn_lr=True)
    meta = Lazy(WarpNet().double(), cfg, meta_optimizer=MetaOptimizerConfig(lr=0.5, clip_grad_norm=1e-3))
    start = [p.detach().clone() for p in [*meta.params, *meta.lr_params]]
    _merge(meta, [torch.full_like(p, 3.0) for p in meta.params])
    for a in meta._lr_acc:
        a.fill_(2.0)
    meta.meta_step()
    moved = math.sqrt(sum(float((p.detach() - s).square().sum())
                          for p, s in zip([*meta.params, *meta.lr_params], start)))
    assert moved == pytest.approx(0.5 * 1e-3, rel=1e-4)
    meta = Lazy(WarpNet().double(), cfg, meta_optimizer=MetaOptimizerConfig(lr=1.0))
    meta.meta_optimizer.param_groups[1]["lr"] = 1e308     # only the log step sizes overflow
    start = [p.detach().clone() for p in [*meta.params, *meta.lr_params]]
    _merge(meta, [torch.full_like(p, 3.0) for p in meta.params])
    for a in meta._lr_acc:
        a.fill_(2.0)
    assert meta.meta_step()["meta/skipped_step"] == 1
    assert all(torch.equal(p, s) for p, s in zip([*meta.params, *meta.lr_params], start))
