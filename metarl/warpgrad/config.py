"""WarpGrad's configuration (the ``warpgrad:`` config section) and its Warp-Leap / Warp-MAML presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base import MetaOptimizerConfig

OBJECTIVES = ("full", "first_order")
ALGORITHMS = ("online", "offline")
INIT_OBJECTIVES = ("none", "leap", "maml")
INIT_SCHEDULES = ("eta", "meta_batch")


@dataclass
class WarpGradConfig:
    objective: str = "full"             # full (Eq. 7) | first_order (Eq. 8, stop-gradient on the step)
    algorithm: str = "offline"          # online (Alg. 1) | offline (Alg. 2, replay buffer)
    init_objective: str = "leap"        # none (fixed init) | leap (Warp-Leap) | maml (Warp-MAML)
    warp_prefixes: tuple[str, ...] = ("warps.",)   # parameter-name prefixes of φ
    # The replayed inner step. None: read lr / momentum from the inner SGD optimiser at every point;
    # a value is checked against it (and is required when the inner optimiser is not SGD).
    inner_lr: float | None = None
    inner_momentum: float | None = None
    task_split: str = "train"           # batch 1: L_task of the replayed step
    meta_split: str = "train"           # batch 2: L_meta (Omniglot: training data for both)
    stride: int = 1                     # use every stride-th trajectory point θ_0, θ_s, θ_2s, …
    final_point: bool = True            # also use θ_K (the original code never stored it)
    # offline (Algorithm 2)
    eta: int = 1                        # samples per φ step
    init_schedule: str = "eta"          # eta: θ⁰ steps with φ (paper) | meta_batch: once (original code)
    fp16: bool = False                  # store θ, momentum and float buffers in half precision
    replay_device: str = ""             # "" keeps points on the parameters' device; e.g. "cpu"
    # meta-optimiser of φ (θ⁰ uses the MetaLearner's ``meta_optimizer``)
    warp_optimizer: MetaOptimizerConfig = field(default_factory=MetaOptimizerConfig)
    # Warp-MAML init objective: differentiable steps from θ⁰ through the warped model (φ constant)
    maml_steps: int = 5
    maml_lr: float | None = None        # None: the inner optimiser's learning rate
    maml_first_order: bool = False
    maml_query_split: str = "query"

    def __post_init__(self) -> None:
        choices = {"objective": OBJECTIVES, "algorithm": ALGORITHMS, "init_objective": INIT_OBJECTIVES,
                   "init_schedule": INIT_SCHEDULES}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}")
        for key in ("stride", "eta", "maml_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("inner_lr", "inner_momentum", "maml_lr"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise ValueError(f"{key} must be >= 0, got {v}")
        self.warp_prefixes = tuple(self.warp_prefixes)
        if not self.warp_prefixes or not all(self.warp_prefixes):
            raise ValueError("warp_prefixes must be non-empty prefixes")


def warp_leap_config(**overrides: Any) -> WarpGradConfig:
    """Warp-Leap as on Omniglot (App. E): full objective, offline replay with η = 1, Leap init.
    Pair it with ``LeapConfig()`` (loss term on, as the paper) or ``LeapConfig(loss=False)`` (the
    original code's simplified Leap)."""
    return WarpGradConfig(**{"objective": "full", "algorithm": "offline", "init_objective": "leap",
                             "eta": 1, "init_schedule": "eta", **overrides})


def warp_maml_config(**overrides: Any) -> WarpGradConfig:
    """Warp-MAML as in the few-shot experiments (App. C/H): full objective, online (Alg. 1), MAML init."""
    return WarpGradConfig(**{"objective": "full", "algorithm": "online", "init_objective": "maml",
                             **overrides})
