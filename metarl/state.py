"""A meta-learner's checkpointed state, declared once as typed entries: each class lists what it adds
(``MetaLearner.saved``), and ``state_dict`` / ``load_state_dict`` are generated from the entries of the whole
class hierarchy, base class first. No method writes its own ``state_dict``.

Each entry maps a key of the checkpoint to attribute(s) of the learner and knows how to save and restore its
kind of value — tensors, an optimiser, packed counters, names that must match, a small record, a bank of
tensors by key — so the checkpoint format stays the plain nested dict of tensors and containers that
``torch.load(weights_only=True)`` reads (and that checkpoints written before this module was introduced hold).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor


@dataclass(frozen=True)
class Entry:
    """``key`` in the checkpoint, attribute ``attr`` of the learner."""
    key: str
    attr: str = ""

    @property
    def name(self) -> str:
        return self.attr or self.key

    def save(self, learner: Any) -> Any:
        raise NotImplementedError

    def check(self, learner: Any, state: dict[str, Any]) -> None:
        """Refuse (ValueError) a checkpoint this learner cannot take, before anything is loaded."""

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return [_clone(v) for v in value]


def _copy_into(current: Any, saved: Any) -> None:
    if isinstance(current, Tensor):
        current.copy_(saved)            # onto the learner's device
    elif isinstance(current, dict):
        for k, v in saved.items():
            _copy_into(current[k], v)
    else:
        if len(current) != len(saved):
            raise ValueError(f"checkpoint holds {len(saved)} tensors where this learner has {len(current)}")
        for c, v in zip(current, saved):
            _copy_into(c, v)


@dataclass(frozen=True)
class Tensors(Entry):
    """A tensor, or a list or dict of tensors: saved as copies, loaded into the learner's tensors in place."""

    def save(self, learner: Any) -> Any:
        return _clone(getattr(learner, self.name))

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        _copy_into(getattr(learner, self.name), state[self.key])


@dataclass(frozen=True)
class Optimizer(Entry):
    """A torch optimiser's state (moved to its parameters' device on load)."""

    def save(self, learner: Any) -> Any:
        return getattr(learner, self.name).state_dict()

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        getattr(learner, self.name).load_state_dict(state[self.key])


@dataclass(frozen=True)
class Counters(Entry):
    """Scalar attributes ``attrs`` packed in one tensor of ``dtype`` (0-dim for ``scalar``); each is read back
    as the type it has (int or float). A checkpoint that holds fewer (written before a counter was added)
    resets the missing ones to zero."""
    attrs: tuple[str, ...] = ()
    dtype: torch.dtype = torch.int64
    scalar: bool = False

    def save(self, learner: Any) -> Any:
        values = [getattr(learner, a) for a in self.attrs]
        return torch.tensor(values[0] if self.scalar else values, dtype=self.dtype)

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        values = state[self.key].reshape(-1).tolist()
        for i, a in enumerate(self.attrs):
            kind = type(getattr(learner, a))
            setattr(learner, a, kind(values[i]) if i < len(values) else kind(0))


@dataclass(frozen=True)
class Stacked(Entry):
    """Tensor attributes ``attrs`` of one shape, saved stacked along a new first dimension; loaded as copies."""
    attrs: tuple[str, ...] = ()

    def save(self, learner: Any) -> Any:
        return torch.stack([getattr(learner, a) for a in self.attrs])

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        for a, v in zip(self.attrs, state[self.key]):
            setattr(learner, a, v.clone())


@dataclass(frozen=True)
class Names(Entry):
    """A list of names (strings are plain data for weights_only loading) the checkpoint must match: it says
    which tensors the entries after it hold. A checkpoint without it matches an empty list."""
    mismatch: str = "do not match this learner's"

    def save(self, learner: Any) -> Any:
        return list(getattr(learner, self.name))

    def check(self, learner: Any, state: dict[str, Any]) -> None:
        if list(state.get(self.key, [])) != list(getattr(learner, self.name)):
            raise ValueError(f"checkpoint {self.mismatch}")

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class Record(Entry):
    """A dataclass of plain numbers, saved as a dict of its fields and rebuilt on load."""

    def save(self, learner: Any) -> Any:
        return dataclasses.asdict(getattr(learner, self.name))

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        setattr(learner, self.name, type(getattr(learner, self.name))(**state[self.key]))


@dataclass(frozen=True)
class Bank(Entry):
    """A dict of tensor dicts by string key (e.g. one output head per task key), saved as the sorted keys
    (under ``keys``) and the list of their values; loaded onto the learner's device, replacing the dict."""
    keys: str = ""

    def save(self, learner: Any) -> Any:
        bank = getattr(learner, self.name)
        return [bank[k] for k in sorted(bank)]

    def load(self, learner: Any, state: dict[str, Any]) -> None:
        setattr(learner, self.name, {k: {n: v.to(learner.device) for n, v in value.items()}
                                     for k, value in zip(state[self.keys], state[self.key])})


def entries(learner: Any) -> Iterator[Entry]:
    """The entries of ``learner``'s class hierarchy, base class first, each in its order."""
    for cls in reversed(type(learner).__mro__):
        yield from vars(cls).get("saved", ())


def state_dict(learner: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries(learner):
        if isinstance(entry, Bank):
            out[entry.keys] = sorted(getattr(learner, entry.name))
        out[entry.key] = entry.save(learner)
    return out


@torch.no_grad()
def load_state_dict(learner: Any, state: dict[str, Any]) -> None:
    found = list(entries(learner))
    for entry in found:             # every check before anything is loaded
        entry.check(learner, state)
    for entry in found:
        entry.load(learner, state)
