"""The retry policy: bounded full-jitter backoff, Retry-After, separate budgets, and retry_call."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.engine.pacer import Pacer
from tcia_fetch.engine.retry import RetryPolicy, RetryState, retry_call
from tcia_fetch.errors import (
    ArchiveCorruptError,
    ChecksumMismatchError,
    ConnectError,
    InputError,
    MetadataError,
    RateLimitedError,
    RemoteProtocolError,
    SeriesUnavailableError,
    ServerError,
    StallError,
    TLSError,
    UnauthorizedError,
    UnsafeArchiveError,
)

UID = "1.2.3.4"


def _server_error() -> ServerError:
    return ServerError("HTTP 500", status=500, series_uid=UID)


def _throttled(retry_after_s: float | None) -> RateLimitedError:
    return RateLimitedError("HTTP 429", status=429, retry_after_s=retry_after_s)


network_errors = st.sampled_from(
    [
        lambda: ConnectError("refused"),
        lambda: StallError("stalled"),
        lambda: RemoteProtocolError("cut"),
        _server_error,
        lambda: MetadataError("size missing"),
        lambda: _throttled(None),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    attempts=st.integers(min_value=1, max_value=12),
    base_s=st.floats(min_value=0.0, max_value=10.0),
    cap_s=st.floats(min_value=0.5, max_value=120.0),
    make_errors=st.lists(network_errors, min_size=1, max_size=20),
)
def test_backoff_is_bounded_and_attempts_run_out(seed, attempts, base_s, cap_s, make_errors) -> None:
    policy = RetryPolicy(attempts=attempts, base_s=base_s, cap_s=cap_s, floor_s=0.25)
    state = RetryState(policy, random.Random(seed), clock=FakeClock())
    delays = [state.next_delay(make()) for make in make_errors]
    for index, delay in enumerate(delays):
        if index < attempts - 1:
            assert delay is not None
            assert 0.0 <= delay <= cap_s
            assert delay >= 0.25
            assert delay <= max(0.25, policy.backoff_ceiling_s(index))
        else:
            assert delay is None  # the attempts are spent
    assert state.attempts_made == len(make_errors)


def test_backoff_ceiling_doubles_up_to_the_cap_even_for_huge_indexes() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=60.0)
    assert [policy.backoff_ceiling_s(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff_ceiling_s(10_000) == 60.0


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    rng = random.Random(7)
    policy = RetryPolicy(attempts=100, base_s=1.0, cap_s=8.0, floor_s=0.0)
    samples = []
    for _ in range(300):
        state = RetryState(policy, rng, clock=FakeClock())
        for _ in range(3):
            state.next_delay(ConnectError("refused"))
        delay = state.next_delay(ConnectError("refused"))  # retry index 3 -> ceiling 8
        assert delay is not None
        samples.append(delay)
    assert min(samples) < 1.0
    assert max(samples) > 7.0
    assert all(0.0 <= sample <= 8.0 for sample in samples)


def test_same_seed_gives_the_same_schedule() -> None:
    def schedule(seed: int) -> list[float | None]:
        state = RetryState(RetryPolicy(), random.Random(seed), clock=FakeClock())
        return [state.next_delay(ConnectError("refused")) for _ in range(6)]

    assert schedule(42) == schedule(42)
    assert schedule(42)[-1] is None


@pytest.mark.parametrize(
    "error",
    [
        TLSError("certificate verify failed"),
        UnauthorizedError("HTTP 401", status=401),
        SeriesUnavailableError("not granted", status=400),
        UnsafeArchiveError("../escape"),
        InputError("bad option"),
        ValueError("a bug, not a server problem"),
        KeyboardInterrupt(),
    ],
)
def test_fatal_and_non_retryable_errors_give_up_at_once(error: BaseException) -> None:
    state = RetryState(RetryPolicy(), random.Random(1), clock=FakeClock())
    assert state.next_delay(error) is None
    assert state.attempts_made == 1
    assert state.history[0].delay_s is None


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    retry_after_s=st.floats(min_value=0.0, max_value=5000.0),
)
def test_retry_after_replaces_backoff_with_a_little_jitter(seed: int, retry_after_s: float) -> None:
    policy = RetryPolicy(max_retry_after_s=900.0, cap_s=60.0)
    state = RetryState(policy, random.Random(seed), clock=FakeClock())
    delay = state.next_delay(_throttled(retry_after_s))
    assert delay is not None
    honoured = min(retry_after_s, 900.0)
    assert honoured <= delay <= honoured + min(5.0, 0.1 * honoured + 1.0)


def test_retry_after_may_exceed_the_backoff_cap() -> None:
    state = RetryState(RetryPolicy(cap_s=60.0), random.Random(3), clock=FakeClock())
    delay = state.next_delay(_throttled(120.0))
    assert delay is not None and delay >= 120.0


def test_integrity_failures_use_their_own_budget() -> None:
    policy = RetryPolicy(attempts=3, integrity_attempts=3)
    state = RetryState(policy, random.Random(5), clock=FakeClock())
    assert state.next_delay(ConnectError("refused")) is not None
    assert state.next_delay(ArchiveCorruptError("bad CRC")) is not None
    assert state.next_delay(ConnectError("refused")) is not None
    assert state.next_delay(ChecksumMismatchError("md5 differs")) is not None
    # two network failures and two integrity failures so far; both budgets have one left
    assert state.network_failures == 2
    assert state.integrity_failures == 2
    assert state.next_delay(ArchiveCorruptError("bad CRC again")) is None
    assert [record.integrity for record in state.history] == [False, True, False, True, True]


def test_network_budget_is_spent_independently_of_integrity() -> None:
    state = RetryState(RetryPolicy(attempts=2, integrity_attempts=5), random.Random(5), clock=FakeClock())
    assert state.next_delay(ArchiveCorruptError("bad CRC")) is not None
    assert state.next_delay(ConnectError("refused")) is not None
    assert state.next_delay(ConnectError("refused")) is None


def test_progress_resets_the_network_budget_but_not_integrity() -> None:
    state = RetryState(RetryPolicy(attempts=3, integrity_attempts=2), random.Random(9), clock=FakeClock())
    for _ in range(10):
        assert state.next_delay(RemoteProtocolError("cut after 1 GB")) is not None
        assert state.next_delay(RemoteProtocolError("cut after 2 GB")) is not None
        state.note_progress()
    assert state.attempts_made == 20
    assert state.next_delay(ArchiveCorruptError("bad CRC")) is not None
    state.note_progress()
    assert state.next_delay(ArchiveCorruptError("bad CRC")) is None
    # without progress the third network failure ends it
    fresh = RetryState(RetryPolicy(attempts=3), random.Random(9), clock=FakeClock())
    assert fresh.next_delay(StallError("stall")) is not None
    assert fresh.next_delay(StallError("stall")) is not None
    assert fresh.next_delay(StallError("stall")) is None


def test_progress_restarts_backoff_growth() -> None:
    policy = RetryPolicy(attempts=50, base_s=1.0, cap_s=60.0, floor_s=0.0)
    state = RetryState(policy, random.Random(11), clock=FakeClock())
    for _ in range(8):
        state.next_delay(ConnectError("refused"))
    state.note_progress()
    delay = state.next_delay(ConnectError("refused"))
    assert delay is not None and delay <= 1.0  # back to the first ceiling


def test_testing_mode_makes_every_delay_zero_but_still_counts() -> None:
    state = RetryState(RetryPolicy(attempts=3, testing=True), random.Random(1), clock=FakeClock())
    assert state.next_delay(_throttled(300.0)) == 0.0
    assert state.next_delay(ConnectError("refused")) == 0.0
    assert state.next_delay(ConnectError("refused")) is None


@pytest.mark.anyio
async def test_deadline_stops_retries_that_would_end_too_late() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=100, base_s=1.0, cap_s=1.0, floor_s=1.0, deadline_s=10.0)
    state = RetryState(policy, random.Random(1), clock=clock)
    delays = []
    while (delay := state.next_delay(ConnectError("refused"))) is not None:
        delays.append(delay)
        await clock.sleep(delay)
    assert clock.monotonic() <= 10.0
    assert len(delays) == 10


def test_history_names_each_error_by_reference() -> None:
    state = RetryState(RetryPolicy(), random.Random(1), clock=FakeClock())
    state.next_delay(_throttled(7.0))
    state.next_delay(ConnectError("refused"))
    state.next_delay(ValueError("boom"))
    assert [record.reference for record in state.history] == ["rate-limited", "connect-failed", "ValueError"]
    assert state.history[-1].delay_s is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"integrity_attempts": 0},
        {"cap_s": -1.0},
        {"base_s": float("nan")},
        {"deadline_s": 0.0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError, match="retry policy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_retry_call_retries_until_success_with_virtual_sleeps() -> None:
    clock = FakeClock()
    calls: list[float] = []
    retried: list[tuple[str, float]] = []

    async def flaky() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 3:
            raise _server_error()
        return "rows"

    result = await retry_call(
        flaky,
        policy=RetryPolicy(base_s=2.0),
        clock=clock,
        rng=random.Random(4),
        on_retry=lambda error, delay: retried.append((type(error).__name__, delay)),
    )
    assert result == "rows"
    assert len(calls) == 3
    assert [name for name, _ in retried] == ["ServerError", "ServerError"]
    assert calls[1] - calls[0] == pytest.approx(retried[0][1])
    assert calls[2] - calls[1] == pytest.approx(retried[1][1])


@pytest.mark.anyio
async def test_retry_call_reraises_the_last_error_when_the_budget_is_spent() -> None:
    clock = FakeClock()
    calls = 0

    async def always_down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectError(f"refused #{calls}")

    with pytest.raises(ConnectError, match="refused #4"):
        await retry_call(always_down, policy=RetryPolicy(attempts=4), clock=clock, rng=random.Random(1))
    assert calls == 4


@pytest.mark.anyio
async def test_retry_call_does_not_retry_permanent_errors() -> None:
    calls = 0

    async def rejected() -> None:
        nonlocal calls
        calls += 1
        raise SeriesUnavailableError("not granted", status=400)

    with pytest.raises(SeriesUnavailableError):
        await retry_call(rejected, policy=RetryPolicy(), clock=FakeClock())
    assert calls == 1


@pytest.mark.anyio
async def test_retry_call_with_a_pacer_waits_for_the_shared_gate() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    calls: list[float] = []

    async def throttled_once() -> int:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise _throttled(30.0)
        return 1

    async def other_worker_start() -> float:
        await clock.sleep(1.0)
        await pacer.wait_turn()
        return clock.monotonic()

    starts: list[float] = []

    async def other() -> None:
        starts.append(await other_worker_start())

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        assert await retry_call(throttled_once, policy=RetryPolicy(), clock=clock, pacer=pacer) == 1
    assert calls[1] >= 30.0
    assert starts[0] >= 30.0  # the throttle gated the other worker too
    assert pacer.statistics().throttles == 1
