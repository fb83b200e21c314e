"""Config keys a run does not read, and the refusal of those the user set explicitly (``metarl train``).

A key the run never reads must not be accepted and ignored: ``metarl train`` refuses, in one line (exit 2),
an unused key given as a command-line override, or present in the config file (or a file it includes)
with a value other than its default. A config file may carry an unused key at its default value: a run's
saved ``config.yaml`` lists every key and must stay usable as a config. On ``--resume`` only the overrides
are checked. The rules live with what reads the keys — a task family's ``TaskAdapter.unused_keys`` and a
method's ``MetaLearner.unused_keys`` — and with the generic sections here; in summary:

- ``maml.*``: only ``method: maml`` reads it (Warp-MAML's options are ``warpgrad.maml_*``); ``leap.*``: only
  ``method: leap`` and ``method: warpgrad`` with ``init_objective: leap`` (Warp-Leap) — ``MetaLearner.sections``.
- ``meta.optimizer.step_fraction``: only methods whose tasks end through the base class's watch, which
  measures each task's displacement (``MetaLearner.measures_displacement``: Leap, Reptile, FOMAML).
- Atari: ``inner.optimizer``, ``inner.lr``, ``inner.momentum`` (A2C has its own optimiser: ``atari.a2c.*``;
  ``inner.steps`` is the env steps per game).
- The maze: ``inner.optimizer``, ``inner.lr``, ``inner.momentum``, ``inner.steps`` (Adam with ``maze.task_lr``
  every task step, ``meta.every`` task steps per meta-step) and ``eval.*`` (its result is its training
  curve; no held-out evaluation).
- One clip key per task (``TaskAdapter.clip_key``): Atari and the maze clip with their own key
  (``atari.a2c.max_grad_norm``, ``maze.clip_grad_norm``) and refuse ``inner.clip_grad_norm``.
- Tasks whose held-out protocol runs once at the end (Atari, the maze, continual sine): ``eval.every`` and
  ``eval.periodic_split``.
- Continual mode (``meta.every`` > 0: one never-reset learner): ``meta.meta_batch``.
- What a method's own inner loop cannot honour, declared by the method (``MetaLearner.unused_keys``): MAML and
  Lazy step plain SGD (``inner.optimizer``, ``inner.momentum``; Lazy's student also ``inner.clip_grad_norm``),
  WarpGrad replays unclipped SGD steps (``inner.clip_grad_norm``).
- Every task but Atari: ``eval.video``, ``eval.video_frames``, ``eval.note``, ``eval.random_init`` (Atari's
  held-out protocol only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from metarl.base import SHARED_SECTIONS

from .config_checks import flatten
from .errors import ConfigError


def adapter_class(task: str) -> Any:
    from .tasks import TASKS
    import importlib
    module, _, adapter_cls = TASKS[task]
    return getattr(importlib.import_module(module), adapter_cls)


def unused_keys(cfg: Any) -> dict[str, str]:
    """Dotted keys (or ``section`` for a whole section) that ``cfg``'s run does not read, with the reason."""
    from metarl.registry import method_class
    method = method_class(cfg.method)
    out = {k: f"{why} (this run's method is {cfg.method})" for k, why in method.unused_keys(cfg).items()}
    out.update(adapter_class(cfg.task).unused_keys(cfg))     # the task family's own rules (TaskAdapter.unused_keys)
    if cfg.meta.every > 0:
        out["meta.meta_batch"] = "continual mode (meta.every > 0) trains one never-reset learner: no meta-batch"
    return out


def _match(key: str, unused: dict[str, str]) -> str | None:
    for prefix in unused:
        if key == prefix or key.startswith(prefix + "."):
            return prefix
    return None


def _default(key: str) -> Any:
    from .config import Config
    node: Any = Config()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            return _NO_DEFAULT
        node = getattr(node, part)
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


_NO_DEFAULT = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def check_used_keys(cfg: Any, file_data: dict[str, Any] | None, overrides: Iterable[str]) -> None:
    """Refuse (:class:`ConfigError`, one line) an override of a key ``cfg``'s run does not read, or such a
    key in the config file with a value other than its default."""
    from .config_yaml import parse_override
    unused = unused_keys(cfg)
    if not unused:
        return
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        prefix = _match(key, unused)
        if prefix is not None:
            raise ConfigError(f"config key {key!r} is not used by this run: {unused[prefix]}")
    for key, value in flatten({k: v for k, v in (file_data or {}).items()
                                if k in ("inner", "meta", "eval", *SHARED_SECTIONS)}).items():
        prefix = _match(key, unused)
        if prefix is None or value == {}:
            continue
        default = _default(key)
        if default is _NO_DEFAULT or not _same(value, default):
            raise ConfigError(f"config key {key!r} is set in the config file but not used by this run: "
                              f"{unused[prefix]}; remove it")
