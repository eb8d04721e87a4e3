"""Time as an injected dependency: the real clock for runs, a virtual one for tests.

Every engine primitive (retry, pacer, limiters, breaker) reads time and sleeps only through a
:class:`Clock`, so tests swap in :class:`FakeClock` and run hours of backoff in milliseconds,
deterministically. ``monotonic()`` drives every delay and deadline (immune to wall-clock jumps,
reliability.md F4); ``time()`` is wall time and is used only to interpret HTTP dates.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the engine needs from time. Implementations must never sleep for a negative time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` (<= 0 still yields once to the scheduler)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch; only for comparing with HTTP ``Date`` values."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``anyio.sleep`` and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(seconds)

    def time(self) -> float:
        return time.time()


@dataclass(eq=False)
class _Sleeper:
    deadline: float
    order: int
    done: bool = False
    nudge: anyio.Event = field(default_factory=anyio.Event)


class FakeClock:
    """Virtual time for tests: nothing really sleeps, and results do not depend on machine speed.

    Time only moves when a test calls :meth:`advance` or, with ``autojump=True`` (the default),
    when the event loop has nothing left to run but tasks sleeping on this clock: the clock then
    jumps straight to the earliest deadline and wakes those sleepers in deadline order (like
    trio's ``MockClock(autojump_threshold=0)``). So a test can run a whole worker pool with
    real anyio primitives and assert exact virtual timestamps.

    Idleness is detected without a helper task: one sleeping task at a time acts as the
    "driver" and yields to the loop until the loop's ready queue has been empty for a few
    rounds (asyncio), or, on a loop without that queue, until nothing has touched the clock for
    ``settle_rounds`` rounds. Work that waits on real I/O or on threads looks idle to the
    clock, so tests that mix real sockets with a FakeClock should pass ``autojump=False`` and
    call :meth:`advance` themselves.
    """

    def __init__(
        self,
        *,
        start: float = 0.0,
        wall_start: float = 1_750_000_000.0,
        autojump: bool = True,
        settle_rounds: int = 30,
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._autojump = autojump
        self._settle_rounds = max(1, settle_rounds)
        self._sleepers: dict[int, _Sleeper] = {}
        self._order = itertools.count()
        self._driver: _Sleeper | None = None
        self._activity = 0
        self.sleep_calls = 0
        self.jumps = 0

    # --- the Clock protocol ------------------------------------------------------------------

    def monotonic(self) -> float:
        self._activity += 1
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleep_calls += 1
        self._activity += 1
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        if math.isinf(seconds) or math.isnan(seconds):
            await anyio.Event().wait()  # forever, until cancelled; time never jumps to infinity
            return
        sleeper = _Sleeper(deadline=self._now + seconds, order=next(self._order))
        self._sleepers[sleeper.order] = sleeper
        try:
            while not sleeper.done:
                if self._autojump and self._driver is None:
                    self._driver = sleeper
                if self._driver is sleeper:
                    await self._drive(sleeper)
                else:
                    await sleeper.nudge.wait()
                    sleeper.nudge = anyio.Event()
        finally:
            self._sleepers.pop(sleeper.order, None)
            if self._driver is sleeper:
                self._driver = None
                self._hand_over_driving()

    # --- test controls -----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` and wake every sleeper now due.

        Woken tasks run at their next scheduling point; a test usually follows this with
        ``await anyio.lowlevel.checkpoint()`` (or any await) to let them run.
        """
        if seconds < 0:
            raise ValueError(f"cannot move a monotonic clock backwards ({seconds} s)")
        self._now += seconds
        self._wake_due()

    def set_wall_time(self, epoch_seconds: float) -> None:
        """Set the wall clock (``time()``) without moving monotonic time, to simulate a jump."""
        self._wall_offset = epoch_seconds - self._now

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are currently sleeping on this clock."""
        return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """The earliest deadline among sleeping tasks, or None when nobody sleeps."""
        if not self._sleepers:
            return None
        return min(sleeper.deadline for sleeper in self._sleepers.values())

    # --- internals ---------------------------------------------------------------------------

    def _wake_due(self) -> None:
        due = sorted(
            (s for s in self._sleepers.values() if s.deadline <= self._now),
            key=lambda s: (s.deadline, s.order),
        )
        for sleeper in due:
            sleeper.done = True
            self._sleepers.pop(sleeper.order, None)
            sleeper.nudge.set()

    def _hand_over_driving(self) -> None:
        if not self._autojump or not self._sleepers:
            return
        successor = min(self._sleepers.values(), key=lambda s: (s.deadline, s.order))
        successor.nudge.set()

    async def _drive(self, me: _Sleeper) -> None:
        """Yield until the loop is idle, then jump to the earliest deadline; return once ``me`` is done."""
        idle_rounds = 0
        seen_activity = self._activity
        while True:
            await anyio.lowlevel.checkpoint()
            if me.done:
                return
            if self._loop_looks_idle(seen_activity):
                idle_rounds += 1
            else:
                idle_rounds = 0
            seen_activity = self._activity
            if idle_rounds >= self._required_idle_rounds():
                idle_rounds = 0
                deadline = self.next_deadline()
                if deadline is not None and deadline > self._now:
                    self._now = deadline
                    self.jumps += 1
                self._wake_due()

    def _required_idle_rounds(self) -> int:
        return 3 if self._ready_queue() is not None else self._settle_rounds

    def _loop_looks_idle(self, seen_activity: int) -> bool:
        ready = self._ready_queue()
        if ready is not None:
            return len(ready) == 0
        return self._activity == seen_activity

    @staticmethod
    def _ready_queue() -> Sized | None:
        # asyncio keeps runnable callbacks in ``loop._ready``; when it is empty right after this
        # task resumed, no other task can run before the next timer or I/O event.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        ready = getattr(loop, "_ready", None)
        return ready if isinstance(ready, Sized) else None
