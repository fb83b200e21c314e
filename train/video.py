"""Episode videos: MP4 files (imageio with imageio-ffmpeg's ffmpeg) and animated GIFs for TensorBoard.

TensorBoard has no video dashboard: a "video" is an animated GIF in an image summary, shown (animated) by the
images dashboard. torch's ``SummaryWriter.add_video`` builds that GIF with ``moviepy.editor``, which moviepy 2
removed — add_video then only prints a warning and writes an empty image —, so the GIF is encoded here with
imageio (Pillow) and written as the same kind of summary, with no moviepy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """(T, H, W, 3) uint8 frames → an H.264 MP4 at ``path`` (its folder created), written to a temp file and
    renamed, so a killed run leaves no half-written video under the final name."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    # H.264 in yuv420p needs even sides; macro_block_size=2 keeps Atari's 210 × 160 as it is (16, imageio's
    # default, would scale it to 224 × 160).
    iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps, macro_block_size=2)
    tmp.replace(path)
    return path


def is_mp4(path: str | Path) -> bool:
    """Whether ``path`` holds a whole MP4: top-level boxes that tile the file exactly, among them ``ftyp``,
    ``moov`` (the index, written last by FFmpeg) and ``mdat`` (the frames). A truncated or foreign file fails."""
    import struct
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    seen, at = set(), 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size == 1 and at + 16 <= len(data):          # a 64-bit size follows
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        elif size == 0:                                  # the last box runs to the end of the file
            size = len(data) - at
        if size < 8:
            return False
        seen.add(kind)
        at += size
    return at == len(data) and {b"ftyp", b"moov", b"mdat"} <= seen


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """(T, H, W, 3) uint8 frames → the bytes of an animated GIF (Pillow, through imageio)."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)


def gif_summary(tag: str, gif: bytes):
    """A TensorBoard image summary holding the animated GIF ``gif`` (what add_video writes); its size is read
    from the GIF's header (bytes 6–9: width, height, little-endian), so a stored GIF needs no frames."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = int.from_bytes(gif[6:8], "little"), int.from_bytes(gif[8:10], "little")
    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3,
                                                                     encoded_image_string=gif))])
