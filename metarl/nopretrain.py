"""No pre-training: every task starts from the same fixed (random) initialisation."""

from __future__ import annotations

from .base import MetaLearner


class NoPretraining(MetaLearner):
    name = "no_pretraining"
    continual = True        # nothing to meta-learn: a never-reset learner simply trains (the maze baselines)

    def observers(self, task=None) -> list:
        return []

    def updates(self, logs: dict[str, float]) -> tuple:
        return ()                       # the initialisation stays fixed
