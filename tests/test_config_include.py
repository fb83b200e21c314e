"""Config includes: `include: FILE` (or a list), relative to the including file, deep-merged under the
including file's keys; nested includes; cycles and missing files refused in one line; the Omniglot configs
are a shared base per protocol plus short per-method files."""

from pathlib import Path

import pytest
import yaml

from train.cli import main
from train.config import config_to_yaml, load_config
from train.config_yaml import deep_merge, read_yaml
from train.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
name: base
task: sine
method: leap
sine: {batch_size: 7, hidden: [40, 40]}
inner: {lr: 0.05, steps: 3}
meta: {meta_batch: 2, steps: 4, optimizer: {name: sgd, lr: 0.2}}
"""


def test_include_deep_merges_with_the_including_file_winning(tmp_path):
    write(tmp_path / "base" / "sine_base.yaml", BASE)
    child = write(tmp_path / "child.yaml", """\
include: base/sine_base.yaml
name: child
sine: {hidden: [8]}
meta: {optimizer: {lr: 0.5}}
""")
    data = read_yaml(child)
    assert "include" not in data
    assert data["sine"] == {"batch_size": 7, "hidden": [8]}            # lists are replaced, not merged
    assert data["meta"] == {"meta_batch": 2, "steps": 4, "optimizer": {"name": "sgd", "lr": 0.5}}
    cfg = load_config(child, ["inner.steps=5"])                          # overrides apply after includes
    assert cfg.name == "child" and cfg.inner.lr == 0.05 and cfg.inner.steps == 5
    assert cfg.task_config.batch_size == 7 and tuple(cfg.task_config.hidden) == (8,)
    assert "include" not in yaml.safe_load(config_to_yaml(cfg))          # the run's config.yaml is resolved


def test_includes_nest_relative_to_each_including_file(tmp_path):
    write(tmp_path / "a" / "b" / "root.yaml", BASE)
    write(tmp_path / "a" / "mid.yaml", "include: b/root.yaml\ninner: {steps: 9}\n")
    top = write(tmp_path / "top.yaml", "include: a/mid.yaml\nname: top\n")
    cfg = load_config(top)
    assert (cfg.name, cfg.inner.steps, cfg.inner.lr, cfg.meta.optimizer.lr) == ("top", 9, 0.05, 0.2)


def test_a_list_of_includes_merges_in_order(tmp_path):
    write(tmp_path / "one.yaml", BASE)
    write(tmp_path / "two.yaml", "inner: {lr: 0.3}\nmeta: {steps: 8}\n")
    top = write(tmp_path / "top.yaml", "include: [one.yaml, two.yaml]\nmeta: {meta_batch: 3}\n")
    cfg = load_config(top)
    assert (cfg.inner.lr, cfg.meta.steps, cfg.meta.meta_batch, cfg.inner.steps) == (0.3, 8, 3, 3)


def test_deep_merge_leaves_its_arguments_alone():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    top = {"a": {"b": 2}, "e": {"f": 1}}
    merged = deep_merge(base, top)
    assert merged == {"a": {"b": 2, "c": [1]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1} and top == {"a": {"b": 2}, "e": {"f": 1}}


@pytest.mark.parametrize("files,start,message", [
    ({"a.yaml": "include: a.yaml\n"}, "a.yaml", "config include cycle"),
    ({"a.yaml": "include: b.yaml\n", "b.yaml": "include: sub/c.yaml\n", "sub/c.yaml": "include: ../a.yaml\n"},
     "a.yaml", "config include cycle"),
    ({"a.yaml": "include: missing.yaml\n"}, "a.yaml", "included file not found"),
    ({"a.yaml": "include: 3\n"}, "a.yaml", "'include' must be a file name or a list of file names"),
    ({"a.yaml": "include: []\n"}, "a.yaml", "'include' must be a file name or a list of file names"),
    ({"a.yaml": "include: b.yaml\n", "b.yaml": "name: x\nname: y\n"}, "a.yaml", "duplicate key 'name'"),
    ({"a.yaml": "include: b.yaml\n", "b.yaml": "- 1\n"}, "a.yaml", "must hold a mapping"),
    ({"a.yaml": "include: b.yaml\n", "b.yaml": "# empty\n"}, "a.yaml", "is empty"),
])
def test_bad_includes_are_one_line(tmp_path, capsys, files, start, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(tmp_path / start)
    code = main(["train", str(tmp_path / start), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_diamond_includes_are_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", BASE)
    write(tmp_path / "left.yaml", "include: root.yaml\ninner: {lr: 0.4}\n")
    write(tmp_path / "right.yaml", "include: root.yaml\nmeta: {steps: 6}\n")
    top = write(tmp_path / "top.yaml", "include: [left.yaml, right.yaml]\n")
    cfg = load_config(top)
    assert (cfg.inner.lr, cfg.meta.steps) == (0.05, 6)     # right re-includes root: its lr 0.05 comes back


OMNIGLOT = sorted(p for p in CONFIGS.glob("omniglot_*.yaml") if not p.stem.endswith("_base"))


def test_omniglot_configs_are_a_base_per_protocol_plus_short_method_files():
    assert len(OMNIGLOT) >= 14
    for path in OMNIGLOT:
        raw = yaml.safe_load(path.read_text())
        protocol = next((p for p in ("dev", "quick") if path.stem.startswith(f"omniglot_{p}_")), None)
        base = f"omniglot_{protocol}_base.yaml" if protocol else "omniglot_base.yaml"
        assert raw["include"] == base, path.name
        # the quick protocol's MAML scores held-out batches with their own BatchNorm statistics (the original's)
        allowed = {"sampler", "warp"} | ({"batch_norm_eval"} if protocol == "quick" else set())
        assert "omniglot" not in raw or set(raw["omniglot"]) <= allowed, path.name
        cfg = load_config(path)
        assert cfg.name == path.stem and cfg.task == "omniglot"
    dev = load_config(CONFIGS / "omniglot_dev_leap.yaml")
    paper = load_config(CONFIGS / "omniglot_leap.yaml")
    assert (dev.task_config.filters, dev.meta.meta_batch, dev.inner.steps, dev.eval.periodic_split) == (32, 5, 40, "")
    assert (paper.task_config.filters, paper.meta.meta_batch, paper.inner.steps) == (64, 20, 100)
    # the dev protocol changes only its size, not the data protocol
    for key in ("root", "num_pretrain", "num_test", "ways", "train_per_class", "test_per_class", "batch_size",
                "augment", "sampler", "fixed_characters"):
        assert getattr(dev.task_config, key) == getattr(paper.task_config, key), key
