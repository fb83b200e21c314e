"""One run, one story (issue 31): the same numbers and names in every output of a run — its closing table,
eval.json, `metarl report`, `metarl plot` —, progress that reads in a log, and commands that run as printed (the
run's closing lines and the README's)."""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import cli
from train.progress import LogBar, progress_bar
from train.stats import mean_std, pm

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


# ------------------------------------------------------------------------------------------------
# commands that run as printed


def resolves(word: str) -> bool:
    """Whether the shell runs ``word`` as a command here: a path to an executable file, or a name on PATH."""
    if "/" in word:
        path = Path(word)
        return path.is_file() and bool(path.stat().st_mode & 0o111)
    return shutil.which(word) is not None


def printed_commands(text: str) -> list[list[str]]:
    """The commands a run prints for the user ("TensorBoard: CMD", "continue with CMD")."""
    out = [shlex.split(m) for m in re.findall(r"^TensorBoard: (.+)$", text, re.M)]
    out += [shlex.split(m) for m in re.findall(r"continue (?:it )?with (.+?)(?:, or |\))", text)]
    return out


def readme_commands(text: str | None = None) -> list[list[str]]:
    """Every command line of the README's shell blocks (or ``text``'s; not the Python snippets): ``a && b`` as two,
    a line ending in ``\\`` joined to the next, the comment after ``#`` dropped."""
    text = (ROOT / "README.md").read_text() if text is None else text
    commands = []
    for block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if block[0] not in ("", "sh", "bash", "console"):
            continue
        for line in block[1].replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [shlex.split(part) for part in line.split("&&")]
    return commands


def test_every_readme_command_resolves_after_setup():
    """After `make` (here: the environment running the tests, which `make` builds the same way), each command the
    README shows runs as written: `make` targets exist, `. .venv/bin/activate` puts the environment's executables
    (metarl, tensorboard, torchrun) on PATH, `python -m X` names a module, .venv/bin/X exists."""
    import importlib.util
    bin_dir = Path(sys.executable).parent               # what .venv/bin is after `make`
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    commands = readme_commands()
    assert [".", ".venv/bin/activate"] in commands[:4]          # the activation line, up front
    seen = set()
    for cmd in commands:
        word = cmd[0]
        seen.add(word)
        if word == "make":
            assert cmd[1] in targets, cmd
        elif word in (".", "source"):
            assert cmd[1] == ".venv/bin/activate" and "-m venv $(VENV)" in makefile and "VENV    := .venv" in makefile
            assert (bin_dir / "activate").is_file()
        elif word.startswith(".venv/bin/"):
            assert (bin_dir / word.split("/")[-1]).is_file(), cmd
        elif word in ("python", "python3"):
            if cmd[1:2] == ["-m"] and not cmd[2].startswith("venv"):
                assert importlib.util.find_spec(cmd[2]) is not None, cmd
        else:                                               # on PATH once .venv is active
            assert (bin_dir / word).is_file(), cmd
    assert {"make", "metarl", "tensorboard", "torchrun", "python"} <= seen


def test_printed_commands_name_an_executable_that_runs(monkeypatch, tmp_path):
    """Without the environment on PATH (`make run`), a printed command names its executable by path."""
    from train.commands import command, executable
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    assert resolves(executable("tensorboard")) and "/" in executable("tensorboard")
    assert command("metarl", "train", "--resume", "runs/a b").endswith(" train --resume 'runs/a b'")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")       # an activated environment
    assert executable("tensorboard") == "tensorboard"


# ------------------------------------------------------------------------------------------------
# progress in a log


def test_off_a_terminal_progress_is_whole_lines():
    """A log gets a line when the stage starts, at most one per interval, and one at the end: no carriage
    returns; each line has the count, the elapsed time, the ETA and the postfix."""
    stream = io.StringIO()
    bar = progress_bar(10, "atari_leap", "meta-step", stream=stream)
    assert isinstance(bar, LogBar)
    bar.update(1)
    bar.set_postfix_str("env steps 1,200, 900 SPS, Breakout return 1.5 (last 3 games)")
    for _ in range(8):
        bar.update(1)                                   # within the interval: no line
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert lines[0].startswith("atari_leap: 1/10 meta-steps (10 %), elapsed 0:00, ETA ")
    assert lines[1].startswith("atari_leap: 9/10 meta-steps (90 %), elapsed 0:00, env steps 1,200, 900 SPS")
    quick = LogBar(4, "held-out evaluation", "env step", stream=stream, interval=0.0)
    quick.update(2)
    quick.write("held-out Breakout Leap init seed 1/2: final score 1.0")
    assert stream.getvalue().splitlines()[-2:] == [
        "held-out evaluation: 2/4 env steps (50 %), elapsed 0:00, ETA 0:00",
        "held-out Breakout Leap init seed 1/2: final score 1.0"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    from tqdm import tqdm
    assert isinstance(progress_bar(3, "x", "meta-step", stream=Terminal()), tqdm)


# ------------------------------------------------------------------------------------------------
# one Atari run, every output


@pytest.fixture(scope="module")
def atari_two_seeds(tmp_path_factory):
    """A tiny Atari run with 2 held-out seeds, through the command as a user runs it (progress on, not a
    terminal): (run dir, stdout, stderr)."""
    pytest.importorskip("envpool")
    capsys_free = tmp_path_factory.mktemp("atari_two_seeds")
    run_dir = capsys_free / "run"
    import contextlib
    out, err = io.StringIO(), io.StringIO()
    from train.cli import main
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", str(CONFIGS / "atari_leap.yaml"), "--run-dir", str(run_dir),
                     "atari.train_games=[Breakout]", "atari.test_games=[Breakout]", "atari.test_on_train_games=true",
                     "atari.a2c.num_envs=4", "inner.steps=600", "meta.steps=1", "meta.meta_batch=1", "eval.tasks=2",
                     "eval.steps=1200", "run.progress=true", "run.threads=1"])
    assert code == 0, err.getvalue()[-3000:]
    return run_dir, out.getvalue(), err.getvalue()


def table_rows(err: str) -> dict[str, list[str]]:
    """The closing table's rows by init: its cells (split on runs of two or more spaces)."""
    rows = {}
    for line in err.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == "Breakout" and len(cells) == 6:
            rows[cells[1]] = cells[2:]
    return rows


def test_eval_json_table_report_and_plot_agree(atari_two_seeds, tmp_path, capsys):
    run_dir, out, err = atari_two_seeds
    result = json.loads(out.strip().splitlines()[-1])
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["games"] == result["games"]
    rows = saved["games"]["Breakout"]
    # eval.json: each mean ± sample std is that of its per-seed list
    for row in rows.values():
        for key, per_seed in (("final_score", "final_scores"), ("auc", "auc_scores"),
                              ("final_human_normalised", "final_human_normalised_scores"),
                              ("human_normalised_auc", "human_normalised_auc_scores")):
            assert len(row[per_seed]) == 2
            mean, std = mean_std(row[per_seed])
            assert row[key] == pytest.approx(mean, nan_ok=True)
            assert (row[f"{key}_std"] is None) == (std is None) and row[f"{key}_std"] == pytest.approx(std)
    # the closing table: the same names and numbers, the AUC beside the final score
    table = table_rows(err)
    names = {"random init": "random_init", "Leap init": "meta_init"}
    assert set(table) == set(names)
    for name, init in names.items():
        r = rows[init]
        assert table[name] == [pm(r["final_score"], r["final_score_std"], 1), pm(r["auc"], r["auc_std"], 1),
                               pm(r["final_human_normalised"], r["final_human_normalised_std"], 3),
                               pm(r["human_normalised_auc"], r["human_normalised_auc_std"], 3)]
        assert f"| Breakout | {name} | 2 | " + " | ".join(table[name]) in (run_dir / "eval_atari.md").read_text()
    # metarl report: the same names, means and sample stds
    code, _, report_err = cli(["report", run_dir, "--out", tmp_path / "report", "--reps", "50"], capsys)
    assert code == 0, report_err
    atari = json.loads((tmp_path / "report" / "report.json").read_text())["suites"]["atari"]
    per_task = atari["per_task"]["Breakout"]
    assert set(per_task) == set(names)
    for name, init in names.items():
        for metric, key in (("score", "final_score"), ("score_auc", "auc"), ("human_normalised",
                            "final_human_normalised"), ("human_normalised_auc", "human_normalised_auc")):
            assert per_task[name][metric]["mean"] == pytest.approx(rows[init][key], nan_ok=True), (name, metric)
            assert per_task[name][metric]["std"] == pytest.approx(rows[init][f"{key}_std"]), (name, metric)
    assert atari["underpowered"] == sorted(names)                # 2 runs each
    # metarl plot: the same names, n = the seeds, a band (the sample std), the mean of the seeds' curves
    from train.plot import figure
    (ax,) = [a for a in figure([run_dir]).axes if a.get_visible()]
    assert sorted(line.get_label() for line in ax.get_lines()) == ["Leap init (n=2)", "random init (n=2)"]
    parts = run_dir / "eval_parts" / "test"
    for line in ax.get_lines():
        init = names[line.get_label().split(" (")[0]]
        last = [json.loads((parts / f"Breakout__{init}__{k}.json").read_text())["curve"][-1] for k in range(2)]
        if None not in last:
            assert line.get_ydata()[-1] == pytest.approx(np.mean(last), rel=1e-6)
    assert len(ax.collections) == 2


def test_the_run_reads_in_a_log_and_its_closing_commands_run(atari_two_seeds):
    run_dir, _, err = atari_two_seeds
    assert "\r" not in err
    assert re.search(r"^atari_leap: 1/1 meta-step \(100 %\), elapsed \d+:\d\d, env steps 6\d\d, ", err, re.M)
    assert re.search(r"^held-out evaluation: [\d,]+/4,800 env steps .*SPS, Breakout return", err, re.M)
    commands = printed_commands(err)
    assert commands and all(resolves(cmd[0]) for cmd in commands), commands
    assert commands[0][1:] == ["--logdir", str(run_dir)]


# ------------------------------------------------------------------------------------------------
# the maze: progress with the return, a closing table, a seed-mean TensorBoard run


def test_a_seed_batched_maze_run_shows_its_return_ends_with_its_table_and_logs_the_seed_mean(tmp_path, capsys):
    from test_maze_seed_batch import tiny_cfg

    from train.config import config_to_yaml
    from train.plot import figure, load_events, tag_points

    config = tmp_path / "maze.yaml"
    config.write_text(config_to_yaml(tiny_cfg("rnn", 0, [0, 1, 2], "run.progress=true")))
    code, out, err = cli(["train", config, "--run-dir", tmp_path / "run"], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    result = json.loads(out.strip().splitlines()[-1])
    assert "\r" not in err and re.search(r"^maze_seeds: 3/3 meta-steps .*episodes [\d,]+, .*maze return -?\d",
                                         err, re.M)
    lines = err.rstrip().splitlines()
    means = [result["per_seed"][str(k)]["return_last_mean"] for k in range(3)]
    assert lines[-6].startswith("maze run maze_seeds: ") and lines[-5].split() == ["seed", "return"]
    assert [line.split() for line in lines[-4:-1]] == [[str(k), f"{m:.2f}"] for k, m in enumerate(means)]
    assert lines[-1].split()[:6] == ["mean", "of", "3", "seeds", f"{np.mean(means):.2f}", "±"]
    assert lines[-1].split()[6] == f"{np.std(means, ddof=1):.2f}"
    commands = printed_commands(err)
    assert commands and all(resolves(cmd[0]) for cmd in commands)
    # the run's own games/ run: the mean over seeds, the spread in a section of its own
    seeds = [tag_points(load_events(run / f"seed_{k}" / "games"), "charts/episodic_return") for k in range(3)]
    mean_run = load_events(run / "games")
    steps, values = tag_points(mean_run, "charts/episodic_return")
    np.testing.assert_array_equal(steps, seeds[0][0])
    np.testing.assert_allclose(values, np.mean([v for _, v in seeds], 0), rtol=1e-6)
    _, spread = tag_points(mean_run, "charts_std/episodic_return")
    np.testing.assert_allclose(spread, np.std([v for _, v in seeds], 0, ddof=1), rtol=1e-5, atol=1e-6)
    # metarl plot: the seeds' curves, n = 3
    (ax,) = [a for a in figure([run]).axes if a.get_visible()]
    assert [line.get_label() for line in ax.get_lines()] == ["run (n=3)"]
