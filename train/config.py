"""Typed run configuration: YAML files in configs/, dotted ``key=value`` overrides, strict validation.

Every section is a dataclass; unknown keys, wrong types and bad values raise :class:`ConfigError` with a
one-line message naming the key. The resolved config (defaults filled in) is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metarl.base import MetaOptimizerConfig
from metarl.leap import LeapConfig

from .errors import ConfigError

METHODS = ("leap", "reptile", "fomaml", "maml", "finetune", "no_pretraining", "warpgrad", "lazy")


@dataclass
class InnerConfig:
    optimizer: str = "sgd"          # the task learner's optimiser: sgd | adam | rmsprop
    lr: float = 0.01
    momentum: float = 0.0
    steps: int = 10                 # inner steps per task (env steps for RL tasks)
    clip_grad_norm: float = 0.0     # 0 disables clipping


@dataclass
class MetaConfig:
    meta_batch: int = 5             # tasks per meta-step
    steps: int = 100                # meta-steps
    optimizer: MetaOptimizerConfig = field(default_factory=MetaOptimizerConfig)
    include: list[str] = field(default_factory=list)   # meta-learn only these parameter prefixes
    exclude: list[str] = field(default_factory=list)
    head: str = "reset"             # reset: every method re-draws the output head per task; learned: it is in θ⁰
    every: int = 0                  # continual mode: a meta-step every N task updates while tasks rotate


@dataclass
class MAMLConfig:
    inner_lr: float = 0.01
    steps: int = 5
    first_order: bool = False


@dataclass
class EvalConfig:
    every: int = 20                 # meta-steps between held-out evaluations (0: only at the end)
    tasks: int = 5
    steps: int = 0                  # adaptation steps at evaluation (0: inner.steps)
    split: str = "test"             # the final evaluation's split (also `metarl eval`'s default)
    periodic_split: str = ""        # the evaluations every `every` meta-steps ("": split); e.g. val while training


@dataclass
class RunConfig:
    dir: str = "runs"
    checkpoint_every: int = 10      # meta-steps between checkpoints
    keep: int = 2                   # checkpoints kept (the newest and its predecessor)
    progress: bool = True
    threads: int = 0                # torch threads (0: leave torch's default)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    task: str = "sine"
    method: str = "leap"
    inner: InnerConfig = field(default_factory=InnerConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    leap: LeapConfig = field(default_factory=LeapConfig)
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The task family's own section (e.g. ``sine:``), validated against that adapter's config class.
    task_config: Any = None
    # Method-specific sections that live with their method (e.g. ``warpgrad:``), validated the same way.
    method_config: Any = None


# ------------------------------------------------------------------------------------------------
# validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"config key {key!r}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):      # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    raise ConfigError(f"config key {key!r}: unsupported type {_type_name(tp)}")


_INTERNAL = ("task_config", "method_config")   # filled from the task / method sections, never keys


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config section {prefix or cls.__name__!r}: {e}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise ConfigError(f"bad override {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"bad override {text!r}: value is not valid YAML") from None
    return parts, value


def _apply(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)!r}: {'.'.join(parts[:i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    """Validate a raw config mapping (plus overrides) into a :class:`Config`."""
    from .tasks import task_config_class
    from metarl import method_config_class

    data = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        _apply(data, parts, value)
    task = data.get("task", Config.task)
    method = data.get("method", Config.method)
    if not isinstance(task, str):
        raise ConfigError(f"config key 'task' must be a string, got {task!r}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (valid: {', '.join(METHODS)})")
    task_cls = task_config_class(task)                   # raises ConfigError for an unknown task
    method_cls = method_config_class(method)
    task_section = data.pop(task, None) or {}
    method_section = data.pop(method, None) if method_cls is not None else None
    cfg = from_dict(Config, data)
    if not isinstance(task_section, dict):
        raise ConfigError(f"config key {task!r} must be a mapping")
    cfg.task_config = from_dict(task_cls, task_section, task)
    if method_cls is not None:
        cfg.method_config = from_dict(method_cls, method_section or {}, method)
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Value checks the types cannot express."""
    positive = {"inner.steps": cfg.inner.steps, "meta.meta_batch": cfg.meta.meta_batch,
                "eval.tasks": cfg.eval.tasks, "run.keep": cfg.run.keep}
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {v}")
    non_negative = {"meta.steps": cfg.meta.steps, "eval.every": cfg.eval.every, "eval.steps": cfg.eval.steps,
                    "run.checkpoint_every": cfg.run.checkpoint_every, "inner.lr": cfg.inner.lr,
                    "inner.momentum": cfg.inner.momentum, "inner.clip_grad_norm": cfg.inner.clip_grad_norm,
                    "meta.optimizer.lr": cfg.meta.optimizer.lr, "maml.inner_lr": cfg.maml.inner_lr,
                    "run.threads": cfg.run.threads, "seed": cfg.seed, "meta.every": cfg.meta.every}
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {v}")
    if cfg.inner.optimizer not in ("sgd", "adam", "rmsprop"):
        raise ConfigError(f"config key 'inner.optimizer' must be sgd, adam or rmsprop, got {cfg.inner.optimizer!r}")
    if cfg.meta.optimizer.name not in ("sgd", "adam", "rmsprop"):
        raise ConfigError(f"config key 'meta.optimizer.name' must be sgd, adam or rmsprop, "
                          f"got {cfg.meta.optimizer.name!r}")
    if cfg.meta.head not in ("reset", "learned"):
        raise ConfigError(f"config key 'meta.head' must be reset or learned, got {cfg.meta.head!r}")
    if cfg.eval.split not in ("val", "test"):
        raise ConfigError(f"config key 'eval.split' must be val or test, got {cfg.eval.split!r}")
    if cfg.eval.periodic_split not in ("", "val", "test"):
        raise ConfigError(f"config key 'eval.periodic_split' must be val, test or empty (eval.split), "
                          f"got {cfg.eval.periodic_split!r}")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"config key 'name' must be a non-empty name without '/', got {cfg.name!r}")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return build_config(read_yaml(path), list(overrides))


def config_to_yaml(cfg: Config) -> str:
    data = to_dict(cfg)
    data[cfg.task] = data.pop("task_config")
    method_section = data.pop("method_config")
    if method_section is not None:
        data[cfg.method] = method_section
    return yaml.safe_dump(data, sort_keys=False)
