"""run_sync: the same result from plain code and from inside a running loop; interrupts cancel."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from tcia_fetch._loop import loop_is_running, run_sync
from tcia_fetch.errors import InputError


async def answer() -> tuple[int, bool]:
    await anyio.sleep(0.01)
    return 42, loop_is_running()


def test_plain_code_runs_on_this_thread() -> None:
    assert not loop_is_running()
    assert run_sync(answer) == (42, True)


def test_inside_a_running_loop_it_runs_on_a_worker_thread() -> None:
    callers: list[int] = []

    async def in_app() -> tuple[int, bool]:
        assert loop_is_running()
        return run_sync(answer, tick=lambda: callers.append(threading.get_ident()), tick_s=0.001)

    assert asyncio.run(in_app()) == (42, True)
    # Progress redraws happen on the waiting (cell) thread, never on the worker.
    assert set(callers) <= {threading.get_ident()}


def test_errors_reach_the_caller_unchanged_in_both_modes() -> None:
    async def bad() -> None:
        raise InputError("nope", source="here")

    with pytest.raises(InputError, match="here: nope"):
        run_sync(bad)

    async def in_app() -> None:
        run_sync(bad)

    with pytest.raises(InputError, match="here: nope"):
        asyncio.run(in_app())


def test_an_interrupt_while_waiting_cancels_the_work_and_lets_its_cleanup_finish() -> None:
    cleaned = threading.Event()
    started = threading.Event()

    async def long_job() -> None:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # shielded cleanup, as the engine's _finish
            cleaned.set()

    def interrupt() -> None:
        if started.is_set():
            raise KeyboardInterrupt

    async def in_app() -> None:
        run_sync(long_job, tick=interrupt, tick_s=0.01)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(in_app())
    assert cleaned.is_set()
