"""Where a run computes: ``run.device`` resolved once, and the helpers that move state to and from it.

``run.device`` is ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
Under torchrun with several ranks, ``auto`` and ``cuda`` give every rank the GPU of its ``LOCAL_RANK``
(one device per local rank); an explicit ``cuda:N`` would put every rank on one GPU and is refused there.
Asking for CUDA where torch has none is a :class:`~train.errors.ConfigError` (the CLI prints one line and
exits with code 2).

What lives where:

- models, rollout buffers, returns, losses, optimiser states, the meta-learner's θ⁰, accumulators and
  meta-optimiser state: on the device;
- models are *drawn* on the CPU from the seeded generator and then moved, so a CPU run and a GPU run start
  from the same numbers; environments step on CPU threads;
- checkpoints hold CPU tensors (:func:`to_cpu` before saving) and are mapped to the CPU on load
  (``train.checkpoint.load_latest``); ``load_state_dict`` then copies them onto the run's device, so a run
  started on a GPU resumes on a CPU and the other way round.

TF32 (``run.tf32``, default off): on Ampere and newer GPUs, fp32 matrix products and convolutions may run
in TensorFloat-32 (10-bit mantissa inputs, fp32 accumulation). Off by default, so fp32 means fp32 on every
device: Leap's loss differences and the CPU/GPU agreement the tests check are not blurred by it. Turn it
on for speed (``run.tf32=true``), or autocast the Atari encoder to bf16 (``atari.a2c.precision: bf16``),
which is faster still. :func:`configure` sets both ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` (PyTorch's own defaults differ: matmul off, cuDNN on).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .errors import ConfigError

_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str, key: str = "config key 'run.device'") -> None:
    """Refuse a ``run.device`` value that is not auto, cpu, cuda or cuda:N (:class:`ConfigError`)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}")


def local_rank() -> int | None:
    """torchrun's LOCAL_RANK when several processes run (WORLD_SIZE > 1), else None."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        pass
    return None


def resolve_device(name: str = "auto", rank: int | None = None, option: str = "run.device") -> torch.device:
    """The torch device ``run.device`` names on this machine (``rank``: this process's LOCAL_RANK under
    torchrun, default from the environment; ``option``: how messages name the setting). CUDA asked for but
    absent: :class:`ConfigError`."""
    check_device_name(name, f"config key {option!r}" if option == "run.device" else option)
    rank = local_rank() if rank is None else rank
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise ConfigError(f"{option}={name}: {why}; use {option}=cpu (or auto)")
    count = torch.cuda.device_count()
    if ":" in name:
        if rank is not None:
            raise ConfigError(f"{option}={name} puts every torchrun rank on one GPU; use {option}=cuda "
                              f"(one GPU per LOCAL_RANK)")
        index = int(name.split(":")[1])
    else:
        index = rank or 0
    if index >= count:
        what = f"LOCAL_RANK {index}" if ":" not in name else name
        raise ConfigError(f"{option}={name}: {what} needs GPU {index}, but torch sees {count}")
    return torch.device("cuda", index)


def configure(device: torch.device, tf32: bool = False) -> None:
    """Per-process settings of ``device``: the current CUDA device, and TF32 for fp32 matmuls and
    convolutions (module docstring). Nothing to do on the CPU."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples of tensors and plain data) with every tensor on the CPU, for a
    device-independent checkpoint. CPU tensors are returned as they are (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``obj`` (a tensor or nested tuples / lists / dicts / NamedTuples of them) on ``device``; a no-op for
    tensors already there (CPU runs copy nothing)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):             # NamedTuple batches
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj
