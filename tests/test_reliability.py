"""Reliability (issue 12): the run directory and the config under attack. One test (or more) per defect:
pruning by step, fresh runs refused over another run, resume overrides, a lock, atomic writes, validation
gaps, YAML bombs, disk full and interrupts during a save, checkpoint order past 10⁷, strict JSON, SIGTERM."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train import checkpoint as ckpt
from train.checkpoint import list_checkpoints, load_latest, save_checkpoint
from cli_helpers import cli, one_line
from train.cli import main
from train.config import build_config, load_config
from train.config_yaml import read_yaml
from train.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CFG = str(ROOT / "configs" / "sine_leap.yaml")
ATARI = str(ROOT / "configs" / "atari_leap.yaml")
MAZE = str(ROOT / "configs" / "maze_rnn.yaml")
S = [CFG, "run.threads=1", "run.progress=false", "eval.every=0", "eval.tasks=2", "inner.steps=3"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run (3 meta-steps, a checkpoint at each) made by `metarl train`; tests copy it."""
    d = tmp_path_factory.mktemp("finished") / "D"
    assert main(["train", *S, "meta.steps=3", "run.checkpoint_every=1", "--run-dir", str(d)]) == 0
    return d


@pytest.fixture
def run_copy(finished_run, tmp_path):
    d = tmp_path / "D"
    shutil.copytree(finished_run, d)
    return d


def fake_state(step: int, n: int = 3) -> dict:
    return {"step": step,
            "meta": {"init": {"w": torch.full((n,), float(step))}, "counters": torch.tensor([0, 0, step])}}


# ------------------------------------------------------------------------------------------------
# 1. pruning by step; a fresh run never writes over another run


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, capsys):
    """(1a) Both kept checkpoints of a run are corrupt, the resumed run restarts from 0: its own checkpoints
    must survive pruning (by name, the corrupt 299 and 300 outranked them and they were deleted)."""
    for step in (299, 300):
        ckpt.checkpoint_path(tmp_path, step).write_bytes(b"truncated")
    for step in range(1, 4):
        save_checkpoint(tmp_path, step, fake_state(step), keep=2)
    steps = [ckpt.checkpoint_step(p) for p in list_checkpoints(tmp_path)]
    assert steps == [2, 3, 299, 300]
    state, path = load_latest(tmp_path)
    assert int(state["step"]) == 3
    assert capsys.readouterr().err.count("unreadable") == 2
    # a resuming trainer moves the unusable newer ones aside: later resumes go straight to its own
    state, path = load_latest(tmp_path, quarantine=True)
    assert int(state["step"]) == 3 and [p.name for p in list_checkpoints(tmp_path)][-1] == path.name
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == ["checkpoint-0000299.pt.corrupt",
                                                                 "checkpoint-0000300.pt.corrupt"]


def test_fresh_run_into_a_non_empty_run_directory_is_refused(run_copy, capsys):
    """(1b) A fresh run into another run's directory overwrote its config.yaml and eval.json and pruned."""
    before = snapshot(run_copy)
    code, _, err = cli(["train", *S, "meta.steps=20", "seed=5", "--run-dir", run_copy], capsys)
    assert code == 2 and "is not empty" in one_line(err) and "--resume" in err
    assert snapshot(run_copy) == before


def test_fresh_run_into_an_empty_existing_folder_is_fine(tmp_path, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    code, out, err = cli(["train", *S, "meta.steps=1", "--run-dir", d], capsys)
    assert code == 0, err
    assert (d / "config.yaml").is_file() and not (d / ".metarl.lock").exists()     # the lock is released


# ------------------------------------------------------------------------------------------------
# 2, 3. resume overrides


@pytest.mark.parametrize("override,key", [("sine.hidden=[20,20]", "sine.hidden"),
                                          ("meta.optimizer.name=adam", "meta.optimizer.name"),
                                          ("meta.head=reset", "meta.head"),
                                          ("meta.optimizer.lr=0.5", "meta.optimizer.lr"),
                                          ("seed=3", "seed"), ("method=reptile", "method")])
def test_resume_refuses_overrides_that_change_the_run_before_writing(run_copy, capsys, override, key):
    """(2) a traceback after config.yaml was rewritten; (3) meta.optimizer.lr silently ignored but recorded."""
    before = snapshot(run_copy)
    code, _, err = cli(["train", "--resume", run_copy, "meta.steps=5", override], capsys)
    assert code == 2 and f"cannot change {key!r} on resume" in one_line(err)
    assert snapshot(run_copy) == before
    code, _, err = cli(["eval", run_copy], capsys)     # the run is still whole
    assert code == 0, err


def test_resume_may_change_the_documented_keys_only():
    from train.config import check_resume_overrides
    saved = load_config(CFG)
    new = load_config(CFG, ["meta.steps=500", "eval.tasks=3", "eval.every=7", "run.keep=4", "run.threads=2",
                            "run.progress=false", "run.checkpoint_every=3"])
    assert sorted(check_resume_overrides(saved, new)) == sorted(
        ["meta.steps", "eval.tasks", "eval.every", "run.keep", "run.threads", "run.progress", "run.checkpoint_every"])
    for override in ("inner.lr=0.5", "meta.meta_batch=2", "leap.p=2", "name=other", "inner.steps=2",
                     "sine.batch_size=3"):
        with pytest.raises(ConfigError, match="on resume"):
            check_resume_overrides(saved, load_config(CFG, [override]))


def test_resume_may_move_the_data_folders():
    """A run moved to another machine resumes with that machine's data and cache folders (and device)."""
    from train.config import check_resume_overrides
    data = read_yaml(ROOT / "configs" / "omniglot_quick_leap.yaml")
    saved = build_config(data, ["omniglot.root=/gpu/omniglot", "omniglot.cache_dir=/tmp/cache", "run.device=cuda"])
    here = build_config(data, [])
    assert sorted(check_resume_overrides(saved, here)) == ["omniglot.cache_dir", "omniglot.root", "run.device"]
    with pytest.raises(ConfigError, match="on resume"):
        check_resume_overrides(saved, build_config(data, ["omniglot.root=/gpu/omniglot", "omniglot.filters=32"]))


def test_resume_with_allowed_overrides_continues(run_copy, capsys):
    code, out, err = cli(["train", "--resume", run_copy, "meta.steps=4", "eval.tasks=3"], capsys)
    assert code == 0, err
    assert int(load_latest(run_copy)[0]["step"]) == 4
    saved = load_config(run_copy / "config.yaml")
    assert saved.meta.steps == 4 and saved.eval.tasks == 3 and saved.meta.optimizer.lr == 0.01


def test_resume_of_a_finished_run_is_refused_and_writes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = cli(["train", "--resume", run_copy], capsys)
    assert code == 2 and "is finished" in one_line(err) and "metarl eval" in err
    code, _, err = cli(["train", "--resume", run_copy, "meta.steps=2"], capsys)
    assert code == 2 and "more than the 2 configured" in one_line(err)
    assert snapshot(run_copy) == before


def test_resume_needs_overrides_not_a_config_file(run_copy, capsys):
    code, _, err = cli(["train", CFG, "--resume", run_copy], capsys)
    assert code == 2 and "not a CONFIG file" in one_line(err)
    code, _, err = cli(["train", "--resume", run_copy, "--run-dir", run_copy.parent / "other"], capsys)
    assert code == 2 and "--run-dir does not go with --resume" in one_line(err)


def test_checkpoint_of_the_wrong_structure_falls_back_like_a_corrupt_one(tmp_path, capsys):
    """(2) A checkpoint that loads but holds no ``meta.init`` gave a traceback instead of the fallback."""
    save_checkpoint(tmp_path, 1, fake_state(1), keep=5)
    save_checkpoint(tmp_path, 2, {"step": 2, "meta": {"something": torch.zeros(1)}}, keep=5)
    save_checkpoint(tmp_path, 3, fake_state(3, n=4), keep=5)             # another model's shapes
    save_checkpoint(tmp_path, 4, {"step": "four"}, keep=5)                # not even a step
    state, path = load_latest(tmp_path, validate=ckpt.require_keys("meta.init", "meta.counters"))
    assert int(state["step"]) == 3
    reference = fake_state(0)
    state, path = load_latest(tmp_path, validate=ckpt.matches_reference(reference))
    assert int(state["step"]) == 1 and path.name == "checkpoint-0000001.pt"
    err = capsys.readouterr().err
    assert "checkpoint-0000004.pt is unreadable" in err and "checkpoint-0000002.pt is unreadable" in err
    assert load_latest(tmp_path, validate=lambda s: False, log=lambda m: None) is None


# ------------------------------------------------------------------------------------------------
# 4. the run-directory lock


def test_a_run_directory_held_by_a_live_run_is_refused(run_copy, capsys):
    from train.rundir import RunLock, lock_holder
    with RunLock(run_copy):
        assert lock_holder(run_copy) == os.getpid()
        before = snapshot(run_copy)
        code, _, err = cli(["train", "--resume", run_copy, "meta.steps=5"], capsys)
        assert code == 2 and f"is in use by process {os.getpid()}" in one_line(err)
        assert snapshot(run_copy) == before
    assert lock_holder(run_copy) is None and not (run_copy / ".metarl.lock").exists()


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    from train.errors import RunDirError
    from train.rundir import RunLock, lock_holder
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from train.rundir import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path) == holder.pid
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()                                   # kill -9: no clean-up, the lock file stays
        holder.wait()
    assert (tmp_path / ".metarl.lock").exists() and lock_holder(tmp_path) is None
    lock = RunLock(tmp_path).acquire()                  # stale: taken over
    assert lock.stale is not None and lock.stale[0] == holder.pid
    lock.release()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_by_pid_where_flock_is_unavailable(tmp_path, monkeypatch):
    import socket

    from train import rundir
    from train.errors import RunDirError
    monkeypatch.setattr(rundir, "fcntl", None)
    (tmp_path / ".metarl.lock").write_text(f"{dead_pid()} {socket.gethostname()}\n")
    lock = rundir.RunLock(tmp_path).acquire()
    assert lock.stale is not None
    lock.release()
    (tmp_path / ".metarl.lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")   # alive
    with pytest.raises(RunDirError, match="in use"):
        rundir.RunLock(tmp_path).acquire()


# ------------------------------------------------------------------------------------------------
# 5. atomic writes of config.yaml / eval.json / result.json


class Killed(BaseException):
    """The process dies here (as under kill -9 nothing after it runs in the writer)."""


def test_a_writer_killed_between_open_and_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    target.write_text('{"old": 1}')
    real_open = open

    def dying_open(path, mode="r", *a, **k):
        real_open(path, mode, *a, **k).close()          # opened (created / truncated) ... then killed
        raise Killed()

    monkeypatch.setattr(ckpt, "open", dying_open, raising=False)
    with pytest.raises(Killed):
        ckpt.write_text_atomic(target, '{"new": 2}')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert not list(tmp_path.glob("*.tmp"))
    ckpt.write_json_atomic(target, {"new": 2})
    assert json.loads(target.read_text()) == {"new": 2}


def test_a_kill_minus_9_left_temp_file_is_removed_on_resume(run_copy, capsys):
    (run_copy / "checkpoint-0000004.pt.tmp").write_bytes(b"partial")
    (run_copy / "config.yaml.tmp").write_bytes(b"")
    code, _, err = cli(["train", "--resume", run_copy, "meta.steps=4"], capsys)
    assert code == 0, err
    assert not list(run_copy.glob("*.tmp"))


def test_an_empty_config_yaml_refuses_resume(run_copy, capsys):
    """(5) A config.yaml emptied by a kill made the next resume train a default run."""
    (run_copy / "config.yaml").write_text("")
    before = snapshot(run_copy)
    code, _, err = cli(["train", "--resume", run_copy], capsys)
    assert code == 2 and "is empty" in one_line(err)
    assert snapshot(run_copy) == before


def test_an_empty_eval_json_is_recomputed_on_resume(run_copy, capsys):
    """(5) An eval.json emptied by a kill made every later resume fail with a JSONDecodeError."""
    (run_copy / "eval.json").write_text("")
    code, out, err = cli(["train", "--resume", run_copy], capsys)
    assert code == 0, err
    saved = json.loads((run_copy / "eval.json").read_text())
    assert "auc" in saved and saved["split"] == "test"             # the split the result is on
    assert (run_copy / "eval.json.corrupt").exists()


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    code, _, err = cli(["train", tmp_path / "empty.yaml", "--run-dir", tmp_path / "run"], capsys)
    assert code == 2 and "is empty" in one_line(err) and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# 6. validation gaps: one line, exit 2, nothing written


GAPS = [
    ([CFG, "meta.optimizer.lr=nan"], "'meta.optimizer.lr' must be a finite number"),
    ([CFG, "inner.lr=inf"], "'inner.lr' must be a finite number"),
    ([CFG, "inner.momentum=nan"], "'inner.momentum' must be a finite number"),
    ([CFG, "inner.clip_grad_norm=nan"], "'inner.clip_grad_norm' must be a finite number"),
    ([CFG, "inner.lr=.inf"], "'inner.lr' must be a finite number"),
    ([CFG, "sine.amplitude=[0.1, .nan]"], "'sine.amplitude[1]' must be a finite number"),
    ([CFG, "maml.steps=-1"], "'maml.steps' must be positive"),
    ([CFG, "maml.steps=0"], "'maml.steps' must be positive"),
    ([CFG, "meta.optimizer.clip_grad_norm=-1"], "'meta.optimizer.clip_grad_norm' must be >= 0"),
    ([CFG, "meta.optimizer.weight_decay=-1"], "'meta.optimizer.weight_decay' must be >= 0"),
    ([CFG, "meta.optimizer.momentum=-1"], "'meta.optimizer.momentum' must be >= 0"),
    ([CFG, "meta.optimizer.betas=[0.9, 1.0]"], "'meta.optimizer.betas' must be in [0, 1)"),
    ([CFG, "meta.optimizer.lr=1.0e+39"], "'meta.optimizer.lr' must be a finite number"),
    ([CFG, "seed=1180591620717411303424"], "'seed' must be an integer of magnitude below 2**63"),
    ([CFG, "meta.steps=99999999999999999999"], "'meta.steps' must be an integer of magnitude below 2**63"),
    ([CFG, "method=warpgrad", "warpgrad.warp_optimizer.lr=-1"], "'warpgrad.warp_optimizer.lr' must be >= 0"),
    ([MAZE, "maze.task_lr=nan"], "'maze.task_lr' must be a finite number"),
    ([MAZE, "maze.gamma=nan"], "'maze.gamma' must be a finite number"),
    ([ATARI, "atari.a2c.lr=nan"], "'atari.a2c.lr' must be a finite number"),
    ([ATARI, "atari.test_games=[]"],
     "'atari.test_games' is empty: the test evaluation (eval.split: test) has no games"),
    ([ATARI, "eval.split=val"], "'atari.val_games' is empty: the val evaluation (eval.split: val) has no games"),
    ([ATARI, "atari.train_games=[]"], "'atari.train_games' is empty: meta-training has no games"),
]


def never_train(*args, **kwargs):
    raise AssertionError("a refused config reached train()")


@pytest.mark.parametrize("args,message", GAPS, ids=[" ".join(a[1:]) for a, _ in GAPS])
def test_validation_gaps_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    import train.trainer
    monkeypatch.setattr(train.trainer, "train", never_train)
    code, _, err = cli(["train", *args, "--run-dir", tmp_path / "run"], capsys)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file_under_a_file_or_a_loop(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    for run_dir, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "not usable"),
                             (tmp_path / "loop", "symbolic link loop"),
                             (tmp_path / "loop" / "run", "symbolic link loop")):
        code, _, err = cli(["train", *S, "meta.steps=1", "--run-dir", run_dir], capsys)
        assert code == 2 and message in one_line(err), err
        code, _, err = cli(["train", "--resume", run_dir], capsys)
        assert code == 2 and "cannot resume" in one_line(err), err


def test_read_only_run_dir(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:               # root writes anywhere: make the checks see what a user would
        real_access, real_mkdir = os.access, os.mkdir

        def mkdir(p, *a, **k):
            if Path(p).parent == ro:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
            return real_mkdir(p, *a, **k)

        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro and mode & os.W_OK
                            else real_access(p, mode, **k))
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        code, _, err = cli(["train", *S, "meta.steps=1", "--run-dir", ro], capsys)
        assert code == 2 and "is not writable" in one_line(err)
        code, _, err = cli(["train", *S, "meta.steps=1", "--run-dir", ro / "sub"], capsys)
        assert code == 2 and "Permission denied" in one_line(err)
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------
# 7. YAML: duplicate keys, alias bombs, bounded messages


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text(open(CFG).read() + "meta:\n  steps: 3\n")
    code, _, err = cli(["train", p], capsys)
    assert code == 2 and "duplicate key 'meta'" in one_line(err) and "line" in err
    code, _, err = cli(["train", CFG, "sine={batch_size: 2, batch_size: 3}"], capsys)
    assert code == 2 and "duplicate key 'batch_size'" in one_line(err)


def alias_bomb(levels: int) -> str:
    """`meta:` as a list whose entries define anchors, each entry 9 aliases of the one before: 9^levels
    strings once expanded (14 lines made the old error message 312 MB)."""
    names = "abcdefghijklmnop"
    entries = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    entries += [f"&{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip(names, names[1:levels])]
    return "meta: [\n  " + ",\n  ".join(entries) + "]\n"


def test_an_alias_bomb_gives_a_short_message_quickly(tmp_path, capsys):
    p = tmp_path / "bomb.yaml"
    for levels, message in ((14, "more than 100 aliases"), (6, "expands to more than 100000 values"),
                            (2, "'meta' must be a mapping, got list")):
        p.write_text(f"name: x\n{alias_bomb(levels)}")
        t0 = time.time()
        code, _, err = cli(["train", p], capsys)
        assert code == 2 and message in one_line(err) and len(one_line(err)) < 400 and time.time() - t0 < 10
    p.write_text("x: &x 1\ny: [" + ", ".join(["*x"] * 101) + "]\n")
    code, _, err = cli(["train", p], capsys)
    assert code == 2 and "more than 100 aliases" in one_line(err)


def test_huge_values_are_quoted_short(tmp_path, capsys):
    code, _, err = cli(["train", CFG, "name=" + "x" * 100000 + "/"], capsys)
    assert code == 2 and len(one_line(err)) < 600
    code, _, err = cli(["train", CFG, "inner.lr=[" + ", ".join(["1"] * 50000) + "]"], capsys)
    assert code == 2 and len(one_line(err)) < 600


# ------------------------------------------------------------------------------------------------
# 8. disk full or SIGINT during a save


def partial_save_then(exc):
    def save(state, f, *a, **k):
        f.write(b"\x80\x02partial checkpoint bytes")
        raise exc
    return save


def test_disk_full_during_a_save_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from train.errors import RunDirError
    save_checkpoint(tmp_path, 1, fake_state(1))
    monkeypatch.setattr(ckpt.torch, "save", partial_save_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(RunDirError, match="No space left on device"):
        save_checkpoint(tmp_path, 2, fake_state(2))
    monkeypatch.undo()
    assert not list(tmp_path.glob("*.tmp"))
    state, path = load_latest(tmp_path)
    assert int(state["step"]) == 1


def test_disk_full_during_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ckpt.torch, "save", partial_save_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    code, _, err = cli(["train", *S, "meta.steps=2", "--run-dir", tmp_path / "run"], capsys)
    assert code == 2 and "No space left on device" in one_line(err)
    assert not list((tmp_path / "run").glob("*.tmp")) and not (tmp_path / "run" / ".metarl.lock").exists()


def test_sigint_during_a_save_leaves_no_temp_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, fake_state(1))
    monkeypatch.setattr(ckpt.torch, "save", partial_save_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, fake_state(2))
    monkeypatch.undo()
    assert not list(tmp_path.glob("*.tmp"))
    assert int(load_latest(tmp_path)[0]["step"]) == 1


# ------------------------------------------------------------------------------------------------
# 9. order by step number, not by name


def test_checkpoints_past_ten_million_steps_are_ordered_by_step(tmp_path):
    for step in (9_999_998, 9_999_999, 10_000_000):
        save_checkpoint(tmp_path, step, fake_state(step), keep=2)
    assert [ckpt.checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [9_999_999, 10_000_000]
    save_checkpoint(tmp_path, 10_000_001, fake_state(10_000_001), keep=2)
    assert [ckpt.checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [10_000_000, 10_000_001]
    assert int(load_latest(tmp_path)[0]["step"]) == 10_000_001
    (tmp_path / "checkpoint-notes.pt").write_text("not a checkpoint")     # other names are ignored
    assert len(list_checkpoints(tmp_path)) == 2


# ------------------------------------------------------------------------------------------------
# 10. strict JSON: null for NaN / inf, counted


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_dumps_json_writes_null_for_non_finite_numbers_and_counts_them():
    text = ckpt.dumps_json({"auc": math.nan, "curve": [1.0, math.inf, -math.inf], "t": torch.tensor(float("nan")),
                            "ok": 2.5, "n": 3, "flag": True})
    data = strict_loads(text)
    assert data == {"auc": None, "curve": [1.0, None, None], "t": None, "ok": 2.5, "n": 3, "flag": True,
                    "non_finite": 4}
    assert strict_loads(ckpt.dumps_json({"a": 1.0})) == {"a": 1.0}


def test_printed_results_are_strict_json(run_copy, capsys, monkeypatch):
    import train.evaluate
    monkeypatch.setattr(train.evaluate, "evaluate_run",
                        lambda run_dir, split=None, video=False, **kw: {"accuracy": math.nan})
    code, out, err = cli(["eval", run_copy], capsys)
    assert code == 0 and strict_loads(out.strip().splitlines()[-1]) == {"accuracy": None, "non_finite": 1}


# ------------------------------------------------------------------------------------------------
# 11. SIGTERM and SIGHUP end like SIGINT: one line, checkpoints intact, the lock released


SIGNAL_SELF = """
import os, signal, sys
import train.trainer
def signalled(cfg, run_dir, **kw):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    raise AssertionError("the signal should have stopped the run")
train.trainer.train = signalled
from train.cli import main
raise SystemExit(main(["train", *sys.argv[3:], "--run-dir", sys.argv[2]]))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_are_handled_like_sigint(tmp_path, name):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-c", SIGNAL_SELF, name, str(run_dir), *S], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    signum = getattr(signal, name)
    assert out.returncode == 128 + signum, (out.returncode, out.stderr[-2000:])
    line = one_line(out.stderr)
    assert f"stopped by {name}" in line and f"--resume {run_dir}" in line
    assert not (run_dir / ".metarl.lock").exists()


def test_sigterm_during_training_keeps_the_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", "train", *S, "meta.steps=100000",
                             "run.checkpoint_every=1", "--run-dir", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run_dir)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in one_line(err)
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / ".metarl.lock").exists()
    state, _ = load_latest(run_dir)
    assert int(state["step"]) >= 2


# ------------------------------------------------------------------------------------------------
# wired in the trainer and the task configs


def test_a_meta_step_that_overflows_the_initialisation_is_undone():
    from torch import nn

    from metarl import MetaOptimizerConfig, Reptile
    meta = Reptile(nn.Linear(3, 2), meta_optimizer=MetaOptimizerConfig(name="sgd", lr=1e38))
    before = [p.detach().clone() for p in meta.params]
    for a in meta._acc:                  # a finite meta-gradient whose step overflows float32
        a.fill_(1e10)
    meta.tasks = 1
    logs = meta.meta_step()
    assert logs["meta/skipped_step"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, meta.params))


@pytest.mark.parametrize("override", ["meta.include=[nonexistent.]", "atari.a2c.lr=-1", "atari.env_threads=-1",
                                      "atari.test_games=[Pong]", "atari.a2c.gamma=2", "maze.gamma=2"])
def test_more_bad_values_are_one_line(override, tmp_path, capsys):
    config = MAZE if override.startswith("maze.") else ATARI if override.startswith("atari.") else CFG
    args = [config, override, "meta.steps=1", "run.progress=false"] if config != CFG else [*S, override]
    code, _, err = cli(["train", *args, "--run-dir", tmp_path / "r"], capsys)
    assert code == 2, err
    one_line(err)


# ------------------------------------------------------------------------------------------------
# 9. inputs that would exhaust the machine (issue 29): refused from the config, before anything is allocated

WARP_MAZE = str(ROOT / "configs" / "maze_warp_rnn.yaml")
SEEDS_1000 = "maze.seeds=[" + ", ".join(map(str, range(1000))) + "]"
BUDGET = [
    ([ATARI, "atari.a2c.num_envs=100000"], "'atari.a2c.num_envs' = 100000 needs about"),
    ([CFG, "meta.meta_batch=1000000000"], "'meta.meta_batch' = 1000000000 needs about"),
    ([CFG, "method=maml", "maml.steps=1000000"], "'maml.steps' = 1000000 needs about"),
    ([MAZE, "maze.batch=100000"], "'maze.batch' = 100000 needs about"),
    ([WARP_MAZE, SEEDS_1000], "'len(maze.seeds)' = 1000 needs about"),
    ([MAZE, "maze.maze_size=100001"], "'maze.maze_size' = 100001 needs about"),
    ([CFG, "eval.tasks=1000000000"], "'eval.tasks' = 1000000000 needs about"),
    ([CFG, "sine.batch_size=1000000000000"], "'sine.batch_size' = 1000000000000 needs about"),
    ([MAZE, "maze.hidden_size=1000000"], "'maze.hidden_size' = 1000000 needs about"),
    ([ATARI, "atari.a2c.n_steps=10000000"], "'atari.a2c.n_steps' = 10000000 needs about"),
    ([CFG, "sine.hidden=[1000000, 1000000]"], "'sine.hidden' = (1000000, 1000000) needs about"),
    ([CFG, "run.threads=1000000"], "'run.threads' is 1000000: more than 8 × the"),
    ([ATARI, "atari.env_threads=100000"], "'atari.env_threads' is 100000: more than 8 × the"),
    ([MAZE, "maze.batch=3000", "run.max_memory=0.5"], "more than run.max_memory (0.5 GiB)"),
    ([CFG, "run.max_memory=-1"], "'run.max_memory' must be >= 0"),
]


@pytest.mark.parametrize("args,message", BUDGET, ids=[" ".join(a[1:])[:60] for a, _ in BUDGET])
def test_a_config_beyond_the_machine_is_refused_before_anything_is_allocated(args, message, capsys, tmp_path,
                                                                               monkeypatch):
    import train.trainer
    monkeypatch.setattr(train.trainer, "train", never_train)
    t0 = time.time()
    code, _, err = cli(["train", *args, "--run-dir", tmp_path / "run"], capsys)
    assert code == 2 and message in one_line(err) and len(one_line(err)) < 400 and time.time() - t0 < 120
    assert not (tmp_path / "run").exists()


def test_the_budget_refuses_no_shipped_config():
    from train.budget import check_budget
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        check_budget(load_config(path))


def test_the_budget_holds_for_eval_and_resume(run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = cli(["train", "--resume", run_copy, "meta.steps=5", "run.threads=1000000"], capsys)
    assert code == 2 and "'run.threads' is 1000000" in one_line(err)
    code, _, err = cli(["train", "--resume", run_copy, "meta.steps=5", "run.max_memory=0.000001"], capsys)
    assert code == 2 and "more than run.max_memory" in one_line(err)
    (run_copy / "config.yaml").write_text((run_copy / "config.yaml").read_text().replace(
        "max_memory: 0.0", "max_memory: 1.0e-06"))
    code, _, err = cli(["eval", run_copy], capsys)
    assert code == 2 and "more than run.max_memory" in one_line(err)
    assert {k: v for k, v in snapshot(run_copy).items() if k != "config.yaml"} == \
        {k: v for k, v in before.items() if k != "config.yaml"}


def test_includes_that_fan_out_are_refused_quickly(tmp_path, capsys):
    for i in range(12):                 # each file includes the next four times: 4¹² reads unbounded
        (tmp_path / f"f{i}.yaml").write_text(f"include: [f{i + 1}.yaml, f{i + 1}.yaml, f{i + 1}.yaml, f{i + 1}.yaml]\n"
                                             f"name: n{i}\n")
    (tmp_path / "f12.yaml").write_text(open(CFG).read())
    t0 = time.time()
    code, _, err = cli(["train", tmp_path / "f0.yaml", "--run-dir", tmp_path / "run"], capsys)
    assert code == 2 and "its includes read more than 200 files" in one_line(err) and time.time() - t0 < 10
    (tmp_path / "f2.yaml").write_text("include: f12.yaml\n")            # a short chain still loads
    assert load_config(tmp_path / "f2.yaml").name == read_yaml(CFG)["name"]


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "4000000000000 bytes. Error code 12 (Cannot allocate memory)")])
def test_an_allocation_failure_is_one_line_and_leaves_no_config_yaml(error, tmp_path, capsys, monkeypatch):
    import train.trainer
    real = train.trainer.train

    def allocate_too_much(cfg, run_dir, **kw):       # as a run does: config.yaml first, then a failing allocation
        (Path(run_dir) / "config.yaml").write_text("name: x\n")
        (Path(run_dir) / "events.out.tfevents.1").write_bytes(b"")
        raise error

    monkeypatch.setattr(train.trainer, "train", allocate_too_much)
    for run_dir in (tmp_path / "new", tmp_path / "existing"):
        if run_dir.name == "existing":
            run_dir.mkdir()
        code, _, err = cli(["train", *S, "meta.steps=1", "--run-dir", run_dir], capsys)
        assert code == 2 and "out of memory" in one_line(err) and "nothing was kept" in err
        assert not (run_dir / "config.yaml").exists()
        assert run_dir.exists() == (run_dir.name == "existing") and not (run_dir.exists() and any(run_dir.iterdir()))
    monkeypatch.setattr(train.trainer, "train", real)
    code, _, err = cli(["train", *S, "meta.steps=1", "--run-dir", tmp_path / "existing"], capsys)
    assert code == 0, err                           # the folder is usable again
