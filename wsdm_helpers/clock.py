"""The submission's one clock: a time source that tests and simulations can replace, and a deadline on it.

Everything that plans or stops on time (the pipeline, each run's budget plan, the per-batch stop)
reads the same :class:`Clock`, so an injected :class:`ManualClock` drives the whole submission in
tests without sleeping.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...


class SystemClock:
    """The machine's monotonic clock."""

    def now(self) -> float:
        return time.perf_counter()


class ManualClock:
    """A clock that moves only when told to (tests, simulations); safe to advance from worker threads."""

    def __init__(self, start: float = 0.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclasses.dataclass
class Deadline:
    """When the submission must be written, on ``clock`` (``end = inf``: no limit)."""

    clock: Clock
    started: float  # clock time the budget is counted from (the notebook's or command's start)
    end: float

    @classmethod
    def after(cls, minutes: float | None, safety_minutes: float = 0.0, clock: Clock | None = None,
              started: float | None = None) -> Deadline:
        """``minutes`` from ``started`` (default: now) less ``safety_minutes``; ``None`` minutes: no limit."""
        clock = clock or SystemClock()
        started = clock.now() if started is None else started
        end = math.inf if minutes is None else started + (minutes - safety_minutes) * 60
        return cls(clock, started, end)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.end)

    def left(self) -> float:
        return self.end - self.clock.now()

    def elapsed(self) -> float:
        return self.clock.now() - self.started
