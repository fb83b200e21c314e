"""Held-out videos (eval.video): one real game recorded from EnvPool's screens, written as MP4 and read back,
cut at its frame cap, and shown in TensorBoard as an animated GIF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("envpool")
iio = pytest.importorskip("imageio.v3")

from envs.atari import VIDEO_FPS, make_atari  # noqa: E402
from train.tasks.atari import AtariAdapter, AtariTaskConfig  # noqa: E402
from train.video import write_mp4  # noqa: E402


@pytest.fixture(scope="module")
def breakout(one_thread):
    """The adapter and a random-init agent for Breakout (its task seed fixed)."""
    adapter = AtariAdapter(AtariTaskConfig(train_games=["Breakout"], test_games=[], backend="envpool"))
    task = adapter.game("Breakout", 7)
    model = adapter.build_model(torch.Generator().manual_seed(0), task)
    return adapter, task, model


def test_a_recorded_game_is_an_mp4_of_real_screens_read_back_whole(breakout, tmp_path):
    adapter, task, model = breakout
    frames, score, over = adapter.record_episode(task, model, max_frames=400)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (210, 160, 3)        # the screen, not the 84×84 input
    assert 2 <= len(frames) <= 400 and score >= 0
    assert over == (len(frames) < 400)                 # shorter than the cap only when the game ended
    assert frames.std(axis=0).max() > 0 and len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 2   # colour, moving
    path = write_mp4(tmp_path / "videos" / "Breakout_meta_init.mp4", frames, VIDEO_FPS)
    assert path.is_file() and not list(path.parent.glob(".*"))            # no temp file left
    back = iio.imread(path, plugin="FFMPEG")
    assert back.shape == frames.shape                                        # every frame, full size
    assert np.abs(back.astype(int) - frames).mean() < 10                     # the same pictures (lossy codec)
    # the same task and agent play the same game: the recording uses its own seeded env and generator
    again, score2, _ = adapter.record_episode(task, model, max_frames=400)
    assert np.array_equal(again, frames) and score2 == score


def test_a_long_game_is_cut_at_the_frame_cap(breakout):
    adapter, task, model = breakout
    frames, _, over = adapter.record_episode(task, model, max_frames=30)
    assert len(frames) == 30 and not over


def test_the_gymnasium_fallback_renders_the_same_screen_size():
    env = make_atari("Breakout", num_envs=1, seed=0, backend="gymnasium", train=False, render=True)
    try:
        env.reset()
        env.step(np.ones(1, dtype=np.int64))
        assert env.render().shape == (1, 210, 160, 3)
    finally:
        env.close()
    plain = make_atari("Breakout", num_envs=1, seed=0, backend="envpool", train=False)
    with pytest.raises(NotImplementedError, match="render=True"):
        plain.render()
    plain.close()


def test_the_video_is_an_animated_gif_in_the_evaluation_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.trainer import Logger
    from train.video import encode_gif

    frames = np.zeros((6, 210, 160, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, 20 * t:20 * t + 20] = (200, 40 * t, 10)                  # a moving band: six distinct frames
    logger = Logger(tmp_path, purge_step=None)
    logger.gif("eval/meta_init", "videos/Breakout", encode_gif(frames, VIDEO_FPS), 1200)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "eval" / "meta_init"), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["videos/Breakout"]
    image = acc.Images("videos/Breakout")[0]
    assert image.step == 1200 and (image.height, image.width) == (210, 160)
    gif = iio.imread(image.encoded_image_string, extension=".gif")
    assert gif.shape[:3] == (6, 210, 160)


def test_the_recording_follows_the_agents_policy(breakout):
    adapter, task, model = breakout
    import copy
    games = []
    for action in (1, 2):                      # FIRE, RIGHT: a policy that nearly always takes one action
        agent = copy.deepcopy(model)
        with torch.no_grad():
            agent.policy.bias.zero_()
            agent.policy.bias[action] = 20.0
        games.append(adapter.record_episode(task, agent, max_frames=60)[0])
    assert not np.array_equal(games[0], games[1])
