"""Live progress of RL families on a tqdm bar: env steps, env steps per second and the recent return of the
game being played, from the adapter's hooks (``on_game``, ``on_progress``), refreshed at most every
``interval`` seconds. The bar's own count is the caller's (meta-steps in training; env steps in the held-out
evaluation, ``count_steps``)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any


class RLProgress:
    def __init__(self, bar: Any, start_step: int = 0, count_steps: bool = False, interval: float = 0.5,
                 window: int = 10) -> None:
        self.bar, self.start, self.count_steps, self.interval = bar, start_step, count_steps, interval
        self.returns: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.steps = start_step
        self.game = ""
        self._t, self._mark = None, start_step        # the SPS window starts at the first update seen
        self._sps = None

    def attach(self, adapter: Any) -> "RLProgress":
        """Point ``adapter``'s progress hooks (TaskAdapter.on_game, .on_progress) at this bar."""
        adapter.on_game, adapter.on_progress = self.on_game, self.on_progress
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
        parts = [f"env steps {self.steps - self.start:,}"]
        if self._sps is not None:
            parts.append(f"{self._sps:,.0f} SPS")
        recent = self.returns.get(self.game)
        if self.game:
            parts.append(f"{self.game} return {sum(recent) / len(recent):.1f} (last {len(recent)})" if recent
                         else f"{self.game}: no game finished yet")
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
