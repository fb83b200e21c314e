"""The held-out Atari evaluation saved run by run (train/tasks/atari_eval_parts.py): an evaluation interrupted
after its first held-out run resumes to exactly the uninterrupted result (eval.json, TensorBoard points and
GIFs, each shown once), a second evaluation reads every part back, parts of other settings run again, and
``eval.random_init: false`` evaluates the meta-learned initialisation alone with the same numbers."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("envpool")

from train.checkpoint import dumps_json  # noqa: E402
from train.config import load_config  # noqa: E402
from train.tasks import atari_eval_parts  # noqa: E402
from train.tasks.atari import AtariAdapter  # noqa: E402
from train.trainer import setup, train  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["atari.train_games=[Breakout]", "atari.test_games=[Breakout]", "atari.test_on_train_games=true",
        "atari.a2c.num_envs=4", "inner.steps=600", "meta.steps=1", "meta.meta_batch=1", "eval.tasks=2",
        "eval.steps=1200", "eval.video=true", "eval.video_frames=20", "run.progress=false"]
RUNS = 4                       # 1 game × 2 inits × 2 seeds


class Interrupted(Exception):
    pass


def _cfg(*extra):
    return load_config(CONFIGS / "atari_leap.yaml", [*TINY, *extra])


def _count_adapts(monkeypatch):
    """Counts the held-out and training runs (one AtariAdapter.adapt each) from here on."""
    calls = []
    adapt = AtariAdapter.adapt

    def counted(self, *args, **kwargs):
        calls.append(args[0].key)
        return adapt(self, *args, **kwargs)

    monkeypatch.setattr(AtariAdapter, "adapt", counted)
    return calls


def visible_events(folder: Path) -> list[tuple]:
    """The points TensorBoard shows for the event files directly in ``folder``: files in name order, and a
    SessionLog START at step s (a writer's purge_step) hides every earlier point at step >= s. Scalars as
    (tag, step, value), images as (tag, step, encoded bytes)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    shown = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():         # as written: images stay images
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                shown = [e for e in shown if e[1] < event.step]
            for v in event.summary.value:
                shown.append((v.tag, event.step, v.image.encoded_image_string if v.HasField("image")
                              else v.simple_value))
    return shown


def eval_events(run_dir: Path) -> dict[str, list[tuple]]:
    return {str(d.relative_to(run_dir)): sorted(visible_events(d), key=lambda e: (e[0], e[1]))
            for d in sorted((run_dir / "eval").rglob("*")) if d.is_dir()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(_cfg(), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, one_thread):
    """The same run stopped after its first held-out run (the part on disk), then resumed: (dir, adapt calls
    of the resume)."""
    run_dir = tmp_path_factory.mktemp("resumed")
    with pytest.MonkeyPatch.context() as mp:
        save = atari_eval_parts.Parts.save

        def save_then_stop(self, *args, **kwargs):
            save(self, *args, **kwargs)
            raise Interrupted

        mp.setattr(atari_eval_parts.Parts, "save", save_then_stop)
        with pytest.raises(Interrupted):
            train(_cfg(), run_dir)
    parts = sorted(p.name for p in (run_dir / "eval_parts" / "test").glob("*.json"))
    assert parts == ["Breakout__meta_init__0.json"] and not (run_dir / "eval.json").exists()
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_adapts(mp)
        train(_cfg(), run_dir, resume=True)
    return run_dir, calls


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(uninterrupted, resumed):
    run_dir, calls = resumed
    assert len(calls) == RUNS - 1                  # the finished part is read back, not run again
    for name in ("eval.json", "eval_atari.json"):
        a, b = (json.loads((d / name).read_text()) for d in (uninterrupted, run_dir))
        assert a == b, name
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["games"]["Breakout"]["meta_init"]["final_scores"]        # a real result: scores per seed
    assert set(result["videos"]["Breakout"]) == {"meta_init", "random_init"}
    for part in sorted((uninterrupted / "eval_parts" / "test").glob("*.json")):
        assert json.loads(part.read_text()) == json.loads((run_dir / part.relative_to(uninterrupted)).read_text())


def test_tensorboard_shows_each_held_out_point_once(uninterrupted, resumed):
    run_dir, _ = resumed
    a, b = eval_events(uninterrupted), eval_events(run_dir)
    assert set(a) == {"eval/meta_init", "eval/random_init", "eval/meta_init/seed_0", "eval/meta_init/seed_1",
                      "eval/random_init/seed_0", "eval/random_init/seed_1"}
    assert a == b
    for events in b.values():
        keys = [(tag, step) for tag, step, _ in events]
        assert len(keys) == len(set(keys)) and keys
    for init in ("meta_init", "random_init"):             # the GIF of seed 0's game, once per init
        gifs = [(tag, step) for tag, step, v in b[f"eval/{init}"] if isinstance(v, bytes)]
        assert gifs == [("videos/Breakout", 1200)]


def test_a_second_evaluation_reads_every_part_back(uninterrupted, resumed, tmp_path, monkeypatch):
    """`metarl eval` of a finished run under the same settings: no held-out run repeats, the result and the
    TensorBoard points are the same and still shown once (the earlier evaluation's files stay, hidden)."""
    from train.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    shutil.copytree(resumed[0], run_dir)
    calls = _count_adapts(monkeypatch)
    out = evaluate_run(run_dir, video=True)
    assert calls == []
    assert json.loads(dumps_json(out)) == json.loads((uninterrupted / "eval.json").read_text())
    assert eval_events(run_dir) == eval_events(uninterrupted)
    assert len(list((run_dir / "eval" / "meta_init").glob("events.out.tfevents.*"))) == 2


def test_parts_of_other_settings_are_run_again_and_named(uninterrupted):
    """Other eval.steps: every part runs again; another checkpoint (meta-step) or θ⁰: the meta-learned
    initialisation's parts only; a part without the asked video or unreadable: that part."""
    import torch

    cfg = load_config(uninterrupted / "config.yaml")
    adapter, meta = setup(cfg)
    state = torch.load(sorted(uninterrupted.glob("checkpoint-*.pt"))[-1], weights_only=True)
    meta.load_state_dict(state["meta"])
    parts = atari_eval_parts.Parts(uninterrupted, "test")

    def loaded(video_frames=None, cfg=cfg, **runs):
        found = []
        for init in ("meta_init", "random_init"):
            settings = atari_eval_parts.part_settings(cfg, adapter, meta, init, cfg.eval.steps, 50, 10)
            for seed in range(2):
                part = parts.load("Breakout", init, seed, settings, video_frames if seed == 0 else None)
                found += [(init, seed)] if part is not None else []
        return found

    everything = [("meta_init", 0), ("meta_init", 1), ("random_init", 0), ("random_init", 1)]
    assert loaded(video_frames=20) == everything and parts.note() == ""
    assert loaded(cfg=load_config(uninterrupted / "config.yaml", ["eval.steps=600"])) == []
    assert "4 finished held-out runs not reused" in parts.note() and "env_steps 1200 → 600" in parts.note()
    parts.ignored.clear()
    meta.meta_steps += 1                                    # a later checkpoint
    assert loaded() == [("random_init", 0), ("random_init", 1)] and "init.meta_step 1 → 2" in parts.note()
    meta.meta_steps -= 1
    parts.ignored.clear()
    with torch.no_grad():
        meta.init_state["encoder.conv.0.weight"][0, 0, 0, 0] += 1e-3     # another θ⁰ at the same meta-step
    assert loaded() == [("random_init", 0), ("random_init", 1)] and "init.sha256" in parts.note()
    with torch.no_grad():
        meta.init_state["encoder.conv.0.weight"][0, 0, 0, 0] -= 1e-3
    parts.ignored.clear()
    assert loaded(video_frames=40) == [("meta_init", 1), ("random_init", 1)]     # seed 0: a 20-frame video only
    assert "no video of at most 40 frames (2)" in parts.note()


def test_an_unreadable_part_runs_again(tmp_path):
    cfg = _cfg()
    adapter, meta = setup(cfg)
    parts = atari_eval_parts.Parts(tmp_path, "test")
    settings = atari_eval_parts.part_settings(cfg, adapter, meta, "random_init", 1200, 50, 10)
    part = {"format": 1, "fingerprint": atari_eval_parts.fingerprint(settings), "settings": settings,
            "game": "Breakout", "init": "random_init", "seed": 0, "curve": [None] * 49 + [1.5], "final_score": None,
            "final_games": 0, "games": 1, "env_steps": 1200}
    back = parts.save(dict(part))
    assert back["curve"][-2:] == [None, 1.5] and parts.load("Breakout", "random_init", 0, settings, None) == back
    assert atari_eval_parts.final_score(back) != atari_eval_parts.final_score(back)          # null → NaN
    parts.path("Breakout", "random_init", 0).write_text('{"format": 1, "game": "Bre')      # cut short
    assert parts.load("Breakout", "random_init", 0, settings, None) is None
    assert parts.note().endswith("run again — unreadable (1)")
    assert parts.load("Breakout", "random_init", 1, settings, None) is None and parts.ignored == {"unreadable": 1}


def test_without_random_init_the_meta_init_numbers_are_the_same(uninterrupted, tmp_path):
    from train.tasks.atari_eval import summary

    run_dir = tmp_path / "run"
    result = train(_cfg("eval.random_init=false"), run_dir)
    assert set(result["games"]["Breakout"]) == {"meta_init"} and set(result["videos"]["Breakout"]) == {"meta_init"}
    assert set(result["mean_human_normalised"]) == {"meta_init"}
    full = json.loads((uninterrupted / "eval.json").read_text())
    row, ref = result["games"]["Breakout"]["meta_init"], full["games"]["Breakout"]["meta_init"]
    assert "normalised_auc" not in row                     # min–max over one init compares nothing
    assert row == {k: v for k, v in ref.items() if k != "normalised_auc"}
    assert sorted(p.name for p in (run_dir / "eval_parts" / "test").glob("*.json")) == [
        "Breakout__meta_init__0.json", "Breakout__meta_init__1.json"]
    assert not (run_dir / "eval" / "random_init").exists()
    [md_row] = [line for line in (run_dir / "eval_atari.md").read_text().splitlines() if line.startswith("| Breakout")]
    assert md_row.startswith("| Breakout | Leap init | 2 | ") and md_row.endswith(" | — |")  # no min–max AUC
    lines = summary(result, "leap").splitlines()
    assert [line.split()[:3] for line in lines[3:]] == [["Breakout", "Leap", "init"]]     # one game: no mean row
