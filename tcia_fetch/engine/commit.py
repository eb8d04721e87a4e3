"""Group commit for the run journal: many workers, one write and one fsync per flush.

Every series needs two durable journal records (``verified`` before its rename, ``done``
after). With one fsync each, behind one lock, thousands of tiny series queue on the disk.
Here each caller queues its record and waits for the lock; whoever holds it writes everything
queued so far in one ``Journal.extend`` (one fsync) in a worker thread. A caller whose record
was flushed by someone else while it waited returns at once. Durability is unchanged: no
caller returns before its own record is on disk.
"""

from __future__ import annotations

import anyio
import anyio.to_thread

from tcia_fetch.store.journal import Journal, SeriesRecord

__all__ = ["GroupCommit"]


class GroupCommit:
    """Async, batched, durable appends to one :class:`Journal`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._lock = anyio.Lock()
        self._queued: list[SeriesRecord] = []
        self._queued_seq = 0
        self._flushed_seq = 0
        self.flushes = 0

    async def append(self, record: SeriesRecord) -> None:
        """Return once ``record`` is durable in the journal (possibly flushed by another task)."""
        self._queued.append(record)
        self._queued_seq += 1
        mine = self._queued_seq
        async with self._lock:
            if self._flushed_seq >= mine:
                return
            batch, self._queued = self._queued, []
            upto = self._queued_seq
            try:
                await anyio.to_thread.run_sync(self._journal.extend, batch)
            except BaseException:
                # Put the batch back so its other owners see it unflushed and report the error
                # themselves instead of returning as if their records were durable.
                self._queued[:0] = batch
                raise
            self._flushed_seq = upto
            self.flushes += 1
