"""Config validation: raw values coerced into the config dataclasses (types, finite floats, int64 integers,
bounded error messages) and the value checks the types cannot express (:func:`check`).

Used by :mod:`train.config`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import TYPE_CHECKING, Any

from metarl.base import MetaOptimizerConfig

from .errors import ConfigError, clip

if TYPE_CHECKING:
    from .config import Config

# Every float field must be finite and fit in float32 (parameters are float32 tensors), unless its dataclass
# field says otherwise: ``x: float = field(default=..., metadata=ALLOW_NON_FINITE)``.
ALLOW_NON_FINITE = {"non_finite": True}
FLOAT_MAX = 3.4028234663852886e38           # the largest float32
INT_LIMIT = 2**63                           # every integer field fits in int64 (torch, numpy)
QUOTE_LIMIT = 200                           # characters of a value quoted in an error message

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 3, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = QUOTE_LIMIT, QUOTE_LIMIT, 40


def _show(value: Any) -> str:
    """A bounded repr for error messages: an alias bomb or a huge string must not become a huge message."""
    return clip(_repr.repr(value), QUOTE_LIMIT)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, finite: bool = True) -> Any:
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
                return _coerce(value, arg, key, finite)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"config key {key!r}: unexpected value {_show(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {type(value).__name__} {_show(value)}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__} {_show(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]", finite) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", finite) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise ConfigError(f"config key {key!r} must be an integer of magnitude below 2**63, "
                                  f"got {_show(value)}")
            return value
        raise ConfigError(f"config key {key!r} must be an integer, got {_show(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:       # an integer beyond float range
                number = math.inf
        elif isinstance(value, str):    # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key {key!r} must be a number, got {_show(value)}")
        if finite and not (math.isfinite(number) and abs(number) <= FLOAT_MAX):
            raise ConfigError(f"config key {key!r} must be a finite number of magnitude at most 3.4e38, "
                              f"got {_show(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} must be a string, got {_show(value)}")
    raise ConfigError(f"config key {key!r}: unsupported type {_type_name(tp)}")


_INTERNAL = ("task_config", "method_config")   # filled from the task / method sections, never keys


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _INTERNAL}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {clip(repr(dotted), QUOTE_LIMIT)} (valid: {', '.join(names)})")
        finite = not fields[key].metadata.get("non_finite", False)
        kwargs[key] = _coerce(value, hints[key], dotted, finite)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OverflowError) as e:
        raise ConfigError(clip(f"config section {prefix or cls.__name__!r}: {e}")) from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _optimizer_configs(obj: Any, prefix: str = "") -> list[tuple[str, MetaOptimizerConfig]]:
    """Every :class:`MetaOptimizerConfig` in the config (meta.optimizer, warpgrad.warp_optimizer, ...)."""
    from .config import Config          # train.config imports this module

    found = []
    if isinstance(obj, MetaOptimizerConfig):
        return [(prefix, obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            name = f.name
            if isinstance(obj, Config) and name in _INTERNAL:
                name = obj.task if name == "task_config" else obj.method
            found += _optimizer_configs(getattr(obj, f.name), f"{prefix}.{name}" if prefix else name)
    return found


def check(cfg: Config) -> None:
    """Value checks the types cannot express."""
    positive = {"inner.steps": cfg.inner.steps, "meta.meta_batch": cfg.meta.meta_batch,
                "eval.tasks": cfg.eval.tasks, "run.keep": cfg.run.keep, "maml.steps": cfg.maml.steps,
                "eval.video_frames": cfg.eval.video_frames}
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {v}")
    non_negative = {"meta.steps": cfg.meta.steps, "eval.every": cfg.eval.every, "eval.steps": cfg.eval.steps,
                    "run.checkpoint_every": cfg.run.checkpoint_every, "inner.lr": cfg.inner.lr,
                    "inner.momentum": cfg.inner.momentum, "inner.clip_grad_norm": cfg.inner.clip_grad_norm,
                    "maml.inner_lr": cfg.maml.inner_lr,
                    "run.threads": cfg.run.threads, "seed": cfg.seed, "meta.every": cfg.meta.every,
                    "run.max_memory": cfg.run.max_memory}
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {v}")
    if cfg.seed >= 2**63:
        raise ConfigError(f"config key 'seed' must be below 2**63, got {_show(cfg.seed)}")
    for key, opt in _optimizer_configs(cfg):
        for name in ("lr", "momentum", "weight_decay", "clip_grad_norm"):
            v = getattr(opt, name)
            if v < 0:
                raise ConfigError(f"config key '{key}.{name}' must be >= 0, got {v}")
        if opt.name not in ("sgd", "adam", "rmsprop"):
            raise ConfigError(f"config key '{key}.name' must be sgd, adam or rmsprop, got {_show(opt.name)}")
        if not all(0.0 <= b < 1.0 for b in opt.betas):
            raise ConfigError(f"config key '{key}.betas' must be in [0, 1), got {list(opt.betas)}")
    if cfg.inner.optimizer not in ("sgd", "adam", "rmsprop"):
        raise ConfigError(f"config key 'inner.optimizer' must be sgd, adam or rmsprop, "
                          f"got {_show(cfg.inner.optimizer)}")
    if cfg.meta.head not in ("reset", "learned"):
        raise ConfigError(f"config key 'meta.head' must be reset or learned, got {_show(cfg.meta.head)}")
    if cfg.maml.outer_loss not in ("query_batch", "held_out"):
        raise ConfigError(f"config key 'maml.outer_loss' must be query_batch or held_out, "
                          f"got {_show(cfg.maml.outer_loss)}")
    if cfg.method == "maml" and cfg.maml.outer_loss == "held_out" and cfg.task != "omniglot":
        # the original code's outer loss needs the task's held-out batches (OmniglotTask.held_out_batches)
        raise ConfigError(f"config key 'maml.outer_loss' held_out is the original Omniglot code's: task omniglot "
                          f"only, not {cfg.task!r}")
    if cfg.method == "finetune" and cfg.meta.head == "learned" and getattr(cfg.task_config, "heads", None) == "game":
        # a learned head follows the trunk into θ⁰ (metarl/finetune.py), so it needs one shape for every game
        raise ConfigError("method finetune with meta.head: learned needs one head shape for every game: set "
                          "atari.heads: max (atari.heads: game sizes each game's head by its own action set)")
    if cfg.eval.split not in ("val", "test"):
        raise ConfigError(f"config key 'eval.split' must be val or test, got {_show(cfg.eval.split)}")
    if cfg.eval.periodic_split not in ("", "val", "test"):
        raise ConfigError(f"config key 'eval.periodic_split' must be val, test or empty (eval.split), "
                          f"got {_show(cfg.eval.periodic_split)}")
    # Task families with game lists (Atari): the lists a run will use must not be empty, or it fails only
    # after training. eval.split's own games, never the test games in their place: the results would be
    # filed under a split they are not (eval_parts/val/ holding test games).
    games = {split: getattr(cfg.task_config, f"{split}_games", None) for split in ("train", "val", "test")}
    if games["test"] is not None:
        if cfg.meta.steps > 0 and not games["train"]:
            raise ConfigError(f"config key '{cfg.task}.train_games' is empty: meta-training has no games")
        if not games.get(cfg.eval.split):
            raise ConfigError(f"config key '{cfg.task}.{cfg.eval.split}_games' is empty: the {cfg.eval.split} "
                              f"evaluation (eval.split: {cfg.eval.split}) has no games")
    from .device import check_device_name
    check_device_name(cfg.run.device)
    if getattr(getattr(cfg.task_config, "a2c", None), "cuda_graphs", False) and cfg.run.device != "cuda" and \
            not cfg.run.device.startswith("cuda:") and (cfg.run.device == "cpu" or not _cuda_available()):
        raise ConfigError(f"config key '{cfg.task}.a2c.cuda_graphs' needs a CUDA device (run.device: "
                          f"{cfg.run.device} runs on the CPU): set it false, or run.device: cuda")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"config key 'name' must be a non-empty name without '/', got {_show(cfg.name)}")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"dotted.key": value} (an empty mapping stays one entry)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()
