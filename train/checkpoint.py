"""Checkpoints and run files: tensors and plain containers only, written atomically (temp file, fsync,
rename), loaded with weights_only=True.

A run keeps its newest ``keep`` checkpoints, ordered by their step number (never by name). If the newest
is truncated, corrupt or of the wrong structure, loading reports it in one line and falls back to the one
before. A save that fails (disk full, interrupted) removes its temp file and keeps the previous checkpoint.

Text files of a run (config.yaml, eval.json, result.json) go through :func:`write_text_atomic`; JSON
through :func:`dumps_json`, which writes ``null`` for NaN and ±inf (bare ``NaN`` is not JSON).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from .errors import RunDirError, clip

PATTERN = "checkpoint-*.pt"
_NAME = re.compile(r"checkpoint-(\d+)\.pt")
TMP_SUFFIX = ".tmp"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:07d}.pt"


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint file name (``checkpoint-0000012.pt`` → 12), None for other names."""
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first by step number (from step 10⁷ names are longer than 7 digits)."""
    found = [(checkpoint_step(p), p) for p in Path(run_dir).glob(PATTERN)]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


# ------------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[Any], None], what: str) -> Path:
    """Write ``path`` through ``write(file)`` into ``path.tmp``, fsync, rename over ``path``.

    Whatever stops it (disk full, KeyboardInterrupt, a failing writer) removes the temp file and leaves
    the old ``path`` as it was; OS errors become one line (:class:`RunDirError`), interrupts propagate."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            reason = e.strerror or type(e).__name__
            raise RunDirError(f"cannot write {what} {path}: {reason} (the previous one is kept)") from None
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically: a reader (or a run killed mid-write) sees the old file or
    the new one, never a truncated one. Raises :class:`RunDirError` (one line) when it cannot be written."""
    data = text.encode("utf-8")
    return _write_atomic(Path(path), lambda f: f.write(data), "file")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`write_text_atomic` for bytes (the held-out protocol's stored GIFs)."""
    return _write_atomic(Path(path), lambda f: f.write(data), "file")


def json_safe(obj: Any) -> tuple[Any, int]:
    """``obj`` with every non-finite float (NaN, ±inf, also in tensors' ``.item()`` floats) replaced by
    None, and the number replaced. Tuples become lists, mapping keys strings, as JSON has them."""
    count = 0

    def walk(x: Any) -> Any:
        nonlocal count
        if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
            return x
        if isinstance(x, float):
            if math.isfinite(x):
                return x
            count += 1
            return None
        if isinstance(x, Mapping):
            return {str(k) if not isinstance(k, str) else k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if hasattr(x, "item") and callable(x.item):        # numpy / torch scalars
            try:
                return walk(x.item())
            except (TypeError, ValueError, RuntimeError):
                pass
        if hasattr(x, "tolist") and callable(x.tolist):    # arrays and tensors
            return walk(x.tolist())
        return x

    return walk(obj), count


def dumps_json(obj: Any, indent: int | None = None, count_key: str | None = "non_finite") -> str:
    """Strict JSON for ``obj``: NaN and ±inf become ``null``. When some were replaced and ``obj`` is a
    mapping, their number is recorded under ``count_key`` (unless it is None or already a key)."""
    safe, count = json_safe(obj)
    if count and count_key and isinstance(safe, dict) and count_key not in safe:
        safe[count_key] = count
    return json.dumps(safe, indent=indent, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """:func:`dumps_json` written with :func:`write_text_atomic` (eval.json, result.json)."""
    return write_text_atomic(path, dumps_json(obj, indent=indent))


def read_json(path: str | os.PathLike) -> Any | None:
    """A JSON file's content; None when it is missing, empty, unreadable or not JSON (e.g. an eval.json
    truncated by a run killed before writes were atomic): the caller then recomputes it."""
    try:
        text = Path(path).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` for ``step`` atomically and prune older checkpoints of the run.

    Pruning keeps this checkpoint and the ``keep - 1`` newest ones of lower step; it never deletes the
    checkpoint just written, and never one of a higher step (those were unreadable when the run resumed
    from an earlier one — :func:`load_latest` with ``quarantine=True`` moves them aside — and deleting them
    on a guess could delete data). A failed write raises :class:`RunDirError` (one line) and leaves no
    temp file; the previous checkpoint is kept."""
    path = checkpoint_path(run_dir, step)
    _write_atomic(path, lambda f: torch.save(state, f), "checkpoint")
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
    for old in older[:max(len(older) - (keep - 1), 0)]:
        try:
            old.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete ``*.tmp`` files a killed writer left in ``run_dir`` (a kill -9 cannot clean up after itself)."""
    removed = []
    for tmp in Path(run_dir).glob(f"*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


Validate = Callable[[dict[str, Any]], Any]


def _get(state: Any, dotted: str) -> Any:
    node = state
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no {dotted!r}")
        node = node[part]
    return node


def require_keys(*paths: str) -> Validate:
    """A ``validate`` for :func:`load_latest`: the state must hold every dotted key path (e.g. ``"meta.init"``)."""
    def validate(state: dict[str, Any]) -> None:
        for path in paths:
            _get(state, path)
    return validate


def matches_reference(reference: Mapping[str, Any], tensors: Iterable[str] = ("meta.init",)) -> Validate:
    """A ``validate`` for :func:`load_latest` from a freshly built run's state (e.g.
    ``{"step": 0, "meta": meta.state_dict(), "adapter": adapter.state_dict()}``): the checkpoint must hold
    every key of the reference's first two levels, and under each dotted path in ``tensors`` the same
    tensor names with the same shapes and dtypes (a checkpoint of another model fails here, not later)."""
    paths = []
    for k, v in reference.items():
        paths.append(k)
        if isinstance(v, Mapping):
            paths += [f"{k}.{k2}" for k2 in v]
    tensor_paths = list(tensors)

    def validate(state: dict[str, Any]) -> None:
        for path in paths:
            _get(state, path)
        for path in tensor_paths:
            want, got = _get(reference, path), _get(state, path)
            if not isinstance(got, Mapping) or set(got) != set(want):
                raise ValueError(f"{path} holds other entries than this run's model")
            for name, t in want.items():
                g = got[name]
                if not isinstance(g, torch.Tensor) or g.shape != t.shape or g.dtype != t.dtype:
                    raise ValueError(f"{path}.{name} has another shape or type than this run's model")
    return validate


def _check_structure(state: Any) -> None:
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a metarl checkpoint")
    step = state["step"]
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError("not a metarl checkpoint (bad step)")


def load_latest(run_dir: Path, log=None, validate: Validate | None = None,
                quarantine: bool = False) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint, or None if the run has none.

    A checkpoint is usable when it loads, is a dict with an integer ``step`` and passes ``validate(state)``
    (when given: it rejects a state by raising or returning False). Each unusable one is reported in one
    line and the one before is tried. With ``quarantine`` (a resuming trainer), unusable checkpoints newer
    than the one loaded are renamed ``*.pt.corrupt``: kept for inspection, never loaded or pruned again."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    skipped: list[Path] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            _check_structure(state)
            if validate is not None and validate(state) is False:
                raise ValueError("rejected by validation")
        except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
            detail = clip(str(e), 120) if isinstance(e, (KeyError, ValueError)) else ""
            log(f"warning: checkpoint {path} is unreadable ({type(e).__name__}{': ' + detail if detail else ''}); "
                f"trying the previous one")
            skipped.append(path)
            continue
        if quarantine:
            _quarantine(skipped, log)
        return state, path
    if quarantine:
        _quarantine(skipped, log)
    return None


def _quarantine(paths: list[Path], log) -> None:
    for path in paths:
        target = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, target)
            log(f"warning: moved the unusable checkpoint aside to {target}")
        except OSError:
            pass
