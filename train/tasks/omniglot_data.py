"""Omniglot's data layer (train/tasks/omniglot.py): both official splits read from their zip archives or
extracted folders, every PNG decoded once to ``image_size``² uint8 (8-bit grey *before* the LANCZOS resize:
Pillow silently uses NEAREST for 1-bit images) and cached as an uncompressed ``.npz`` whose name hashes the
sources' (name, size, mtime) fingerprint. Missing folders, missing splits and corrupt archives or images raise
:class:`DataError` (one line, naming the path).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError

SPLITS = ("images_background", "images_evaluation")
DEFAULT_CACHE_DIR = "~/.cache/metarl"
_CACHE_FORMAT = 1                  # bump when the decoded representation changes
ARRAYS = ("images", "files", "char_start", "char_names", "char_alphabet", "alphabets", "alphabet_split")


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
            return {name: f[name] for name in ARRAYS}
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

