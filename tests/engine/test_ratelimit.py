"""Token buckets: request starts stay within rate + burst; the byte cap keeps the average rate."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.engine.ratelimit import ByteRateLimiter, TokenBucket

pytestmark = pytest.mark.anyio


def _max_in_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_pure_core_try_acquire_reports_the_wait_without_taking() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, clock=FakeClock())
    assert [bucket.try_acquire(1, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(1, now=0.0) == pytest.approx(0.5)
    assert bucket.try_acquire(1, now=0.25) == pytest.approx(0.25)  # nothing was taken meanwhile
    assert bucket.try_acquire(1, now=0.5) == 0.0
    assert bucket.available(now=100.0) == 3.0  # refill stops at the burst


def test_reserve_goes_into_debt_and_queues_callers_fairly() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, clock=FakeClock())
    waits = [bucket.reserve(1, now=0.0) for _ in range(4)]
    assert waits == [0.0, 1.0, 2.0, 3.0]
    assert bucket.reserve(5, now=10.0) == pytest.approx(4.0)  # larger than the burst still passes


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5), (float("inf"), 1.0)])
def test_nonsense_buckets_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, FakeClock())


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    burst=st.integers(min_value=1, max_value=5),
    workers=st.integers(min_value=1, max_value=8),
)
def test_concurrent_acquirers_stay_within_rate_plus_burst(rate: float, burst: int, workers: int) -> None:
    async def scenario() -> list[float]:
        clock = FakeClock()
        bucket = TokenBucket(rate, float(burst), clock)
        starts: list[float] = []

        async def worker() -> None:
            for _ in range(6):
                await bucket.acquire()
                starts.append(clock.monotonic())

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
        return starts

    starts = anyio.run(scenario)
    assert len(starts) == 6 * workers
    for window_s in (1.0, 3.0, 10.0):
        assert _max_in_window(starts, window_s) <= burst + rate * window_s + 1e-9
    # and the bucket is not stingier than it must be: the whole run takes about (n - burst) / rate
    expected_end = max(0.0, (len(starts) - burst) / rate)
    assert max(starts) == pytest.approx(expected_end)


async def test_cancelled_acquire_returns_its_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 1.0, clock)
    await bucket.acquire()
    with anyio.move_on_after(5):  # real-time bound only as a safety net
        async with anyio.create_task_group() as group:
            group.start_soon(bucket.acquire)
            await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()
    assert bucket.available(clock.monotonic()) == pytest.approx(0.0)
    await bucket.acquire()
    assert clock.monotonic() == pytest.approx(1.0)


async def test_byte_limiter_keeps_the_average_at_the_cap_across_workers() -> None:
    clock = FakeClock()
    cap = 1_000_000.0
    limiter = ByteRateLimiter(cap, clock, window_s=0.5)
    received: list[tuple[float, int]] = []

    async def stream(chunk: int, chunks: int) -> None:
        for _ in range(chunks):
            await limiter.consume(chunk)
            received.append((clock.monotonic(), chunk))

    async with anyio.create_task_group() as group:
        group.start_soon(stream, 64 * 1024, 100)
        group.start_soon(stream, 256 * 1024, 30)
        group.start_soon(stream, 1024 * 1024, 5)  # a chunk larger than the burst still passes
    total = sum(size for _, size in received)
    elapsed = clock.monotonic()
    # total bytes <= burst + cap * elapsed (the burst is half a second's worth)
    assert total <= cap * 0.5 + cap * elapsed + 1
    assert total / elapsed == pytest.approx(cap, rel=0.2)
    # smoothness: in any 2-second window no more than 2.5 s worth of bytes arrive
    for start, _ in received:
        in_window = sum(size for moment, size in received if start <= moment <= start + 2.0)
        assert in_window <= cap * 2.5 + 1024 * 1024
    stats = limiter.statistics()
    assert stats.bytes_consumed == total
    assert stats.waits > 0


async def test_disabled_byte_limiter_never_touches_the_clock() -> None:
    clock = FakeClock()
    limiter = ByteRateLimiter(None, clock)
    assert not limiter.enabled
    for _ in range(1000):
        await limiter.consume(10**9)
    assert clock.monotonic() == 0.0
    assert clock.sleep_calls == 0
    assert limiter.statistics().bytes_consumed == 0


def test_byte_limiter_window_must_be_sane() -> None:
    with pytest.raises(ValueError):
        ByteRateLimiter(1000.0, FakeClock(), window_s=5.0)
