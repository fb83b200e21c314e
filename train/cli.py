"""The `metarl` command: train, eval, bench, plot, report, export. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import UserError, clip, error_line, out_of_memory
from .runtime import keep_freed_memory, short_openmp_spin


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would also print the usage)
        print(f"metarl: error: {clip(message, 1000)}", file=sys.stderr)
        raise SystemExit(2)


TRAIN_EPILOG = """\
configs: configs/*.yaml in the repository, one per experiment; e.g. metarl train configs/atari_leap.yaml
  run.threads=1
keys: docs/cli.md lists every config file with the job it serves and every key with its default and its
  meaning (the defaults live in train/config.py, train/tasks/<task>.py and the method's module in metarl/);
  a run's saved config.yaml lists every key with the value it used."""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metarl", description="Leap and WarpGrad meta-learning for RL and supervised tasks")
    p.add_argument("--version", action="version", version=f"metarl {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="meta-train from a YAML config", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="configs/NAME.yaml (omit with --resume to reuse the run's config)")
    t.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/NAME__SEED__TIME)")
    t.add_argument("--data", metavar="DIR", help="the data root (as METARL_DATA): a config's relative data "
                   "folder is taken by its last name under DIR, e.g. DIR/omniglot")
    e = sub.add_parser("eval", help="evaluate a run's initialisation on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--split", default=None, help="val or test (default: the run's eval.split)")
    e.add_argument("--video", action="store_true", help="Atari: also record one game per held-out game and "
                   "initialisation (run_dir/videos/, TensorBoard), as eval.video: true does")
    e.add_argument("--seeds", type=int, default=None, metavar="N", help="held-out tasks (Atari: seeds per game and "
                   "initialisation) instead of the run's eval.tasks; finished ones are reused")
    b = sub.add_parser("bench", help="run a benchmark; the last line is a JSON object of figures",
                       description="benchmarks (metarl bench NAME --help for each one's options):\n" + "\n".join(
                           f"  {name:<20} {what}" for name, (_, what) in sorted(_benchmarks().items())),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    pl = sub.add_parser("plot", help="plot TensorBoard curves of one or more runs to PNG")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--tag", default=None, help="scalar tag to plot (default depends on the runs)")
    pl.add_argument("--out", default=None, help="output PNG path")
    pl.add_argument("--csv", default=None, metavar="PATH", help="also write the plotted points (raw) as CSV")
    r = sub.add_parser("report", help="tables, aggregate statistics (rliable) and figures of finished runs")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished runs (or folders holding them)")
    r.add_argument("--out", default="report", metavar="DIR", help="output folder (default: ./report)")
    r.add_argument("--baseline", action="append", default=None, metavar="METHOD",
                   help="method to compare against (repeatable: a probability of improvement over each one a suite "
                   "has, and consistency over seeds against each; default random_init)")
    r.add_argument("--metric", default=None, help="score to aggregate (default: per suite, e.g. human_normalised)")
    r.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    r.add_argument("--tasks", default=None, metavar="T1,T2",
                   help="only these tasks (Atari games), e.g. the held-out games related to the training family")
    r.add_argument("--control", default=None, metavar="METHOD",
                   help="an upper reference (e.g. an encoder trained on the test game itself): report the fraction "
                   "of the gap between the first baseline and it that each method closes, with its CI")
    r.add_argument("--split", default="test", choices=("test", "val"),
                   help="whose held-out results: the test tasks' (default) or the validation tasks' (a choice of "
                   "hyper-parameters is reported on val, never on test)")
    x = sub.add_parser("export", help="write an Atari run's meta-learned encoder for our agent or stable-baselines3")
    x.add_argument("run_dir")
    x.add_argument("--out", metavar="FILE", help="encoder.* tensors in our names (ActorCritic)")
    x.add_argument("--sb3", metavar="FILE", help="the same tensors in SB3's NatureCNN names (A2C('CnnPolicy'))")
    x.add_argument("--force", action="store_true", help="replace existing files (never a run directory's)")
    return p


def _version() -> str:
    """The installed package's version (its metadata), or "unknown" when run from an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("metarl")
    except PackageNotFoundError:
        return "unknown"


def _benchmarks() -> dict[str, tuple[str, str]]:
    from .benchmarks import BENCHMARKS
    return BENCHMARKS


def _main_rank() -> bool:
    """Rank 0 (or no torchrun): the process that guards and writes the run directory."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import dumps_json, list_checkpoints, remove_temp_files
    from .config import DATA_ENV, check_resume_overrides, load_config
    from .config_yaml import read_yaml
    from .config_usage import check_used_keys
    from .distributed import init_world, shutdown
    from .rundir import (RunLock, check_fresh, check_resumable, prepare_run_dir, resume_state,
                         set_aside_unreadable_results)
    from .trainer import train

    # `metarl train --resume RUN_DIR key=value` puts the first override into `config`.
    overrides = list(args.overrides)
    config = args.config
    if args.data:
        if not Path(args.data).expanduser().is_dir():
            raise UserError(f"--data {args.data}: not a folder")
        os.environ[DATA_ENV] = str(Path(args.data).expanduser().resolve())
    resume = bool(args.resume)
    if resume:
        run_dir = Path(args.resume)
        if args.run_dir:
            raise UserError("--run-dir does not go with --resume: a resumed run stays in its RUN_DIR")
        if config is not None:
            if "=" not in config:
                raise UserError(f"--resume continues {run_dir} with its own config.yaml: give key=value "
                                f"overrides, not a CONFIG file ({config})")
            overrides.insert(0, config)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume: {run_dir} has no config.yaml")
        saved = load_config(run_dir / "config.yaml")
        cfg = load_config(run_dir / "config.yaml", overrides)
        check_resume_overrides(saved, cfg)      # before anything is written
        check_used_keys(cfg, None, overrides)   # the saved config lists every key: only overrides are checked
    else:
        if config is None:
            raise UserError("train needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(config, overrides)
        check_used_keys(cfg, read_yaml(config), overrides)     # keys this run would ignore: refused
        run_dir = Path(args.run_dir) if args.run_dir else \
            Path(cfg.run.dir) / f"{cfg.name}__{cfg.seed}__{int(time.time())}"
    from .budget import check_budget
    from .device import resolve_device
    from .trainer import check_world
    check_budget(cfg)                           # threads and estimated memory: before anything is allocated
    resolve_device(cfg.run.device)              # CUDA asked for but absent: one line, before the run dir is touched
    check_world(cfg, int(os.environ.get("WORLD_SIZE", "1")))    # under torchrun: what one process could not equal
    args.active_run_dir = run_dir
    lock = None
    created = _missing_folders(run_dir)         # made by this command: a fresh run that fails to start removes them
    started = False                             # a fresh run past check_fresh: its folder holds only what it wrote
    if _main_rank():                            # rank 0 guards the directory; the others use it
        run_dir = prepare_run_dir(run_dir, resume)
        lock = RunLock(run_dir).acquire()
        if lock.stale is not None:
            print(lock.stale_warning(), file=sys.stderr)
    try:
        if lock is not None:
            if resume:
                remove_temp_files(run_dir)      # left by a writer killed mid-write (we hold the lock)
                check_resumable(run_dir, cfg, resume_state(run_dir))
                set_aside_unreadable_results(run_dir, log=lambda msg: print(msg, file=sys.stderr))
            else:
                check_fresh(run_dir)
                started = True
        world = init_world(cfg.run.device)     # NCCL on CUDA, gloo on the CPU
        try:
            run_dir = Path(world.broadcast(str(run_dir)))     # every rank writes to rank 0's run directory
            args.active_run_dir = run_dir
            result = train(cfg, run_dir, resume=resume, world=world)
        finally:
            shutdown(world)
    except Exception as e:
        # A fresh run without a checkpoint to resume from leaves nothing behind when it fails with a user error (a
        # missing data folder, found when the task is built) or runs out of memory: no config.yaml that would make
        # its directory look like a run, and no empty folder.
        unstarted = started and not list_checkpoints(run_dir)
        if unstarted and (isinstance(e, UserError) or out_of_memory(e)):
            _empty_run_dir(run_dir)
            args.remove_folders = created       # removed with the lock below
        if not out_of_memory(e):
            raise
        # an allocation the budget (train/budget.py) did not foresee: one line
        kept = "nothing was kept" if unstarted else "the last checkpoint is kept"
        raise UserError(f"out of memory: {clip(str(e) or type(e).__name__, 200)} ({kept}; lower the sizes in the "
                        f"config, or set run.max_memory to what this machine can give)") from None
    finally:
        if lock is not None:
            lock.release()
            for folder in getattr(args, "remove_folders", ()):
                try:
                    folder.rmdir()              # only if empty: the run folder, then the parents it needed
                except OSError:
                    break
    if world.is_main:
        print(dumps_json(result))
        print_summary(cfg, result, run_dir)
    return 0


def _missing_folders(run_dir: Path) -> list[Path]:
    """The folders that creating ``run_dir`` makes: itself and its missing parents, innermost first."""
    out = []
    while not os.path.lexists(run_dir) and run_dir != run_dir.parent:
        out.append(run_dir)
        run_dir = run_dir.parent
    return out


def _empty_run_dir(run_dir: Path) -> None:
    """Remove what a fresh run wrote before its first checkpoint (config.yaml, run_info.json, events); the
    folder was empty when it started (check_fresh), so nothing else is in it. The lock stays until release."""
    import shutil
    from .rundir import LOCK_NAME
    for p in run_dir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def print_summary(cfg, result: dict, run_dir: Path | None = None) -> None:
    """The run's table after the JSON line, where a terminal shows it last (stderr, with the progress output;
    stdout stays the JSON): Atari's held-out table; the maze's per-seed returns and their mean (after the
    TensorBoard command of ``run_dir``)."""
    if not cfg.run.progress:
        return
    if cfg.task == "atari" and isinstance(result.get("games"), dict):
        from .tasks.atari_eval import summary
        table = summary(result, cfg.method, cfg.eval.note, cfg.task_config.eval_games)
    elif cfg.task == "maze" and "return_last_mean" in result:
        from .commands import command
        from .maze_report import run_summary
        table = run_summary(result, cfg.name, cfg.seed)
        if run_dir is not None:
            table = f"TensorBoard: {command('tensorboard', '--logdir', run_dir)}\n\n{table}"
    else:
        return
    sys.stdout.flush()
    print("\n" + table, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import dumps_json
    from .config import load_config
    from .distributed import World, init_world, shutdown
    from .evaluate import evaluate_run
    world = World()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:      # under torchrun: the ranks share the held-out runs (Atari)
        saved = Path(args.run_dir) / "config.yaml"
        world = init_world(load_config(saved).run.device if saved.is_file() else "auto")
    result = evaluate_run(Path(args.run_dir), args.split, video=args.video, tasks=args.seeds, world=world)
    shutdown(world)         # not after an error: a rank that stops waits for no peer (torchrun ends them all)
    if world.is_main:
        print(dumps_json(result))
        print_summary(load_config(Path(args.run_dir) / "config.yaml"), result, Path(args.run_dir))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    benchmarks = _benchmarks()
    if args.name not in benchmarks:
        raise UserError(f"unknown benchmark {args.name!r} (valid: {', '.join(sorted(benchmarks))})")
    module = importlib.import_module(benchmarks[args.name][0])
    figures = module.run(list(args.args))
    from .checkpoint import dumps_json
    print(dumps_json(figures))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report
    out = report([Path(d) for d in args.run_dirs], Path(args.out), metric=args.metric,
                 baselines=tuple(args.baseline or ("random_init",)), reps=args.reps, split=args.split,
                 tasks=tuple(t.strip() for t in (args.tasks or "").split(",") if t.strip()), control=args.control)
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export
    for path in export(Path(args.run_dir), out=args.out, sb3=args.sb3, force=args.force):
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_runs
    out = plot_runs([Path(d) for d in args.run_dirs], tag=args.tag, out=args.out, csv=args.csv)
    if args.csv:
        print(f"wrote {args.csv}")
    print(f"wrote {out}")
    return 0


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like SIGINT: the step in progress is abandoned, checkpoints are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _stop(signum: int, frame) -> None:
    for sig in STOP_SIGNALS:                    # a second signal during the clean-up ends the process
        signal.signal(sig, signal.SIG_DFL)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals():
    """While a command runs, SIGTERM and SIGHUP raise :class:`Stopped` (a KeyboardInterrupt)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    short_openmp_spin()           # before any command imports torch
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`train CONFIG --run-dir D key=value`): argparse leaves them over.
    if args.command == "train" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    command = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "plot": cmd_plot,
               "report": cmd_report, "export": cmd_export}[args.command]
    try:
        with stop_signals():
            return command(args)
    except UserError as e:
        print(error_line("metarl", e), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:         # eval, report, ...: an allocation that failed is one line too
        if not out_of_memory(e):
            raise
        print(f"metarl: error: out of memory: {clip(str(e) or type(e).__name__, 200)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        run_dir = getattr(args, "active_run_dir", None)
        how = "interrupted"
        code = 130
        if isinstance(e, Stopped):
            how = f"stopped by {signal.Signals(e.signum).name}"
            code = 128 + e.signum
        from .commands import command
        where = command("metarl", "train", "--resume", run_dir if run_dir is not None else "RUN_DIR")
        if args.command == "train":
            print(f"metarl: {how} (the last checkpoint is kept; continue with {where})", file=sys.stderr)
        else:
            print(f"metarl: {how}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
