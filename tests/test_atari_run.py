"""An Atari meta-training run end to end: TensorBoard curves read back with TensorBoard's own reader."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("envpool")

from train.config import load_config  # noqa: E402
from train.trainer import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_atari_run_writes_training_and_eval_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(CONFIGS / "atari_leap.yaml", [
        "atari.train_games=[Breakout]", "atari.test_games=[Breakout]", "atari.test_on_train_games=true", "atari.a2c.num_envs=4",
        "inner.steps=1200", "meta.steps=2", "meta.meta_batch=1", "eval.tasks=1", "eval.steps=1200",
        "run.progress=false"])
    result = train(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"meta/grad_norm", "meta/segments",
            "eval/Breakout/meta_init/episodic_return", "eval/Breakout/random_init/episodic_return"} <= tags
    assert [e.step for e in acc.Scalars("meta/grad_norm")] == [1, 2]
    # finished games are logged at the env step they ended, over both tasks (2 × ~1,200 + final rollouts),
    # in games/ (their own TensorBoard run: another x-axis, purged on its own on resume)
    games = EventAccumulator(str(tmp_path / "games"), size_guidance={"scalars": 0})
    games.Reload()
    assert {"charts/episodic_return", "charts/episodic_length"} <= set(games.Tags()["scalars"])
    game_steps = [e.step for e in games.Scalars("charts/episodic_return")]
    assert game_steps == sorted(game_steps) and 0 < game_steps[-1] <= 2 * (1200 + 20)
    grid = set(int(x) for x in np.linspace(1200 / 50, 1200, 50))
    eval_steps = {e.step for e in acc.Scalars("eval/Breakout/meta_init/episodic_return")}
    assert eval_steps and eval_steps <= grid
    assert (tmp_path / "eval_atari.png").is_file() and (tmp_path / "eval_atari.md").is_file()
    assert set(result["games"]["Breakout"]) == {"meta_init", "random_init"}
