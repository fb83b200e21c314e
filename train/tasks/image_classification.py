"""What the image-classification task families (multi-shot Omniglot, tieredImageNet) share.

- :class:`ClassificationTask`: a task of labelled images whose ``batch(split)`` dispatches to its train /
  query / test streams and whose loss is the cross-entropy of the model's logits;
- :class:`ImageClassificationAdapter`: task sampling in reshuffled rounds over a split's pool (alphabets,
  categories), the inner loop (re-seed the task's streams, then the supervised loop), the held-out
  evaluation in ``eval()`` mode, the head / warp parameter prefixes and the warp-factory resolution;
- :func:`build_warps` / :func:`init_task_layers`: a model's warp layers built under a forked global RNG
  seeded from the model's generator, and its conv / linear task layers drawn from that generator;
- :data:`PRECISIONS` / :func:`autocast`: the models' compute precision (``<family>.precision``).

A family supplies its data, its model, :meth:`~ImageClassificationAdapter.task_pool`,
:meth:`~ImageClassificationAdapter.make_task` and :meth:`~ImageClassificationAdapter.held_out_metrics`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import NULL_WATCH, TaskAdapter, seeded_default_init, supervised_adapt

WarpFactory = Callable[[int], nn.Module]        # channels → one warp layer


# ------------------------------------------------------------------------------------------------
# tasks


def classification_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy of ``model``'s logits on an ``(images, labels)`` batch."""
    x, y = batch
    return F.cross_entropy(model(x), y)


class ClassificationTask:
    """A task of labelled images. ``batch(split)`` returns ``(images, labels)`` of ``"train"`` (the inner
    loop's stream), ``"query"`` (held-out images for MAML's outer loss) or ``"test"`` (every held-out
    image, the same at every call). :meth:`reset` re-seeds the streams before a task is adapted."""

    key: str
    device: torch.device = torch.device("cpu")     # where batches are delivered (set by the adapter)

    def reset(self, steps: int | None = None) -> None:
        """Re-seed the streams; ``steps``: the inner steps about to run (families that cut epochs to it)."""
        raise NotImplementedError

    def train_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def query_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def test_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def batch(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.train_batch()
        if split == "query":
            return self.query_batch()
        if split == "test":
            return self.test_batch()
        raise ValueError(f"unknown split {split!r}; choose train, query or test")

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return classification_loss(model, batch)


def reshuffled_rounds(size: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices into a pool of ``size``: concatenated permutations drawn from ``rng``, so no index
    repeats until all have been used (n = size gives each once)."""
    order: list[int] = []
    while len(order) < n:
        order.extend(rng.permutation(size).tolist())
    return order[:n]


# ------------------------------------------------------------------------------------------------
# models


def build_warps(build: Callable[[], nn.Module], generator: torch.Generator | None) -> nn.Module:
    """The warp layers ``build()`` makes. With ``generator`` they are built under a forked global RNG
    seeded by one draw from it, so they keep their own init scheme and stay reproducible."""
    if generator is None:
        return build()
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ``<family>.precision`` of a classification model's forward pass. bf16: the model's forward runs under bf16
# autocast, so convs and linear layers compute in bf16 while weights, gradients and optimiser state stay
# fp32; BatchNorm takes fp32 input (CPU autocast would run it in bf16) and the logits come back fp32, so
# the cross-entropy, every loss value a meta-learner sees and Leap's scalar maths stay fp32. Training and
# evaluation both call the model, so both run at the same precision.
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")


def autocast(precision: str, device_type: str) -> torch.autocast:
    """bf16 autocast for ``precision="bf16"``, a disabled one for fp32 (see :data:`PRECISIONS`)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def init_task_layers(modules: Iterable[nn.Module], generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every conv / linear layer in ``modules``, drawn from ``generator``."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            seeded_default_init(m, generator)


# ------------------------------------------------------------------------------------------------
# adapter


class ImageClassificationAdapter(TaskAdapter):
    """Base of the image-classification families (see the module docstring). ``warp`` (a factory:
    channels → warp layer) overrides the family's configured warp (:meth:`configured_warp`)."""

    head = ("head.",)

    def __init__(self, config: Any, seed: int | None = None, warp: WarpFactory | None = None) -> None:
        super().__init__(config, seed)
        self.warp = warp if warp is not None else self.configured_warp()

    # -- the family's part ------------------------------------------------------------------------------------
    def configured_warp(self) -> WarpFactory | None:
        """The warp factory the family's config names (None: no warp layers)."""
        return None

    def task_pool(self, split: str) -> Sequence[Any]:
        """What a task of ``split`` is drawn from (alphabets, categories); unknown split: ValueError."""
        raise NotImplementedError

    def make_task(self, split: str, key: Any, rng: np.random.Generator) -> ClassificationTask:
        """One task of pool member ``key``; its classes, images and seed come from ``rng``."""
        raise NotImplementedError

    def held_out_metrics(self, task: ClassificationTask, model: nn.Module) -> dict[str, float]:
        """``test_loss`` and ``test_accuracy`` of ``model`` (in eval() mode, under no_grad) on the task's
        held-out images."""
        raise NotImplementedError

    def evaluation_model(self, task: ClassificationTask, model: nn.Module) -> nn.Module:
        """The model :meth:`evaluate` scores (default: ``model`` itself)."""
        return model

    # -- shared ------------------------------------------------------------------------------------------------
    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[ClassificationTask]:
        """``n`` tasks of ``split``: pool members in reshuffled rounds, so none repeats before all have been
        used; then each task's draws, in order, from the same ``rng``."""
        pool = self.task_pool(split)
        tasks = [self.make_task(split, pool[i], rng) for i in reshuffled_rounds(len(pool), n, rng)]
        for task in tasks:
            task.device = self.device       # batches are assembled on the CPU and delivered there
        return tasks

    def adapt(self, task: ClassificationTask, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch: Any = NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        task.reset(steps)      # the same batches at every adaptation of the task
        return supervised_adapt(task, model, optimizer, steps, watch, clip_grad_norm)

    def evaluate(self, task: ClassificationTask, model: nn.Module) -> dict[str, float]:
        """Held-out metrics in eval() mode: BatchNorm uses running statistics (never the test batch's)."""
        model = self.evaluation_model(task, model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.held_out_metrics(task, model)
        finally:
            model.train(was_training)
