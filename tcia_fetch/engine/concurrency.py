"""Adaptive concurrency: how many series download at once, steered by AIMD (reliability.md §4.6).

Each download is a long stream, so the number of concurrent series is the control variable
(Little's law: throughput = concurrency / time per series). :class:`AimdController` is the pure
decision logic (times passed in, no awaits): additive increase of 1 per clean epoch in which the
limit was actually used, multiplicative decrease (x0.5 on throttle, x0.75 on transient errors
and timeouts, rounded half up but always at least one slot) at most once per epoch, then a
freeze, floor 1, and the user's ``--concurrency`` as a hard ceiling. :class:`AdaptiveLimiter`
is the async gate the workers enter; it consults the controller. Lowering the limit never
cancels work in flight: it only holds back new starts.
"""

from __future__ import annotations

import math
import statistics as stats
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import anyio

from tcia_fetch.engine.clock import Clock

__all__ = ["AdaptiveLimiter", "AimdController", "CongestionKind", "LimiterStatistics"]

CongestionKind = Literal["throttle", "transient", "timeout"]

_DECREASE_FACTORS: dict[str, float] = {"throttle": 0.5, "transient": 0.75, "timeout": 0.75}


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of the controller: where the limit is and how it got there."""

    limit: int
    max_limit: int
    in_flight: int
    peak_in_flight: int
    increases: int
    decreases: int
    congestion_signals: int
    successes: int
    bytes_completed: int
    epoch_s: float


class AimdController:
    """Pure AIMD over the number of concurrent series. All methods take ``now`` explicitly.

    Epochs play TCP's round-trip: an epoch lasts ``max(min_epoch_s, median recent series
    time)`` (capped at ``max_epoch_s``), so the limit moves once per "generation" of downloads.
    At the end of an epoch the limit grows by 1 only if the epoch was clean (no congestion), no
    freeze is pending, and the limit was used: every slot busy for at least
    ``min_used_fraction`` of the epoch (the app-limited guard, so an idle or slow-producer run
    does not inflate a limit it never tested, and a slot filled in the epoch's last instant
    does not count as a test passed).
    A congestion signal cuts the limit at most once per epoch, restarts the epoch and freezes
    growth for ``freeze_epochs`` epochs, so eight streams failing together after one event
    cost one cut, not eight.

    The limit at which the last cut happened is remembered as the known-bad level. Growing
    back to it needs ``probe_after_epochs`` clean epochs in a row, and each failed probe at
    that level doubles the wait (up to ``max_probe_after_epochs``); a clean epoch at or
    above it forgets it. Without this memory AIMD would knock on a server's hard capacity
    every few epochs forever (reliability.md F6: the 429 share must fall after convergence).
    """

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int | None = None,
        now: float = 0.0,
        min_epoch_s: float = 2.0,
        max_epoch_s: float = 120.0,
        freeze_epochs: int = 2,
        duration_window: int = 32,
        probe_after_epochs: int = 2,
        max_probe_after_epochs: int = 64,
        min_used_fraction: float = 0.5,
    ) -> None:
        if max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, not {max_limit}")
        if initial is not None and initial < 1:
            raise ValueError(f"initial must be >= 1 when given, not {initial}")
        if not (0 < min_epoch_s <= max_epoch_s):
            raise ValueError("need 0 < min_epoch_s <= max_epoch_s")
        self.max_limit = max_limit
        self.min_epoch_s = min_epoch_s
        self.max_epoch_s = max_epoch_s
        self.freeze_epochs = freeze_epochs
        self.probe_after_epochs = max(1, probe_after_epochs)
        self.max_probe_after_epochs = max(self.probe_after_epochs, max_probe_after_epochs)
        self.min_used_fraction = min_used_fraction
        self._full_since: float | None = None
        self._full_s = 0.0
        self._bad_limit: int | None = None
        self._probe_wait_epochs = self.probe_after_epochs
        self._clean_streak = 0
        self._limit = min(initial if initial is not None else 2, max_limit)
        #: TCP-style slow start: until the server first pushes back, a clean, fully used epoch
        #: doubles the limit instead of adding one, so a healthy server is used fully within a
        #: few epochs; the first congestion signal ends it for good (or until ``restart``).
        self._slow_start = True
        self._durations: deque[float] = deque(maxlen=max(1, duration_window))
        self._epoch_start = now
        self._in_flight = 0
        self._epoch_peak = 0
        self._overall_peak = 0
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        self._freeze_remaining = 0
        self._increases = 0
        self._decreases = 0
        self._congestion_signals = 0
        self._successes = 0
        self._bytes_completed = 0
        self._trace: list[tuple[float, int]] = [(now, self._limit)]

    @property
    def limit(self) -> int:
        """How many series may be in flight now."""
        return self._limit

    @property
    def trace(self) -> tuple[tuple[float, int], ...]:
        """Every change of the limit as ``(time, limit)``, starting with the initial value."""
        return tuple(self._trace)

    def epoch_s(self) -> float:
        """The current epoch length: the median recent series time, within the configured bounds."""
        if not self._durations:
            return self.min_epoch_s
        return min(self.max_epoch_s, max(self.min_epoch_s, stats.median(self._durations)))

    def observe_in_flight(self, in_flight: int, now: float) -> None:
        """The number of series in flight changed (a start or a finish)."""
        self.tick(now)
        self._in_flight = in_flight
        self._epoch_peak = max(self._epoch_peak, in_flight)
        self._track_full_use(now)
        self._overall_peak = max(self._overall_peak, in_flight)

    def on_success(self, now: float, duration_s: float, nbytes: int = 0) -> None:
        """A series finished cleanly after ``duration_s`` seconds (feeds the epoch length)."""
        self.tick(now)
        self._successes += 1
        self._bytes_completed += max(0, nbytes)
        if math.isfinite(duration_s) and duration_s >= 0:
            self._durations.append(duration_s)

    def on_congestion(self, now: float, kind: CongestionKind) -> bool:
        """The server pushed back. Returns True if this signal lowered the limit."""
        self.tick(now)
        self._congestion_signals += 1
        self._congested_this_epoch = True
        self._slow_start = False
        if self._decreased_this_epoch:
            return False
        if self._bad_limit is not None and self._limit >= self._bad_limit:
            self._probe_wait_epochs = min(self.max_probe_after_epochs, self._probe_wait_epochs * 2)
        else:
            self._probe_wait_epochs = self.probe_after_epochs
        self._bad_limit = self._limit
        self._clean_streak = 0
        factor = _DECREASE_FACTORS[kind]
        # Round half up, but always cut by at least one: x0.5 of 3 is 2, x0.75 of 3 is 2.
        new_limit = max(1, min(self._limit - 1, math.floor(self._limit * factor + 0.5)))
        self._decreased_this_epoch = True
        self._freeze_remaining = self.freeze_epochs
        self._start_epoch(now)
        self._decreases += 1
        self._set_limit(new_limit, now)
        return True

    def on_admitted(self, now: float) -> None:
        """The server accepted a request (response headers, no error): in slow start, one more slot.

        TCP grows its window per acknowledgement during slow start, not per round trip; a
        download's "acknowledgement" is the server starting to send it. Against a server with a
        concurrency cap this reaches the cap within the first few requests instead of after
        several whole-series epochs; the first 429 ends slow start (see :meth:`on_congestion`).
        """
        self.tick(now)
        if self._slow_start and self._limit < self.max_limit:
            self._increases += 1
            self._set_limit(self._limit + 1, now)

    def restart(self, now: float, limit: int = 1) -> None:
        """Slow start after an outage (the circuit breaker closed): back to ``limit``, new epoch."""
        self._start_epoch(now)
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        self._freeze_remaining = 0
        self._clean_streak = 0
        self._slow_start = True
        self._set_limit(max(1, min(limit, self.max_limit)), now)

    def tick(self, now: float) -> None:
        """Close every epoch that has ended by ``now`` (called from each event; cheap)."""
        epoch = self.epoch_s()
        # Beyond max_limit + freeze epochs nothing more can change, so long idle gaps stay O(1).
        for _ in range(self.max_limit + self.freeze_epochs + 1):
            if now < self._epoch_start + epoch:
                return
            self._end_epoch(self._epoch_start + epoch)
        if now >= self._epoch_start + epoch:
            self._start_epoch(now)

    def _start_epoch(self, now: float) -> None:
        self._epoch_start = now
        self._epoch_peak = self._in_flight
        self._full_s = 0.0
        self._full_since = now if self._in_flight >= self._limit else None

    def _track_full_use(self, now: float) -> None:
        """Accumulate the time during which every slot was busy (in flight >= limit)."""
        full = self._in_flight >= self._limit
        if full and self._full_since is None:
            self._full_since = now
        elif not full and self._full_since is not None:
            self._full_s += now - self._full_since
            self._full_since = None

    def _end_epoch(self, end: float) -> None:
        clean = not self._congested_this_epoch
        if self._full_since is not None:
            self._full_s += end - self._full_since
            self._full_since = end
        used = self._full_s >= self.min_used_fraction * (end - self._epoch_start) - 1e-9
        self._start_epoch(end)
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        if not clean:
            self._clean_streak = 0
        if self._freeze_remaining > 0:
            self._freeze_remaining -= 1
            return
        if not (clean and used):
            return
        self._clean_streak += 1
        if self._bad_limit is not None and self._limit >= self._bad_limit:
            # A whole clean epoch at the old trouble level: the server has room again.
            self._bad_limit = None
            self._probe_wait_epochs = self.probe_after_epochs
        if self._limit >= self.max_limit:
            return
        approaching_bad = self._bad_limit is not None and self._limit + 1 >= self._bad_limit
        if approaching_bad and self._clean_streak < self._probe_wait_epochs:
            return
        self._clean_streak = 0
        self._increases += 1
        step = self._limit if self._slow_start else 1
        self._set_limit(min(self.max_limit, self._limit + step), end)

    def _set_limit(self, limit: int, now: float) -> None:
        if limit != self._limit:
            self._limit = limit
            self._trace.append((now, limit))
            self._track_full_use(now)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            limit=self._limit,
            max_limit=self.max_limit,
            in_flight=self._in_flight,
            peak_in_flight=self._overall_peak,
            increases=self._increases,
            decreases=self._decreases,
            congestion_signals=self._congestion_signals,
            successes=self._successes,
            bytes_completed=self._bytes_completed,
            epoch_s=self.epoch_s(),
        )


class AdaptiveLimiter:
    """An adjustable-capacity gate for downloads, driven by :class:`AimdController`.

    ``async with limiter.slot():`` waits (FIFO) until fewer than ``limit`` downloads are in
    flight. The limit never exceeds ``max_limit`` (the user's ``--concurrency``). When the limit
    drops, downloads already inside keep running; new ones wait until enough have left.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int | None = None,
        clock: Clock,
        min_epoch_s: float = 2.0,
        max_epoch_s: float = 120.0,
        freeze_epochs: int = 2,
        probe_after_epochs: int = 2,
        max_probe_after_epochs: int = 64,
        min_used_fraction: float = 0.5,
    ) -> None:
        self._clock = clock
        self.controller = AimdController(
            max_limit,
            initial=initial,
            now=clock.monotonic(),
            min_epoch_s=min_epoch_s,
            max_epoch_s=max_epoch_s,
            freeze_epochs=freeze_epochs,
            probe_after_epochs=probe_after_epochs,
            max_probe_after_epochs=max_probe_after_epochs,
            min_used_fraction=min_used_fraction,
        )
        self._in_flight = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def limit(self) -> int:
        return self.controller.limit

    @property
    def max_limit(self) -> int:
        return self.controller.max_limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one download slot for the duration of the block."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if not self._waiters and self._in_flight < self.controller.limit:
            self._take()
            return
        ticket = anyio.Event()
        self._waiters.append(ticket)
        try:
            await ticket.wait()
        except BaseException:
            if ticket.is_set():
                # The slot was handed to us just as we were cancelled: pass it on.
                self._release()
            else:
                self._waiters.remove(ticket)
            raise

    def _take(self) -> None:
        self._in_flight += 1
        self.controller.observe_in_flight(self._in_flight, self._clock.monotonic())

    def _release(self) -> None:
        self._in_flight -= 1
        self.controller.observe_in_flight(self._in_flight, self._clock.monotonic())
        self._hand_out()

    def _hand_out(self) -> None:
        while self._waiters and self._in_flight < self.controller.limit:
            ticket = self._waiters.popleft()
            self._take()
            ticket.set()

    def on_success(self, duration_s: float, nbytes: int = 0) -> None:
        """A download finished cleanly; the limit may grow at an epoch boundary."""
        self.controller.on_success(self._clock.monotonic(), duration_s, nbytes)
        self._hand_out()

    def on_admitted(self) -> None:
        """A download's response headers arrived: during slow start, let one more start."""
        self.controller.on_admitted(self._clock.monotonic())
        self._hand_out()

    def on_congestion(self, kind: CongestionKind) -> None:
        """The server pushed back (``throttle``, ``transient`` or ``timeout``)."""
        self.controller.on_congestion(self._clock.monotonic(), kind)

    def restart(self, limit: int = 1) -> None:
        """Slow start from ``limit`` (after the circuit breaker closes)."""
        self.controller.restart(self._clock.monotonic(), limit)
        self._hand_out()

    def statistics(self) -> LimiterStatistics:
        return self.controller.statistics()

    @property
    def trace(self) -> tuple[tuple[float, int], ...]:
        return self.controller.trace
