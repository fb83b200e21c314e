"""tieredImageNet multi-shot adapter on small pickles written in the release's exact format.

The real release (≈13 GB) is not needed: ``tests/tiered_fixture.py`` writes ``{split}_images_png.pkl`` /
``{split}_labels.pkl`` as the original did (:func:`write_tiered_pickles`: OpenCV PNG buffers, a labels dict,
Python-2 style protocol-2 streams too), and :func:`make_tiny_tiered` builds a small learnable release for
the task tests.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarl.warpgrad import WarpGrad
from train.errors import ConfigError, DataError
from train.tasks.base import supervised_adapt
from train.tasks.tiered import TieredAdapter, TieredConfig, TieredConv
from train.tasks.tiered_data import TieredSplit, images_path, labels_path, load_pickle

from tiered_fixture import make_tiny_tiered, write_tiered_pickles

SMALL = dict(shots=12, test_per_class=6, batch_size=20, filters=(8, 8, 16, 16, 16, 16), cache_images=256)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """2 categories × 12 classes × 30 images in every split."""
    return make_tiny_tiered(tmp_path_factory.mktemp("tiered"), seed=0, images_per_class=30)


@pytest.fixture(scope="module")
def adapter(tiny_root) -> TieredAdapter:
    return TieredAdapter(TieredConfig(root=str(tiny_root), **SMALL), seed=0)


def _distinct_images(n: int, seed: int = 0) -> np.ndarray:
    """n random RGB images whose three channels differ, so a BGR/RGB swap cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
    images[:, 0, 0] = [[250, 10, 120]] * n          # one pixel whose channel order is known
    return images


def _write_small(root: Path, split: str = "train", **kwargs) -> tuple[np.ndarray, dict]:
    images = _distinct_images(12)
    labels = dict(specific=np.repeat(np.arange(4), 3), general=np.array([0] * 6 + [1] * 6),
                  specific_str=["n001", "n002", "n003", "n004"], general_str=["dogs", "tools"])
    write_tiered_pickles(root, split, images, **labels, **kwargs)
    return images, labels


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message


# ------------------------------------------------------------------------------------------------
# reading the release format


@pytest.mark.parametrize("kwargs", [{}, {"bytes_keys": True}, {"protocol": 2}, {"py2": True}],
                         ids=["str-keys", "bytes-keys", "protocol2", "python2"])
def test_round_trip(tmp_path, kwargs):
    images, labels = _write_small(tmp_path, **kwargs)
    split = TieredSplit(tmp_path, "train")
    assert len(split) == 12
    decoded = split.images(np.arange(12))
    assert decoded.shape == (12, 84, 84, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images)                      # RGB in, RGB out
    assert tuple(decoded[0, 0, 0]) == (250, 10, 120)
    np.testing.assert_array_equal(split.specific, labels["specific"])
    np.testing.assert_array_equal(split.general, labels["general"])
    assert split.specific_str == labels["specific_str"] and split.general_str == labels["general_str"]
    assert all(isinstance(s, str) for s in split.specific_str + split.general_str)
    assert {c: r.tolist() for c, r in split.class_images.items()} == {c: [3 * c, 3 * c + 1, 3 * c + 2]
                                                                      for c in range(4)}
    assert {g: c.tolist() for g, c in split.category_classes.items()} == {0: [0, 1], 1: [2, 3]}
    assert split.category_name(1) == "tools" and split.class_name(2) == "n003"


def test_buffers_are_opencv_pngs_with_true_colours(tmp_path):
    """The stored buffers are 1-D uint8 arrays (as ``cv2.imencode`` returns) of PNGs that any decoder
    (here Pillow, which yields RGB) reads back as the original RGB image."""
    images, _ = _write_small(tmp_path)
    buffers = load_pickle(images_path(tmp_path, "train"))
    assert isinstance(buffers, list) and len(buffers) == 12
    assert all(isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1 for b in buffers)
    with Image.open(io.BytesIO(buffers[5].tobytes())) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), images[5])


def test_python2_pickle_needs_latin1(tmp_path):
    """A Python-2 stream (protocol 2, py2 ``str`` opcodes holding the arrays' raw bytes) fails under
    Python 3's default ASCII decoding, as the real release does; the loader falls back to latin1."""
    _write_small(tmp_path, py2=True)
    for path in (images_path(tmp_path, "train"), labels_path(tmp_path, "train")):
        raw = path.read_bytes()
        assert raw[:2] == b"\x80\x02" and b"numpy.core.multiarray" in raw
        opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
        assert opcodes & {"SHORT_BINSTRING", "BINSTRING"}                     # Python 2 str
        assert not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
    with pytest.raises(UnicodeDecodeError):          # every PNG starts with byte 0x89
        pickle.loads(images_path(tmp_path, "train").read_bytes())
    as_bytes = pickle.loads(labels_path(tmp_path, "train").read_bytes(), encoding="bytes")
    assert b"label_specific" in as_bytes and as_bytes[b"label_general_str"] == [b"dogs", b"tools"]
    labels = load_pickle(labels_path(tmp_path, "train"))
    assert sorted(labels) == ["label_general", "label_general_str", "label_specific", "label_specific_str"]


def test_missing_root_and_missing_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        TieredAdapter(TieredConfig(root=str(missing)))
    _one_line_naming(e, missing)
    for split in ("train", "val", "test"):
        _write_small(tmp_path, split)
    labels_path(tmp_path, "val").unlink()
    with pytest.raises(DataError) as e:
        TieredAdapter(TieredConfig(root=str(tmp_path)))
    _one_line_naming(e, labels_path(tmp_path, "val"))
    with pytest.raises(DataError) as e:
        TieredSplit(tmp_path, "val")
    _one_line_naming(e, labels_path(tmp_path, "val"))


@pytest.mark.parametrize("which", ["images", "labels"])
def test_truncated_pickle(tmp_path, which):
    _write_small(tmp_path)
    path = (images_path if which == "images" else labels_path)(tmp_path, "train")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        TieredSplit(tmp_path, "train")
    _one_line_naming(e, path)


def test_count_mismatch_and_bad_contents(tmp_path):
    images = _distinct_images(4)
    write_tiered_pickles(tmp_path, "train", images, [0, 0, 1, 1, 1], [0] * 5, ["a", "b"], ["c"])
    with pytest.raises(DataError) as e:
        TieredSplit(tmp_path, "train")
    _one_line_naming(e, images_path(tmp_path, "train"))

    write_tiered_pickles(tmp_path, "train", images, [0, 0, 1, 1], [0] * 4, ["a", "b"], ["c"])
    path = labels_path(tmp_path, "train")
    labels = load_pickle(path)
    labels["label_specific"] = labels["label_specific"].astype(np.float32)     # not integer ids
    path.write_bytes(pickle.dumps(labels))
    with pytest.raises(DataError) as e:
        TieredSplit(tmp_path, "train")
    _one_line_naming(e, path)

    write_tiered_pickles(tmp_path, "train", images, [0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"], ["c", "d"])
    with pytest.raises(DataError, match="categories") as e:          # class 0 in two categories
        TieredSplit(tmp_path, "train")
    _one_line_naming(e, path)

    import cv2
    write_tiered_pickles(tmp_path, "train", images, [0, 0, 1, 1], [0] * 4, ["a", "b"], ["c"])
    buffers = load_pickle(images_path(tmp_path, "train"))
    buffers[0] = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1]      # wrong size
    images_path(tmp_path, "train").write_bytes(pickle.dumps(buffers))
    with pytest.raises(DataError, match="84") as e:
        TieredSplit(tmp_path, "train")
    _one_line_naming(e, images_path(tmp_path, "train"))


# ------------------------------------------------------------------------------------------------
# tasks


def test_tasks_are_ten_classes_of_one_category(adapter):
    d = adapter.data("train")
    assert len(d.class_images) == 24 and len(d.category_classes) == 2
    tasks = adapter.sample_tasks("train", 6, np.random.default_rng(1))
    assert {t.category for t in tasks[:2]} == {0, 1}          # rounds over the categories
    for t in tasks:
        assert len(t.classes) == 10 == len(set(t.classes))
        assert {d.class_category[c] for c in t.classes} == {t.category}
        assert t.key == d.category_name(t.category)
        assert len(t.train_index) == 10 * 12 and len(t.test_index) == 10 * 6
        assert not set(t.train_index.tolist()) & set(t.test_index.tolist())
        for i, c in enumerate(t.classes):
            assert np.count_nonzero(t.train_labels == i) == 12 and np.count_nonzero(t.test_labels == i) == 6
            assert set(d.specific[t.train_index[t.train_labels == i]]) == {c}
            assert set(d.specific[t.test_index[t.test_labels == i]]) == {c}
    again = adapter.sample_tasks("train", 6, np.random.default_rng(1))
    assert [t.classes for t in again] == [t.classes for t in tasks]
    np.testing.assert_array_equal(again[3].train_index, tasks[3].train_index)


def test_steps_protocol_trains_on_every_remaining_image(tiny_root, adapter):
    steps = TieredAdapter(TieredConfig(root=str(tiny_root), protocol="steps", **SMALL),
                          data={s: adapter.data(s) for s in ("train", "val", "test")})
    assert steps.inner_steps == 640 and adapter.inner_steps == 100
    t = steps.sample_tasks("val", 1, np.random.default_rng(0))[0]
    assert len(t.train_index) == 10 * (30 - 6) and len(t.test_index) == 10 * 6
    with pytest.raises(ValueError):
        TieredConfig(protocol="640")


def test_batches_cover_an_epoch_and_replay_after_reset(adapter):
    task = adapter.sample_tasks("test", 1, np.random.default_rng(2))[0]
    task.reset()
    seen = []
    for _ in range(len(task.train_index) // task.batch_size):          # 120 / 20 = 6 batches: one epoch
        x, y = task.batch("train")
        assert x.shape == (20, 3, 84, 84) and x.dtype == torch.float32 and y.dtype == torch.int64
        seen.append(x)
    first = torch.cat(seen)
    assert len({v.numpy().tobytes() for v in first}) == 120                      # each image once
    task.reset()
    torch.testing.assert_close(task.batch("train")[0], seen[0])
    xt, yt = task.batch("test")
    assert xt.shape == (60, 3, 84, 84) and yt.tolist() == np.repeat(np.arange(10), 6).tolist()
    assert task.batch("query")[0].shape == (20, 3, 84, 84)
    with pytest.raises(ConfigError):
        TieredAdapter(TieredConfig(root=adapter.config.root, shots=40, test_per_class=6),
                      data={s: adapter.data(s) for s in ("train", "val", "test")}).categories("train")


# ------------------------------------------------------------------------------------------------
# model and inner loop


def test_paper_model_shape_and_warp_prefix():
    g = torch.Generator().manual_seed(0)
    model = TieredConv(10, warp=lambda c: torch.nn.Conv2d(c, c, 3, padding=1), warp_blocks=(3, 4, 5), generator=g)
    assert model.feature_size == 2 * 2 * 256 and model.head.in_features == 1024
    assert [b.conv.out_channels for b in model.blocks] == [64, 64, 160, 160, 256, 256]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 84, 84)).shape == (2, 10)
    names = [n for n, _ in model.named_parameters()]
    assert [n for n in names if n.startswith("warps.")] == [f"warps.{i}.{w}" for i in (3, 4, 5)
                                                              for w in ("weight", "bias")]
    assert all(n.startswith(("blocks.", "warps.", "head.")) for n in names)
    wg = WarpGrad(model)
    task_ids = {id(p) for p in wg.task_parameters(model)}
    warp_ids = {id(p) for n, p in model.named_parameters() if n.startswith("warps.")}
    assert task_ids and not task_ids & warp_ids
    assert len(task_ids) + len(warp_ids) == len(names)
    again = TieredConv(10, warp=lambda c: torch.nn.Conv2d(c, c, 3, padding=1), warp_blocks=(3, 4, 5),
                       generator=torch.Generator().manual_seed(0))
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_end_to_end_inner_loop(adapter):
    warped = TieredAdapter(TieredConfig(root=adapter.config.root, warp="linear", warp_blocks=[4, 5], **SMALL),
                           data={s: adapter.data(s) for s in ("train", "val", "test")})
    task = warped.sample_tasks("train", 1, np.random.default_rng(3))[0]
    model = warped.make_model(torch.Generator().manual_seed(0))
    assert {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("warps.")} == {"4", "5"}
    params = [p for n, p in model.named_parameters() if not n.startswith("warps.")]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    curve = warped.adapt(task, model, optimizer, 12)
    assert len(curve) == 13 and np.all(np.isfinite(curve))
    assert np.mean(curve[-3:]) < curve[0]
    metrics = warped.evaluate(task, model)
    assert set(metrics) == {"test_loss", "test_accuracy"}
    assert np.isfinite(metrics["test_loss"]) and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert model.training                                    # evaluate restores the mode
    plain = adapter.make_model(torch.Generator().manual_seed(1))     # the shared inner loop, no warps
    task.reset()
    direct = supervised_adapt(task, plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9), 3)
    assert len(direct) == 4 and np.all(np.isfinite(direct))
