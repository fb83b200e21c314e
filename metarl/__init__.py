"""metarl: meta-learners that see task learning only through the optimiser's steps."""

from __future__ import annotations

from .base import MetaLearner, MetaOptimizerConfig
from .finetune import FineTuning
from .fomaml import FOMAML
from .lazy import Lazy, LazyConfig
from .leap import Leap, LeapConfig, LeapObjective
from .maml import MAML, MAMLConfig
from .nopretrain import NoPretraining
from .registry import METHODS, method_class, method_config_class
from .reptile import Reptile
from .seam import NULL_WATCH, OptimizerWatch, StepObserver

__all__ = ["MetaLearner", "MetaOptimizerConfig", "Leap", "LeapConfig", "LeapObjective", "Reptile", "FOMAML",
           "MAML", "MAMLConfig", "Lazy", "LazyConfig", "FineTuning", "NoPretraining", "OptimizerWatch", "StepObserver",
           "NULL_WATCH", "METHODS", "method_class", "method_config_class"]
