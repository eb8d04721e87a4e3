"""A run of nothing but throttles is an outage: the breaker ends it after ``max_outage_s`` (issue 14)."""

from __future__ import annotations

import random

import pytest

from tcia_fetch.engine.breaker import BreakerState, CircuitBreaker
from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.engine.retry import RetryPolicy, retry_call
from tcia_fetch.errors import EXIT_FATAL, ConnectError, RateLimitedError, ServerUnreachableError

pytestmark = pytest.mark.anyio


def _throttle(retry_after_s: float | None = 900.0) -> RateLimitedError:
    return RateLimitedError("HTTP 429: server asks to slow down", status=429, retry_after_s=retry_after_s)


def _state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state afresh (so a checker does not carry a narrowed literal across calls)."""
    return breaker.state


def test_throttles_alone_become_an_outage_after_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=1800.0)
    breaker.on_failure("1.1", _throttle())
    clock.advance(1799.0)
    breaker.on_failure("1.2", _throttle())
    breaker.check_throttle_storm()  # 1799 s of throttles: not yet
    assert breaker.state is BreakerState.CLOSED  # throttles still never open the breaker
    clock.advance(1.0)
    with pytest.raises(
        ServerUnreachableError, match=r"only 'slow down' \(HTTP 429/503\) for 1800 s"
    ) as caught:
        breaker.check_throttle_storm()
    assert caught.value.fatal and caught.value.exit_code == EXIT_FATAL
    assert "2 throttled requests" in str(caught.value)


def test_any_answer_that_lets_work_through_restarts_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=100.0)
    breaker.on_failure("1.1", _throttle())
    clock.advance(90.0)
    breaker.on_success()  # a download's headers arrived
    clock.advance(90.0)
    breaker.check_throttle_storm()
    breaker.on_failure("1.1", _throttle())
    clock.advance(90.0)
    breaker.on_progress()  # a planner query was answered
    clock.advance(20.0)
    breaker.check_throttle_storm()
    assert breaker.throttle_storm_s() == 0.0


def test_a_throttle_answering_the_probe_closes_the_breaker_but_not_the_storm() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, min_distinct_series=1, max_outage_s=100.0)
    breaker.on_failure("1.1", ConnectError("refused"))
    assert _state(breaker) is BreakerState.OPEN
    clock.advance(10.0)
    breaker.on_failure("1.1", _throttle())  # the server is alive: the breaker closes...
    assert _state(breaker) is BreakerState.CLOSED
    clock.advance(100.0)
    with pytest.raises(ServerUnreachableError):  # ...but nothing got through for 100 s
        breaker.check_throttle_storm()


def test_no_window_means_no_storm_rule() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=None)
    breaker.on_failure("1.1", _throttle())
    clock.advance(10**6)
    breaker.check_throttle_storm()


async def test_wait_closed_ends_a_storm() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=60.0)
    breaker.on_failure("1.1", _throttle())
    await breaker.wait_closed()
    clock.advance(60.0)
    with pytest.raises(ServerUnreachableError):
        await breaker.wait_closed()


async def test_a_planner_query_in_a_storm_ends_at_the_window_not_after_its_attempts() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=1800.0)
    calls = 0

    async def always_throttled() -> None:
        nonlocal calls
        calls += 1
        raise _throttle(retry_after_s=300.0)

    # 100 attempts at up to 305 s each would be 8.5 hours; the storm rule ends it after 30 minutes.
    with pytest.raises(ServerUnreachableError):
        await retry_call(
            always_throttled,
            policy=RetryPolicy(attempts=100),
            clock=clock,
            rng=random.Random(1),
            breaker=breaker,
        )
    assert 1800.0 <= clock.monotonic() < 1800.0 + 306.0
    assert calls == 6  # at 0, 300, ..., 1500 s; after the sixth wait (1800+ s) nothing more is sent


async def test_a_query_answered_between_throttles_keeps_the_run_alive() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, max_outage_s=200.0)
    outcomes = iter([_throttle(60.0), _throttle(60.0), None, _throttle(60.0), _throttle(60.0), None])

    async def flaky() -> str:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "rows"

    for _ in range(2):
        assert (
            await retry_call(flaky, policy=RetryPolicy(), clock=clock, rng=random.Random(2), breaker=breaker)
            == "rows"
        )
    assert clock.monotonic() > 240.0  # longer than the window in all, never 200 s without an answer
