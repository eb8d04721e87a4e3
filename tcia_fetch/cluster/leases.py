"""The download leases one Dask worker process holds, handed from one series to the next.

The cluster-wide cap on downloads in flight is a ``distributed.Semaphore(max_leases=concurrency)``:
a download runs only under a lease. Taking and returning a lease per series cost three
scheduler round trips (the task's own unpickled semaphore registered itself, acquired, released)
and each unpickled copy started a lease-refresh timer of its own on the worker, never stopped:
0.2 s on average before each download on a busy machine, and a timer per series ever run
(benchmarks/scaleout.py, issue 11).

So a worker keeps the leases it took. When a series ends, its lease goes back to this pool, not
to the cluster, and the next series on this worker (usually already queued here) takes it at
once. A lease idle here for longer than ``linger_s`` is returned to the cluster, so a worker
without work never keeps leases another one could use for more than that. The cap still holds:
every download holds one lease of the one semaphore, leases held anywhere never exceed its
``max_leases``, and a killed worker's leases still expire on the scheduler.

Pure threading: :meth:`take` runs on Dask's task threads (it may block on the cluster), and
:meth:`release_idle` on the worker runtime's timer. No Dask import; the semaphore comes from a
factory called once, on the first :meth:`take` (a task thread, where distributed binds it to
this worker).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ClusterSemaphore", "LeasePool", "LeaseStatistics"]


class ClusterSemaphore(Protocol):
    """What the pool needs of ``distributed.Semaphore`` (blocking calls, from a thread)."""

    def acquire(self) -> object: ...

    def release(self) -> object: ...


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    acquired: int
    reused: int
    released: int
    held: int


class LeasePool:
    """This worker's leases of the cluster-wide semaphore: busy, or idle and waiting for reuse."""

    def __init__(
        self,
        open_semaphore: Callable[[], ClusterSemaphore],
        *,
        linger_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, not {linger_s}")
        self._open = open_semaphore
        self._semaphore: ClusterSemaphore | None = None
        self._lock = threading.Lock()
        self._idle: list[float] = []  # when each idle lease came back, oldest first
        self._busy = 0
        self._linger_s = linger_s
        self._clock = clock
        self._acquired = 0
        self._reused = 0
        self._released = 0

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Hold one lease for the block (one download)."""
        self.take()
        try:
            yield
        finally:
            self.give_back()

    def take(self) -> None:
        """An idle lease of ours if there is one, else a new one from the cluster (may wait)."""
        with self._lock:
            if self._idle:
                self._idle.pop()  # the most recently returned: the others may expire
                self._busy += 1
                self._reused += 1
                return
            if self._semaphore is None:
                self._semaphore = self._open()
            semaphore = self._semaphore
        # Outside the lock: this waits while every lease of the cluster is held.
        semaphore.acquire()
        with self._lock:
            self._busy += 1
            self._acquired += 1

    def give_back(self) -> None:
        """The download ended: its lease stays here, idle, for the next series."""
        with self._lock:
            if self._busy < 1:
                raise RuntimeError("give_back() without take()")
            self._busy -= 1
            self._idle.append(self._clock())

    def release_idle(self, *, older_than_s: float | None = None) -> int:
        """Return to the cluster the leases idle here for at least ``older_than_s`` (default: the
        linger; 0: every idle lease). Returns how many went back."""
        limit = self._linger_s if older_than_s is None else older_than_s
        with self._lock:
            now = self._clock()
            expired = [since for since in self._idle if now - since >= limit]
            self._idle = [since for since in self._idle if now - since < limit]
            semaphore = self._semaphore
            self._released += len(expired)
        if semaphore is not None:
            for _ in expired:
                semaphore.release()
        return len(expired)

    def statistics(self) -> LeaseStatistics:
        with self._lock:
            return LeaseStatistics(
                acquired=self._acquired,
                reused=self._reused,
                released=self._released,
                held=self._busy + len(self._idle),
            )
