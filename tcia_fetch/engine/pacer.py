"""The shared pacer: one Retry-After gate (and optional request-rate cap) for every worker.

One 429 slows *everyone* (rclone ``lib/pacer``): when any worker is throttled,
:meth:`Pacer.on_throttle` pushes a single "not before" time, and every request start goes
through :meth:`Pacer.wait_turn`, which returns only once that time has passed and a request
token is available. This is invariant I7 of reliability.md: no request starts while the gate is
closed. The gate only ever moves later (the max of the current and the new time), so a short
hint from one response never reopens a gate a longer hint closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tcia_fetch.engine.clock import Clock
from tcia_fetch.engine.ratelimit import ByteRateLimiter, ByteRateStatistics, TokenBucket

# The byte and request buckets live in ratelimit.py; they are re-exported here so the engine
# imports every pacing primitive from one place.
__all__ = ["ByteRateLimiter", "ByteRateStatistics", "Pacer", "PacerStatistics", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class PacerStatistics:
    """A snapshot for reports and benchmarks.

    ``gate_closed_s`` is the total time the gate was scheduled closed (overlaps counted once);
    ``worker_wait_s`` sums what every worker spent waiting at the gate and for tokens.
    """

    throttles: int
    consecutive_throttles: int
    requests_started: int
    gate_closed_s: float
    worker_wait_s: float
    gate_open_at: float
    max_requests_per_s: float | None


class Pacer:
    """Gate request starts on server throttling and, optionally, on a request rate.

    :param max_requests_per_s: token-bucket cap on request starts (None = no cap).
    :param burst: tokens the bucket holds (default ``max(1, ceil(rate))``).
    :param throttle_base_s: gate time for a throttle with no Retry-After; doubles per
        consecutive throttle up to ``throttle_cap_s`` and decays on success.
    :param max_gate_s: no single Retry-After closes the gate for longer than this; a longer
        server hint is the throttled series' own business (it may defer that series), not a
        reason to stall the whole run (reliability.md A1c).
    :param throttle_memory_s: throttles further apart than this are not "consecutive".
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_requests_per_s: float | None = None,
        burst: float | None = None,
        throttle_base_s: float = 1.0,
        throttle_cap_s: float = 60.0,
        max_gate_s: float = 900.0,
        throttle_memory_s: float = 120.0,
    ) -> None:
        if throttle_base_s < 0 or throttle_cap_s < throttle_base_s or max_gate_s < 0:
            raise ValueError("need 0 <= throttle_base_s <= throttle_cap_s and max_gate_s >= 0")
        self._clock = clock
        self._bucket: TokenBucket | None = None
        if max_requests_per_s is not None:
            bucket_size = burst if burst is not None else max(1.0, float(math.ceil(max_requests_per_s)))
            self._bucket = TokenBucket(max_requests_per_s, bucket_size, clock)
        self.max_requests_per_s = max_requests_per_s
        self._throttle_base_s = throttle_base_s
        self._throttle_cap_s = throttle_cap_s
        self._max_gate_s = max_gate_s
        self._throttle_memory_s = throttle_memory_s
        self._open_at = -math.inf
        self._throttles = 0
        self._consecutive = 0
        self._last_throttle_at = -math.inf
        self._requests_started = 0
        self._gate_closed_s = 0.0
        self._worker_wait_s = 0.0

    # --- decisions (synchronous) -------------------------------------------------------------

    def on_throttle(self, retry_after_s: float | None) -> float:
        """A response said "slow down": close the gate for everyone. Returns when it reopens.

        With ``retry_after_s`` the gate stays closed that long (clamped to ``max_gate_s``);
        without it, for a backoff that doubles per consecutive throttle.
        """
        now = self._clock.monotonic()
        if now - self._last_throttle_at > self._throttle_memory_s:
            self._consecutive = 0
        self._throttles += 1
        self._consecutive += 1
        self._last_throttle_at = now
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
            hold_s = min(retry_after_s, self._max_gate_s)
        else:
            exponent = min(self._consecutive - 1, 62)
            hold_s = min(self._throttle_cap_s, self._throttle_base_s * 2.0**exponent)
        self._push_gate(now + hold_s, now)
        return self._open_at

    def on_success(self) -> None:
        """A request went through: consecutive-throttle backoff decays one step."""
        if self._consecutive > 0:
            self._consecutive -= 1

    def _push_gate(self, open_at: float, now: float) -> None:
        if open_at <= self._open_at:
            return
        self._gate_closed_s += open_at - max(self._open_at, now)
        self._open_at = open_at

    def gate_open_at(self) -> float:
        """Monotonic time from which requests may start again (in the past when open)."""
        return self._open_at

    def is_open(self) -> bool:
        return self._clock.monotonic() >= self._open_at

    # --- waiting ---------------------------------------------------------------------------

    async def wait_turn(self) -> None:
        """Return when this caller may start one request: the gate is open and it holds a token.

        Sleeps only for computed times (no polling). If the gate is pushed later while a caller
        sleeps, it sleeps again, so no request starts before the latest Retry-After expires.
        """
        started = self._clock.monotonic()
        bucket = self._bucket
        while True:
            now = self._clock.monotonic()
            if now < self._open_at:
                await self._clock.sleep(self._open_at - now)
                continue
            if bucket is None:
                break
            wait_s = bucket.reserve(1.0, now)
            if wait_s <= 0:
                break
            try:
                await self._clock.sleep(wait_s)
            except BaseException:
                bucket.refund(1.0)
                raise
            if self._clock.monotonic() >= self._open_at:
                break
            # The gate closed while we waited for the token: give it back and queue again
            # behind the gate, so the reopening is not a burst of pre-paid requests.
            bucket.refund(1.0)
        self._requests_started += 1
        self._worker_wait_s += self._clock.monotonic() - started

    def statistics(self) -> PacerStatistics:
        return PacerStatistics(
            throttles=self._throttles,
            consecutive_throttles=self._consecutive,
            requests_started=self._requests_started,
            gate_closed_s=self._gate_closed_s,
            worker_wait_s=self._worker_wait_s,
            gate_open_at=self._open_at,
            max_requests_per_s=self.max_requests_per_s,
        )
