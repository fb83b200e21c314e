"""metarl: meta-learners that see task learning only through the optimiser's steps."""

from __future__ import annotations

import importlib
from typing import Any

from .base import MetaLearner, MetaOptimizerConfig
from .finetune import FineTuning
from .fomaml import FOMAML
from .lazy import Lazy, LazyConfig
from .leap import Leap, LeapConfig, LeapObjective
from .maml import MAML
from .nopretrain import NoPretraining
from .reptile import Reptile
from .seam import NULL_WATCH, OptimizerWatch, StepObserver

# Methods whose options live in a config section of their own, imported lazily.
_METHOD_CONFIGS = {"warpgrad": ("metarl.warpgrad", "WarpGradConfig"), "lazy": ("metarl.lazy", "LazyConfig")}


def method_config_class(method: str) -> Any:
    if method not in _METHOD_CONFIGS:
        return None
    module, name = _METHOD_CONFIGS[method]
    return getattr(importlib.import_module(module), name)


__all__ = ["MetaLearner", "MetaOptimizerConfig", "Leap", "LeapConfig", "LeapObjective", "Reptile", "FOMAML",
           "MAML", "Lazy", "LazyConfig", "FineTuning", "NoPretraining", "OptimizerWatch", "StepObserver", "NULL_WATCH",
           "method_config_class"]
