"""All control primitives together, in the order a worker uses them, against a simulated server.

Row A1 of reliability.md at the level of the primitives: the server answers its 2nd and 3rd
requests with 429 + ``Retry-After: 7``. Every worker must hold off for 7 s (I7), the adaptive
limit drops once (to what was in flight), the breaker stays closed (a throttle is not an
outage), the bandwidth cap holds, and every series completes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import pytest

from tcia_fetch.engine.breaker import BreakerState, CircuitBreaker
from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.engine.concurrency import AdaptiveLimiter
from tcia_fetch.engine.pacer import ByteRateLimiter, Pacer
from tcia_fetch.engine.retry import RetryPolicy, RetryState, parse_retry_after
from tcia_fetch.errors import RateLimitedError, TciaFetchError

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024
CHUNKS_PER_SERIES = 16


@dataclass
class ThrottlingServer:
    clock: FakeClock
    throttle_requests: frozenset[int] = frozenset({2, 3})
    starts: list[float] = field(default_factory=list)
    throttled_at: list[float] = field(default_factory=list)

    async def get_image(self, series_uid: str) -> list[bytes]:
        self.starts.append(self.clock.monotonic())
        number = len(self.starts)
        await self.clock.sleep(0.2)  # time to first byte
        if number in self.throttle_requests:
            self.throttled_at.append(self.clock.monotonic())
            retry_after = parse_retry_after("7", now=self.clock.time(), date_header=None)
            raise RateLimitedError("HTTP 429", status=429, series_uid=series_uid, retry_after_s=retry_after)
        return [bytes(CHUNK)] * CHUNKS_PER_SERIES


async def test_throttle_gates_everyone_halves_concurrency_and_all_series_finish() -> None:
    clock = FakeClock()
    server = ThrottlingServer(clock)
    limiter = AdaptiveLimiter(4, initial=4, clock=clock, min_epoch_s=2.0)
    breaker = CircuitBreaker(clock, on_close=limiter.restart)
    pacer = Pacer(clock)
    bandwidth = ByteRateLimiter(4 * 1024 * 1024, clock)
    policy = RetryPolicy()
    rng = random.Random(2024)
    finished: dict[str, int] = {}
    received: list[tuple[float, int]] = []

    send, receive = anyio.create_memory_object_stream[str](4)

    async def attempt(series_uid: str) -> None:
        async with limiter.slot():
            await breaker.wait_closed()
            await pacer.wait_turn()
            started = clock.monotonic()
            chunks = await server.get_image(series_uid)
            nbytes = 0
            for chunk in chunks:
                await bandwidth.consume(len(chunk))
                received.append((clock.monotonic(), len(chunk)))
                nbytes += len(chunk)
            limiter.on_success(clock.monotonic() - started, nbytes)
            breaker.on_success()
            pacer.on_success()

    async def worker(series: anyio.abc.ObjectReceiveStream[str]) -> None:
        async with series:
            async for series_uid in series:
                state = RetryState(policy, rng, clock=clock)
                while True:
                    try:
                        await attempt(series_uid)
                    except TciaFetchError as error:
                        delay = state.next_delay(error)
                        if error.throttle:
                            pacer.on_throttle(error.retry_after_s)
                            limiter.on_congestion("throttle")
                        breaker.on_failure(series_uid, error)
                        assert delay is not None
                        await clock.sleep(delay)
                    else:
                        finished[series_uid] = state.attempts_made + 1
                        break

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for index in range(12):
                await send.send(f"1.2.840.{index}")

    assert len(finished) == 12
    assert sorted(finished.values()).count(2) == 2  # the two throttled series needed one retry each
    # I7: after the first 429 no request starts until its Retry-After has passed
    first_throttle = server.throttled_at[0]
    assert not [at for at in server.starts if first_throttle <= at < first_throttle + 7.0]
    assert server.throttled_at[1] - first_throttle < 7.0  # the second 429 fell in the same window
    # one cut for the burst of two throttles, to the two downloads the server kept serving
    stats = limiter.statistics()
    assert stats.decreases == 1
    assert min(limit for _, limit in limiter.trace) == 2
    assert stats.learned_cap == 2
    assert stats.peak_in_flight <= 4
    # throttles are not outages
    assert breaker.statistics().state is BreakerState.CLOSED
    assert breaker.statistics().opens == 0
    # the shared bandwidth cap held: bytes <= burst + cap * elapsed
    total = sum(size for _, size in received)
    assert total == 12 * CHUNK * CHUNKS_PER_SERIES
    assert total <= 0.5 * 4 * 1024 * 1024 + 4 * 1024 * 1024 * clock.monotonic()
    assert pacer.statistics().throttles == 2
