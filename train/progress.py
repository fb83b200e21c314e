"""Live progress: a bar (:func:`progress_bar`) and, for RL families, its postfix (:class:`RLProgress`).

:func:`progress_bar` is a tqdm bar where the progress stream (stderr) is a terminal; elsewhere — a log file, a pipe
through ``tee`` — carriage-return redraws would pile up into one endless line, so it is a :class:`LogBar` that
writes whole lines: one when the stage starts, then at most one every ``LOG_INTERVAL`` seconds, and one when it
ends, each with the count, elapsed time, ETA and the postfix.

:class:`RLProgress` fills the postfix of RL families: env steps (the maze: episodes), env steps per second and the
recent return of the game being played, from the adapter's hooks (``on_game``, ``on_progress``), refreshed at most
every ``interval`` seconds. The bar's own count is the caller's (meta-steps in training; env steps in the held-out
evaluation, ``count_steps``)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict, deque
from typing import Any

LOG_INTERVAL = 30.0         # seconds between a LogBar's lines


def progress_bar(total: int | None, desc: str, unit: str, initial: int = 0, stream: Any = None) -> Any:
    """A progress bar on ``stream`` (default stderr): tqdm on a terminal, else a :class:`LogBar`."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "env step",
                    dynamic_ncols=True, file=stream)
    return LogBar(total, desc, unit, initial, stream)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class LogBar:
    """The part of tqdm's interface the package uses (``n``, ``total``, ``update``, ``set_postfix_str``, ``write``,
    ``close``), written as whole lines for a log (module docstring)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, stream: Any = None,
                 interval: float = LOG_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.stream, self.interval = stream or sys.stderr, interval
        self.postfix = ""
        self.source = None          # a callable giving the postfix when a line is written (RLProgress sets it)
        self._t0 = time.monotonic()
        self._last = None           # when the last line was written (None: none yet)
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        self._maybe_line()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text
        self._maybe_line()

    def write(self, line: str, file: Any = None) -> None:
        print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(final=True)

    def line(self, final: bool = False) -> str:
        """The line the bar writes now: "desc: n/total unit (pct), elapsed, ETA, postfix"."""
        elapsed = time.monotonic() - self._t0
        done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        parts = [f"{self.desc}: {done} {self.unit}{'s' if self.unit and (self.total or self.n) != 1 else ''}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        parts.append(f"elapsed {_clock(elapsed)}")
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if not final and self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        postfix = self.source() if self.source is not None else self.postfix
        if postfix:
            parts.append(postfix)
        return ", ".join(parts)

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self._line()

    def _line(self, final: bool = False) -> None:
        self._last = time.monotonic()
        print(self.line(final), file=self.stream, flush=True)


class RLProgress:
    def __init__(self, bar: Any, start_step: int = 0, count_steps: bool = False, interval: float = 0.5,
                 window: int = 10, steps_name: str = "env steps") -> None:
        self.bar, self.start, self.count_steps, self.interval = bar, start_step, count_steps, interval
        self.steps_name = steps_name
        self.record_name = "game"       # what on_game reports (the maze: an iteration's mean return)
        if isinstance(bar, LogBar):     # a log's lines carry the state when they are written, however recent
            bar.source = self.postfix
        self.returns: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.steps = start_step
        self.game = ""
        self._t, self._mark = None, start_step        # the SPS window starts at the first update seen
        self._sps = None

    def attach(self, adapter: Any) -> "RLProgress":
        """Point ``adapter``'s progress hooks (TaskAdapter.on_game, .on_progress) at this bar; the adapter's
        ``steps_name`` and ``record_name`` (if it has them: the maze's "episodes" and "iteration") name its step
        count and what each ``on_game`` record is."""
        adapter.on_game, adapter.on_progress = self.on_game, self.on_progress
        self.steps_name = getattr(adapter, "steps_name", self.steps_name)
        self.record_name = getattr(adapter, "record_name", self.record_name)
        return self

    @staticmethod
    def detach(adapter: Any) -> None:
        adapter.on_game = adapter.on_progress = None

    def on_game(self, record: Any) -> None:
        self.returns[record.task].append(float(record.episodic_return))

    def on_progress(self, game: str, step: int) -> None:
        self.steps, self.game = step, game
        now = time.perf_counter()
        if self._t is None:
            self._t, self._mark = now, step
        if now - self._t < self.interval:
            return
        self._sps = (step - self._mark) / (now - self._t) if step >= self._mark else None
        self._t, self._mark = now, step
        self.refresh()

    def postfix(self) -> str:
        parts = [f"{self.steps_name} {self.steps - self.start:,}"]
        if self._sps is not None:
            parts.append(f"{self._sps:,.0f} " + ("SPS" if self.steps_name == "env steps" else f"{self.steps_name}/s"))
        recent = self.returns.get(self.game)
        if self.game:
            n, what = (len(recent) if recent else 0), self.record_name
            parts.append(f"{self.game} return {sum(recent) / n:.1f} (last {n} {what}{'s' if n != 1 else ''})"
                         if recent else f"{self.game}: no {what} finished yet")
        return ", ".join(parts)

    def new_task(self) -> None:
        """Recent returns start afresh (the held-out protocol: each game × init × seed its own run)."""
        self.returns.clear()

    def finish(self) -> None:
        if self.count_steps and self.bar.total:
            self.bar.n = self.bar.total
        self.bar.set_postfix_str(self.postfix(), refresh=True)

    def refresh(self) -> None:
        if self.count_steps:
            self.bar.n = min(self.steps - self.start, self.bar.total or self.steps - self.start)
        self.bar.set_postfix_str(self.postfix(), refresh=True)
