"""The Atari demo's closing table and the transfer study's configs (issue 14): the held-out summary printed
from what eval.json holds, the configs/atari_transfer_*.yaml protocol and budget, and the config errors of
the new keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_helpers import cli, one_line
from train.atari_scores import REFERENCE
from train.cli import print_summary
from train.config import config_to_dict, load_config
from train.config_yaml import read_yaml
from train.config_checks import flatten
from train.config_usage import check_used_keys
from train.tasks.atari_eval import summary

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STUDY = ("leap", "reptile", "pretrained")


def _row(final, std, hns=None, hns_std=None):
    row = {"normalised_auc": 0.5, "final_score": final, "final_score_std": std}
    if hns is not None:
        row.update({"final_human_normalised": hns, "final_human_normalised_std": hns_std})
    return row


# eval.json of a make run: Atlantis, 2 seeds (the figures of docs/RESULTS.md), as the file held it before the
# sample std and the per-seed AUC (population std, no "auc"): the table reads the per-seed lists
MAKE_RUN = {"step": 4, "horizon_env_steps": 60000, "seeds": 2, "window": 10,
            "games": {"Atlantis": {"meta_init": {**_row(16130.0, 1160.0, 0.20274, 0.07170),
                                                 "final_scores": [14970.0, 17290.0], "auc_scores": [14500.0, 13000.0],
                                                 "final_human_normalised_scores": [0.13104, 0.27445],
                                                 "human_normalised_auc_scores": [0.10199, 0.00927]},
                                   "random_init": {**_row(14205.0, 475.0, 0.08376, 0.02936),
                                                   "final_scores": [13730.0, 14680.0],
                                                   "auc_scores": [13000.0, 13500.0],
                                                   "final_human_normalised_scores": [0.05440, 0.11313],
                                                   "human_normalised_auc_scores": [0.00926, 0.04017]}}},
            "mean_human_normalised": {"meta_init": {"games": ["Atlantis"], "auc": 0.1, "final": 0.20274,
                                                    "final_std": 0.07170},
                                      "random_init": {"games": ["Atlantis"], "auc": 0.1, "final": 0.08376,
                                                      "final_std": 0.02936}}}


def test_make_run_ends_with_its_held_out_table_and_the_note(tmp_path, capsys):
    (tmp_path / "eval.json").write_text(json.dumps(MAKE_RUN, indent=2))
    result = json.loads((tmp_path / "eval.json").read_text())
    cfg = load_config(CONFIGS / "atari_leap.yaml")          # what `make run` trains
    print_summary(cfg, result)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "held-out games: 60,000 env steps per run, 2 seeds per game and initialisation; mean ± sample std over "
        "seeds (— for one seed)",
        "final score: the mean true score of a run's last 10 games; AUC: a run's mean running score over its grid "
        "to env step 60,000, averaged over seeds",
        "game      init         final score       AUC               human-normalised final  human-normalised AUC",
        "Atlantis  random init  14205.0 ± 671.8   13250.0 ± 353.6   0.084 ± 0.042           0.025 ± 0.022",
        "Atlantis  Leap init    16130.0 ± 1640.5  13750.0 ± 1060.7  0.203 ± 0.101           0.056 ± 0.066",
        cfg.eval.note]          # one game: no "mean of 1 game" rows repeating it
    assert "shows the pipeline, not transfer" in cfg.eval.note and "configs/atari_transfer_*.yaml" in cfg.eval.note
    # quiet runs print nothing but their JSON
    print_summary(load_config(CONFIGS / "atari_leap.yaml", ["run.progress=false"]), result)
    assert capsys.readouterr().err == ""


def test_the_table_names_the_method_and_shows_missing_scores():
    result = {"horizon_env_steps": 1200, "seeds": 1,
              "games": {"AirRaid": {"meta_init": _row(500.0, 0.0), "random_init": _row(None, None)}}}
    lines = summary(result, "reptile").splitlines()
    assert lines[0].startswith("held-out games: 1,200 env steps per run, 1 seed per game")
    # null: no game finished; a row without its AUC (written before it had one): —
    assert lines[3].split() == ["AirRaid", "random", "init", "n/a", "—", "no", "reference", "no", "reference"]
    assert lines[4].split() == ["AirRaid", "Reptile", "init", "500.0", "±", "0.0", "—", "no", "reference", "no",
                                "reference"]
    assert len(lines) == 5                                 # no mean row without reference scores, no note
    one = {**result, "games": {"AirRaid": {"meta_init": {"final_scores": [500.0], "auc_scores": [300.0]}}}}
    assert summary(one, "reptile").splitlines()[3].split()[3:7] == ["500.0", "±", "—", "300.0"]    # one seed: —


# ------------------------------------------------------------------------------------------------
# the transfer study


def _study(name):
    path = CONFIGS / f"atari_transfer_{name}.yaml"
    cfg = load_config(path)
    check_used_keys(cfg, read_yaml(path), [])
    return cfg


def test_the_study_runs_differ_in_the_initialisation_only():
    """... and in eval.random_init: the random init, the same in the three runs, is evaluated by the Leap run only."""
    cfgs = {name: _study(name) for name in STUDY}
    assert {n: c.method for n, c in cfgs.items()} == {"leap": "leap", "reptile": "reptile", "pretrained": "finetune"}
    assert {n: c.eval.random_init for n, c in cfgs.items()} == {"leap": True, "reptile": False, "pretrained": False}
    leap = cfgs["leap"].leap
    assert (leap.p, leap.loss, leap.stabilizer) == (2, True, True)
    flat = {n: flatten(config_to_dict(c)) for n, c in cfgs.items()}
    own = re.compile(r"^(name|method|leap\..*|eval\.random_init)$")
    shared = {k: v for k, v in flat["leap"].items() if not own.match(k)}
    for name in ("reptile", "pretrained"):
        assert {k: v for k, v in flat[name].items() if not own.match(k)} == shared, name
    assert len({c.name for c in cfgs.values()}) == 3          # `metarl report` names each init after its run


def test_the_study_protocol_and_its_budget_arithmetic():
    cfg = _study("leap")
    atari = cfg.task_config
    held_out, trained = atari.test_games, atari.train_games
    assert len(held_out) >= 3 and not set(held_out) & set(trained) and cfg.eval.tasks >= 5
    assert all(g in REFERENCE for g in held_out)             # human-normalised scores for every held-out game
    assert atari.heads == "game" and cfg.meta.include == ["encoder."] and cfg.eval.video
    meta_steps = cfg.meta.steps * cfg.meta.meta_batch * cfg.inner.steps
    one_init = len(held_out) * cfg.eval.tasks * cfg.eval.steps          # one initialisation's held-out runs
    header = (CONFIGS / "atari_transfer_base.yaml").read_text()
    assert meta_steps == 1_200_000 and "= 1.2M" in header
    assert one_init == 2_250_000 and "= 2.25M" in header
    runs = {n: meta_steps + one_init * (1 + _study(n).eval.random_init) for n in STUDY}
    assert runs == {"leap": 5_700_000, "reptile": 3_450_000, "pretrained": 3_450_000}
    assert "= 5.7M" in header and "= 3.45M" in header
    assert sum(runs.values()) == 12_600_000 and "= 12.6M" in header
    # the check trains every game of the study from a random encoder, as long as a held-out run
    check = _study("check")
    assert check.method == "no_pretraining" and check.meta.steps == 0
    assert set(trained) | set(held_out) <= set(check.task_config.test_games)
    assert check.eval.steps == cfg.eval.steps >= cfg.inner.steps    # as long as a held-out run
    for game in check.task_config.test_games:                # the command loop in the header covers them all
        assert re.search(rf"for g in [^;]*\b{game}\b", header), game


# ------------------------------------------------------------------------------------------------
# config errors: one line


BAD = [
    (["atari_transfer_pretrained.yaml", "meta.head=learned"], "method finetune with meta.head: learned needs one head"),
    (["atari_leap.yaml", "eval.video_frames=0"], "'eval.video_frames' must be positive"),
    (["sine_leap.yaml", "eval.video=true"], "'eval.video' is not used by this run: only Atari"),
    (["sine_leap.yaml", "eval.note=hi"], "'eval.note' is not used by this run: only Atari"),
    (["sine_leap.yaml", "eval.random_init=false"], "'eval.random_init' is not used by this run: only Atari"),
    (["atari_leap.yaml", "eval.random_init=maybe"], "eval.random_init"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_video_and_study_settings_are_one_line(args, message, capsys, tmp_path):
    code, _, err = cli(["train", str(CONFIGS / args[0]), *args[1:], "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "r").exists()


def test_pretrained_encoder_runs_with_per_game_heads(tmp_path):
    """Fine-tuning over games of different action sets (Breakout 4, Pong 6) with per-game heads: the
    encoder is carried from visit to visit, each game keeps its own head, and θ⁰'s head is never written."""
    import torch

    from train.trainer import train
    cfg = load_config(CONFIGS / "atari_transfer_pretrained.yaml", [
        "atari.train_games=[Breakout,Pong]", "atari.test_games=[Freeway]", "atari.a2c.num_envs=2",
        "inner.steps=200", "meta.steps=2", "meta.meta_batch=2", "eval.tasks=1", "eval.steps=200",
        "eval.video=false", "run.progress=false"])
    assert cfg.task_config.heads == "game"
    train(cfg, tmp_path)
    state = torch.load(sorted(tmp_path.glob("checkpoint-*.pt"))[-1], weights_only=True)
    meta = state["meta"]
    assert meta["head_keys"] == ["Breakout", "Pong"]
    sizes = {k: {n: tuple(v.shape) for n, v in h.items()} for k, h in zip(meta["head_keys"], meta["heads"])}
    assert sizes["Breakout"] != sizes["Pong"]
    assert (tmp_path / "eval.json").exists()
