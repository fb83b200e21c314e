"""Multi-shot Omniglot (Leap protocol, reused by WarpGrad; docs/protocols.md §1).

Data: both official splits (images_background + images_evaluation) merged, 50 alphabets / 1623 characters /
32,460 drawings, decoded once to 28×28 uint8 and cached as an ``.npz``. Alphabets with fewer than ``ways``
characters are dropped (46 remain for 20-way); the rest are shuffled with the split seed into meta-train
(first ``num_pretrain``), held-out test (next ``num_test``) and validation (the remainder).

Task: one alphabet, ``ways`` characters drawn from it (labels in draw order); per character the first
``test_per_class`` files in sorted order are held out and the next ``train_per_class`` train the learner.
Training batches come from an index stream with exactly ``steps`` batches per epoch; every image the
learner sees (train, query and test) goes through a random affine augmentation, as in the original code.

Model: OmniConv, 4 × [conv 3×3 → max-pool 2×2 → BatchNorm → ReLU] (pool *before* BN) → Linear head, with
optional warp layers after each block. Parameter names: ``blocks.*`` and ``head.*`` are task parameters,
``warps.*`` are warp (meta) parameters.

Deviations from the original code, on purpose:
- PNGs are converted to 8-bit grey *before* the LANCZOS resize. The original resized the 1-bit images
  directly, and Pillow silently uses NEAREST for mode "1", so its 28×28 images were binary.
- Augmentation samples bilinearly with continuous translations (torchvision: nearest, whole pixels).
- Alphabets are shuffled with NumPy's generator, so seed s holds out other alphabets than Leap's seed s.

The data layer (zip / folder reader, PNG decoding, the decoded-image cache) is train/tasks/omniglot_data.py;
its names are re-exported here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .image_classification import (ClassificationTask, ImageClassificationAdapter, WarpFactory, autocast,
                                   build_warps, check_precision, init_task_layers)
from .omniglot_data import DEFAULT_CACHE_DIR, OmniglotData, load_omniglot


# ------------------------------------------------------------------------------------------------
# augmentation and batches


def random_affine(images: Tensor, generator: torch.Generator, degrees: tuple[float, float] = (0.0, 360.0),
                  translate: float = 0.2, scale: tuple[float, float] = (0.8, 1.2), fill: float = 0.0) -> Tensor:
    """Per-image random rotation, translation (± ``translate`` of height/width) and scale about the image
    centre; pixels from outside the source get ``fill``. ``images`` is (B, C, H, W) float."""
    b = images.shape[0]
    angle = torch.empty(b).uniform_(math.radians(degrees[0]), math.radians(degrees[1]), generator=generator)
    shift = torch.empty(b, 2).uniform_(-translate, translate, generator=generator)
    s = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    # affine_grid maps output coordinates to input ones, so it takes the inverse map: for
    # out = s·R(a)·in + t it is in = R(−a)/s · (out − t). Normalised coords span 2 per side, hence 2·shift.
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)      # R(−a)/s
    t = 2.0 * shift
    theta = torch.cat([inv, -(inv @ t.unsqueeze(-1))], dim=-1).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


class IndexStream:
    """Training indices in epochs of exactly ``steps`` batches.

    ``"mod"`` (original code): one epoch is ``randperm(steps·batch) mod n``. Note that when
    steps·batch < n it only reaches images 0 … steps·batch − 1, i.e. the first few classes.
    ``"cycle"``: concatenated random permutations of all n images, cut to steps·batch — each image is
    used ⌊·⌋ or ⌈·⌉ times and a short epoch is a uniform subset.
    Neither balances classes within a batch (the protocol does not).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, mode: str = "mod",
                 steps: int | None = None) -> None:
        if mode not in ("mod", "cycle"):
            raise ValueError(f"unknown sampler {mode!r}; choose mod or cycle")
        self.n, self.batch_size, self.generator, self.mode = n, batch_size, generator, mode
        self.steps = steps or max(1, n // batch_size)     # default: one pass over the images
        self._batches: list[Tensor] = []

    def reset(self, steps: int) -> None:
        """Start a new epoch of ``steps`` batches at the next call."""
        self.steps = steps
        self._batches = []

    def epoch(self) -> list[Tensor]:
        total = self.steps * self.batch_size
        if self.mode == "mod":
            idx = torch.randperm(total, generator=self.generator) % self.n
        else:
            reps = -(-total // self.n)
            idx = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(reps)])[:total]
        return list(idx.split(self.batch_size))

    def next(self) -> Tensor:
        if not self._batches:
            self._batches = self.epoch()
        return self._batches.pop(0)


class OmniglotTask(ClassificationTask):
    """One alphabet, ``ways``-way. ``batch(split)`` returns ``(images (B, 1, H, W) float, labels (B,))``.

    Each stream has its own generator seeded from the task seed, so the training batches do not depend
    on how often the query or test split was drawn. :meth:`reset` (called by the adapter before adapting)
    re-seeds them: adapting the same task twice sees identical batches. The test batch is the same
    augmented draw of all held-out images at every call, so evaluation is a function of the model.
    """

    def __init__(self, key: str, characters: Sequence[str], train_images: Tensor, train_labels: Tensor,
                 test_images: Tensor, test_labels: Tensor, seed: int, batch_size: int = 20,
                 augment: bool = True, sampler: str = "mod", invert: bool = False,
                 train_index: np.ndarray | None = None, test_index: np.ndarray | None = None) -> None:
        self.key = key
        self.characters = list(characters)
        self.train_images, self.train_labels = train_images, train_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.train_index, self.test_index = train_index, test_index   # rows of OmniglotData.images
        self.seed, self.batch_size, self.augment, self.invert = seed, batch_size, augment, invert
        self._seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64) >> 1]
        self._gens = [torch.Generator() for _ in range(3)]    # train indices, train augmentation, query
        self.stream = IndexStream(len(train_labels), batch_size, self._gens[0], sampler)
        self.reset(self.stream.steps)

    def __repr__(self) -> str:
        return f"OmniglotTask(key={self.key!r}, ways={len(self.characters)}, seed={self.seed})"

    def reset(self, steps: int | None = None) -> None:
        """Re-seed the streams; the next ``steps`` training batches form one epoch (None: as before)."""
        for g, s in zip(self._gens, self._seeds):
            g.manual_seed(s)
        self.stream.reset(steps if steps is not None else self.stream.steps)

    def _images(self, raw: Tensor, generator: torch.Generator) -> Tensor:
        # uint8 up to the task's device, augmented there (the affine draws come from the CPU generator)
        x = raw.to(self.device).unsqueeze(1).float().div_(255.0)
        if self.invert:
            x = 1.0 - x
        return random_affine(x, generator) if self.augment else x

    def train_batch(self) -> tuple[Tensor, Tensor]:
        idx = self.stream.next()
        return self._images(self.train_images[idx], self._gens[1]), self.train_labels[idx].to(self.device)

    def query_batch(self) -> tuple[Tensor, Tensor]:     # held-out images for MAML's outer loss
        idx = torch.randperm(len(self.test_labels), generator=self._gens[2])[:self.batch_size]
        return self._images(self.test_images[idx], self._gens[2]), self.test_labels[idx].to(self.device)

    def test_batch(self) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self._seeds[3])
        return self._images(self.test_images, g), self.test_labels.to(self.device)

    def held_out_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The test batch (every held-out image, its augmentation) cut into batches of ``batch_size`` in a
        random order fixed per task: how the original code feeds held-out images to MAML's outer loss and to
        any evaluation with batch statistics, where the batches' make-up changes the result."""
        x, y = self.test_batch()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self._seeds[3] + 1)).to(y.device)
        return [(x[i], y[i]) for i in order.split(self.batch_size)]


# ------------------------------------------------------------------------------------------------
# model


class ConvBlock(nn.Module):
    """Conv 3×3 (pad 1) → MaxPool 2×2 → BatchNorm → ReLU: pooling *before* BN, as in the Leap code."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        # BatchNorm's statistics in fp32 under bf16 autocast (which would run it in bf16); no-op in fp32
        return self.relu(self.bn(self.pool(self.conv(x)).float()))


class OmniConv(nn.Module):
    """The Omniglot classifier: 28 → 14 → 7 → 3 → 1 over four blocks, then ``head`` Linear(filters → classes).

    ``warp(channels)`` (optional) builds one warp layer inserted after each block. Names: ``blocks.i.conv``,
    ``blocks.i.bn``, ``warps.i``, ``head`` — task parameters are everything not under ``warps.``.
    With ``generator`` the initialisation is drawn from it (warp layers are built under a forked global
    RNG seeded from it, so they keep their own init scheme and stay reproducible). ``precision``: fp32 or
    bf16 (autocast inside the forward; fp32 logits; train/tasks/image_classification.py ``PRECISIONS``).
    """

    def __init__(self, num_classes: int = 20, filters: int = 64, layers: int = 4, in_channels: int = 1,
                 warp: Callable[[int], nn.Module] | None = None, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision)
        self.precision = precision
        self.blocks = nn.ModuleList([ConvBlock(in_channels if i == 0 else filters, filters) for i in range(layers)])
        self.warps = (build_warps(lambda: nn.ModuleList([warp(filters) for _ in range(layers)]), generator)
                      if warp is not None else None)
        self.head = nn.Linear(filters, num_classes)
        if generator is not None:
            init_task_layers([*self.blocks.modules(), self.head], generator)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        with autocast(self.precision, x.device.type):
            for i, block in enumerate(self.blocks):
                x = block(x)
                if self.warps is not None:
                    x = self.warps[i](x)
            logits = self.head(x.flatten(1))     # flatten(1), not squeeze(): batch size 1 keeps its batch dim
        return logits.float()                    # the loss in fp32 (no-op in fp32)


def conv_warp(channels: int) -> nn.Module:
    """WarpGrad's Omniglot warp layer: a linear 3×3 conv, zero padding, no activation or BN."""
    return nn.Conv2d(channels, channels, 3, padding=1)


WARPS: dict[str, Callable[[int], nn.Module] | None] = {"none": None, "conv": conv_warp}


# ------------------------------------------------------------------------------------------------
# adapter


BATCH_NORM_EVAL = ("running", "refit", "batch")


@dataclass
class OmniglotConfig:
    root: str = "../shared/data/omniglot"   # folder with the two official zips or their extracted folders
    cache_dir: str | None = DEFAULT_CACHE_DIR   # decoded-image cache; null disables it
    num_pretrain: int = 25          # meta-train alphabets (WarpGrad ablations: 25; Leap repo default: 20)
    num_test: int = 10              # held-out alphabets; validation gets the rest of the 46
    ways: int = 20                  # classes per task; alphabets with fewer characters are dropped
    train_per_class: int = 15
    test_per_class: int = 5         # the first files (sorted) of each character are held out
    batch_size: int = 20            # Leap repo 20; WarpGrad repo 128
    augment: bool = True            # random affine on train, query and test images (original code)
    sampler: str = "mod"            # mod: randperm(steps·batch) mod n (original); cycle: see IndexStream
    fixed_characters: bool = False  # True: each alphabet's characters/labels drawn once from the split seed
    invert: bool = False            # True: strokes 1 on background 0 (the original feeds raw: background 1)
    seed: int | None = None         # alphabet-split seed; null: the run seed
    filters: int = 64
    warp: str = "none"              # none | conv (linear 3×3 conv after each block, WarpGrad Omniglot)
    channels_last: bool = True      # CPU max-pool and conv are much faster in channels_last (docs/RESULTS.md)
    # fp32 | bf16: the model's forward under bf16 autocast, training and evaluation alike; weights, BatchNorm,
    # logits and loss stay fp32 (image_classification.PRECISIONS; `metarl bench omniglot-bf16-cosine`)
    precision: str = "fp32"
    # Held-out evaluation's BatchNorm statistics. running: eval() with the statistics gathered during the
    # task's own training (the original protocol); refit: re-estimated first by one pass over the task's
    # training images (not transductive), which removes their lag after short inner loops (docs/RESULTS.md);
    # batch: each held-out batch (OmniglotTask.held_out_batches) normalised by its own statistics, as the
    # original code evaluates MAML (it never calls eval()) — transductive (docs/protocols.md §1)
    batch_norm_eval: str = "running"

    def __post_init__(self) -> None:
        for name in ("num_pretrain", "num_test", "ways", "train_per_class", "test_per_class", "batch_size",
                     "filters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.sampler not in ("mod", "cycle"):
            raise ValueError(f"sampler must be mod or cycle, got {self.sampler!r}")
        if self.warp not in WARPS:
            raise ValueError(f"warp must be one of {', '.join(WARPS)}, got {self.warp!r}")
        if self.batch_norm_eval not in BATCH_NORM_EVAL:
            raise ValueError(f"batch_norm_eval must be running, refit or batch, got {self.batch_norm_eval!r}")
        check_precision(self.precision)


def refit_batch_norm(model: nn.Module, task: OmniglotTask) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the average over one augmented pass of the
    task's training images (batches of the task's size, order and augmentation from the task seed); the
    parameters are untouched."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None                       # cumulative average over the pass
    model.train()
    generator = torch.Generator().manual_seed(task.seed)
    order = torch.randperm(len(task.train_labels), generator=generator)
    with torch.no_grad():
        for idx in order.split(task.batch_size):
            model(task._images(task.train_images[idx], generator))
    return model


def batch_statistics(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers normalise with the statistics of the batch they see, in
    eval() mode too (no running statistics kept, none updated); the parameters are untouched."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model


class OmniglotAdapter(ImageClassificationAdapter):
    config: OmniglotConfig
    held_out_batches = True             # OmniglotTask.held_out_batches (MAML's outer_loss: held_out)
    data_keys, resume_mutable = ("root",), ("cache_dir",)      # TaskAdapter.data_keys

    def __init__(self, config: OmniglotConfig | None = None, seed: int | None = None,
                 data: OmniglotData | None = None, warp: WarpFactory | None = None) -> None:
        """``data`` skips loading (tests, several adapters on one decode); ``warp`` overrides ``config.warp``."""
        super().__init__(config or OmniglotConfig(), seed, warp)
        c = self.config
        self.data = data if data is not None else load_omniglot(c.root, c.cache_dir)
        self.split_seed = c.seed if c.seed is not None else (seed if seed is not None else 0)
        d = self.data
        per_char = np.diff(d.char_start)
        usable = per_char >= c.train_per_class + c.test_per_class
        counts = np.bincount(d.char_alphabet[usable], minlength=d.num_alphabets)
        # Eligible alphabets in name order, then one seeded shuffle decides the three splits.
        self.eligible = [str(a) for a, n in zip(d.alphabets, counts) if n >= c.ways]
        self._usable = {a: np.array([ch for ch in d.characters(a) if usable[ch]]) for a in self.eligible}
        if not usable.any():        # no character has enough drawings: the per-class sizes are the mistake
            raise ConfigError(f"omniglot.train_per_class + omniglot.test_per_class = "
                              f"{c.train_per_class + c.test_per_class}: more than the {int(per_char.max(initial=0))} "
                              f"drawings any Omniglot character has")
        if c.num_pretrain + c.num_test >= len(self.eligible):
            raise ConfigError(f"omniglot.num_pretrain + omniglot.num_test must be below the {len(self.eligible)} "
                              f"alphabets with >= {c.ways} characters (got {c.num_pretrain} + {c.num_test})")
        order = [self.eligible[i] for i in np.random.default_rng(self.split_seed).permutation(len(self.eligible))]
        p, t = c.num_pretrain, c.num_pretrain + c.num_test
        self.alphabets: dict[str, list[str]] = {"train": order[:p], "test": order[p:t], "val": order[t:]}

    def configured_warp(self) -> WarpFactory | None:
        return WARPS[self.config.warp]

    def make_model(self, generator: torch.Generator, task: Any = None) -> OmniConv:    # same for every task
        c = self.config
        model = OmniConv(c.ways, c.filters, warp=self.warp, generator=generator, precision=c.precision)
        return model.to(memory_format=torch.channels_last) if c.channels_last else model

    def task_pool(self, split: str) -> list[str]:
        """The alphabets of ``split``."""
        if split not in self.alphabets:
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        return self.alphabets[split]

    def make_task(self, split: str, alphabet: str, rng: np.random.Generator) -> OmniglotTask:
        """One task of ``alphabet`` (of any split); characters (and so labels) and the task seed come from
        ``rng``."""
        c, d = self.config, self.data
        pool = self._usable[alphabet]
        char_rng = (np.random.default_rng([self.split_seed, self.eligible.index(alphabet)])
                    if c.fixed_characters else rng)
        chars = char_rng.choice(pool, size=c.ways, replace=False)
        held, train = [], []
        for ch in chars:
            rows = d.drawings(int(ch))
            held.append(rows[:c.test_per_class])
            train.append(rows[c.test_per_class:c.test_per_class + c.train_per_class])
        held_idx, train_idx = np.concatenate(held), np.concatenate(train)
        labels = np.arange(c.ways)
        return OmniglotTask(
            alphabet, [str(d.char_names[ch]) for ch in chars],
            torch.from_numpy(d.images[train_idx]), torch.from_numpy(np.repeat(labels, c.train_per_class)),
            torch.from_numpy(d.images[held_idx]), torch.from_numpy(np.repeat(labels, c.test_per_class)),
            seed=int(rng.integers(2**62)), batch_size=c.batch_size, augment=c.augment, sampler=c.sampler,
            invert=c.invert, train_index=train_idx, test_index=held_idx)

    # sample_tasks (alphabets in reshuffled rounds, as the original meta-batches) and adapt (exactly `steps`
    # training batches per epoch; the closing loss opens the next): ImageClassificationAdapter

    def evaluation_model(self, task: OmniglotTask, model: nn.Module) -> nn.Module:
        """``model``, or (``batch_norm_eval: refit``) a copy with BatchNorm statistics re-estimated on the
        task's training images, or (``batch``) a copy normalising with batch statistics; otherwise evaluation
        uses those gathered during the task's own training."""
        mode = self.config.batch_norm_eval
        if mode == "refit":
            return refit_batch_norm(model, task)
        return batch_statistics(model) if mode == "batch" else model

    def held_out_metrics(self, task: OmniglotTask, model: nn.Module) -> dict[str, float]:
        """Loss and accuracy on the test batch (one augmented draw of all held-out images). Under
        ``batch_norm_eval: batch`` the same images in the task's held-out batches, as the original scores
        them: the loss is the mean over batches, the accuracy over images."""
        if self.config.batch_norm_eval == "batch":
            losses, correct, total = [], 0, 0
            for x, y in task.held_out_batches():
                logits = model(x)
                losses.append(float(F.cross_entropy(logits, y)))
                correct += int((logits.argmax(-1) == y).sum())
                total += len(y)
            return {"test_loss": float(np.mean(losses)), "test_accuracy": correct / total}
        x, y = task.batch("test")
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return {"test_loss": float(loss), "test_accuracy": float(acc)}
