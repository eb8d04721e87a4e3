"""Token buckets: a request-rate cap and a byte-rate (bandwidth) cap shared by all workers.

The bucket itself is pure arithmetic over times passed in (:meth:`TokenBucket.try_acquire`,
:meth:`TokenBucket.reserve`), so its rates are testable without an event loop. Waiting is a
single sleep for exactly the time the reservation needs: never a polling loop. Reservations may
take the bucket into debt, which queues concurrent callers fairly (each one waits behind the
debt of those before it) and lets a single request larger than the burst through at the
average rate, as ``golang.org/x/time/rate``'s ``Reserve`` does (rclone ``--tpslimit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tcia_fetch.engine.clock import Clock

__all__ = ["ByteRateLimiter", "ByteRateStatistics", "TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens per second, holding at most ``burst``; starts full.

    Over any window of ``w`` seconds at most ``burst + rate_per_s * w`` tokens are handed out.
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Clock) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a finite number > 0, not {rate_per_s}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be a finite number >= 1, not {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated_at = clock.monotonic()
        self.waited_s = 0.0

    def _refill(self, now: float) -> None:
        if now > self._updated_at:
            self._tokens = min(self.burst, self._tokens + (now - self._updated_at) * self.rate_per_s)
            self._updated_at = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while reservations are in debt)."""
        self._refill(now)
        return self._tokens

    def try_acquire(self, n: float, now: float) -> float:
        """Take ``n`` tokens if they are there (returns 0.0); otherwise take nothing and
        return how many seconds until they would be. ``n`` above the burst can never succeed
        here: use :meth:`reserve` for that."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate_per_s

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens now, going into debt if needed; return the seconds the caller must
        wait before using them (0.0 when they were there)."""
        self._refill(now)
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate_per_s

    def refund(self, n: float) -> None:
        """Give back ``n`` tokens of a reservation that was not used (the waiter was cancelled)."""
        self._tokens = min(self.burst, self._tokens + n)

    async def acquire(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are ours. One sleep at most; cancellation returns the tokens."""
        wait_s = self.reserve(n, self._clock.monotonic())
        if wait_s <= 0:
            return
        try:
            await self._clock.sleep(wait_s)
        except BaseException:
            self.refund(n)
            raise
        self.waited_s += wait_s


@dataclass(frozen=True, slots=True)
class ByteRateStatistics:
    """A snapshot of the bandwidth cap's work: bytes that passed and seconds spent waiting."""

    max_bytes_per_s: float | None
    bytes_consumed: int
    waits: int
    waited_s: float


class ByteRateLimiter:
    """Caps the total download rate of all streams together (``--bwlimit``).

    The bucket holds ``window_s`` seconds' worth of bytes, so the rate is smooth (no long
    bursts then long pauses) yet a worker rarely sleeps for tiny chunks. With
    ``max_bytes_per_s=None`` the limiter is disabled and :meth:`consume` returns without
    touching the clock; callers may also test :attr:`enabled` and skip it entirely.
    """

    def __init__(self, max_bytes_per_s: float | None, clock: Clock, *, window_s: float = 0.5) -> None:
        if not (0.0 < window_s <= 1.0):
            raise ValueError(f"window_s must be in (0, 1], not {window_s}")
        self.max_bytes_per_s = max_bytes_per_s
        self._clock = clock
        self._bucket: TokenBucket | None = None
        if max_bytes_per_s is not None:
            burst = max(1.0, max_bytes_per_s * window_s)
            self._bucket = TokenBucket(max_bytes_per_s, burst, clock)
        self._bytes = 0
        self._waits = 0
        self._waited_s = 0.0

    @property
    def enabled(self) -> bool:
        """False when no cap is set; consuming is then free."""
        return self._bucket is not None

    async def consume(self, n: int) -> None:
        """Account ``n`` received bytes, sleeping just long enough to keep the average at the cap."""
        bucket = self._bucket
        if bucket is None or n <= 0:
            return
        self._bytes += n
        wait_s = bucket.reserve(n, self._clock.monotonic())
        if wait_s > 0:
            self._waits += 1
            self._waited_s += wait_s
            await self._clock.sleep(wait_s)

    def statistics(self) -> ByteRateStatistics:
        return ByteRateStatistics(
            max_bytes_per_s=self.max_bytes_per_s,
            bytes_consumed=self._bytes,
            waits=self._waits,
            waited_s=self._waited_s,
        )
