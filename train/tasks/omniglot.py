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
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .image_classification import (ClassificationTask, ImageClassificationAdapter, WarpFactory, build_warps,
                                   init_task_layers)

SPLITS = ("images_background", "images_evaluation")
DEFAULT_CACHE_DIR = "~/.cache/metarl"
_CACHE_FORMAT = 1                  # bump when the decoded representation changes
_ARRAYS = ("images", "files", "char_start", "char_names", "char_alphabet", "alphabets", "alphabet_split")


# ------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class OmniglotData:
    """All decoded drawings, sorted by (alphabet, character, file name).

    The drawings of character ``c`` are ``images[char_start[c]:char_start[c + 1]]``; ``files`` names the
    PNG each row came from, so "the first 5 files of a character" is well defined.
    """

    images: np.ndarray          # (N, H, W) uint8, white (255) background, black strokes, as in the PNGs
    files: np.ndarray           # (N,) str, file name inside its character folder, e.g. "0709_01.png"
    char_start: np.ndarray      # (C + 1,) int64 offsets into images
    char_names: np.ndarray      # (C,) str, e.g. "character01"
    char_alphabet: np.ndarray   # (C,) int64 index into alphabets
    alphabets: np.ndarray       # (A,) str, sorted
    alphabet_split: np.ndarray  # (A,) str, "images_background" or "images_evaluation"

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_characters(self) -> int:
        return int(self.char_names.shape[0])

    @property
    def num_alphabets(self) -> int:
        return int(self.alphabets.shape[0])

    def characters(self, alphabet: str) -> np.ndarray:
        """Character indices of ``alphabet``, in folder-name order."""
        where = np.flatnonzero(self.alphabets == alphabet)
        if where.size != 1:
            raise KeyError(alphabet)
        return np.flatnonzero(self.char_alphabet == where[0])

    def drawings(self, character: int) -> np.ndarray:
        """Image indices of one character, in sorted file-name order."""
        return np.arange(self.char_start[character], self.char_start[character + 1])

    def characters_per_alphabet(self) -> dict[str, int]:
        counts = np.bincount(self.char_alphabet, minlength=self.num_alphabets)
        return {str(a): int(n) for a, n in zip(self.alphabets, counts)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Source:
    """One split, read either from its official zip or from an extracted folder."""

    def __init__(self, root: Path, split: str) -> None:
        self.split = split
        self.zip_path = root / f"{split}.zip"
        self.dir_path = root / split
        if self.zip_path.is_file():
            self.kind = "zip"
        elif self.dir_path.is_dir():
            self.kind = "dir"
        else:
            raise DataError(f"Omniglot: neither {self.zip_path} nor {self.dir_path}/ exists")

    @property
    def path(self) -> Path:
        return self.zip_path if self.kind == "zip" else self.dir_path

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """(name, size, mtime) of the source files: cheap to compute, changes when the data does."""
        if self.kind == "zip":
            st = self.zip_path.stat()
            return [(self.zip_path.name, st.st_size, st.st_mtime_ns)]
        out = []
        for dirpath, dirnames, filenames in os.walk(self.dir_path):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".png") and not name.startswith("."):
                    st = os.stat(os.path.join(dirpath, name))
                    out.append((os.path.relpath(os.path.join(dirpath, name), self.dir_path), st.st_size,
                                st.st_mtime_ns))
        return out

    def entries(self) -> Iterator[tuple[str, str, str, Callable[[], bytes], str]]:
        """(alphabet, character, file, reader, where) for every ``<alphabet>/<character>/<file>.png``."""
        if self.kind == "dir":
            for alphabet in sorted(p.name for p in self.dir_path.iterdir() if p.is_dir()):
                for character in sorted(p.name for p in (self.dir_path / alphabet).iterdir() if p.is_dir()):
                    folder = self.dir_path / alphabet / character
                    for name in sorted(p.name for p in folder.iterdir()
                                       if p.suffix == ".png" and not p.name.startswith(".")):
                        path = folder / name
                        yield alphabet, character, name, path.read_bytes, str(path)
            return
        try:
            archive = zipfile.ZipFile(self.zip_path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise DataError(f"Omniglot: {self.zip_path} is not a readable zip archive ({_one_line(e)})") from None
        with archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                # <split>/<alphabet>/<character>/<file>.png; skip folders and any packing debris
                if (info.is_dir() or len(parts) != 4 or parts[0] != self.split or not parts[3].endswith(".png")
                        or parts[3].startswith(".")):
                    continue
                yield (parts[1], parts[2], parts[3], lambda info=info: archive.read(info),
                       f"{self.zip_path}:{info.filename}")


def _decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        # Grey first: Pillow replaces LANCZOS by NEAREST for 1-bit images.
        return np.asarray(im.convert("L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _decode_all(sources: Sequence[_Source], size: int) -> dict[str, np.ndarray]:
    records: list[tuple[str, str, str, np.ndarray]] = []
    split_of: dict[str, str] = {}
    for source in sources:
        count = 0
        for alphabet, character, name, read, where in source.entries():
            if split_of.setdefault(alphabet, source.split) != source.split:
                raise DataError(f"Omniglot: alphabet {alphabet!r} appears in both {SPLITS[0]} and {SPLITS[1]}")
            try:
                image = _decode(read(), size)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"Omniglot: cannot read {where} ({_one_line(e)})") from None
            records.append((alphabet, character, name, image))
            count += 1
        if count == 0:
            raise DataError(f"Omniglot: no <alphabet>/<character>/*.png drawings in {source.path}")
    records.sort(key=lambda r: r[:3])
    alphabets = sorted(split_of)
    alphabet_index = {a: i for i, a in enumerate(alphabets)}
    char_keys = sorted({(r[0], r[1]) for r in records})
    char_index = {k: i for i, k in enumerate(char_keys)}
    counts = np.bincount([char_index[(r[0], r[1])] for r in records], minlength=len(char_keys))
    return {
        "images": np.stack([r[3] for r in records]),
        "files": np.array([r[2] for r in records]),
        "char_start": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "char_names": np.array([c for _, c in char_keys]),
        "char_alphabet": np.array([alphabet_index[a] for a, _ in char_keys], dtype=np.int64),
        "alphabets": np.array(alphabets),
        "alphabet_split": np.array([split_of[a] for a in alphabets]),
    }


def _read_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return {name: f[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None     # missing, stale or damaged: decode again and overwrite


def _write_cache(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Temp file + rename, so a reader never sees half a cache; an unwritable cache dir is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), **arrays)   # uncompressed: loading needs no decompression
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def cache_path(root: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
               image_size: int = 28) -> Path:
    """Where :func:`load_omniglot` caches the decoded data of ``root`` (the name hashes the sources)."""
    return Path(cache_dir).expanduser() / f"omniglot_{image_size}_{_source_key(_sources(root), image_size)}.npz"


def _sources(root: str | os.PathLike) -> list[_Source]:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"Omniglot: data folder {path} does not exist or is not a folder")
    return [_Source(path, split) for split in SPLITS]


def _source_key(sources: Sequence[_Source], image_size: int) -> str:
    h = hashlib.sha256(repr((_CACHE_FORMAT, image_size, [(s.split, s.kind, s.fingerprint()) for s in sources]))
                       .encode())
    return h.hexdigest()[:16]


def load_omniglot(root: str | os.PathLike, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
                  image_size: int = 28) -> OmniglotData:
    """Load both Omniglot splits from ``root``, which holds ``images_background.zip`` and
    ``images_evaluation.zip`` or their extracted folders (``<split>/<Alphabet>/characterNN/*.png``).

    The first call decodes every PNG; the result is cached in ``cache_dir`` (``None``: no cache) under a
    name derived from the sources' sizes and mtimes, so later calls only read the cache.
    Raises :class:`DataError` (one line, naming the path) for a missing folder, missing split or corrupt file.
    """
    sources = _sources(root)
    key = _source_key(sources, image_size)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / f"omniglot_{image_size}_{key}.npz"
        arrays = _read_cache(path, key)
        if arrays is not None:
            return OmniglotData(**arrays)
    arrays = _decode_all(sources, image_size)
    if path is not None:
        _write_cache(path, key, arrays)
    return OmniglotData(**arrays)


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
        return self.relu(self.bn(self.pool(self.conv(x))))


class OmniConv(nn.Module):
    """The Omniglot classifier: 28 → 14 → 7 → 3 → 1 over four blocks, then ``head`` Linear(filters → classes).

    ``warp(channels)`` (optional) builds one warp layer inserted after each block. Names: ``blocks.i.conv``,
    ``blocks.i.bn``, ``warps.i``, ``head`` — task parameters are everything not under ``warps.``.
    With ``generator`` the initialisation is drawn from it (warp layers are built under a forked global
    RNG seeded from it, so they keep their own init scheme and stay reproducible).
    """

    def __init__(self, num_classes: int = 20, filters: int = 64, layers: int = 4, in_channels: int = 1,
                 warp: Callable[[int], nn.Module] | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock(in_channels if i == 0 else filters, filters) for i in range(layers)])
        self.warps = (build_warps(lambda: nn.ModuleList([warp(filters) for _ in range(layers)]), generator)
                      if warp is not None else None)
        self.head = nn.Linear(filters, num_classes)
        if generator is not None:
            init_task_layers([*self.blocks.modules(), self.head], generator)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.warps is not None:
                x = self.warps[i](x)
        return self.head(x.flatten(1))     # flatten(1), not squeeze(): batch size 1 keeps its batch dim


def conv_warp(channels: int) -> nn.Module:
    """WarpGrad's Omniglot warp layer: a linear 3×3 conv, zero padding, no activation or BN."""
    return nn.Conv2d(channels, channels, 3, padding=1)


WARPS: dict[str, Callable[[int], nn.Module] | None] = {"none": None, "conv": conv_warp}


# ------------------------------------------------------------------------------------------------
# adapter


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
    # Held-out evaluation's BatchNorm statistics. running: eval() with the statistics gathered during the
    # task's own training (the original protocol); refit: re-estimated first by one pass over the task's
    # training images (not transductive), which removes their lag after short inner loops (docs/RESULTS.md)
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
        if self.batch_norm_eval not in ("running", "refit"):
            raise ValueError(f"batch_norm_eval must be running or refit, got {self.batch_norm_eval!r}")


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


class OmniglotAdapter(ImageClassificationAdapter):
    config: OmniglotConfig

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
        model = OmniConv(c.ways, c.filters, warp=self.warp, generator=generator)
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
        task's training images; otherwise evaluation uses those gathered during the task's own training."""
        return refit_batch_norm(model, task) if self.config.batch_norm_eval == "refit" else model

    def held_out_metrics(self, task: OmniglotTask, model: nn.Module) -> dict[str, float]:
        """Loss and accuracy on the test batch (one augmented draw of all held-out images)."""
        x, y = task.batch("test")
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return {"test_loss": float(loss), "test_accuracy": float(acc)}
