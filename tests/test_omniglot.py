"""Multi-shot Omniglot on the real data (../shared/data/omniglot): loading, splits, tasks, batches, model.

The real images are decoded once per module (a few seconds) into a temporary cache; every other test
reuses that decode. Small synthetic trees cover the extracted-folder path and the corrupt-file errors.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarl.reptile import Reptile
from train.errors import ConfigError, DataError
from train.tasks import omniglot as om
from train.tasks import omniglot_data
from train.tasks.omniglot import IndexStream, OmniConv, OmniglotAdapter, OmniglotConfig, random_affine
from train.tasks.omniglot_data import OmniglotData, load_omniglot

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
DROPPED = {"Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14,
           "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16, "Tagalog": 17}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def data(cache_dir) -> OmniglotData:
    if not (ROOT / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot data not found at {ROOT}")
    return load_omniglot(ROOT, cache_dir)      # the one cold decode of the module


@pytest.fixture(scope="module")
def adapter(data) -> OmniglotAdapter:
    return OmniglotAdapter(OmniglotConfig(root=str(ROOT), cache_dir=None), seed=3, data=data)


# ------------------------------------------------------------------------------------------------
# data


def test_real_data_counts(data):
    assert (data.num_alphabets, data.num_characters, data.num_images) == (50, 1623, 32460)
    assert data.images.shape == (32460, 28, 28) and data.images.dtype == np.uint8
    assert np.all(np.diff(data.char_start) == 20)
    split = {s: int((data.alphabet_split == s).sum()) for s in omniglot_data.SPLITS}
    assert split == {"images_background": 30, "images_evaluation": 20}
    per_alphabet = data.characters_per_alphabet()
    assert sum(per_alphabet.values()) == 1623
    assert per_alphabet["Tifinagh"] == 55 and per_alphabet["Angelic"] == 20
    assert {a: n for a, n in per_alphabet.items() if n < 20} == DROPPED
    # files sorted inside each character: drawing _01 first, _20 last
    first = data.files[data.char_start[:-1]]
    last = data.files[data.char_start[1:] - 1]
    assert all(f.endswith("_01.png") for f in first) and all(f.endswith("_20.png") for f in last)
    # decoded strokes: mostly white background with some dark ink in every image
    assert data.images.mean() > 200 and (data.images.min(axis=(1, 2)) < 128).all()


def test_second_load_comes_from_cache(data, cache_dir, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot_data, "_decode", no_decode)
    again = load_omniglot(ROOT, cache_dir)
    assert np.array_equal(again.images, data.images) and np.array_equal(again.files, data.files)
    assert np.array_equal(again.char_start, data.char_start)
    names = sorted(p.name for p in cache_dir.iterdir())
    assert names == [omniglot_data.cache_path(ROOT, cache_dir).name]      # no temp file left behind


def test_filter_and_seeded_split(adapter, data):
    assert len(adapter.eligible) == 46
    assert set(map(str, data.alphabets)) - set(adapter.eligible) == set(DROPPED)
    splits = adapter.alphabets
    assert [len(splits[s]) for s in ("train", "test", "val")] == [25, 10, 11]
    assert sorted(splits["train"] + splits["test"] + splits["val"]) == sorted(adapter.eligible)
    same = OmniglotAdapter(OmniglotConfig(cache_dir=None), seed=3, data=data)
    other = OmniglotAdapter(OmniglotConfig(cache_dir=None), seed=4, data=data)
    pinned = OmniglotAdapter(OmniglotConfig(cache_dir=None, seed=3), seed=4, data=data)
    assert same.alphabets == splits and pinned.alphabets == splits
    assert other.alphabets["test"] != splits["test"]
    with pytest.raises(ConfigError, match="num_pretrain"):
        OmniglotAdapter(OmniglotConfig(num_pretrain=36), data=data)
    with pytest.raises(ValueError, match="sampler"):
        OmniglotConfig(sampler="balanced")


def test_meta_train_batches_cycle_without_replacement(adapter):
    tasks = adapter.sample_tasks("train", 30, np.random.default_rng(0))
    keys = [t.key for t in tasks]
    assert sorted(keys[:25]) == sorted(adapter.alphabets["train"])      # one full pass first
    assert len(set(keys[25:])) == 5
    test_keys = [t.key for t in adapter.sample_tasks("test", 10, np.random.default_rng(1))]
    assert sorted(test_keys) == sorted(adapter.alphabets["test"])


def test_task_is_one_alphabet_20_way_with_disjoint_split(adapter, data):
    task = adapter.sample_tasks("val", 1, np.random.default_rng(7))[0]
    assert task.key in adapter.alphabets["val"]
    alphabet = int(np.flatnonzero(data.alphabets == task.key)[0])
    char_of = np.searchsorted(data.char_start, np.arange(data.num_images), side="right") - 1   # image → character
    train_chars, test_chars = char_of[task.train_index], char_of[task.test_index]
    assert (data.char_alphabet[train_chars] == alphabet).all() and (data.char_alphabet[test_chars] == alphabet).all()
    assert len(set(train_chars)) == 20 and set(train_chars) == set(test_chars)
    assert len(task.characters) == len(set(task.characters)) == 20
    assert len(task.train_index) == 300 and len(task.test_index) == 100
    assert not set(task.train_index) & set(task.test_index)
    assert {f[-6:-4] for f in data.files[task.test_index]} == {"01", "02", "03", "04", "05"}
    # labels 0..19 in draw order, class-major; each image's label is its character's draw position
    assert torch.equal(task.train_labels, torch.arange(20).repeat_interleave(15))
    assert torch.equal(task.test_labels, torch.arange(20).repeat_interleave(5))
    order = list(dict.fromkeys(train_chars.tolist()))
    assert [str(data.char_names[c]) for c in order] == task.characters
    assert torch.equal(task.train_images, torch.from_numpy(data.images[task.train_index]))
    x, y = task.batch("test")
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and torch.equal(y, task.test_labels)
    xq, yq = task.batch("query")
    assert xq.shape == (20, 1, 28, 28) and len(set(yq.tolist())) > 1


def test_index_stream_epochs_have_exactly_steps_batches():
    g = torch.Generator().manual_seed(0)
    stream = IndexStream(300, 20, g, "mod")
    stream.reset(7)
    epoch = torch.cat([stream.next() for _ in range(7)])
    assert sorted(epoch.tolist()) == list(range(140))     # randperm(7·20) mod 300
    stream.reset(100)
    epoch = torch.cat([stream.next() for _ in range(100)])
    counts = np.bincount(epoch.numpy(), minlength=300)
    assert len(epoch) == 2000 and (counts[:200] == 7).all() and (counts[200:] == 6).all()
    nxt = stream.next()                                   # step 101 opens a fresh epoch of 100 batches
    assert len(nxt) == 20 and len(stream._batches) == 99
    cycle = IndexStream(300, 20, g, "cycle")
    cycle.reset(5)
    short = torch.cat([cycle.next() for _ in range(5)])
    assert len(set(short.tolist())) == 100 and short.max() >= 100    # not confined to the first classes
    cycle.reset(100)
    counts = np.bincount(torch.cat([cycle.next() for _ in range(100)]).numpy(), minlength=300)
    assert set(counts.tolist()) == {6, 7}


def test_same_seed_same_task_and_batches(adapter):
    a = adapter.sample_tasks("train", 2, np.random.default_rng(11))
    b = adapter.sample_tasks("train", 2, np.random.default_rng(11))
    c = adapter.sample_tasks("train", 2, np.random.default_rng(12))
    assert [t.key for t in a] == [t.key for t in b] and [t.characters for t in a] == [t.characters for t in b]
    assert [t.characters for t in a] != [t.characters for t in c]
    for ta, tb in zip(a, b):
        ta.reset(3), tb.reset(3)
        for split in ("train", "train", "query", "test"):
            (xa, ya), (xb, yb) = ta.batch(split), tb.batch(split)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # reset replays the same stream; the test batch is the same at every call
    t = a[0]
    t.reset(3)
    first = [t.batch("train") for _ in range(3)]
    t.batch("query")
    t.reset(3)
    again = [t.batch("train") for _ in range(3)]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert torch.equal(t.batch("test")[0], t.batch("test")[0])


def test_fixed_characters_pins_each_alphabets_task(data):
    fixed = OmniglotAdapter(OmniglotConfig(cache_dir=None, fixed_characters=True), seed=3, data=data)
    alphabet = fixed.alphabets["test"][0]
    t1 = fixed.make_task("test", alphabet, np.random.default_rng(1))
    t2 = fixed.make_task("test", alphabet, np.random.default_rng(2))
    assert t1.characters == t2.characters and t1.seed != t2.seed


# ------------------------------------------------------------------------------------------------
# augmentation


def test_augmentation_changes_images_deterministically(adapter):
    task = adapter.sample_tasks("train", 1, np.random.default_rng(0))[0]
    raw = task.train_images[:20].unsqueeze(1).float() / 255
    out1 = random_affine(raw, torch.Generator().manual_seed(5))
    out2 = random_affine(raw, torch.Generator().manual_seed(5))
    out3 = random_affine(raw, torch.Generator().manual_seed(6))
    assert out1.shape == raw.shape and out1.dtype == raw.dtype
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    changed = (out1 - raw).abs().flatten(1).amax(1)
    assert (changed > 0.5).all()                          # every image moved
    assert out1.min() >= 0 and out1.max() <= 1 + 1e-6
    # fill 0 outside the source: the white background gains black corners
    assert (out1 == 0).flatten(1).float().mean(1).gt(raw.eq(0).flatten(1).float().mean(1)).any()
    plain = OmniglotAdapter(OmniglotConfig(cache_dir=None, augment=False), seed=3, data=adapter.data)
    x, _ = plain.make_task("train", task.key, np.random.default_rng(0)).batch("test")
    assert torch.equal(x, plain.make_task("train", task.key, np.random.default_rng(0)).test_images.unsqueeze(1) / 255)


def test_affine_geometry():
    x = torch.rand(3, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    same = random_affine(x, g, degrees=(0, 0), translate=0.0, scale=(1, 1))
    assert torch.allclose(same, x, atol=1e-5)
    turned = random_affine(x, g, degrees=(90, 90), translate=0.0, scale=(1, 1))
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(2, 3)), atol=1e-4) for k in (1, -1))
    filled = random_affine(torch.ones(2, 1, 28, 28), g, degrees=(45, 45), translate=0.0, scale=(1, 1), fill=0.25)
    assert torch.isclose(filled[0, 0, 0, 0], torch.tensor(0.25)) and filled[0, 0, 14, 14] == 1


# ------------------------------------------------------------------------------------------------
# model


def test_omniconv_shape_parameters_and_pool_before_bn():
    model = OmniConv()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 20)
    assert model.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 20)     # batch of one keeps its dim
    model.train()
    assert sum(p.numel() for p in model.parameters()) == 113_236
    calls: list[str] = []
    for block in model.blocks:
        for m in block.children():
            m.register_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
    sizes = []
    model.blocks[-1].register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape)))
    model(torch.zeros(2, 1, 28, 28))
    assert calls == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] * 4
    assert sizes == [(2, 64, 1, 1)]
    assert all(n.startswith(("blocks.", "head.")) for n, _ in model.named_parameters())


def test_omniconv_warp_layers_are_named_by_prefix():
    g = torch.Generator().manual_seed(0)
    model = OmniConv(warp=om.conv_warp, generator=g)
    names = [n for n, _ in model.named_parameters()]
    warp = [n for n in names if n.startswith("warps.")]
    assert warp == [f"warps.{i}.{w}" for i in range(4) for w in ("weight", "bias")]
    task_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("warps."))
    assert task_params == 113_236
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 20)
    again = OmniConv(warp=om.conv_warp, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_make_model_is_seeded(adapter):
    a = adapter.make_model(torch.Generator().manual_seed(1))
    b = adapter.make_model(torch.Generator().manual_seed(1))
    c = adapter.make_model(torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)


# ------------------------------------------------------------------------------------------------
# adapt / evaluate / BatchNorm state


def test_adapt_evaluate_and_batchnorm_reset(adapter):
    torch.manual_seed(0)
    model = adapter.make_model(torch.Generator().manual_seed(0))
    meta = Reptile(model)
    init_buffers = {k: v.clone() for k, v in model.named_buffers()}
    task = adapter.sample_tasks("train", 1, np.random.default_rng(0))[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with meta.watch(model, optimizer, task.key) as watch:
        curve = adapter.adapt(task, model, optimizer, 5, watch)
    assert len(curve) == 6 and np.isfinite(curve).all() and curve[-1] < curve[0]
    trained = {k: v.clone() for k, v in model.named_buffers()}
    assert not torch.equal(trained["blocks.0.bn.running_mean"], init_buffers["blocks.0.bn.running_mean"])
    model.train()
    metrics = adapter.evaluate(task, model)
    assert set(metrics) == {"test_loss", "test_accuracy"} and 0 <= metrics["test_accuracy"] <= 1
    assert model.training                                   # mode restored
    assert adapter.evaluate(task, model) == metrics         # repeatable
    # eval() mode: the test batch does not touch the task's running statistics (not transductive)
    assert all(torch.equal(v, trained[k]) for k, v in model.named_buffers())
    # the next task starts from the stored init, BatchNorm statistics included
    meta.meta_step()
    meta.load_init(model)
    assert all(torch.equal(v, init_buffers[k]) for k, v in model.named_buffers())


# ------------------------------------------------------------------------------------------------
# errors and the extracted-folder layout (small synthetic data)


def write_tree(root: Path, layout: dict[str, dict[str, int]], drawings: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split, alphabets in layout.items():
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                folder = root / split / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, drawings + 1):
                    bits = rng.random((105, 105)) > 0.1
                    Image.fromarray(bits).convert("1").save(folder / f"{c:04d}_{d:02d}.png")


def _zip_tree(root: Path, split: str, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted((root / split).rglob("*.png")):
            z.write(path, path.relative_to(root).as_posix())


@pytest.fixture
def tiny(tmp_path) -> Path:
    tree = tmp_path / "tree"
    write_tree(tree, {"images_background": {"Alpha": 3, "Beta": 2}, "images_evaluation": {"Gamma": 2}})
    return tree


def test_zip_and_folder_layouts_decode_identically(tiny, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    for split in omniglot_data.SPLITS:
        _zip_tree(tiny, split, zips / f"{split}.zip")
    from_dir = load_omniglot(tiny, cache_dir=None)
    from_zip = load_omniglot(zips, cache_dir=None)
    assert from_dir.num_alphabets == 3 and from_dir.num_characters == 7 and from_dir.num_images == 21
    for name in omniglot_data.ARRAYS:
        assert np.array_equal(getattr(from_dir, name), getattr(from_zip, name)), name
    # the cache key follows the source files: touching one drawing invalidates it
    cache = tmp_path / "cache"
    first = omniglot_data.cache_path(tiny, cache)
    load_omniglot(tiny, cache)
    assert first.is_file()
    png = next((tiny / "images_evaluation").rglob("*.png"))
    os.utime(png, ns=(0, 0))
    assert omniglot_data.cache_path(tiny, cache) != first


def _assert_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_bad_path_and_missing_zips_raise_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_omniglot(missing, cache_dir=None)
    _assert_one_line(err, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_omniglot(empty, cache_dir=None)
    _assert_one_line(err, empty / "images_background.zip")
    assert isinstance(err.value, ValueError)


def test_truncated_real_zip_raises_data_error(tmp_path):
    if not (ROOT / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot data not found at {ROOT}")
    bad = tmp_path / "bad"
    bad.mkdir()
    blob = (ROOT / "images_background.zip").read_bytes()
    (bad / "images_background.zip").write_bytes(blob[: len(blob) // 2])
    shutil.copy(ROOT / "images_evaluation.zip", bad / "images_evaluation.zip")
    with pytest.raises(DataError) as err:
        load_omniglot(bad, cache_dir=tmp_path / "cache")
    _assert_one_line(err, bad / "images_background.zip")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_corrupt_member_and_bad_png_raise_data_error(tiny, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    for split in omniglot_data.SPLITS:
        _zip_tree(tiny, split, zips / f"{split}.zip")
    path = zips / "images_evaluation.zip"
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    blob = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    blob[start:start + 8] = bytes(8)                      # damage the first member's compressed data
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        load_omniglot(zips, cache_dir=None)
    _assert_one_line(err, path)
    png = next((tiny / "images_background").rglob("*.png"))
    png.write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_omniglot(tiny, cache_dir=None)
    _assert_one_line(err, png)
