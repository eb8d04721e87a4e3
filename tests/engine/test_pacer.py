"""The shared pacer: one throttle gates every worker (invariant I7), plus the request-rate cap."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from tcia_fetch.engine.clock import FakeClock
from tcia_fetch.engine.pacer import Pacer

pytestmark = pytest.mark.anyio


async def test_retry_after_gates_every_worker_until_it_passes() -> None:
    """Row A1: a 429 with Retry-After 7 at t=3 means no request start in [3, 10) from anyone."""
    clock = FakeClock()
    pacer = Pacer(clock)
    starts: list[tuple[int, float]] = []
    throttled_at: list[float] = []

    async def worker(worker_id: int) -> None:
        for request in range(5):
            await pacer.wait_turn()
            now = clock.monotonic()
            starts.append((worker_id, now))
            if worker_id == 0 and request == 1:
                await clock.sleep(3.0 - now)  # the response arrives at t=3 with 429
                throttled_at.append(clock.monotonic())
                pacer.on_throttle(7.0)
            else:
                await clock.sleep(0.5)  # a quick successful request
                pacer.on_success()

    async with anyio.create_task_group() as group:
        for worker_id in range(4):
            group.start_soon(worker, worker_id)

    assert throttled_at == [3.0]
    in_gate = [(worker_id, at) for worker_id, at in starts if 3.0 <= at < 10.0]
    assert in_gate == []
    assert len(starts) == 20
    assert any(at == 10.0 for _, at in starts)  # work resumed as soon as the gate opened
    stats = pacer.statistics()
    assert stats.throttles == 1
    assert stats.requests_started == 20
    assert stats.gate_closed_s == pytest.approx(7.0)
    assert stats.worker_wait_s > 0


async def test_a_shorter_hint_never_reopens_a_longer_gate() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    assert pacer.on_throttle(30.0) == 30.0
    assert pacer.on_throttle(2.0) == 30.0
    await clock.sleep(10.0)
    assert pacer.on_throttle(25.0) == 35.0
    assert not pacer.is_open()
    await pacer.wait_turn()
    assert clock.monotonic() == 35.0
    assert pacer.statistics().gate_closed_s == pytest.approx(35.0)


async def test_gate_pushed_while_waiting_holds_the_waiter_longer() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    pacer.on_throttle(5.0)
    started: list[float] = []

    async def waiter() -> None:
        await pacer.wait_turn()
        started.append(clock.monotonic())

    async def second_throttle() -> None:
        await clock.sleep(4.0)
        pacer.on_throttle(20.0)  # another worker's 429 arrives at t=4

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(second_throttle)
    assert started == [24.0]


async def test_throttle_without_retry_after_backs_off_and_decays() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, throttle_base_s=1.0, throttle_cap_s=8.0)
    opens = []
    for _ in range(5):
        opens.append(pacer.on_throttle(None) - clock.monotonic())
        await pacer.wait_turn()
    assert opens == [1.0, 2.0, 4.0, 8.0, 8.0]
    for _ in range(3):
        pacer.on_success()
    assert pacer.on_throttle(None) - clock.monotonic() == 4.0  # decayed three steps


async def test_throttles_long_apart_are_not_consecutive() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, throttle_base_s=1.0, throttle_memory_s=60.0)
    pacer.on_throttle(None)
    await clock.sleep(30.0)
    assert pacer.on_throttle(None) - clock.monotonic() == 2.0
    await clock.sleep(300.0)
    assert pacer.on_throttle(None) - clock.monotonic() == 1.0


async def test_absurd_retry_after_pauses_others_only_up_to_max_gate() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, max_gate_s=120.0)
    pacer.on_throttle(86_400.0)
    await pacer.wait_turn()
    assert clock.monotonic() == 120.0


async def test_garbage_hints_fall_back_to_backoff() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, throttle_base_s=3.0)
    assert pacer.on_throttle(float("nan")) == 3.0
    assert pacer.on_throttle(-10.0) == 6.0


async def test_request_rate_cap_with_burst_and_gate_together() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, max_requests_per_s=2.0, burst=2.0)
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(5):
            await pacer.wait_turn()
            starts.append(clock.monotonic())

    async def throttle_midway() -> None:
        await clock.sleep(3.0)
        pacer.on_throttle(4.0)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(worker)
        group.start_soon(throttle_midway)

    assert len(starts) == 20
    assert not [at for at in starts if 3.0 <= at < 7.0]
    ordered = sorted(starts)
    for index, start in enumerate(ordered):
        in_window = [at for at in ordered[index:] if at <= start + 1.0]
        assert len(in_window) <= 2 + 2  # burst + rate * 1 s
    assert pacer.statistics().requests_started == 20


async def test_cancelled_waiter_does_not_count_as_a_start() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    pacer.on_throttle(10.0)
    async with anyio.create_task_group() as group:
        group.start_soon(pacer.wait_turn)
        await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert pacer.statistics().requests_started == 0
    assert clock.pending_sleepers == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(FakeClock(), throttle_base_s=10.0, throttle_cap_s=1.0)
