"""No pre-training: every task starts from the same fixed (random) initialisation."""

from __future__ import annotations

from .base import MetaLearner


class NoPretraining(MetaLearner):
    name = "no_pretraining"
    continual = True        # nothing to meta-learn: a never-reset learner simply trains (the maze baselines)

    def observers(self, task=None) -> list:
        return []

    def meta_step(self) -> dict[str, float]:
        logs = {"meta/tasks": float(self.tasks)}
        self.tasks = 0
        self.meta_steps += 1
        return logs
