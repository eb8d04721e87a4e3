"""The virtual clock: time jumps only when everyone sleeps, wakes in order, never really waits."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from tcia_fetch.engine.clock import Clock, FakeClock, SystemClock

pytestmark = pytest.mark.anyio


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


async def test_system_clock_sleeps_for_real_and_zero_is_a_checkpoint() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0)
    await clock.sleep(-5)
    await clock.sleep(0.01)
    assert clock.monotonic() - before >= 0.009
    assert abs(clock.time() - time.time()) < 5


async def test_fake_sleep_jumps_virtual_time_without_real_waiting() -> None:
    clock = FakeClock()
    real_start = time.monotonic()
    await clock.sleep(3600)
    assert clock.monotonic() == 3600
    assert time.monotonic() - real_start < 2


async def test_sleepers_wake_in_deadline_order_at_their_exact_times() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper, "late", 10.0)
        group.start_soon(sleeper, "early", 2.5)
        group.start_soon(sleeper, "middle", 5.0)
        group.start_soon(sleeper, "also-middle", 5.0)
    assert woke == [("early", 2.5), ("middle", 5.0), ("also-middle", 5.0), ("late", 10.0)]


async def test_time_does_not_jump_while_another_task_is_busy() -> None:
    clock = FakeClock()
    observed: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            observed.append(clock.monotonic())
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(clock.sleep, 1.0)
        group.start_soon(busy)
    assert observed == [0.0] * 200
    assert clock.monotonic() == 1.0


async def test_chained_sleeps_accumulate_and_event_waiters_do_not_block_jumps() -> None:
    clock = FakeClock()
    ready = anyio.Event()
    seen: list[float] = []

    async def waiter() -> None:
        await ready.wait()
        seen.append(clock.monotonic())

    async def setter() -> None:
        for _ in range(4):
            await clock.sleep(1.5)
        ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(setter)
    assert seen == [6.0]


async def test_cancelled_sleeper_leaves_the_clock_and_others_still_wake() -> None:
    clock = FakeClock()
    events: list[tuple[str, float]] = []

    async def cancellable(scopes: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await clock.sleep(50)
        events.append(("cancelled", clock.monotonic()))

    async def canceller(scopes: list[anyio.CancelScope]) -> None:
        await clock.sleep(20)
        scopes[0].cancel()

    async def sleeper() -> None:
        await clock.sleep(100)
        events.append(("woke", clock.monotonic()))

    scopes: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as group:
        group.start_soon(cancellable, scopes)
        group.start_soon(canceller, scopes)
        group.start_soon(sleeper)
    assert events == [("cancelled", 20.0), ("woke", 100.0)]
    assert clock.pending_sleepers == 0


async def test_manual_advance_without_autojump() -> None:
    clock = FakeClock(autojump=False)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert woke == []
        assert clock.pending_sleepers == 1
        clock.advance(4.0)
        await anyio.lowlevel.checkpoint()
        assert woke == []
        clock.advance(1.0)
    assert woke == [5.0]
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_wall_time_moves_with_virtual_time_and_can_jump() -> None:
    clock = FakeClock(wall_start=1_000_000.0)
    await clock.sleep(10)
    assert clock.time() == 1_000_010.0
    clock.set_wall_time(0.0)
    assert clock.time() == 0.0
    assert clock.monotonic() == 10.0


async def test_sleeping_forever_does_not_drag_time_to_infinity() -> None:
    clock = FakeClock()
    with anyio.move_on_after(5):  # real-time safety net only
        async with anyio.create_task_group() as group:
            group.start_soon(clock.sleep, float("inf"))
            await clock.sleep(3.0)
            group.cancel_scope.cancel()
    assert clock.monotonic() == 3.0
