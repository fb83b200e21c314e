"""Task-adapter registry: task name → (module, config class, adapter class), imported lazily so that a
sine run never imports EnvPool."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

TASKS: dict[str, tuple[str, str, str]] = {
    "sine": ("train.tasks.sine", "SineConfig", "SineAdapter"),
    "omniglot": ("train.tasks.omniglot", "OmniglotConfig", "OmniglotAdapter"),
    "tiered": ("train.tasks.tiered", "TieredConfig", "TieredAdapter"),
    "continual_sine": ("train.tasks.continual_sine", "ContinualSineConfig", "ContinualSineAdapter"),
    "atari": ("train.tasks.atari", "AtariTaskConfig", "AtariAdapter"),
    "maze": ("train.tasks.maze", "MazeTaskConfig", "MazeAdapter"),
}


def _entry(name: str) -> tuple[Any, str, str]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (valid: {', '.join(sorted(TASKS))})")
    module, cfg_cls, adapter_cls = TASKS[name]
    return importlib.import_module(module), cfg_cls, adapter_cls


def task_config_class(name: str) -> type:
    module, cfg_cls, _ = _entry(name)
    return getattr(module, cfg_cls)


def adapter_class(name: str) -> type:
    module, _, adapter_cls = _entry(name)
    return getattr(module, adapter_cls)


def build_adapter(name: str, config: Any, seed: int) -> Any:
    return adapter_class(name).build(config, seed=seed)
