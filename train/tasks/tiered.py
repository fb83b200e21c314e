"""tieredImageNet, multi-shot protocol of WarpGrad (App. H; docs/protocols.md §3).

Data: the original release of Ren et al. (2018) — ``{split}_images_png.pkl`` (PNG buffers) and
``{split}_labels.pkl`` for split ∈ {train, val, test} — read by train/tasks/tiered_data.py (pickles written by
Python 2, images decoded on demand to (84, 84, 3) uint8 RGB through an LRU cache); its names are re-exported
here.

Task (WarpGrad's multi-shot protocol): N = ``ways`` = 10 classes drawn without replacement from ONE
category (``label_general``) of the split, labels 0…N−1 in draw order. Per class, a random
``test_per_class`` = L = 50 images are held out (evaluation, MAML's query batches) and the training images
are disjoint from them. The inner loop is SGD with momentum 0.9 (the run config's ``inner`` section) on
batches of ``batch_size`` = 64 drawn epoch by epoch without replacement. Categories are visited in
reshuffled rounds, so no category repeats until all the split's categories have been used.

The paper is ambiguous about the adaptation budget: its main text says "640 adaptation steps", the table
header "640-shot", the appendix K = 640 with 100 steps of batch 64. ``protocol`` picks a reading:

- ``"shots"`` (default): K = ``shots`` = 640 training images per class and 100 inner steps of batch 64 —
  exactly one pass over the task's 10 × 640 = 6,400 training images. This is the only reading under which
  the appendix's three numbers (K, steps, batch) agree, and the table's "640-shot" names K as well.
- ``"steps"``: 640 inner steps of batch 64 over *all* of each class's non-held-out images (682–1,250 per
  class), i.e. "640 adaptation steps" with no shot limit (``shots`` is ignored).

The trainer passes the number of inner steps (``inner.steps`` in the run config); :attr:`TieredAdapter.inner_steps`
says what the chosen reading expects (100 or 640).

Model (:class:`TieredConv`): 6 blocks of [3×3 conv (pad 1) → BatchNorm → ReLU → 2×2 max-pool] with
{64, 64, 160, 160, 256, 256} filters, pooling on all blocks but the last: 84 → 42 → 21 → 10 → 5 → 2 → 2,
so 2×2×256 = 1,024 features → ``head`` Linear(1024 → 10). Optional warp layers follow chosen blocks.
Names: ``blocks.i.*`` and ``head.*`` are task parameters, ``warps.i.*`` (i = the block it follows) warp ones.

Not implemented: data augmentation (the multi-shot protocol names none), the ``{split}_images.npz`` variant
of other loaders (its labels use another key and other ids), the few-shot protocol.
Loading a pickle can run code stored in it: only point ``root`` at a release you trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.warp_layers import CONV_WARP_KINDS, MAP_WARP_KINDS, make_warp

from ..errors import ConfigError, DataError
from .image_classification import (ClassificationTask, ImageClassificationAdapter, WarpFactory, autocast,
                                   build_warps, check_precision, init_task_layers)
from .tiered_data import IMAGE_SHAPE, SPLITS, TieredSplit, images_path, labels_path

PROTOCOLS = {"shots": 100, "steps": 640}          # reading → the inner steps it expects
WARP_KINDS = ("none", *MAP_WARP_KINDS)     # no warp, or a feature-map warp of metarl.warp_layers
# Per-channel RGB statistics of tieredImageNet as used by the MetaOptNet family of loaders.
MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)


# ------------------------------------------------------------------------------------------------
# tasks


class TieredTask(ClassificationTask):
    """``ways`` classes of one category. ``batch(split)`` returns ``(images (B, 3, 84, 84) float, labels (B,))``.

    ``train_index`` / ``test_index`` are image rows of the split (disjoint); their labels are 0…ways−1.
    Training batches come from a stream of permutations of the training set (one permutation per epoch),
    query batches are random held-out batches, and ``test`` is every held-out image in a fixed order.
    :meth:`reset` (called by the adapter before adapting) re-seeds the streams, so adapting the same task
    twice sees identical batches.
    """

    def __init__(self, key: str, data: TieredSplit, category: int, classes: Sequence[int],
                 train_index: np.ndarray, train_labels: np.ndarray, test_index: np.ndarray,
                 test_labels: np.ndarray, seed: int, batch_size: int = 64, normalize: bool = True) -> None:
        self.key, self.data, self.category = key, data, category
        self.classes = [int(c) for c in classes]
        self.train_index, self.train_labels = np.asarray(train_index), np.asarray(train_labels, dtype=np.int64)
        self.test_index, self.test_labels = np.asarray(test_index), np.asarray(test_labels, dtype=np.int64)
        self.seed, self.batch_size, self.normalize = seed, batch_size, normalize
        self._seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64) >> 1]
        self.reset()

    def __repr__(self) -> str:
        return (f"TieredTask(key={self.key!r}, ways={len(self.classes)}, train={len(self.train_index)}, "
                f"test={len(self.test_index)}, seed={self.seed})")

    def reset(self, steps: int | None = None) -> None:
        """Re-seed the streams (``steps`` is not needed: training batches run epoch after epoch)."""
        self._train_rng = np.random.default_rng(self._seeds[0])
        self._query_rng = np.random.default_rng(self._seeds[1])
        self._pending = np.empty(0, dtype=np.int64)

    def _next_train(self) -> np.ndarray:
        while len(self._pending) < self.batch_size:
            self._pending = np.concatenate([self._pending, self._train_rng.permutation(len(self.train_index))])
        idx, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
        return idx

    def tensors(self, rows: np.ndarray) -> Tensor:
        """Image rows of the split → (n, 3, 84, 84) float in [0, 1], normalised when configured."""
        x = torch.from_numpy(self.data.images(rows)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.normalize:
            x = ((x - torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1))
                 / torch.tensor(STD, device=x.device).view(1, 3, 1, 1))
        return x.contiguous()

    def labels(self, labels: np.ndarray) -> Tensor:
        return torch.from_numpy(labels).to(self.device)

    def train_batch(self) -> tuple[Tensor, Tensor]:
        idx = self._next_train()
        return self.tensors(self.train_index[idx]), self.labels(self.train_labels[idx])

    def query_batch(self) -> tuple[Tensor, Tensor]:
        idx = self._query_rng.choice(len(self.test_index), size=min(self.batch_size, len(self.test_index)),
                                     replace=False)
        return self.tensors(self.test_index[idx]), self.labels(self.test_labels[idx])

    def test_batch(self) -> tuple[Tensor, Tensor]:
        return self.tensors(self.test_index), self.labels(self.test_labels)


# ------------------------------------------------------------------------------------------------
# model


class TieredBlock(nn.Module):
    """3×3 conv (pad 1) → BatchNorm → ReLU → [2×2 max-pool]."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # BatchNorm's statistics in fp32 under bf16 autocast (which would run it in bf16); no-op in fp32
        return self.pool(self.relu(self.bn(self.conv(x).float())))


class TieredConv(nn.Module):
    """The multi-shot tieredImageNet classifier (see the module docstring).

    ``filters``: one entry per block; every block but the last max-pools. ``warp(channels)`` builds the
    warp layer after each block in ``warp_blocks`` (None: all blocks), stored as ``warps.<block>``.
    With ``generator`` the conv / linear weights are drawn from it; warp layers are built under a forked
    global RNG seeded from it, keeping their own init scheme and staying reproducible. ``precision``: fp32
    or bf16 (autocast inside the forward; fp32 logits; train/tasks/image_classification.py ``PRECISIONS``).
    """

    def __init__(self, num_classes: int = 10, filters: Sequence[int] = (64, 64, 160, 160, 256, 256),
                 warp: Callable[[int], nn.Module] | None = None, warp_blocks: Sequence[int] | None = None,
                 generator: torch.Generator | None = None, image_size: int = IMAGE_SHAPE[0],
                 precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision)
        self.precision = precision
        filters = [int(f) for f in filters]
        if not filters or min(filters) <= 0:
            raise ValueError(f"filters must be a non-empty list of positive widths, got {filters}")
        n = len(filters)
        self.blocks = nn.ModuleList([TieredBlock(3 if i == 0 else filters[i - 1], f, pool=i < n - 1)
                                     for i, f in enumerate(filters)])
        size = image_size
        for _ in range(n - 1):
            size //= 2
        if size < 1:
            raise ValueError(f"{n} blocks pool an {image_size}-pixel image away")
        self.feature_size = filters[-1] * size * size
        where = list(range(n)) if warp_blocks is None else sorted({int(b) for b in warp_blocks})
        if any(not 0 <= b < n for b in where):
            raise ValueError(f"warp_blocks must lie in 0…{n - 1}, got {list(warp_blocks or [])}")
        self.warps: nn.ModuleDict | None = None
        if warp is not None and where:
            self.warps = build_warps(lambda: nn.ModuleDict({str(b): warp(filters[b]) for b in where}), generator)
        self.head = nn.Linear(self.feature_size, num_classes)
        if generator is not None:
            init_task_layers([*self.blocks.modules(), self.head], generator)

    def forward(self, x: Tensor) -> Tensor:
        with autocast(self.precision, x.device.type):
            for i, block in enumerate(self.blocks):
                x = block(x)
                if self.warps is not None and str(i) in self.warps:
                    x = self.warps[str(i)](x)
            logits = self.head(x.flatten(1))
        return logits.float()                    # the loss in fp32 (no-op in fp32)


# ------------------------------------------------------------------------------------------------
# adapter


@dataclass
class TieredConfig:
    root: str = "../shared/data/tiered-imagenet"   # folder with {split}_images_png.pkl / {split}_labels.pkl
    protocol: str = "shots"         # shots: K = `shots`, 100 steps of batch 64 | steps: all images, 640 steps
    ways: int = 10                  # N classes per task, all from one category
    shots: int = 640                # K training images per class (protocol "shots" only)
    test_per_class: int = 50        # L held-out images per class
    batch_size: int = 64            # inner-loop batch (also the query batch)
    filters: tuple[int, ...] = (64, 64, 160, 160, 256, 256)   # one entry per conv block
    warp: str = "none"              # none | a feature-map warp kind (WARP_KINDS: metarl.warp_layers.MAP_WARP_KINDS)
    warp_blocks: list[int] = field(default_factory=list)   # blocks followed by a warp; empty: every block
    warp_batch_norm: bool = False   # a BatchNorm inside each conv warp (its affine parameters are warp ones)
    normalize: bool = True          # subtract / divide by the per-channel RGB mean / std (MEAN, STD)
    cache_images: int = 2048        # decoded images kept per split (LRU); 0 disables the cache
    eval_batch_size: int = 128      # images per forward pass in evaluate()
    precision: str = "fp32"         # fp32 | bf16: the model's forward under bf16 autocast (as omniglot.precision)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        for name in ("ways", "shots", "test_per_class", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.cache_images < 0:
            raise ValueError(f"cache_images must be >= 0, got {self.cache_images}")
        self.filters = tuple(int(f) for f in self.filters)
        if not self.filters or min(self.filters) <= 0:
            raise ValueError(f"filters must be a non-empty list of positive widths, got {list(self.filters)}")
        if self.warp not in WARP_KINDS:
            raise ValueError(f"warp must be one of {', '.join(WARP_KINDS)}, got {self.warp!r}")
        self.warp_blocks = [int(b) for b in self.warp_blocks]
        if any(not 0 <= b < len(self.filters) for b in self.warp_blocks):
            raise ValueError(f"warp_blocks must lie in 0…{len(self.filters) - 1}, got {self.warp_blocks}")
        if self.warp_batch_norm and self.warp not in CONV_WARP_KINDS:
            raise ValueError(f"warp_batch_norm needs a conv warp, got warp {self.warp!r}")
        check_precision(self.precision)
        if self.precision == "bf16" and self.warp_batch_norm:    # the warps' BatchNorm would run in bf16
            raise ValueError("precision bf16 keeps BatchNorm in fp32 only in the blocks: set warp_batch_norm "
                             "false or precision fp32")

    @property
    def train_per_class(self) -> int | None:
        """K under the chosen reading; None: every image of the class that is not held out."""
        return self.shots if self.protocol == "shots" else None


class TieredAdapter(ImageClassificationAdapter):
    """tieredImageNet multi-shot tasks for the trainer (see the module docstring).

    Splits ``train`` / ``val`` / ``test`` are the release's split files. Construction checks that every
    file exists; a split is read the first time it is used (``data``: already-loaded splits, e.g. in tests).
    """

    config: TieredConfig
    splits = SPLITS
    data_keys = ("root",)               # TaskAdapter.data_keys

    def __init__(self, config: TieredConfig | None = None, seed: int | None = None,
                 data: dict[str, TieredSplit] | None = None, warp: WarpFactory | None = None) -> None:
        """``warp`` overrides ``config.warp`` (a factory: channels → warp module)."""
        super().__init__(config or TieredConfig(), seed, warp)
        c = self.config
        self._data: dict[str, TieredSplit] = dict(data or {})
        self._eligible: dict[str, list[int]] = {}
        root = Path(c.root).expanduser()
        if len(self._data) < len(SPLITS):
            if not root.is_dir():
                raise DataError(f"tieredImageNet: data folder {root} does not exist or is not a folder")
            for split in SPLITS:
                if split not in self._data:
                    for path in (images_path(root, split), labels_path(root, split)):
                        if not path.is_file():
                            raise DataError(f"tieredImageNet: file {path} does not exist")

    def configured_warp(self) -> WarpFactory | None:
        if self.config.warp == "none":
            return None
        kind, bn = self.config.warp, self.config.warp_batch_norm
        return lambda channels: make_warp(kind, channels, batch_norm=bn)

    @property
    def inner_steps(self) -> int:
        """The inner steps the chosen protocol reading expects: 100 ("shots") or 640 ("steps")."""
        return PROTOCOLS[self.config.protocol]

    def data(self, split: str) -> TieredSplit:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        if split not in self._data:
            self._data[split] = TieredSplit(self.config.root, split, self.config.cache_images)
        return self._data[split]

    def task_pool(self, split: str) -> list[int]:
        return self.categories(split)

    def categories(self, split: str) -> list[int]:
        """Categories of ``split`` with at least ``ways`` classes that have enough images for a task."""
        if split not in self._eligible:
            c, d = self.config, self.data(split)
            need = c.test_per_class + (c.train_per_class or 1)
            ok = [g for g, classes in d.category_classes.items()
                  if sum(len(d.class_images[int(k)]) >= need for k in classes) >= c.ways]
            if not ok:
                raise ConfigError(f"tieredImageNet: no category of {d.labels_path} has {c.ways} classes with "
                                  f">= {need} images (tiered.ways, tiered.shots, tiered.test_per_class)")
            self._eligible[split] = ok
        return self._eligible[split]

    def make_model(self, generator: torch.Generator, task: Any = None) -> TieredConv:   # same for every task
        c = self.config
        return TieredConv(c.ways, c.filters, warp=self.warp, warp_blocks=c.warp_blocks or None,
                          generator=generator, precision=c.precision)

    def make_task(self, split: str, category: int, rng: np.random.Generator) -> TieredTask:
        """One task of ``category``: classes, held-out / training images and the task seed drawn from ``rng``."""
        c, d = self.config, self.data(split)
        k = c.train_per_class
        need = c.test_per_class + (k or 1)
        pool = [int(x) for x in d.category_classes[category] if len(d.class_images[int(x)]) >= need]
        classes = rng.choice(pool, size=c.ways, replace=False)
        train, test = [], []
        for cls in classes:
            rows = d.class_images[int(cls)][rng.permutation(len(d.class_images[int(cls)]))]
            test.append(rows[:c.test_per_class])
            train.append(rows[c.test_per_class:] if k is None else rows[c.test_per_class:c.test_per_class + k])
        train_labels = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(train)])
        test_labels = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(test)])
        return TieredTask(d.category_name(category), d, category, classes, np.concatenate(train), train_labels,
                          np.concatenate(test), test_labels, seed=int(rng.integers(2**62)),
                          batch_size=c.batch_size, normalize=c.normalize)

    # sample_tasks (the split's eligible categories in reshuffled rounds, so none repeats before all have
    # been used) and adapt: ImageClassificationAdapter

    def held_out_metrics(self, task: TieredTask, model: nn.Module) -> dict[str, float]:
        """Loss and accuracy over all ``ways × test_per_class`` held-out images, ``eval_batch_size`` at a
        time; BatchNorm uses the running statistics of this task's own training (docs/warpgrad.md §6)."""
        total_loss, correct = 0.0, 0
        for start in range(0, len(task.test_index), self.config.eval_batch_size):
            rows = slice(start, start + self.config.eval_batch_size)
            x = task.tensors(task.test_index[rows])
            y = task.labels(task.test_labels[rows])
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        n = len(task.test_index)
        return {"test_loss": total_loss / n, "test_accuracy": correct / n}
