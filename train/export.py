"""``metarl export RUN_DIR``: the meta-learned Atari encoder of a run, for our agent and for stable-baselines3.

The run's last checkpoint holds the initialisation θ⁰ (``meta.init``); on Atari Leap meta-learns the shared
encoder (``encoder.*``, agents/nets.py) and the policy and value heads are per game, so the encoder is what
carries over to a new game. Two files:

- ``--out encoder.pt``: ``encoder.*`` tensors in our names. ``ActorCritic(num_actions).load_state_dict(
  torch.load("encoder.pt"), strict=False)`` (or :func:`load_encoder`) starts our agent from it; the heads stay
  freshly initialised.
- ``--sb3 encoder_sb3.pt``: the same tensors in the names of SB3's ``NatureCNN`` (``features_extractor.cnn.*``,
  ``features_extractor.linear.*``). ``A2C("CnnPolicy", env).policy.load_state_dict(torch.load(...),
  strict=False)`` starts an SB3 agent from it (SB3 shares one extractor between actor and critic: its
  ``pi_``/``vf_features_extractor`` entries are the same tensors). Only ``atari.network: nature`` on
  ``atari.observation: gray4`` (4 stacked grey 84×84 frames, channels first, uint8 scaled by 1/255 inside the
  network) is SB3's ``CnnPolicy``; SB3 then needs the same frames: ``AtariWrapper`` (84×84 grey) and
  ``VecFrameStack(n_stack=4)``, the oldest frame first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UserError

# our NatureEncoder → SB3's NatureCNN (same layers, same order: conv 8×8/4, conv 4×4/2, conv 3×3/1, flatten, fc)
SB3_NAMES = {"encoder.conv.": "features_extractor.cnn.", "encoder.fc.": "features_extractor.linear."}


def run_encoder(run_dir: str | Path) -> tuple[dict[str, Tensor], Any]:
    """The ``encoder.*`` tensors of the run's initialisation (its newest usable checkpoint) and its config."""
    from .checkpoint import load_latest
    from .config import load_config
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.task != "atari":
        raise UserError(f"metarl export takes an Atari run; {run_dir} is a {cfg.task} run")
    loaded = load_latest(run_dir)
    if loaded is None:
        raise UserError(f"{run_dir} has no checkpoint to export")
    init = loaded[0].get("meta", {}).get("init", {})
    encoder = {k: v.detach().clone().cpu() for k, v in init.items() if k.startswith("encoder.")}
    if not encoder:
        raise UserError(f"{loaded[1]} holds no encoder.* initialisation")
    return encoder, cfg


def to_sb3(encoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our ``encoder.*`` names → SB3 ``NatureCNN`` names (``features_extractor.cnn.*`` / ``.linear.*``)."""
    out = {}
    for k, v in encoder.items():
        prefix = next((p for p in SB3_NAMES if k.startswith(p)), None)
        if prefix is None:
            raise UserError(f"encoder tensor {k!r} has no SB3 counterpart")
        out[SB3_NAMES[prefix] + k[len(prefix):]] = v
    return out


def load_encoder(model: nn.Module, path: str | Path) -> None:
    """Put an exported encoder (either naming) into our ``ActorCritic`` or an SB3 policy; everything else
    (the heads) stays as it is. A tensor the model does not have, or of another shape, is refused."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise UserError(f"{path}: {bad[0]!r} does not fit this model (network or frames differ?)")
    model.load_state_dict(state, strict=False)


def export(run_dir: str | Path, out: str | Path | None = None, sb3: str | Path | None = None) -> list[Path]:
    """Write the run's encoder to ``out`` (our names) and/or ``sb3`` (SB3's names); the paths written."""
    if out is None and sb3 is None:
        raise UserError("metarl export needs --out FILE and/or --sb3 FILE")
    encoder, cfg = run_encoder(run_dir)
    written = []
    if out is not None:
        torch.save(encoder, out)
        written.append(Path(out))
    if sb3 is not None:
        tc = cfg.task_config
        if tc.network != "nature" or tc.observation != "gray4":
            raise UserError(f"SB3's CnnPolicy is the Nature CNN on 4 grey frames; this run has atari.network: "
                            f"{tc.network}, atari.observation: {tc.observation} (use --out for our agent)")
        torch.save(to_sb3(encoder), sb3)
        written.append(Path(sb3))
    return written
