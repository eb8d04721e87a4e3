"""One memory budget for every download's buffered body bytes.

Each stream reserves its next network read from the budget *before* reading, and keeps the bytes
reserved until its batch has been through the extractor. So the bytes held by all streams together
never exceed the budget, whatever the concurrency: 64 streams share it instead of each holding a
private megabyte (issue 9: peak RSS < 100 MB at any concurrency up to 64). A stream that cannot
reserve more first hands over what it holds, so streams never wait on each other's batches; the
budget is sized so that every stream can always hold one read, hence no stream waits forever.

Waiters are served first in, first out. Pure bookkeeping plus anyio events; no thread, no lock.
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["BUDGET_BYTES", "ByteBudget", "budget_bytes_for", "budget_for", "read_bytes_for"]

#: Body bytes all downloads of a run may hold at once (reads in flight and batches waiting for
#: the extractor). 8 streams gather full 1 MiB batches within it; 64 share it in smaller ones.
BUDGET_BYTES = 12 << 20
_MIN_READ_BYTES = 64 << 10
_MAX_READ_BYTES = 256 << 10


def read_bytes_for(concurrency: int) -> int:
    """The largest network read of a run with ``concurrency`` streams (a multiple of 64 KiB).

    Every stream must be able to hold one read of it (plus a few batches), so that no stream
    waits on another's: 256 KiB for up to 40 streams, 128 KiB up to 88, never below 64 KiB.
    """
    share = BUDGET_BYTES // (max(1, concurrency) + 8)
    return max(_MIN_READ_BYTES, min(_MAX_READ_BYTES, share // _MIN_READ_BYTES * _MIN_READ_BYTES))


def budget_bytes_for(concurrency: int) -> int:
    """The run's budget: :data:`BUDGET_BYTES`, or more if that many streams need it to hold a read each."""
    return max(BUDGET_BYTES, (max(1, concurrency) + 8) * read_bytes_for(concurrency))


class ByteBudget:
    """A weighted semaphore over bytes (``acquire(n)`` / ``release(n)``), FIFO."""

    def __init__(self, total_bytes: int, *, read_bytes: int = _MAX_READ_BYTES) -> None:
        if total_bytes < 1 or not 0 < read_bytes <= total_bytes:
            raise ValueError("need 0 < read_bytes <= total_bytes")
        self.total_bytes = total_bytes
        #: The most one network read may return (what a stream reserves before each read).
        self.read_bytes = read_bytes
        self._available = total_bytes
        self._waiters: deque[tuple[int, anyio.Event]] = deque()
        self.peak_held_bytes = 0

    @property
    def available(self) -> int:
        """Bytes not reserved by anyone."""
        return self._available

    @property
    def held(self) -> int:
        """Bytes reserved now."""
        return self.total_bytes - self._available

    def try_acquire(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` at once if nobody is queued and they are free; True if reserved."""
        self._check(nbytes)
        if self._waiters or nbytes > self._available:
            return False
        self._take(nbytes)
        return True

    async def acquire(self, nbytes: int) -> None:
        """Reserve ``nbytes``, waiting (FIFO) until they are free."""
        if self.try_acquire(nbytes):
            return
        ticket = (nbytes, anyio.Event())
        self._waiters.append(ticket)
        try:
            await ticket[1].wait()
        except BaseException:
            if ticket[1].is_set():
                self.release(nbytes)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(ticket)
                self._wake()
            raise

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` reserved earlier."""
        if nbytes < 0 or self._available + nbytes > self.total_bytes:
            raise ValueError(f"releasing {nbytes} bytes that were not reserved")
        self._available += nbytes
        self._wake()

    def _check(self, nbytes: int) -> None:
        if not 0 <= nbytes <= self.total_bytes:
            raise ValueError(f"cannot reserve {nbytes} bytes of a {self.total_bytes}-byte budget")

    def _take(self, nbytes: int) -> None:
        self._available -= nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.total_bytes - self._available)

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._available:
            nbytes, event = self._waiters.popleft()
            self._take(nbytes)
            event.set()


def budget_for(concurrency: int) -> ByteBudget:
    """The byte budget of a run with ``concurrency`` streams."""
    return ByteBudget(budget_bytes_for(concurrency), read_bytes=read_bytes_for(concurrency))
