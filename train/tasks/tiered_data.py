"""tieredImageNet's data layer (train/tasks/tiered.py): reading the original release.

Data: the original release of Ren et al. (2018) in a folder ``root`` holding, for split ∈ {train, val, test},

- ``{split}_images_png.pkl`` — a pickled list with one PNG-encoded image per entry (the 1-D uint8 buffer
  that OpenCV's ``imencode`` returns; raw ``bytes`` are accepted too);
- ``{split}_labels.pkl`` — a pickled dict with ``label_specific`` (class id of every image), ``label_general``
  (category id of every image), ``label_specific_str`` and ``label_general_str`` (names, indexed by id).

The pickles were written by Python 2. Reading tries Python 3's default settings first and falls back to
``encoding="latin1"`` (which NumPy needs for Python-2 arrays); ``bytes`` dict keys (``b"label_specific"``,
left by readers that used ``encoding="bytes"``) and ``bytes`` names are normalised to ``str``. The PNG buffers
stay encoded in memory (the real train split has 448,695 images; decoded it would need 9.5 GB): images are
decoded on demand, one batch at a time, through a small LRU cache of decoded images.

Channel order: OpenCV decodes to **BGR**; :func:`decode_png` converts to **RGB**, so every array this module
returns is (84, 84, 3) uint8 RGB, as Pillow would decode the same file. The test fixture that writes releases
(``tests/tiered_fixture.py``) takes RGB and converts it to BGR before ``imencode``, so its files carry the
original colours.

Loading a pickle can run code stored in it: only point ``root`` at a release you trust.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (84, 84, 3)
LABEL_KEYS = ("label_specific", "label_general", "label_specific_str", "label_general_str")


def images_path(root: str | Path, split: str) -> Path:
    return Path(root).expanduser() / f"{split}_images_png.pkl"


def labels_path(root: str | Path, split: str) -> Path:
    return Path(root).expanduser() / f"{split}_labels.pkl"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# reading the original pickles


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path``: default settings first, then ``encoding="latin1"`` for Python-2 pickles (whose
    ``str`` objects hold arbitrary bytes, e.g. NumPy array data, that the default ASCII decoding rejects).
    A missing, unreadable or damaged file raises :class:`DataError` with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tieredImageNet: file {path} does not exist")
    for encoding in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding=encoding)
        except UnicodeDecodeError as e:
            if encoding == "latin1":      # latin1 maps every byte: not reached in practice
                raise DataError(f"tieredImageNet: cannot unpickle {path} ({_one_line(e)})") from None
        except OSError as e:
            raise DataError(f"tieredImageNet: cannot read {path} ({_one_line(e)})") from None
        except Exception as e:            # truncated or corrupt stream: pickle raises many exception types
            raise DataError(f"tieredImageNet: {path} is not a readable pickle ({_one_line(e)})") from None
    raise AssertionError("unreachable")


def _as_str(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, (bytes, bytearray)) else value


def _int_labels(value: Any, key: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):      # ragged or otherwise not an array
        arr = np.asarray([None])
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(f"tieredImageNet: {key!r} in {path} must be a 1-D integer array "
                        f"(got {arr.dtype} with shape {arr.shape})")
    if arr.size and arr.min() < 0:
        raise DataError(f"tieredImageNet: {key!r} in {path} has negative ids")
    return arr.astype(np.int64)


def _names(value: Any, key: str, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"tieredImageNet: {key!r} in {path} must be a list of names, got {type(value).__name__}")
    return [str(_as_str(v)) for v in value]


def decode_png(buffer: Any) -> np.ndarray:
    """One PNG buffer (1-D uint8 array or bytes) → RGB uint8 array; ValueError if it is not an 84×84×3 PNG.
    OpenCV decodes to BGR; the channels are reversed here."""
    if isinstance(buffer, (bytes, bytearray, memoryview)):
        buffer = np.frombuffer(buffer, dtype=np.uint8)
    if not isinstance(buffer, np.ndarray) or buffer.dtype != np.uint8 or buffer.ndim != 1 or buffer.size == 0:
        got = f"{buffer.dtype} array of shape {buffer.shape}" if isinstance(buffer, np.ndarray) \
            else type(buffer).__name__
        raise ValueError(f"expected a 1-D uint8 PNG buffer, got {got}")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)      # keeps the stored channel count and depth
    if image is None:
        raise ValueError("not a decodable image")
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise ValueError(f"decoded to {image.dtype} {'×'.join(map(str, image.shape))}, expected uint8 84×84×3")
    return np.ascontiguousarray(image[:, :, ::-1])


class TieredSplit:
    """One split of the release: encoded images, per-image labels and the class / category structure.

    ``class_images[c]`` are the image indices of class ``c`` (ascending); ``category_classes[g]`` are the
    classes of category ``g`` (ascending). :meth:`images` decodes rows on demand through an LRU cache of
    ``cache_size`` decoded images.
    """

    def __init__(self, root: str | Path, split: str, cache_size: int = 2048) -> None:
        self.split = split
        self.images_path, self.labels_path = images_path(root, split), labels_path(root, split)
        labels = load_pickle(self.labels_path)
        if not isinstance(labels, dict):
            raise DataError(f"tieredImageNet: {self.labels_path} must hold a dict, got {type(labels).__name__}")
        labels = {_as_str(k): v for k, v in labels.items()}
        missing = [k for k in LABEL_KEYS[:2] if k not in labels]
        if missing:
            raise DataError(f"tieredImageNet: {self.labels_path} lacks the key(s) {', '.join(missing)} "
                            f"(has {', '.join(map(str, labels))})")
        self.specific = _int_labels(labels["label_specific"], "label_specific", self.labels_path)
        self.general = _int_labels(labels["label_general"], "label_general", self.labels_path)
        self.specific_str = _names(labels.get("label_specific_str"), "label_specific_str", self.labels_path)
        self.general_str = _names(labels.get("label_general_str"), "label_general_str", self.labels_path)
        if len(self.specific) != len(self.general):
            raise DataError(f"tieredImageNet: {self.labels_path} has {len(self.specific)} label_specific but "
                            f"{len(self.general)} label_general entries")

        png = load_pickle(self.images_path)
        if isinstance(png, np.ndarray) and png.dtype == object and png.ndim == 1:
            png = list(png)
        if not isinstance(png, (list, tuple)):
            raise DataError(f"tieredImageNet: {self.images_path} must hold a list of PNG buffers, "
                            f"got {type(png).__name__}")
        if len(png) != len(self.specific):
            raise DataError(f"tieredImageNet: {self.images_path} holds {len(png)} images but "
                            f"{self.labels_path} labels {len(self.specific)}")
        if not png:
            raise DataError(f"tieredImageNet: {self.images_path} holds no images")
        self.png: Sequence[Any] = png

        # class → images, class → category (must be unique), category → classes
        order = np.argsort(self.specific, kind="stable")
        classes, starts = np.unique(self.specific[order], return_index=True)
        bounds = np.append(starts, len(order))
        self.class_images = {int(c): order[bounds[i]:bounds[i + 1]] for i, c in enumerate(classes)}
        self.class_category: dict[int, int] = {}
        for c, rows in self.class_images.items():
            cats = np.unique(self.general[rows])
            if len(cats) != 1:
                raise DataError(f"tieredImageNet: class {c} in {self.labels_path} belongs to "
                                f"{len(cats)} categories ({', '.join(map(str, cats[:4]))})")
            self.class_category[c] = int(cats[0])
        by_category: dict[int, list[int]] = {}
        for c, g in sorted(self.class_category.items()):
            by_category.setdefault(g, []).append(c)
        self.category_classes = {g: np.asarray(cs, dtype=np.int64) for g, cs in sorted(by_category.items())}

        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.image(0)        # fail early on a release whose images are not 84×84×3 PNGs

    def __len__(self) -> int:
        return len(self.png)

    def __repr__(self) -> str:
        return (f"TieredSplit({self.split!r}, images={len(self)}, classes={len(self.class_images)}, "
                f"categories={len(self.category_classes)})")

    def class_name(self, c: int) -> str:
        return self.specific_str[c] if c < len(self.specific_str) else f"class-{c}"

    def category_name(self, g: int) -> str:
        return self.general_str[g] if g < len(self.general_str) else f"category-{g}"

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as (84, 84, 3) uint8 RGB (cached)."""
        index = int(index)
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        try:
            image = decode_png(self.png[index])
        except (ValueError, TypeError, cv2.error) as e:
            raise DataError(f"tieredImageNet: image {index} of {self.images_path} is not an 84×84×3 PNG "
                            f"({_one_line(e)})") from None
        image.setflags(write=False)     # shared with the cache
        if self.cache_size > 0:
            self._cache[index] = image
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image

    def images(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``index`` as (n, 84, 84, 3) uint8 RGB."""
        out = np.empty((len(index), *IMAGE_SHAPE), dtype=np.uint8)
        for i, j in enumerate(index):
            out[i] = self.image(j)
        return out

