"""Randomness derived from (seed, meta-step, stream), never carried in hidden state: a resumed run draws
exactly the tasks, batches and head draws an uninterrupted run would."""

from __future__ import annotations

import numpy as np
import torch

FIXED = 2**32 - 1   # the "meta-step" key of draws that must not depend on the step (template, held-out)


def step_generators(seed: int, step: int, stream: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """Independent NumPy and torch generators for one (seed, meta-step, stream)."""
    rng = np.random.default_rng([seed, step, stream])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))
