"""Typed run configuration: YAML files in configs/, dotted ``key=value`` overrides, strict validation.

Every section is a dataclass; unknown keys, wrong types and bad values raise :class:`ConfigError` with a
one-line message naming the key. The resolved config (defaults filled in) is saved in the run directory.

A config file may start from others: ``include: base.yaml`` (or a list; paths relative to the including
file) reads them first and deep-merges this file's keys over them (mappings merge, anything else is
replaced); includes may nest, a cycle is refused. Floats must be finite (and fit in float32), integers fit
in int64; duplicate YAML keys, empty files and alias bombs are refused, and error messages quote at most a
few hundred characters of a value.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metarl.base import MetaOptimizerConfig
from metarl.leap import LeapConfig
from metarl.registry import METHODS

from .errors import ConfigError, clip


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
    device: str = "auto"            # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    tf32: bool = False              # CUDA: TF32 for fp32 matmuls and convolutions (train/device.py)


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


# ------------------------------------------------------------------------------------------------
# YAML: duplicate keys refused, aliases bounded, includes

MAX_ALIASES = 100                  # YAML aliases (*name) per document: configs need none or a few
MAX_NODES = 100_000                # values in a config once aliases are expanded (an alias bomb has 10⁹)
MAX_INCLUDE_DEPTH = 16


class _YAMLProblem(Exception):
    """A YAML document we refuse although it parses: duplicate keys, too many aliases."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (the last would silently replace a whole
    section) and more than ``MAX_ALIASES`` aliases (an alias bomb)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _YAMLProblem(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:           # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise _YAMLProblem(f"duplicate key {_show(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _count_nodes(data: Any, limit: int = MAX_NODES) -> int:
    """Values in ``data`` with aliases expanded, counting stops past ``limit`` (no exponential walk)."""
    count, stack = 0, [data]
    while stack:
        x = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return count


def _load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (a config file or an override value) with the strict loader; :class:`ConfigError`
    naming ``source`` and the line for anything refused."""
    try:
        loader = _Loader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except _YAMLProblem as e:
        where = f" (line {e.mark.line + 1})" if e.mark is not None else ""
        raise ConfigError(f"{source}: {e}{where}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None
    if _count_nodes(data) > MAX_NODES:
        raise ConfigError(f"{source} expands to more than {MAX_NODES} values (aliases): refused")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], YAML-parsed value)."""
    shown = clip(repr(text), QUOTE_LIMIT)
    if "=" not in text:
        raise ConfigError(f"bad override {shown}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise ConfigError(f"bad override {shown}: expected dotted.key=value")
    try:
        value = _load_yaml(raw, f"override {shown}") if raw.strip() else ""
    except ConfigError as e:
        if "is not valid YAML" in str(e):
            raise ConfigError(f"bad override {shown}: value is not valid YAML") from None
        raise
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


def _read_one(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(clip(f"cannot read config file {path}: {e}")) from None
    data = _load_yaml(text, f"config file {path}")
    if data is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, recursively for mappings present in both (``top`` wins; lists and other
    values are replaced whole). Neither argument is modified."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_with_includes(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    data = _read_one(path)
    if "include" not in data:
        return data
    names = data.pop("include")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"config file {path}: 'include' must be a file name or a list of file names, "
                          f"got {_show(names)}")
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"config file {path}: includes nest deeper than {MAX_INCLUDE_DEPTH}")
    merged: dict[str, Any] = {}
    for name in names:
        target = Path(name).expanduser()
        target = target if target.is_absolute() else path.parent / target
        try:
            key = target.resolve()
        except (OSError, RuntimeError):
            key = target
        if key in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(key):], key))
            raise ConfigError(clip(f"config include cycle: {cycle}", 1000))
        if not target.is_file():
            raise ConfigError(f"config file {path}: included file not found: {target}")
        merged = deep_merge(merged, _read_with_includes(target, (*chain, key)))
    merged = deep_merge(merged, data)
    if _count_nodes(merged) > MAX_NODES:
        raise ConfigError(f"config file {path} expands to more than {MAX_NODES} values: refused")
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping. A top-level ``include: FILE`` (or a list of files; paths relative to the
    including file) is read first and deep-merged under this file's keys, which win; includes may nest,
    a cycle is refused. Empty files, duplicate keys and alias bombs are refused (:class:`ConfigError`)."""
    path = Path(path)
    try:
        start = path.resolve()
    except (OSError, RuntimeError):
        start = path
    return _read_with_includes(path, (start,))


def _plain_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _plain_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain_copy(v) for v in data]
    return data


def build_config(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    """Validate a raw config mapping (plus overrides) into a :class:`Config`."""
    from .tasks import task_config_class
    from metarl import method_config_class

    if _count_nodes(data) > MAX_NODES:
        raise ConfigError(f"config expands to more than {MAX_NODES} values: refused")
    data = _plain_copy(data)              # overrides must not change the caller's nested sections
    for text in overrides:
        parts, value = parse_override(text)
        _apply(data, parts, value)
    task = data.get("task", Config.task)
    method = data.get("method", Config.method)
    if not isinstance(task, str):
        raise ConfigError(f"config key 'task' must be a string, got {_show(task)}")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"unknown method {_show(method)} (valid: {', '.join(METHODS)})")
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


def _optimizer_configs(obj: Any, prefix: str = "") -> list[tuple[str, MetaOptimizerConfig]]:
    """Every :class:`MetaOptimizerConfig` in the config (meta.optimizer, warpgrad.warp_optimizer, ...)."""
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
                "eval.tasks": cfg.eval.tasks, "run.keep": cfg.run.keep, "maml.steps": cfg.maml.steps}
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {v}")
    non_negative = {"meta.steps": cfg.meta.steps, "eval.every": cfg.eval.every, "eval.steps": cfg.eval.steps,
                    "run.checkpoint_every": cfg.run.checkpoint_every, "inner.lr": cfg.inner.lr,
                    "inner.momentum": cfg.inner.momentum, "inner.clip_grad_norm": cfg.inner.clip_grad_norm,
                    "maml.inner_lr": cfg.maml.inner_lr,
                    "run.threads": cfg.run.threads, "seed": cfg.seed, "meta.every": cfg.meta.every}
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
    if cfg.eval.split not in ("val", "test"):
        raise ConfigError(f"config key 'eval.split' must be val or test, got {_show(cfg.eval.split)}")
    if cfg.eval.periodic_split not in ("", "val", "test"):
        raise ConfigError(f"config key 'eval.periodic_split' must be val, test or empty (eval.split), "
                          f"got {_show(cfg.eval.periodic_split)}")
    # Task families with game lists (Atari): the lists a run will use must not be empty, or it fails only
    # after training (the final evaluation falls back from eval.split's games to the test games).
    games = {split: getattr(cfg.task_config, f"{split}_games", None) for split in ("train", "val", "test")}
    if games["test"] is not None:
        if cfg.meta.steps > 0 and not games["train"]:
            raise ConfigError(f"config key '{cfg.task}.train_games' is empty: meta-training has no games")
        if not (games.get(cfg.eval.split) or games["test"]):
            also = f" (and so is '{cfg.task}.test_games')" if cfg.eval.split != "test" else ""
            raise ConfigError(f"config key '{cfg.task}.{cfg.eval.split}_games' is empty{also}: the final "
                              f"evaluation has no games")
    from .device import check_device_name
    check_device_name(cfg.run.device)
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"config key 'name' must be a non-empty name without '/', got {_show(cfg.name)}")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return build_config(read_yaml(path), list(overrides))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as saved in config.yaml: plain data, the task and method sections under their names."""
    data = to_dict(cfg)
    data[cfg.task] = data.pop("task_config")
    method_section = data.pop("method_config")
    if method_section is not None:
        data[cfg.method] = method_section
    return data


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# ------------------------------------------------------------------------------------------------
# resume: which keys may change

# `metarl train --resume RUN_DIR key=value`: only keys that do not change what the checkpoint holds or how
# its state goes on may change; everything else (the model, the task, the method, learning rates and
# optimisers — restored from the checkpoint —, seeds, batch sizes) is refused before anything is written.
RESUME_MUTABLE = ("meta.steps", "eval", "run.progress", "run.checkpoint_every", "run.keep", "run.threads",
                  "run.dir", "run.device", "run.tf32")      # checkpoints are device-independent


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def resume_mutable(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESUME_MUTABLE)


def resume_changes(saved: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs between a run's saved config and the config it would resume with."""
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(new))
    return [k for k in (*a, *(k for k in b if k not in a)) if a.get(k, _MISSING) != b.get(k, _MISSING)]


_MISSING = object()


def check_resume_overrides(saved: Config, new: Config) -> list[str]:
    """Refuse (:class:`ConfigError`, one line) a resume whose overrides change a key outside
    :data:`RESUME_MUTABLE`; returns the keys that do change (all allowed)."""
    changed = resume_changes(saved, new)
    refused = [k for k in changed if not resume_mutable(k)]
    if refused:
        a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(new))
        k = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConfigError(clip(
            f"cannot change {k!r} on resume ({_show(a.get(k))} -> {_show(b.get(k))}){more}: a resumed run "
            f"may only change {', '.join(p if '.' in p else p + '.*' for p in RESUME_MUTABLE)}; "
            f"start a new run for anything else", 600))
    return changed
