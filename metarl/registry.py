"""Every meta-learning method by name: its class and, for methods with options of their own, the config
class of its section (``warpgrad:``, ``lazy:``). Adding a method is one file plus one line here.
Imported lazily, so a run loads only its own method."""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Method(NamedTuple):
    module: str
    cls: str
    config: str | None = None      # config class of the method's own section, in ``module``


METHODS: dict[str, Method] = {
    "leap": Method("metarl.leap", "Leap"),
    "reptile": Method("metarl.reptile", "Reptile"),
    "fomaml": Method("metarl.fomaml", "FOMAML"),
    "maml": Method("metarl.maml", "MAML"),
    "finetune": Method("metarl.finetune", "FineTuning"),
    "no_pretraining": Method("metarl.nopretrain", "NoPretraining"),
    "warpgrad": Method("metarl.warpgrad", "WarpGrad", "WarpGradConfig"),
    "warpgrad_continual": Method("metarl.continual", "ContinualWarpGrad", "ContinualWarpConfig"),
    "lazy": Method("metarl.lazy", "Lazy", "LazyConfig"),
}


def method_class(name: str) -> Any:
    entry = METHODS[name]
    return getattr(importlib.import_module(entry.module), entry.cls)


def method_config_class(name: str) -> Any:
    """The config class of ``name``'s own section, or None when it has none (its options live in the
    shared ``leap:`` / ``maml:`` sections)."""
    entry = METHODS[name]
    return getattr(importlib.import_module(entry.module), entry.config) if entry.config else None
