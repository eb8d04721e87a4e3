"""The circuit breaker: stop hammering a server that is down, probe it, resume when it answers.

Per-series retries cannot tell "this series is unlucky" from "the server is gone"; the breaker
can, because it sees failures across series (reliability.md §4.3, rows A6 and F7). After
``failure_threshold`` consecutive transient failures spread over at least
``min_distinct_series`` series it **opens**: every worker blocks in :meth:`wait_closed`. After
the open time it is **half-open**: exactly one caller (the probe) is let through while the rest
keep waiting. The probe's success closes it (and fires ``on_close``, which should restart the
adaptive limiter from 1); its failure reopens it for twice as long. If the outage lasts longer
than ``max_outage_s`` every waiter gets a :class:`~tcia_fetch.errors.ServerUnreachableError` saying the
server has been unreachable for N s.

Only server-health failures count: transport errors, 5xx other than throttling, and 2xx bodies
of the wrong kind. Throttles (the pacer's job), non-retryable errors and integrity errors (the
series' own problem) never open the breaker, and a non-transient answer to the probe proves the
server is alive. The decision logic is synchronous; only the waiting is async.

A **throttle storm** is an outage too. A server that answers nothing but 429/503 never opens the
breaker (each Retry-After is honoured by the pacer), yet with ``Retry-After`` up to 900 s and six
attempts a series, a 100-series job would wait for days with nothing done. So the breaker also
watches throttles: from the first throttle after the last answer that let work through
(:meth:`on_success`, or :meth:`on_progress` for a query that succeeded), a run of throttles
lasting ``max_outage_s`` is the same outage as a dead server, and :meth:`check_throttle_storm` (also
run by :meth:`wait_closed`) raises :class:`~tcia_fetch.errors.ServerUnreachableError` (fatal, exit 3)
saying so. It is checked before each attempt, so a run ends at most one Retry-After (900 s) after
the window.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from tcia_fetch.engine.clock import Clock
from tcia_fetch.errors import HTTPStatusError, IntegrityError, MetadataError, ServerUnreachableError

__all__ = ["BreakerState", "BreakerStatistics", "CircuitBreaker", "counts_against_server"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot: state, how often it opened and probed, and the total time not closed."""

    state: BreakerState
    opens: int
    probes: int
    time_open_s: float
    consecutive_failures: int
    current_open_s: float


def counts_against_server(error: BaseException) -> bool:
    """Whether ``error`` says something about the server's health (and may open the breaker)."""
    if getattr(error, "fatal", False) or not getattr(error, "retryable", False):
        return False
    if getattr(error, "throttle", False):
        return False
    return not isinstance(error, IntegrityError | MetadataError)


def _proves_server_alive(error: BaseException) -> bool:
    """An HTTP answer or a delivered body, however bad for the series, means the server is up."""
    return isinstance(error, HTTPStatusError | IntegrityError | MetadataError)


class CircuitBreaker:
    """Shared by all workers of a run. See the module docstring for the protocol.

    The caller decides what the :class:`~tcia_fetch.errors.ServerUnreachableError` raised after
    ``max_outage_s`` means; the engine treats it as run-fatal (exit with the "server
    unreachable" message) unless told to wait forever (``max_outage_s=None``).

    Call :meth:`on_success` as soon as the server has answered a request (headers received is
    proof of life), so the probe does not hold everyone back for a whole series download.
    A probe that reports nothing within ``probe_timeout_s`` (its worker was cancelled) is
    forgotten and another waiter becomes the probe.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        min_distinct_series: int = 2,
        open_base_s: float = 5.0,
        open_cap_s: float = 300.0,
        max_outage_s: float | None = None,
        probe_timeout_s: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or min_distinct_series < 1:
            raise ValueError("failure_threshold and min_distinct_series must be >= 1")
        if not (0 < open_base_s <= open_cap_s):
            raise ValueError("need 0 < open_base_s <= open_cap_s")
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.min_distinct_series = min_distinct_series
        self.open_base_s = open_base_s
        self.open_cap_s = open_cap_s
        self.max_outage_s = max_outage_s
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else open_cap_s
        self.on_close = on_close
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._failing_series: set[str] = set()
        self._consecutive_opens = 0
        self._open_until = 0.0
        self._current_open_s = 0.0
        self._outage_started = 0.0
        self._probe_started: float | None = None
        self._changed: anyio.Event | None = None
        self._opens = 0
        self._probes = 0
        self._time_open_s = 0.0
        #: Monotonic time of the first throttle since the last success; None while not throttled.
        self._throttled_since: float | None = None
        self._storm_throttles = 0

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now (an expired open period reads as half-open)."""
        self._advance(self._clock.monotonic())
        return self._state

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._probe_started = None
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probe_started is not None
            and now - self._probe_started >= self.probe_timeout_s
        ):
            self._probe_started = None
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    @property
    def outage_exceeded(self) -> bool:
        """True once the breaker has given up (the outage outlasted ``max_outage_s``).

        :meth:`wait_closed` then raises :class:`~tcia_fetch.errors.ServerUnreachableError`, which is
        *retryable* by its class; a caller that catches it should check this flag and end the
        run instead of retrying the series.
        """
        if self.max_outage_s is None or self._state is BreakerState.CLOSED:
            return False
        return self._clock.monotonic() - self._outage_started >= self.max_outage_s

    # --- reports from workers (synchronous) --------------------------------------------------

    def on_progress(self) -> None:
        """A request went through (a query answered): whatever throttling came before was not a storm.

        Unlike :meth:`on_success` this leaves the breaker's state alone: the planner's queries
        report here without taking the probe's place.
        """
        self._throttled_since = None
        self._storm_throttles = 0

    def on_throttle(self) -> None:
        """A request was throttled: the storm clock starts, unless it already runs."""
        if self._throttled_since is None:
            self._throttled_since = self._clock.monotonic()
        self._storm_throttles += 1

    def throttle_storm_s(self) -> float:
        """Seconds of nothing but throttles (0 when the last answer let work through)."""
        if self._throttled_since is None:
            return 0.0
        return self._clock.monotonic() - self._throttled_since

    def check_throttle_storm(self) -> None:
        """Raise when throttles alone have lasted ``max_outage_s`` (see the module docstring).

        :raises ServerUnreachableError: the storm outlasted ``max_outage_s``.
        """
        if self.max_outage_s is None or self._throttled_since is None:
            return
        storm_s = self._clock.monotonic() - self._throttled_since
        if storm_s >= self.max_outage_s:
            raise ServerUnreachableError(
                f"the server has answered only 'slow down' (HTTP 429/503) for {storm_s:.0f} s: "
                f"{self._storm_throttles} throttled requests and nothing let through "
                f"(max_outage_s={self.max_outage_s:g}); treating it as an outage, rerun later to resume"
            )

    def on_success(self) -> None:
        """The server answered. Closes the breaker from any state and resets the failure run."""
        self.on_progress()
        self._server_answered()

    def _server_answered(self) -> None:
        self._consecutive = 0
        self._failing_series.clear()
        if self._state is BreakerState.CLOSED:
            return
        now = self._clock.monotonic()
        self._time_open_s += now - self._outage_started
        self._state = BreakerState.CLOSED
        self._consecutive_opens = 0
        self._probe_started = None
        self._notify()
        if self.on_close is not None:
            self.on_close()

    def on_failure(self, series_uid: str | None, error: BaseException) -> None:
        """A request failed. Only server-health failures count (:func:`counts_against_server`)."""
        now = self._clock.monotonic()
        self._advance(now)
        if getattr(error, "throttle", False):
            self.on_throttle()
        if not counts_against_server(error):
            if self._state is not BreakerState.CLOSED and _proves_server_alive(error):
                # The server answered, even if the answer was bad for that series (a throttle
                # proves it alive too, but lets no work through: the storm clock keeps running).
                self._server_answered()
            return
        if self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._consecutive += 1
        self._failing_series.add(series_uid if series_uid is not None else f"<query {self._consecutive}>")
        enough_series = len(self._failing_series) >= self.min_distinct_series
        if self._consecutive >= self.failure_threshold and enough_series:
            self._outage_started = now
            self._open(now)

    def _open(self, now: float) -> None:
        exponent = min(self._consecutive_opens, 62)
        self._current_open_s = min(self.open_cap_s, self.open_base_s * 2.0**exponent)
        self._consecutive_opens += 1
        self._opens += 1
        self._open_until = now + self._current_open_s
        self._state = BreakerState.OPEN
        self._probe_started = None
        self._consecutive = 0
        self._failing_series.clear()
        self._notify()

    # --- waiting ----------------------------------------------------------------------------

    async def wait_closed(self) -> None:
        """Return when a request may be sent: the breaker is closed, or the caller is the probe.

        :raises ServerUnreachableError: the outage (or a throttle storm) has lasted longer than
            ``max_outage_s``.
        """
        self.check_throttle_storm()
        while True:
            now = self._clock.monotonic()
            self._advance(now)
            if self._state is BreakerState.CLOSED:
                return
            outage_s = now - self._outage_started
            if self.max_outage_s is not None and outage_s >= self.max_outage_s:
                raise ServerUnreachableError(
                    f"server unreachable for {outage_s:.0f} s (circuit breaker open {self._opens} times; "
                    f"max_outage_s={self.max_outage_s:g})"
                )
            if self._state is BreakerState.HALF_OPEN and self._probe_started is None:
                self._probe_started = now
                self._probes += 1
                return
            wake_at = self._next_wake(now)
            await self._wait_change_or_until(wake_at - now)

    def _next_wake(self, now: float) -> float:
        if self._state is BreakerState.OPEN:
            wake_at = self._open_until
        else:
            probe_started = self._probe_started if self._probe_started is not None else now
            wake_at = probe_started + self.probe_timeout_s
        if self.max_outage_s is not None:
            wake_at = min(wake_at, self._outage_started + self.max_outage_s)
        return max(wake_at, now)

    async def _wait_change_or_until(self, timeout_s: float) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if math.isinf(timeout_s):
            await changed.wait()
            return
        async with anyio.create_task_group() as group:

            async def timer() -> None:
                await self._clock.sleep(timeout_s)
                group.cancel_scope.cancel()

            group.start_soon(timer)
            await changed.wait()
            group.cancel_scope.cancel()

    def statistics(self) -> BreakerStatistics:
        now = self._clock.monotonic()
        self._advance(now)
        open_now = 0.0 if self._state is BreakerState.CLOSED else now - self._outage_started
        return BreakerStatistics(
            state=self._state,
            opens=self._opens,
            probes=self._probes,
            time_open_s=self._time_open_s + open_now,
            consecutive_failures=self._consecutive,
            current_open_s=self._current_open_s,
        )
