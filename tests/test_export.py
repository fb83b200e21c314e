"""`metarl export RUN_DIR`: the meta-learned Atari encoder starts an SB3 A2C("CnnPolicy") and our agent on a
new game — the SB3 model's encoder equals the exported one, tensor for tensor and output for output."""

from pathlib import Path

import pytest
import torch

sb3 = pytest.importorskip("stable_baselines3")

from agents.nets import ActorCritic  # noqa: E402
from metarl.leap import Leap, LeapConfig  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.cli import main  # noqa: E402
from train.config import config_to_yaml, load_config  # noqa: E402
from train.export import load_encoder  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture
def atari_run(tmp_path):
    """An Atari run directory in the trainer's format whose θ⁰ (meta.init) is a moved, non-default encoder."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(load_config(CONFIGS / "atari_leap.yaml")))
    torch.manual_seed(0)
    model = ActorCritic(6, in_channels=4, network="nature")
    meta = Leap(model, LeapConfig(p=2), include=["encoder."])
    with torch.no_grad():
        for p in meta.params:
            p.add_(torch.randn_like(p) * 0.01)           # a meta-learned initialisation, not a fresh draw
    save_checkpoint(run_dir, 1, {"step": 1, "meta": meta.state_dict()}, 2)
    return run_dir, {k: v.clone() for k, v in meta.state_dict()["init"].items() if k.startswith("encoder.")}


def test_sb3_a2c_starts_from_the_exported_encoder(atari_run, tmp_path, capsys):
    from stable_baselines3.common.envs import FakeImageEnv
    run_dir, encoder = atari_run
    out, sb3_file = tmp_path / "encoder.pt", tmp_path / "encoder_sb3.pt"
    assert main(["export", str(run_dir), "--out", str(out), "--sb3", str(sb3_file)]) == 0
    assert f"wrote {sb3_file}" in capsys.readouterr().out

    # a new game: another action count; SB3 sees 4 stacked 84×84 grey frames, channels first
    env = FakeImageEnv(action_dim=4, n_channels=4, channel_first=True)
    model = sb3.A2C("CnnPolicy", env, n_steps=5, device="cpu", seed=0)
    model.policy.load_state_dict(torch.load(sb3_file, weights_only=True), strict=False)
    sb3_state = model.policy.state_dict()
    names = {"encoder.conv.": "features_extractor.cnn.", "encoder.fc.": "features_extractor.linear."}
    for k, v in encoder.items():
        prefix = next(p for p in names if k.startswith(p))
        sb3_key = names[prefix] + k[len(prefix):]
        assert torch.equal(sb3_state[sb3_key], v), k
        for shared in ("pi_features_extractor.", "vf_features_extractor."):     # the same module in SB3
            alias = sb3_key.replace("features_extractor.", shared, 1)
            if alias in sb3_state:
                assert torch.equal(sb3_state[alias], v), alias
    assert sum(k.startswith("features_extractor.") for k in sb3_state) == len(encoder)

    # our agent on the new game from encoder.pt: the same features as SB3's extractor
    ours = ActorCritic(4, in_channels=4, network="nature")
    load_encoder(ours, out)
    for k, v in encoder.items():
        assert torch.equal(ours.state_dict()[k], v), k
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        theirs = model.policy.extract_features(obs.float(), model.policy.features_extractor)
        torch.testing.assert_close(ours.encoder(obs), theirs, atol=1e-5, rtol=1e-5)


def test_export_refusals_are_one_line(atari_run, tmp_path, capsys):
    run_dir, _ = atari_run
    assert main(["export", str(run_dir)]) == 2
    assert "needs --out FILE and/or --sb3 FILE" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "e.pt")]) == 2
    assert f"run directory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    sine = tmp_path / "sine"
    sine.mkdir()
    (sine / "config.yaml").write_text(config_to_yaml(load_config(CONFIGS / "sine_leap.yaml")))
    assert main(["export", str(sine), "--out", str(tmp_path / "e.pt")]) == 2
    assert "takes an Atari run" in capsys.readouterr().err
