"""The held-out protocol's finished runs on disk, so that an interrupted evaluation continues where it stopped.

Each held-out run — one (game, initialisation, seed) of train/tasks/atari_eval.py — is a *part*. When it ends,
what the evaluation's outputs need from it is written atomically to
``run_dir/eval_parts/<split>/<game>__<init>__<seed>.json`` (with ``eval.video``, seed 0's GIF for TensorBoard
beside it as ``….gif``; its MP4 is in ``videos/``). An evaluation of the same run directory — ``metarl train
--resume`` of a run stopped in its evaluation, or ``metarl eval RUN_DIR`` again — reads the parts it finds
instead of running them again. Every part is seeded on its own (config seed and seed index), so its numbers do
not depend on which parts ran before it in the same process: the result equals an uninterrupted evaluation's.

A part file (JSON):

- ``format``: 1; ``game``, ``init``, ``seed``: which run it is;
- ``settings``: what decides the part's numbers — the config ``seed``, ``method``, ``env_steps`` per run, the
  curve's grid (``points``) and moving average (``window``), the ``device`` type, the ``atari`` section without
  the game lists, the plot band and the AUC's start (``auc_start`` reads the curve, it does not make it), its
  ``backend`` resolved (``max_actions`` added where ``atari.heads: max`` sizes the head by all games), and for
  ``meta_init`` the initialisation: ``init.meta_step`` (the checkpoint's meta-step) and ``init.sha256``
  (16 hex digits of θ⁰'s tensors, heads excluded: they are drawn per run);
- ``fingerprint``: the first 16 hex digits of the sha256 of ``settings`` as sorted-key JSON;
- ``curve``: the running mean of the last ``window`` finished games at each grid point (null before the first);
- ``final_score`` (null: no game finished) over ``final_games`` games; ``games`` and ``env_steps`` of the run;
- ``video`` (seed 0 with ``eval.video``): the result's entry (``file``, ``frames``, ``score``, ``game_over``),
  the frame cap ``max_frames`` and the ``gif`` file name;
- ``returns``: the lowest and highest score of the games behind ``curve`` and ``final_score`` (null: none);
  ``optimizer``: ``[env_step, {statistic: value}]`` of RMSprop's warm-up (TensorBoard ``optim/<game>/*``).
  Both optional: parts written before them stay valid.

Reuse: a part is read when its file parses, names the same run, carries the current fingerprint and its contents
check out (:func:`check_contents`: a ``curve`` of one value per grid point, values and ``final_score`` finite
numbers or null, counts non-negative integers, the scores within ``returns`` — without it, within ±10⁷ —, a
well-formed ``optimizer`` and ``video``); seed 0 of an
evaluation with ``eval.video`` also needs a video recorded under the same frame cap, its MP4 and its GIF. Any
other part is *ignored*: run again and overwritten, with one line saying which parts and which settings differ —
never refused, since running a part again costs only its time and gives the numbers the current settings ask
for. Delete ``eval_parts/`` to force a fresh evaluation. ``eval.tasks`` and the list of games are not in the
fingerprint: no part depends on them, so an evaluation with more seeds or games reuses the parts it has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import dumps_json, read_json, write_bytes_atomic, write_text_atomic
from ..video import is_mp4

FORMAT = 1
FOLDER = "eval_parts"
NOT_IN_SETTINGS = ("train_games", "val_games", "test_games", "eval_band", "test_on_train_games", "auc_start")


def init_digest(meta: Any, skip: tuple[str, ...]) -> str:
    """16 hex digits of the sha256 of θ⁰ (names, dtypes, shapes and bytes), without the ``skip`` prefixes."""
    h = hashlib.sha256()
    for name in sorted(meta.init_state):
        if any(name.startswith(p) for p in skip):
            continue
        t = meta.init_state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {t.dtype} {tuple(meta.init_state[name].shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def part_settings(cfg: Any, adapter: Any, meta: Any, init: str, env_steps: int, points: int,
                  window: int) -> dict[str, Any]:
    """What decides the numbers of a part of ``init`` (module docstring)."""
    from envs.atari import resolve_backend

    atari = {k: v for k, v in dataclasses.asdict(adapter.config).items() if k not in NOT_IN_SETTINGS}
    atari["backend"] = resolve_backend(atari["backend"])       # auto: EnvPool or gymnasium, as this machine has
    # Batched agents give the same runs up to float summation order, not bit for bit, and so do CUDA graphs;
    # async envs give other samples: parts carry these switches when on, and parts without them keep the
    # settings (and fingerprints) they had before the switches existed.
    for switch in ("batched", "async_batch", "cuda_graphs"):
        if not atari["a2c"].get(switch):
            atari["a2c"].pop(switch, None)
    if atari.get("heads") == "max":
        atari["max_actions"] = adapter.max_actions
    out = {"seed": cfg.seed, "method": cfg.method, "env_steps": env_steps, "points": points, "window": window,
           "device": torch.device(getattr(adapter, "device", "cpu")).type, "atari": atari}
    if init == "meta_init":
        out["init"] = {"meta_step": meta.meta_steps, "sha256": init_digest(meta, tuple(adapter.head))}
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def curve(part: dict[str, Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in part["curve"]], dtype=np.float64)


def final_score(part: dict[str, Any]) -> float:
    return float("nan") if part["final_score"] is None else float(part["final_score"])


class Parts:
    """The parts of one split's evaluation in ``run_dir/eval_parts/<split>``."""

    def __init__(self, run_dir: Path, split: str) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / FOLDER / split
        self.ignored: dict[str, int] = {}       # why a part on disk is run again: how many

    def path(self, game: str, init: str, seed: int, suffix: str = ".json") -> Path:
        return self.folder / f"{game}__{init}__{seed}{suffix}"

    def load(self, game: str, init: str, seed: int, settings: dict[str, Any],
             video_frames: int | None) -> dict[str, Any] | None:
        """The finished part, or None (none on disk, or one that must run again: counted in ``ignored``).
        ``video_frames``: the frame cap of the video this part must have (None: no video asked for)."""
        path = self.path(game, init, seed)
        if not path.exists():
            return None
        part = read_json(path)
        if not isinstance(part, dict) or part.get("format") != FORMAT or \
                [part.get("game"), part.get("init"), part.get("seed")] != [game, init, seed]:
            return self._ignore("unreadable")
        if part.get("fingerprint") != fingerprint(settings):
            return self._ignore(f"other settings: {_diff(part.get('settings'), settings)}")
        bad = check_contents(part, settings["points"])
        if bad:
            return self._ignore(f"bad contents: {bad}")
        if video_frames is not None:
            video = part.get("video") or {}
            mp4, gif = (video.get("entry") or {}).get("file"), video.get("gif")
            if video.get("max_frames") != video_frames or not mp4 or not gif or not is_mp4(self.run_dir / mp4) \
                    or not (self.folder / gif).is_file():
                return self._ignore(f"no video of at most {video_frames} frames")
        return part

    def save(self, part: dict[str, Any], gif: bytes | None = None) -> dict[str, Any]:
        """Write ``part`` (its GIF first: the JSON, written last, marks the part finished); return it as a
        later evaluation reads it back, so fresh and reused parts enter the result through the same numbers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if gif is not None:
            part["video"]["gif"] = self.path(part["game"], part["init"], part["seed"], ".gif").name
            write_bytes_atomic(self.folder / part["video"]["gif"], gif)
        text = dumps_json(part, indent=1, count_key=None)
        write_text_atomic(self.path(part["game"], part["init"], part["seed"]), text)
        return json.loads(text)

    def note(self) -> str:
        """One line on the parts on disk that run again ('' when none)."""
        if not self.ignored:
            return ""
        n = sum(self.ignored.values())
        why = "; ".join(f"{k} ({v})" for k, v in self.ignored.items())
        return f"{self.folder}: {n} finished held-out run{'s' if n != 1 else ''} not reused, run again — {why}"

    def _ignore(self, why: str) -> None:
        self.ignored[why] = self.ignored.get(why, 0) + 1
        return None


# Scores beyond this are taken for corruption in parts that do not record their games' range (``returns``):
# above the published records of nearly every Atari game, far above what a held-out run reaches.
PLAUSIBLE_SCORE = 1e7


def _number(v: Any) -> bool:
    """A finite JSON number (not a bool, which Python counts as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_contents(part: dict[str, Any], points: int) -> str:
    """What is wrong with a part's numbers ('' when nothing): the fingerprint says a part was made under
    the current settings, not that its file still holds what was written (an edit, a bad disk, a bug)."""
    c = part.get("curve")
    if not isinstance(c, list) or len(c) != points:
        return (f"curve has {len(c)} points, not {points}" if isinstance(c, list)
                else f"curve is {type(c).__name__}, not a list of {points} points")
    if not all(v is None or _number(v) for v in c):
        return "curve holds a value that is not a finite number or null"
    final = part.get("final_score")
    if not (final is None or _number(final)):
        return f"final_score {str(final)[:20]} is not a finite number or null"
    for key in ("final_games", "games", "env_steps"):
        if not _count(part.get(key)):
            return f"{key} {str(part.get(key))[:20]} is not a count"
    if (final is None) != (part["final_games"] == 0):
        return f"final_score {final} over {part['final_games']} games"
    scores = [v for v in c if v is not None] + ([final] if final is not None else [])
    lo, hi = -PLAUSIBLE_SCORE, PLAUSIBLE_SCORE
    if "returns" in part:
        r = part["returns"]
        if r is None:
            lo, hi = np.inf, -np.inf                     # no game: no score either
        elif isinstance(r, list) and len(r) == 2 and all(map(_number, r)) and r[0] <= r[1]:
            lo, hi = r
        else:
            return "returns is not [lowest, highest]"
    slack = 1e-9 * max(1.0, abs(lo) if np.isfinite(lo) else 1.0, abs(hi) if np.isfinite(hi) else 1.0)
    outside = [v for v in scores if not lo - slack <= v <= hi + slack]
    if outside:
        return f"score {outside[0]:g} outside its games' range [{lo:g}, {hi:g}]"
    opt = part.get("optimizer")
    if opt is not None and not (isinstance(opt, list) and all(
            isinstance(e, list) and len(e) == 2 and _count(e[0]) and isinstance(e[1], dict)
            and all(isinstance(k, str) and (v is None or _number(v)) for k, v in e[1].items()) for e in opt)):
        return "optimizer is not a list of [env_step, {name: value}]"
    video = part.get("video")
    if video is not None:
        entry = video.get("entry") if isinstance(video, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and _count(entry.get("frames"))
                and (entry.get("score") is None or _number(entry.get("score")))
                and isinstance(entry.get("game_over"), bool) and _count(video.get("max_frames"))
                and isinstance(video.get("gif", ""), str)):
            return "video is not a recorded game's entry"
    return ""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _diff(old: Any, new: dict[str, Any]) -> str:
    """The settings that differ, as 'key old → new' (at most four)."""
    a, b = _flat(old if isinstance(old, dict) else {}), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not keys:
        return "the fingerprint"
    text = ", ".join(f"{k} {a.get(k)} → {b.get(k)}" for k in keys[:4])
    return text + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
