"""The circuit breaker: opens on a server-wide failure run, one probe at a time, closes on proof of life."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from tcia_fetch.engine.breaker import BreakerState, CircuitBreaker, counts_against_server
from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.errors import (
    ArchiveCorruptError,
    ConnectError,
    MetadataError,
    RateLimitedError,
    RequestTimeoutError,
    ResponseFormatError,
    SeriesUnavailableError,
    ServerError,
    TLSError,
)

pytestmark = pytest.mark.anyio


def _refused() -> ConnectError:
    return ConnectError("connection refused")


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (ConnectError("refused"), True),
        (RequestTimeoutError("timeout"), True),
        (ServerError("HTTP 502", status=502), True),
        (ResponseFormatError("HTML maintenance page"), True),
        (RateLimitedError("HTTP 429", status=429), False),
        (ArchiveCorruptError("bad CRC"), False),
        (MetadataError("no size"), False),
        (SeriesUnavailableError("not granted", status=400), False),
        (TLSError("bad certificate"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_server_health_failures_count(error: BaseException, counts: bool) -> None:
    assert counts_against_server(error) is counts


def test_opens_only_after_the_threshold_across_at_least_two_series() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=5, min_distinct_series=2)
    for _ in range(10):
        breaker.on_failure("1.1", _refused())  # one unlucky series is not an outage
    assert breaker.state is BreakerState.CLOSED
    breaker.on_failure("1.2", _refused())
    assert breaker.statistics().state is BreakerState.OPEN
    assert breaker.statistics().opens == 1


def test_success_and_ignored_errors_reset_or_leave_the_run() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=3, min_distinct_series=2)
    breaker.on_failure("1.1", _refused())
    breaker.on_failure("1.2", _refused())
    breaker.on_success()
    breaker.on_failure("1.3", _refused())
    breaker.on_failure("1.4", ArchiveCorruptError("bad CRC"))  # the series' problem: ignored
    breaker.on_failure("1.5", RateLimitedError("HTTP 429", status=429))  # the pacer's job
    breaker.on_failure("1.6", _refused())
    assert breaker.state is BreakerState.CLOSED
    breaker.on_failure("1.7", _refused())
    assert breaker.statistics().state is BreakerState.OPEN


async def test_closed_breaker_lets_everyone_through_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    for _ in range(100):
        await breaker.wait_closed()
    assert clock.monotonic() == 0.0


async def test_half_open_lets_exactly_one_probe_through_then_closes_for_all() -> None:
    clock = FakeClock()
    closed_callbacks: list[float] = []
    breaker = CircuitBreaker(
        clock,
        failure_threshold=2,
        open_base_s=5.0,
        on_close=lambda: closed_callbacks.append(clock.monotonic()),
    )
    breaker.on_failure("1.1", _refused())
    breaker.on_failure("1.2", _refused())
    passed: list[tuple[int, float]] = []

    async def worker(index: int) -> None:
        await breaker.wait_closed()
        passed.append((index, clock.monotonic()))

    async def probe_answers_later() -> None:
        await clock.sleep(5.0)
        await anyio.lowlevel.checkpoint()
        while not passed:
            await anyio.lowlevel.checkpoint()
        await clock.sleep(2.0)  # the probe's request takes two seconds
        assert len(passed) == 1  # everyone else is still waiting for the verdict
        assert breaker.state is BreakerState.HALF_OPEN
        breaker.on_success()

    async with anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(worker, index)
        group.start_soon(probe_answers_later)

    assert passed[0][1] == 5.0
    assert [at for _, at in passed[1:]] == [7.0] * 9
    assert closed_callbacks == [7.0]
    stats = breaker.statistics()
    assert stats.state is BreakerState.CLOSED
    assert stats.probes == 1
    assert stats.time_open_s == pytest.approx(7.0)


async def test_failed_probes_reopen_with_doubling_times_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock, failure_threshold=1, min_distinct_series=1, open_base_s=5.0, open_cap_s=30.0
    )
    breaker.on_failure("1.1", _refused())
    probe_times: list[float] = []
    for _ in range(5):
        await breaker.wait_closed()
        probe_times.append(clock.monotonic())
        breaker.on_failure("1.1", _refused())  # the probe failed at once
    assert probe_times == [5.0, 15.0, 35.0, 65.0, 95.0]
    await breaker.wait_closed()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED
    # a later outage starts again from the base open time
    breaker.on_failure("1.1", _refused())
    start = clock.monotonic()
    await breaker.wait_closed()
    assert clock.monotonic() - start == 5.0


async def test_a_probe_answered_with_a_series_error_proves_the_server_is_up() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, min_distinct_series=1)
    breaker.on_failure("1.1", _refused())
    await breaker.wait_closed()
    breaker.on_failure("1.1", SeriesUnavailableError("not granted", status=400))
    assert breaker.state is BreakerState.CLOSED


async def test_max_outage_raises_to_every_waiter() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock,
        failure_threshold=1,
        min_distinct_series=1,
        open_base_s=10.0,
        open_cap_s=60.0,
        max_outage_s=100.0,
    )
    breaker.on_failure("1.1", _refused())
    errors: list[tuple[float, str]] = []

    async def worker() -> None:
        try:
            while True:
                await breaker.wait_closed()
                await clock.sleep(1.0)  # the probe's connection attempt
                breaker.on_failure("1.1", _refused())
        except ConnectError as exc:
            errors.append((clock.monotonic(), str(exc)))

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(worker)

    assert len(errors) == 6
    assert all(at == 100.0 for at, _ in errors)
    assert "server unreachable for 100 s" in errors[0][1]
    stats = breaker.statistics()
    assert stats.probes <= 4  # opened at 0; probes at 10, 31, 72: at most one per open period
    assert stats.opens == stats.probes + 1
    assert breaker.outage_exceeded
    with pytest.raises(ConnectError, match="unreachable"):
        await breaker.wait_closed()


async def test_a_silent_probe_is_replaced_after_the_probe_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock, failure_threshold=1, min_distinct_series=1, open_base_s=5.0, probe_timeout_s=30.0
    )
    breaker.on_failure("1.1", _refused())
    passed: list[float] = []

    async def worker() -> None:
        await breaker.wait_closed()
        passed.append(clock.monotonic())
        if len(passed) == 2:
            breaker.on_success()  # the second probe reports; the first one's worker vanished

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(worker)
    assert passed == [5.0, 35.0, 35.0, 35.0]


async def test_outage_of_two_minutes_then_recovery() -> None:
    """Row A6: connection refused for 120 s, then up. Few requests during the outage; all finish."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock, failure_threshold=5, min_distinct_series=2, open_base_s=5.0, open_cap_s=60.0
    )
    requests: list[tuple[float, bool]] = []
    done: list[str] = []

    async def request() -> bool:
        now = clock.monotonic()
        up = now >= 120.0
        requests.append((now, up))
        await clock.sleep(0.1 if not up else 1.0)
        return up

    async def worker(series: list[str]) -> None:
        for uid in series:
            while True:
                await breaker.wait_closed()
                if await request():
                    breaker.on_success()
                    done.append(uid)
                    break
                breaker.on_failure(uid, _refused())
                await clock.sleep(1.0)  # the per-series retry backoff

    async with anyio.create_task_group() as group:
        for worker_id in range(4):
            group.start_soon(worker, [f"1.{worker_id}.{n}" for n in range(5)])

    assert len(done) == 20
    failed = [at for at, up in requests if not up]
    assert len(failed) < 20  # without the breaker, 4 workers retrying every second would send ~480
    # while open, at most one request per open period reaches the server
    during_outage = [at for at in failed if at >= 5.0]
    assert len(during_outage) <= 6
    stats = breaker.statistics()
    assert stats.state is BreakerState.CLOSED
    assert stats.opens >= 2
    assert max(at for at, up in requests if up) < 200.0
