"""Shared bits of the benchmarks: argument parsing and timing."""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from typing import Callable, Iterator

import torch

from ..errors import UserError


class BenchParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line and exit code 2 through the CLI, no usage dump
        raise UserError(f"{self.prog}: {message}")


def parser(description: str, rounds: int = 3, threads: int = 1) -> argparse.ArgumentParser:
    p = BenchParser(prog="metarl bench", description=description)
    p.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--rounds", type=int, default=rounds, help="alternating rounds; figures are medians")
    return p


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run with ``threads`` torch threads (0: torch's default, one per core); yields the number in use."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def atari_game(name: str) -> str:
    """The canonical EnvPool name of ``name``; an unknown game is a user error listing the valid ones."""
    from envs.atari import canonical_game
    try:
        return canonical_game(name, "envpool")
    except ValueError as e:
        raise UserError(str(e)) from None


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine CPU time is the steadier figure."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
