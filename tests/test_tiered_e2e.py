"""The tieredImageNet protocol end to end through the trainer, on a tiny release in the original format."""

from pathlib import Path

from tiered_fixture import make_tiny_tiered
from train.config import load_config
from train.trainer import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_tiny_tiered_leap_and_warp_leap(tmp_path):
    root = make_tiny_tiered(tmp_path / "data", seed=0, images_per_class=30)
    for name, extra in (("tiered_leap_tiny", []),
                        ("tiered_leap_tiny", ["method=warpgrad", "tiered.warp=linear", "warpgrad.algorithm=online"])):
        cfg = load_config(CONFIGS / f"{name}.yaml",
                          [f"tiered.root={root}", "run.progress=false", "meta.steps=2", *extra])
        result = train(cfg, tmp_path / f"run_{len(extra)}")
        assert 0.0 <= result["test_accuracy"] <= 1.0 and result["auc"] > 0
