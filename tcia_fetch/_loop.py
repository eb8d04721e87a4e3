"""Run a coroutine from synchronous code, even when this thread already runs an event loop.

A plain script has no running loop: the coroutine runs here with ``anyio.run``. Jupyter,
IPython's autoawait and async applications call us from inside a running loop, where a nested
``anyio.run`` fails ("already running asyncio in this thread") and patching asyncio
(nest_asyncio) would let foreign tasks interleave with ours. Instead the coroutine runs on a
private event loop in a worker thread while the calling thread waits, so the caller's loop is
never re-entered.

While it waits, the calling thread calls ``tick`` every ``tick_s`` seconds (the notebook's
progress bar is redrawn from there: Jupyter routes output by the thread that runs the cell).
An interrupt (Jupyter's stop button raises KeyboardInterrupt in the waiting thread) cancels
the worker's task and waits for its cleanup, so a download leaves a consistent destination
and a report, exactly as Ctrl-C does on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["loop_is_running", "run_sync"]

_T = TypeVar("_T")


def loop_is_running() -> bool:
    """Whether this thread is inside a running asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(
    make: Callable[[], Awaitable[_T]],
    *,
    tick: Callable[[], None] | None = None,
    tick_s: float = 0.25,
) -> _T:
    """Run ``make()`` to completion and return its result (or raise its exception)."""
    if not loop_is_running():
        return anyio.run(_ticking, make, tick, tick_s, backend="asyncio")
    return _run_in_worker(make, tick, tick_s)


async def _ticking(make: Callable[[], Awaitable[_T]], tick: Callable[[], None] | None, tick_s: float) -> _T:
    """``make()`` with ``tick`` called beside it (same thread: this one runs the loop).

    The ticker is a bare asyncio task rather than a task group, so ``make()``'s own exception
    reaches the caller unwrapped.
    """
    if tick is None:
        return await make()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            tick()

    ticking = asyncio.ensure_future(ticker())
    try:
        return await make()
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        tick()


@dataclass
class _Outcome(Generic[_T]):
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    value: _T | None = None
    error: BaseException | None = None
    done: bool = False


def _run_in_worker(make: Callable[[], Awaitable[_T]], tick: Callable[[], None] | None, tick_s: float) -> _T:
    outcome: _Outcome[_T] = _Outcome()
    started = threading.Event()

    async def main() -> _T:
        outcome.loop = asyncio.get_running_loop()
        outcome.task = asyncio.current_task()
        started.set()
        return await make()

    def target() -> None:
        try:
            with asyncio.Runner() as runner:
                outcome.value = runner.run(main())
                outcome.done = True
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            outcome.error = exc
        finally:
            started.set()

    # The worker inherits the caller's context (e.g. the cell a notebook's output belongs to).
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(target,), name="tcia-fetch-loop", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(tick_s)
            if tick is not None:
                tick()
    except KeyboardInterrupt:
        _cancel(outcome, started)
        worker.join()
        raise
    if outcome.error is not None:
        raise outcome.error
    if not outcome.done:  # pragma: no cover - the worker always records one or the other
        raise RuntimeError("the worker thread ended without a result")
    return outcome.value  # type: ignore[return-value]


def _cancel(outcome: _Outcome[Any], started: threading.Event) -> None:
    """Cancel the worker's task from this thread (its cleanup then runs, shielded, as usual)."""
    started.wait()
    loop, task = outcome.loop, outcome.task
    if loop is not None and task is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to cancel
            loop.call_soon_threadsafe(task.cancel)
