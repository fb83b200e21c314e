"""Typed run configuration: YAML files in configs/, dotted ``key=value`` overrides, strict validation.

Every section is a dataclass; unknown keys, wrong types and bad values raise :class:`ConfigError` with a
one-line message naming the key. The resolved config (defaults filled in) is saved in the run directory.

A config file may start from others: ``include: base.yaml`` (or a list; paths relative to the including
file) reads them first and deep-merges this file's keys over them (mappings merge, anything else is
replaced); includes may nest, a cycle is refused. Floats must be finite (and fit in float32), integers fit
in int64; duplicate YAML keys, empty files and alias bombs are refused, and error messages quote at most a
few hundred characters of a value.

The YAML reading (strict loader, includes, overrides) is in :mod:`train.config_yaml`, the validation in
:mod:`train.config_checks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metarl.base import MetaOptimizerConfig
from metarl.leap import LeapConfig
from metarl.maml import MAMLConfig
from metarl.registry import METHODS

from .config_checks import check, flatten, from_dict, show_value, to_dict
from .config_yaml import MAX_NODES, count_nodes, parse_override, read_yaml
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
    #                                 (the WarpGrad code re-draws it for Leap, Reptile, FOMAML, no-pretraining only)
    every: int = 0                  # continual mode: a meta-step every N task updates while tasks rotate


@dataclass
class EvalConfig:
    every: int = 20                 # meta-steps between held-out evaluations (0: only at the end)
    tasks: int = 5
    steps: int = 0                  # adaptation steps at evaluation (0: inner.steps)
    split: str = "test"             # the final evaluation's split (also `metarl eval`'s default)
    periodic_split: str = ""        # the evaluations every `every` meta-steps ("": split); e.g. val while training
    # Atari only: one game per held-out game and init, of seed 0's final agent, as run_dir/videos/<game>_<init>.mp4
    # and in TensorBoard (train/tasks/atari_eval.py); cut after video_frames frames (15 per second of game).
    video: bool = False
    video_frames: int = 1000
    note: str = ""                  # Atari: a line printed under the held-out summary (e.g. what the run can show)
    # Atari: false skips the random-init baseline (the same in every run of a config seed): `metarl report`
    # compares the run with the random init of a run that has it (the transfer study's Leap run)
    random_init: bool = True


@dataclass
class RunConfig:
    dir: str = "runs"
    checkpoint_every: int = 10      # meta-steps between checkpoints
    keep: int = 2                   # checkpoints kept (the newest and its predecessor)
    progress: bool = True
    threads: int = 0                # torch threads (0: leave torch's default)
    device: str = "auto"            # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    tf32: bool = False              # CUDA: TF32 for fp32 matmuls and convolutions (train/device.py)
    max_memory: float = 0.0         # GiB a run may need by its estimate (train/budget.py); 0: this machine's memory


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
# building a config


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

    if count_nodes(data) > MAX_NODES:
        raise ConfigError(f"config expands to more than {MAX_NODES} values: refused")
    data = _plain_copy(data)              # overrides must not change the caller's nested sections
    for text in overrides:
        parts, value = parse_override(text)
        _apply(data, parts, value)
    task = data.get("task", Config.task)
    method = data.get("method", Config.method)
    if not isinstance(task, str):
        raise ConfigError(f"config key 'task' must be a string, got {show_value(task)}")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"unknown method {show_value(method)} (valid: {', '.join(METHODS)})")
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


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """The config file ``path`` with ``overrides``; its relative data paths resolved (:func:`resolve_data_paths`)."""
    data = read_yaml(path)
    cfg = build_config(data, list(overrides))
    resolve_data_paths(cfg, data, overrides, Path(path))
    return cfg


# ------------------------------------------------------------------------------------------------
# data paths

DATA_ENV = "METARL_DATA"
REPOSITORY = Path(__file__).resolve().parent.parent    # the checkout holding configs/ (editable install)


def data_root() -> Path | None:
    """``$METARL_DATA`` when set: the folder holding one folder per data set (omniglot/, tiered-imagenet/)."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def resolve_data_path(value: str, base: Path) -> str:
    """A relative data path from a config file: with ``$METARL_DATA`` its last component under that folder
    (``../shared/data/omniglot`` → ``$METARL_DATA/omniglot``), else relative to ``base`` (the folder above
    the config file's folder: the repository for ``configs/*.yaml``). Absolute paths are kept."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    root = data_root()
    if root is not None:
        return str(root / path.name)
    return str((base / path).resolve())


def resolve_data_paths(cfg: Config, data: dict[str, Any], overrides: list[str] | tuple[str, ...],
                       config_file: Path) -> None:
    """Make ``cfg``'s data paths absolute, so that a run finds its data from any working folder and its
    saved ``config.yaml`` names the folder it used. A path given on the command line
    (``omniglot.root=DIR``) is relative to the current folder, as any path there; one from the config file
    (or the task's default) is resolved by :func:`resolve_data_path` against the folder above the config
    file's folder (the repository for ``configs/*.yaml``; the repository for a default). The keys are the
    task family's own (``TaskAdapter.data_keys``)."""
    from .tasks import adapter_class
    keys = adapter_class(cfg.task).data_keys
    given = {tuple(parse_override(text)[0]) for text in overrides}
    section = data.get(cfg.task) if isinstance(data.get(cfg.task), dict) else {}
    try:
        base = config_file.expanduser().resolve().parent.parent
    except (OSError, RuntimeError):
        base = REPOSITORY
    for key in keys:
        value = getattr(cfg.task_config, key, None)
        if not isinstance(value, str) or not value:
            continue
        if (cfg.task, key) in given:
            resolved = str(Path(value).expanduser().resolve())
        else:
            resolved = resolve_data_path(value, base if key in section else REPOSITORY)
        setattr(cfg.task_config, key, resolved)


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
# Checkpoints are device-independent, and where a machine keeps the data is the machine's business: a run moved
# to another machine (a GPU's, then back to a CPU) resumes with its device and data folders overridden (the task
# family's own such keys: ``TaskAdapter.data_keys`` and ``resume_mutable``).
RESUME_MUTABLE = ("meta.steps", "eval", "run.progress", "run.checkpoint_every", "run.keep", "run.threads",
                  "run.dir", "run.device", "run.tf32", "run.max_memory")


def resume_mutable_keys(task: str) -> tuple[str, ...]:
    """The keys (or sections) a resumed run of task family ``task`` may change: :data:`RESUME_MUTABLE` and the
    family's data folders and machine-local keys."""
    from .tasks import adapter_class
    family = adapter_class(task)
    return (*RESUME_MUTABLE, *(f"{task}.{k}" for k in (*family.data_keys, *family.resume_mutable)))


def resume_mutable(key: str, mutable: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in mutable)


def resume_changes(saved: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs between a run's saved config and the config it would resume with."""
    a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(new))
    return [k for k in (*a, *(k for k in b if k not in a)) if a.get(k, _MISSING) != b.get(k, _MISSING)]


_MISSING = object()


def check_resume_overrides(saved: Config, new: Config) -> list[str]:
    """Refuse (:class:`ConfigError`, one line) a resume whose overrides change a key outside
    :func:`resume_mutable_keys`; returns the keys that do change (all allowed)."""
    changed = resume_changes(saved, new)
    mutable = resume_mutable_keys(saved.task)
    refused = [k for k in changed if not resume_mutable(k, mutable)]
    if refused:
        a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(new))
        k = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConfigError(clip(
            f"cannot change {k!r} on resume ({show_value(a.get(k))} -> {show_value(b.get(k))}){more}: a resumed run "
            f"may only change {', '.join(p if '.' in p else p + '.*' for p in mutable)}; "
            f"start a new run for anything else", 600))
    return changed
