"""Shared bits of the benchmarks: argument parsing and timing."""

from __future__ import annotations

import argparse
import contextlib
import os
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device = "cpu") -> str:
    """What a benchmark ran on: the CPU, its cores, torch's threads and, on a GPU, the GPU's name."""
    host = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    device = torch.device(device)
    if device.type == "cuda":
        host += f"; {torch.cuda.get_device_name(device)}"
    return host


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine CPU time is the steadier figure."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
