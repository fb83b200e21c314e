"""CLI habits (issue 13, item 3) and data paths (item 4): --version, bench --help, the interrupt message naming
the real run directory, unused config keys refused in one line, data folders found from any working folder."""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cli_helpers import cli, one_line
from train.config import config_to_yaml, load_config
from train.config_yaml import read_yaml
from train.config_usage import check_used_keys, unused_keys
from train.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SINE = str(CONFIGS / "sine_leap.yaml")




def test_version_comes_from_the_package_metadata(capsys):
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"metarl {version('metarl')}"


def test_bench_help_lists_the_benchmarks_and_only_them(capsys):
    from train.benchmarks import BENCHMARKS
    code, out, _ = cli(["bench", "--help"], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.split("benchmarks (")[1].split("\n\n")[0].splitlines()[1:]]
    assert listed == sorted(BENCHMARKS)
    for name, (_, what) in BENCHMARKS.items():
        assert f"{name}" in out and what in out


def test_train_help_says_where_the_configs_and_keys_are_listed(capsys):
    """`metarl train --help` names the configs folder and the modules that list the keys; each exists."""
    import re
    code, out, _ = cli(["train", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "configs/*.yaml" in text and "config.yaml lists every key" in text
    named = set(re.findall(r"\b(?:train|metarl)/[\w/<>.]*", text)) - {"metarl/"} | {"metarl"}
    assert {"train/config.py", "train/tasks/<task>.py", "metarl"} <= named
    for path in named:
        assert list(ROOT.glob(path.replace("<task>", "*"))), path
    assert (ROOT / "configs" / "atari_leap.yaml").is_file()


# ------------------------------------------------------------------------------------------------
# unused keys


REFUSED = [
    (["atari_leap.yaml", "inner.lr=0.1"], "'inner.lr' is not used", "atari.a2c"),
    (["atari_leap.yaml", "inner.optimizer=adam"], "'inner.optimizer' is not used", "atari.a2c"),
    (["atari_leap.yaml", "eval.every=5"], "'eval.every' is not used", "evaluates once"),
    (["maze_warp_rnn.yaml", "eval.tasks=3"], "'eval.tasks' is not used", "no held-out evaluation"),
    (["maze_warp_rnn.yaml", "inner.steps=3"], "'inner.steps' is not used", "maze.task_lr"),
    (["maze_warp_rnn.yaml", "meta.meta_batch=3"], "'meta.meta_batch' is not used", "continual mode"),
    (["sine_reptile.yaml", "leap.p=2"], "'leap.p' is not used", "method is reptile"),
    (["sine_leap.yaml", "maml.steps=2"], "'maml.steps' is not used", "method is leap"),
    (["sine_leap.yaml", "method=warpgrad", "warpgrad.init_objective=maml", "leap.p=2"], "'leap.p' is not used",
     "warpgrad"),
    # one clip key per task (TaskAdapter.clip_key): a family with its own clip refuses inner.clip_grad_norm
    (["atari_leap.yaml", "inner.clip_grad_norm=1.0"], "'inner.clip_grad_norm' is not used",
     "atari.a2c.max_grad_norm only"),
    (["maze_warp_rnn.yaml", "inner.clip_grad_norm=1.0"], "'inner.clip_grad_norm' is not used",
     "maze.clip_grad_norm only"),
    # what a method's own inner loop cannot honour (MetaLearner.unused_keys)
    (["sine_maml.yaml", "inner.optimizer=adam"], "'inner.optimizer' is not used", "plain SGD (maml.inner_lr)"),
    (["sine_maml.yaml", "inner.momentum=0.9"], "'inner.momentum' is not used", "plain SGD (maml.inner_lr)"),
    (["sine_lazy.yaml", "inner.clip_grad_norm=1"], "'inner.clip_grad_norm' is not used", "unclipped SGD"),
    (["sine_lazy.yaml", "inner.optimizer=adam"], "'inner.optimizer' is not used", "unclipped SGD"),
    (["tiered_leap_tiny.yaml", "method=warpgrad", "tiered.warp=linear", "inner.clip_grad_norm=1"],
     "'inner.clip_grad_norm' is not used", "replays unclipped SGD steps"),
]


@pytest.mark.parametrize("args,message,reason", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_an_override_the_run_does_not_use_is_refused_in_one_line(args, message, reason, capsys, tmp_path):
    code, _, err = cli(["train", str(CONFIGS / args[0]), *args[1:], "--run-dir", str(tmp_path / "r")], capsys)
    line = one_line(err)
    assert code == 2 and message in line and reason in line, line
    assert not (tmp_path / "r").exists()                   # refused before anything is written


def test_used_keys_and_defaults_are_accepted():
    atari = load_config(CONFIGS / "atari_leap.yaml", ["inner.steps=100", "atari.a2c.max_grad_norm=1.0", "eval.tasks=1"])
    check_used_keys(atari, read_yaml(CONFIGS / "atari_leap.yaml"), ["inner.steps=100", "atari.a2c.max_grad_norm=1.0",
                                                                     "eval.tasks=1"])
    sine = load_config(SINE, ["inner.clip_grad_norm=1.0"])      # families without a clip of their own read it
    check_used_keys(sine, read_yaml(SINE), ["inner.clip_grad_norm=1.0"])
    warp_leap = load_config(SINE, ["method=warpgrad", "leap.p=2"])
    check_used_keys(warp_leap, read_yaml(SINE), ["method=warpgrad", "leap.p=2"])       # Warp-Leap reads leap.*
    maml = load_config(CONFIGS / "sine_maml.yaml", ["maml.steps=2", "inner.clip_grad_norm=1"])
    check_used_keys(maml, read_yaml(CONFIGS / "sine_maml.yaml"), ["maml.steps=2", "inner.clip_grad_norm=1"])
    assert "maml" not in unused_keys(maml) and "inner.steps" not in unused_keys(atari)


def test_every_shipped_config_passes_and_a_saved_config_is_reusable(tmp_path):
    for path in sorted(CONFIGS.glob("*.yaml")):
        check_used_keys(load_config(path), read_yaml(path), [])
    # a run's config.yaml lists every key, unused ones at their defaults: usable as a config
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(load_config(CONFIGS / "maze_warp_rnn.yaml")))
    check_used_keys(load_config(saved), read_yaml(saved), [])
    # ... but an unused key changed in a file is refused
    saved.write_text(saved.read_text().replace("tasks: 5", "tasks: 7"))
    with pytest.raises(ConfigError, match="'eval.tasks' is set in the config file but not used"):
        check_used_keys(load_config(saved), read_yaml(saved), [])


# ------------------------------------------------------------------------------------------------
# the interrupt message names the run directory


SIGNAL_SELF = """
import os, signal, sys
import train.trainer
def signalled(cfg, run_dir, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("the signal should have stopped the run")
train.trainer.train = signalled
from train.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _signalled(args: list[str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", SIGNAL_SELF, "train", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 143, out.stderr[-2000:]
    return one_line(out.stderr)


def test_sigterm_names_the_generated_run_directory(tmp_path):
    line = _signalled([SINE, f"run.dir={tmp_path}", "run.progress=false"], ROOT)
    made = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(made) == 1 and made[0].name.startswith("sine_leap__0__")
    assert f"metarl train --resume {made[0]})" in line, line


def test_sigterm_names_the_resumed_run_directory(tmp_path):
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(load_config(SINE)))
    line = _signalled(["--resume", str(run_dir)], tmp_path)
    assert f"metarl train --resume {run_dir})" in line, line
    # --resume of a finished run: tests/test_reliability.py::test_resume_of_a_finished_run_is_refused_and_writes_nothing


# ------------------------------------------------------------------------------------------------
# data paths (item 4)


def test_data_paths_resolve_against_the_repository_not_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("METARL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    omni = load_config(CONFIGS / "omniglot_dev_leap.yaml")        # root: ../shared/data/omniglot
    assert omni.task_config.root == str((ROOT / ".." / "shared" / "data" / "omniglot").resolve())
    tiny = load_config(CONFIGS / "tiered_leap_tiny.yaml")          # root: data/tiered_tiny
    assert tiny.task_config.root == str(ROOT / "data" / "tiered_tiny")
    # a path on the command line is relative to the working folder, as any path there
    over = load_config(CONFIGS / "omniglot_dev_leap.yaml", ["omniglot.root=mine/omniglot"])
    assert over.task_config.root == str(tmp_path / "mine" / "omniglot")
    # a config file elsewhere: relative to the folder above its own
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "c.yaml").write_text("task: omniglot\nomniglot: {root: data/omni}\n")
    assert load_config(tmp_path / "exp" / "c.yaml").task_config.root == str(tmp_path / "data" / "omni")


def test_metarl_data_overrides_the_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METARL_DATA", str(tmp_path))
    assert load_config(CONFIGS / "omniglot_dev_leap.yaml").task_config.root == str(tmp_path / "omniglot")
    assert load_config(CONFIGS / "tiered_leap.yaml").task_config.root == str(tmp_path / "tiered-imagenet")
    absolute = load_config(CONFIGS / "omniglot_dev_leap.yaml", ["omniglot.root=/elsewhere/omniglot"])
    assert absolute.task_config.root == "/elsewhere/omniglot"
    # --data DIR sets it for one command; the missing data folder is named in one line
    monkeypatch.delenv("METARL_DATA")
    code, _, err = cli(["train", str(CONFIGS / "omniglot_dev_leap.yaml"), "--data", str(tmp_path),
                        "--run-dir", str(tmp_path / "r")], capsys)
    os.environ.pop("METARL_DATA", None)
    assert code == 2 and str(tmp_path / "omniglot") in one_line(err)
    code, _, err = cli(["train", SINE, "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a folder" in one_line(err)


def test_the_progress_bar_sets_and_clears_the_hooks_of_an_adapter_without_games():
    from types import SimpleNamespace

    from train.progress import RLProgress
    from train.tasks.sine import SineAdapter, SineConfig

    class Bar:
        n, total, text = 0, None, ""

        def set_postfix_str(self, text, refresh=True):
            self.text = text

    adapter = SineAdapter(SineConfig())               # no games: the hooks are the base class's, never called
    assert adapter.on_game is None and adapter.on_progress is None
    progress = RLProgress(Bar(), start_step=5).attach(adapter)
    adapter.on_game(SimpleNamespace(task="pong", episodic_return=3.0))
    adapter.on_progress("pong", 25)
    progress.refresh()
    assert progress.bar.text == "env steps 20, pong return 3.0 (last 1 game)"
    RLProgress.detach(adapter)
    assert adapter.on_game is None and adapter.on_progress is None
