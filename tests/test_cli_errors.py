"""Bad input: one line naming the problem, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import main

ROOT = Path(__file__).resolve().parent.parent
CFG = str(ROOT / "configs" / "sine_leap.yaml")
TINY = str(ROOT / "configs" / "tiered_leap_tiny.yaml")
ATARI = str(ROOT / "configs" / "atari_leap.yaml")
OMNI = str(ROOT / "configs" / "omniglot_dev_leap.yaml")


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, cwd=cwd)


def run_inprocess(args: list[str], capsys) -> tuple[int, str]:
    """main() as the console script runs it; argparse's exits come as SystemExit."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def bad_yaml(tmp: Path) -> str:
    p = tmp / "bad.yaml"
    p.write_text("name: [unclosed\n")
    return str(p)


def list_yaml(tmp: Path) -> str:
    p = tmp / "list.yaml"
    p.write_text("- 1\n- 2\n")
    return str(p)


CASES = [
    (["train", CFG, "meta.bogus=1"], "unknown config key 'meta.bogus'"),
    (["train", CFG, "bogus=1"], "unknown config key 'bogus'"),
    (["train", CFG, "meta.meta_batch=two"], "'meta.meta_batch' must be an integer"),
    (["train", CFG, "inner.lr=fast"], "'inner.lr' must be a number"),
    (["train", CFG, "leap.loss=maybe"], "'leap.loss' must be true or false"),
    (["train", CFG, "meta.meta_batch=0"], "'meta.meta_batch' must be positive"),
    (["train", CFG, "inner.steps=-3"], "'inner.steps' must be positive"),
    (["train", CFG, "leap.p=3"], "leap.p must be 1 (length) or 2 (energy)"),
    (["train", CFG, "method=leapp"], "unknown method 'leapp'"),
    (["train", CFG, "task=cifar"], "unknown task 'cifar'"),
    (["train", CFG, "sine.batch_size=0"], "positive"),
    (["train", CFG, "meta.optimizer.name=lbfgs"], "'meta.optimizer.name' must be sgd, adam or rmsprop"),
    (["train", CFG, "meta.head=random"], "'meta.head' must be reset or learned"),
    (["train", CFG, "noequals"], "bad override 'noequals'"),
    (["train", CFG, "a..b=1"], "bad override 'a..b=1'"),
    (["train", CFG, "meta=3"], "config key 'meta' must be a mapping"),
    (["train", CFG, "meta.steps.x=1"], "'meta.steps' is not a section"),
    (["train", "configs/does_not_exist.yaml"], "config file not found"),
    (["train"], "train needs a CONFIG file"),
    (["train", "--resume", "/nonexistent/run"], "cannot resume"),
    (["eval", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
    (["eval", "configs"], "not a run directory (no config.yaml): configs"),
    (["bench", "no-such-bench"], "unknown benchmark 'no-such-bench'"),
    (["bench", "a2c-throughput", "--game", "Pongo"], "unknown Atari game 'Pongo'"),
    (["bench", "a2c-throughput", "--variants", "ours,theirs"], "unknown variants ['theirs']"),
    (["bench", "a2c-throughput", "--agents", "-1"], "--agents must be >= 0"),
    (["bench", "a2c-throughput", "--agents", "2", "--games", "Pong,Pongo"], "unknown Atari game 'Pongo'"),
    (["bench", "leap-overhead-a2c", "--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
    (["bench", "omniglot-meta-step", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", CFG, "method=warpgrad", "warpgrad.objective=exact"], "objective must be one of full, first_order"),
    (["train", CFG, "method=warpgrad", "warpgrad.stride=0"], "stride must be >= 1"),
    (["train", TINY, "tiered.root=/nonexistent/tiered"], "/nonexistent/tiered"),
    (["train", CFG, "task=tiered"], "unknown config key 'sine'"),
    (["train", CFG, "eval.split=train"], "'eval.split' must be val or test"),
    (["train", CFG, "eval.periodic_split=train"], "'eval.periodic_split' must be val, test or empty"),
    (["train", CFG, "run.keep=0"], "'run.keep' must be positive"),
    (["train", CFG, "seed=-1"], "'seed' must be >= 0"),
    (["train", CFG, "name="], "'name' must be a non-empty name"),
    (["train", CFG, "sine.amplitude=[5, 1]"], "amplitude must be an increasing pair"),
    (["train", CFG, "sine.hidden=40"], "'sine.hidden' must be a list"),
    (["train", CFG, "leap.eps=-1"], "leap.eps must be >= 0"),
    (["train", CFG, "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["plot", "/nonexistent/run"], "not a directory"),
    (["train", ATARI, "atari.train_games=[Pongo]"], "unknown Atari game 'Pongo'; did you mean Pong?"),
    (["train", ATARI, "atari.test_games=[SpaceInvader]"], "did you mean SpaceInvaders or SpaceWar?"),
    (["train", ATARI, "atari.train_games=[]", "atari.test_games=[]"], "no games configured"),
    (["train", ATARI, "atari.train_games=Pong"], "'atari.train_games' must be a list"),
    (["train", ATARI, "atari.a2c.num_envs=0"], "num_envs"),
    (["train", ATARI, "atari.a2c.batched=true", "atari.a2c.groups=2"], "a2c.batched steps one env group per agent"),
    (["train", OMNI, "omniglot.root=/nonexistent/omniglot"], "/nonexistent/omniglot"),
    (["train", OMNI, "omniglot.ways=0"], "ways"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = set((ROOT / "runs").iterdir()) if (ROOT / "runs").is_dir() else set()
    code, err = run_inprocess(args, capsys)
    after = set((ROOT / "runs").iterdir()) if (ROOT / "runs").is_dir() else set()
    assert after <= before, f"a failed start left {sorted(map(str, after - before))}"
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("args,message", [CASES[0], CASES[-1]])
def test_bad_input_as_a_process(args, message):
    out = run_cli(*args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1


def test_bad_config_files(tmp_path, capsys):
    for path, message in ((bad_yaml(tmp_path), "is not valid YAML"), (list_yaml(tmp_path), "must hold a mapping")):
        code, err = run_inprocess(["train", path], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [[TINY, "tiered.root=/nonexistent/tiered"], [OMNI, "omniglot.root=/nonexistent/o"]])
def test_a_failed_start_leaves_nothing_behind(args, tmp_path, capsys, monkeypatch):
    """A fresh run that stops on a user error before its first checkpoint (here: a data folder that is missing,
    found when the task is built, after the run folder was made) removes the run folder and the parents it made,
    whether named by --run-dir or the default runs/NAME__SEED__TIME."""
    code, err = run_inprocess(["train", args[0], "--run-dir", str(tmp_path / "a" / "b" / "run"), *args[1:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.chdir(tmp_path)                       # the default run folder: runs/ under the current folder
    code, err = run_inprocess(["train", *args], capsys)
    assert code == 2 and list(tmp_path.iterdir()) == [], err
    (tmp_path / "runs").mkdir()                       # a runs/ folder that was there stays
    code, err = run_inprocess(["train", *args], capsys)
    assert code == 2 and list(tmp_path.iterdir()) == [tmp_path / "runs"] and not any((tmp_path / "runs").iterdir())
