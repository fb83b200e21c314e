"""A meta-learner's checkpoint is generated from typed entries (metarl/state.py): no method writes its own
state_dict, the format is the one checkpoints were written in, and a checkpoint a learner cannot take is
refused before anything of it is loaded."""

import torch
from torch import nn

from metarl import METHODS, Leap, MetaLearner, method_class
from metarl.warpgrad import WarpGrad, WarpGradConfig
from metarl.warp_layers import make_warp


def test_no_method_writes_its_own_state_dict():
    for name in METHODS:
        for cls in method_class(name).__mro__:
            if issubclass(cls, MetaLearner) and cls is not MetaLearner:
                assert "state_dict" not in vars(cls) and "load_state_dict" not in vars(cls), (name, cls)


def test_the_base_format_is_kept_and_a_three_counter_checkpoint_loads():
    meta = Leap(nn.Linear(3, 2))
    meta.tasks, meta.skipped, meta.meta_steps, meta.displacement = 2, 1, 7, 0.5
    state = meta.state_dict()
    assert list(state) == ["init", "meta_optimizer", "acc", "counters"]
    assert state["counters"].dtype == torch.float64 and state["counters"].tolist() == [2, 1, 7, 0.5]
    other = Leap(nn.Linear(3, 2))
    other.displacement = 3.0
    state["counters"] = state["counters"][:3]       # written before the displacement was counted
    other.load_state_dict(state)
    assert (other.tasks, other.skipped, other.meta_steps, other.displacement) == (2, 1, 7, 0.0)
    assert isinstance(other.meta_steps, int) and all(torch.equal(a, b) for a, b in zip(other.params, meta.params))


class _Warped(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Linear(3, width)
        self.warps = make_warp("linear", width)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.warps(self.body(x)))


def test_a_checkpoint_of_other_warps_is_refused_before_anything_loads():
    torch.manual_seed(0)
    saved = WarpGrad(_Warped(4), WarpGradConfig(init_objective="none")).state_dict()
    saved["warp_names"] = ["warps.other"]
    torch.manual_seed(1)
    meta = WarpGrad(_Warped(4), WarpGradConfig(init_objective="none"))
    before = {k: v.clone() for k, v in meta.init_state.items()}
    try:
        meta.load_state_dict(saved)
        raise AssertionError("a checkpoint of other warps was loaded")
    except ValueError as e:
        assert "warp parameters do not match" in str(e)
    assert all(torch.equal(before[k], v) for k, v in meta.init_state.items())
