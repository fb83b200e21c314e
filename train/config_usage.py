"""Config keys a run does not read, and the refusal of those the user set explicitly (``metarl train``).

A key the run never reads must not be accepted and ignored: ``metarl train`` refuses, in one line (exit 2),
an unused key given as a command-line override, or present in the config file (or a file it includes)
with a value other than its default. A config file may carry an unused key at its default value: a run's
saved ``config.yaml`` lists every key and must stay usable as a config. On ``--resume`` only the overrides
are checked.

The rules live with what reads the keys, each with its reason: the task family's
``TaskAdapter.unused_keys`` (its own clip key, its own optimiser, no periodic or no held-out evaluation, ...)
and the method's ``MetaLearner.unused_keys`` (the shared method sections it does not read, what its own inner
loop cannot honour, the sized step without measured displacements). The one rule here is the trainer's own:
continual mode (``meta.every`` > 0: one never-reset learner) has no ``meta.meta_batch``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from metarl.base import SHARED_SECTIONS

from .config_checks import flatten
from .errors import ConfigError
from .tasks import adapter_class


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
