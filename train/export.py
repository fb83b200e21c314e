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

Every check comes before anything is written, and the files are written atomically, both or neither. Refused in
one line: a destination inside a run directory (the exported one or another: a file named like a checkpoint
there would be resumed from), a folder, a missing folder, an existing file without ``--force``, ``--out`` and
``--sb3`` naming one file; a write that fails (disk full, no permission) leaves every destination as it was.
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
    from .rundir import check_run_dir
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
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


def _target(path: str | Path, flag: str, run_dir: Path, force: bool) -> Path:
    """``path`` checked as an export's destination (UserError, one line, before anything is written): not in a
    run directory (the exported one, or any folder with a run's config.yaml or lock: a file written there would
    be taken for the run's own — a checkpoint named like one is resumed from), not a folder, in an existing
    folder, and not an existing file unless ``force``."""
    from .rundir import LOCK_NAME
    target = Path(path).expanduser()
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError) as e:       # a symbolic link loop
        raise UserError(f"{flag} {path}: not usable ({e})") from None
    run = run_dir.resolve()
    if resolved == run or run in resolved.parents:
        raise UserError(f"{flag} {path} is inside the run directory {run_dir}: write the export elsewhere "
                        f"(the run's own files are its checkpoints, config and results)")
    if (resolved.parent / "config.yaml").is_file() or (resolved.parent / LOCK_NAME).exists():
        raise UserError(f"{flag} {path} is inside another run directory ({resolved.parent}): write the export "
                        f"elsewhere")
    if resolved.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name")
    if not resolved.parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {target.parent} does not exist")
    if resolved.exists() and not force:
        raise UserError(f"{flag} {path} exists: use --force to replace it")
    return resolved


def _write_all(files: list[tuple[Path, bytes]]) -> None:
    """Write every file, or none: each goes to a temp file beside it (fsync) and all are renamed at the end.
    A failure (disk full, no permission) removes the temp files, leaves every destination as it was and is
    one line (UserError)."""
    import os
    import tempfile
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((Path(tmp), path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException as e:
        for tmp, _ in temps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(e, OSError):
            where = e.filename or (temps[-1][1] if temps else files[0][0])
            raise UserError(f"cannot write {where}: {e.strerror or type(e).__name__} (nothing was written)") from None
        raise


def export(run_dir: str | Path, out: str | Path | None = None, sb3: str | Path | None = None,
           force: bool = False) -> list[Path]:
    """Write the run's encoder to ``out`` (our names) and/or ``sb3`` (SB3's names); the paths written. Every
    check comes before the first byte is written, and both files are written or neither (:func:`_write_all`);
    ``force`` replaces existing files (never a run directory's)."""
    import io
    if out is None and sb3 is None:
        raise UserError("metarl export needs --out FILE and/or --sb3 FILE")
    run_dir = Path(run_dir)
    encoder, cfg = run_encoder(run_dir)
    if sb3 is not None:
        tc = cfg.task_config
        if tc.network != "nature" or tc.observation != "gray4":
            raise UserError(f"SB3's CnnPolicy is the Nature CNN on 4 grey frames; this run has atari.network: "
                            f"{tc.network}, atari.observation: {tc.observation} (use --out for our agent)")
    targets = []
    if out is not None:
        targets.append((_target(out, "--out", run_dir, force), encoder, Path(out)))
    if sb3 is not None:
        targets.append((_target(sb3, "--sb3", run_dir, force), to_sb3(encoder), Path(sb3)))
    if len(targets) == 2 and targets[0][0] == targets[1][0]:
        raise UserError(f"--out and --sb3 name the same file ({out}): give two files")
    files = []
    for path, tensors, _ in targets:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        files.append((path, buffer.getvalue()))
    _write_all(files)
    return [shown for _, _, shown in targets]
