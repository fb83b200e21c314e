"""Write tieredImageNet releases in the original format, for tests and the tiny end-to-end config.

:func:`write_tiered_pickles` writes ``{split}_images_png.pkl`` / ``{split}_labels.pkl`` as the release did
(OpenCV PNG buffers, a labels dict), including Python-2 style protocol-2 streams; :func:`make_tiny_tiered`
builds a small learnable release. From the command line (what ``configs/tiered_leap_tiny.yaml`` needs)::

    python tests/tiered_fixture.py data/tiered_tiny --images-per-class 30
"""

from __future__ import annotations

import argparse
import io
import math
import pickle
import struct
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):       # run as a script: the repository root holds the `train` package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.tasks.tiered_data import IMAGE_SHAPE, SPLITS, images_path, labels_path  # noqa: E402


class _Python2Pickler(pickle._Pickler):      # the pure-Python pickler, whose dispatch table can be extended
    """Writes protocol-2 streams as Python 2 did: ``str`` and ``bytes`` both become Python-2 ``str`` opcodes
    (SHORT_BINSTRING / BINSTRING) and NumPy's reconstructor is named ``numpy.core.multiarray``. Python 3
    reads such a stream only with ``encoding="latin1"`` (or ``"bytes"``) once a string holds a non-ASCII
    byte — as every PNG buffer does (its signature starts with 0x89)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or pickle.whichmodule(obj, name)
        name = name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core"):]
        self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        self.memoize(obj)


def _dump(obj: Any, path: Path, protocol: int, py2: bool) -> None:
    buf = io.BytesIO()
    if py2:
        _Python2Pickler(buf, 2).dump(obj)
    else:
        pickle.dump(obj, buf, protocol=protocol)
    path.write_bytes(buf.getvalue())


def write_tiered_pickles(root: str | Path, split: str, images: np.ndarray, specific: Sequence[int] | np.ndarray,
                         general: Sequence[int] | np.ndarray, specific_str: Sequence[str],
                         general_str: Sequence[str], protocol: int = pickle.HIGHEST_PROTOCOL,
                         bytes_keys: bool = False, py2: bool = False) -> tuple[Path, Path]:
    """Write ``{split}_images_png.pkl`` and ``{split}_labels.pkl`` under ``root`` in the release's format.

    ``images``: (N, 84, 84, 3) uint8 **RGB**; each is converted to BGR and encoded with ``cv2.imencode``
    (a 1-D uint8 array per image, as in the release). Labels are stored as int64 arrays, names as lists.
    ``bytes_keys``: the labels dict uses ``b"label_specific"`` etc. ``py2``: write protocol-2 streams as
    Python 2 would have (see :class:`_Python2Pickler`; ``protocol`` and ``bytes_keys`` are then ignored).
    Returns (images path, labels path)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be (N, 84, 84, 3) uint8, got {images.dtype} {images.shape}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    buffers = []
    for image in images:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:
            raise ValueError("cv2.imencode failed")
        buffers.append(buf.reshape(-1))
    labels = {"label_specific": np.asarray(specific, dtype=np.int64),
              "label_general": np.asarray(general, dtype=np.int64),
              "label_specific_str": [str(s) for s in specific_str],
              "label_general_str": [str(s) for s in general_str]}
    if bytes_keys and not py2:
        labels = {k.encode("ascii"): v for k, v in labels.items()}
    ipath, lpath = images_path(root, split), labels_path(root, split)
    _dump(buffers, ipath, protocol, py2)
    _dump(labels, lpath, protocol, py2)
    return ipath, lpath


def make_tiny_tiered(root: str | Path, seed: int = 0, categories: int = 2, classes_per_category: int = 12,
                     images_per_class: int = 60, splits: Sequence[str] = SPLITS, **write_kwargs: Any) -> Path:
    """A small synthetic release under ``root`` (every split: ``categories`` × ``classes_per_category`` ×
    ``images_per_class`` distinct images), learnable: each class is a smooth colour pattern of its own plus
    per-image blocky noise and a random shift. Class and category names are unique across splits; ids restart at
    0 in every split, as in the release. Returns ``root``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:84, 0:84].astype(np.float32) / 84.0
    offset = 0
    for split in splits:
        n_classes = categories * classes_per_category
        images = np.empty((n_classes * images_per_class, *IMAGE_SHAPE), dtype=np.uint8)
        for c in range(n_classes):
            colour = rng.uniform(40, 215, size=3).astype(np.float32)
            freq = rng.uniform(1.0, 4.0, size=(3, 2)).astype(np.float32)
            phase = rng.uniform(0, 2 * math.pi, size=3).astype(np.float32)
            base = np.stack([colour[k] + 35 * np.sin(2 * math.pi * (freq[k, 0] * xx + freq[k, 1] * yy) + phase[k])
                             for k in range(3)], axis=-1)
            # blocky 4×4-pixel noise: cheap to draw and to PNG-encode, and still distinct per image
            noise = rng.standard_normal((images_per_class, 21, 21, 3), dtype=np.float32) * 12
            noise = noise.repeat(4, axis=1).repeat(4, axis=2)
            for i in range(images_per_class):
                noise[i] += np.roll(base, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
            images[c * images_per_class:(c + 1) * images_per_class] = np.clip(noise, 0, 255).astype(np.uint8)
        specific = np.repeat(np.arange(n_classes), images_per_class)
        general = specific // classes_per_category
        specific_str = [f"n{offset + c:08d}" for c in range(n_classes)]
        general_str = [f"{split}-category-{g}" for g in range(categories)]
        write_tiered_pickles(root, split, images, specific, general, specific_str, general_str, **write_kwargs)
        offset += n_classes
    return Path(root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/tiered_fixture.py", description="write a tiny synthetic "
                                "tieredImageNet release in the original format (make_tiny_tiered)")
    p.add_argument("root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-class", type=int, default=60)
    args = p.parse_args(argv)
    print(make_tiny_tiered(args.root, seed=args.seed, images_per_class=args.images_per_class))
    return 0


if __name__ == "__main__":
    sys.exit(main())
