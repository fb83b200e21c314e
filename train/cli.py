"""The `metarl` command: train, eval, bench, plot. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from .runtime import keep_freed_memory, short_openmp_spin
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would also print the usage)
        print(f"metarl: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metarl", description="Leap and WarpGrad meta-learning for RL and supervised tasks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="meta-train from a YAML config")
    t.add_argument("config", nargs="?", help="configs/NAME.yaml (omit with --resume to reuse the run's config)")
    t.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/NAME__SEED__TIME)")
    e = sub.add_parser("eval", help="evaluate a run's initialisation on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--split", default=None, help="val or test (default: the run's eval.split)")
    b = sub.add_parser("bench", help="run a benchmark; the last line is a JSON object of figures")
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    pl = sub.add_parser("plot", help="plot TensorBoard curves of one or more runs to PNG")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--tag", default=None, help="scalar tag to plot (default depends on the runs)")
    pl.add_argument("--out", default=None, help="output PNG path")
    return p


def _benchmarks() -> list[str]:
    from . import benchmarks
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(benchmarks.__path__))


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .distributed import init_world, shutdown
    from .trainer import train

    # `metarl train --resume RUN_DIR key=value` puts the first override into `config`.
    overrides = list(args.overrides)
    config = args.config
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume: {run_dir} has no config.yaml")
        if config is not None and "=" in config:
            overrides.insert(0, config)
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        if config is None:
            raise UserError("train needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(config, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else \
            Path(cfg.run.dir) / f"{cfg.name}__{cfg.seed}__{int(time.time())}"
    world = init_world()
    try:
        run_dir = Path(world.broadcast(str(run_dir)))     # every rank writes to rank 0's run directory
        result = train(cfg, run_dir, resume=bool(args.resume), world=world)
    finally:
        shutdown(world)
    if world.is_main:
        print(json.dumps(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run
    result = evaluate_run(Path(args.run_dir), args.split)
    print(json.dumps(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    names = _benchmarks()
    if args.name not in names:
        raise UserError(f"unknown benchmark {args.name!r} (valid: {', '.join(names)})")
    module = importlib.import_module(f"train.benchmarks.{args.name.replace('-', '_')}")
    figures = module.run(list(args.args))
    print(json.dumps(figures))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_runs
    out = plot_runs([Path(d) for d in args.run_dirs], tag=args.tag, out=args.out)
    print(f"wrote {out}")
    return 0


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
    command = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "plot": cmd_plot}[args.command]
    try:
        return command(args)
    except UserError as e:
        print(f"metarl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metarl: interrupted (the last checkpoint is kept; continue with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
