"""Group commit for the run journal: many workers, one write and one fsync per flush.

Every series needs two durable journal records (``verified`` before its rename, ``done``
after). With one fsync each, behind one lock, thousands of tiny series queue on the disk.
Here each caller queues its record and waits for the lock; whoever holds it writes everything
queued so far in one ``Journal.extend`` (one fsync) in a worker thread. A caller whose record
was flushed by someone else while it waited returns at once. Durability is unchanged: no
caller returns before its own record is on disk.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Protocol

import anyio
import anyio.to_thread

from tcia_fetch.store._fs import DirectorySyncs
from tcia_fetch.store.journal import Journal, SeriesRecord

__all__ = ["GroupCommit", "GroupPublisher"]


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


class _Publish(Protocol):
    """A home's ``publish`` or ``replace`` (``store/home.py``)."""

    def __call__(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> object: ...


class _Publication:
    """One series waiting to be published by :class:`GroupPublisher`."""

    __slots__ = ("done", "error", "event", "publish", "published", "staging", "taken", "verified")

    def __init__(
        self,
        verified: SeriesRecord,
        done: SeriesRecord,
        publish: _Publish,
        staging: Path,
        relative: PurePosixPath,
    ) -> None:
        self.verified = verified
        self.done = done
        self.publish = (publish, staging, relative)
        self.staging = staging
        self.taken = False
        self.published = False
        self.error: BaseException | None = None
        self.event = anyio.Event()


class GroupPublisher:
    """The publish protocol for many finished series at once, in one thread hop.

    For each series the order is the one every crash window is proven safe for
    (tests/store/test_crash_windows.py): its ``verified`` record is durable, then its staging
    directory is renamed into place, then its ``done`` record is durable. Here the series that
    finished while the previous batch was being published go together: ONE journal write and
    fsync for all their ``verified`` records, their renames, one fsync of each directory the
    renames touched (``DirectorySyncs``; the first commits them all), ONE write and fsync for
    their ``done`` records, all in one worker thread. A tiny series thus costs a fraction of a thread
    hand-off and of two fsyncs instead of three hand-offs and two fsyncs of its own.

    A series that fails to publish (its final path taken, say) gets its own error; the others
    go on. A caller cancelled before its series was taken leaves the queue untouched; one taken
    already waits (shielded) for the outcome, since its files may be in place.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._lock = anyio.Lock()
        self._queue: list[_Publication] = []
        self.flushes = 0

    async def publish(
        self,
        verified: SeriesRecord,
        done: SeriesRecord,
        publish: _Publish,
        staging: Path,
        relative: PurePosixPath,
    ) -> None:
        """Return once the series is published and its ``done`` record durable; raise if not."""
        entry = _Publication(verified, done, publish, staging, relative)
        self._queue.append(entry)
        try:
            async with self._lock:
                if not entry.taken:
                    batch, self._queue = self._queue, []
                    for item in batch:
                        item.taken = True
                    try:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self._flush, batch)
                    finally:
                        for item in batch:
                            item.event.set()
        except BaseException:
            if not entry.taken:
                self._queue.remove(entry)
                raise
            with anyio.CancelScope(shield=True):
                await entry.event.wait()
            raise
        await entry.event.wait()
        if entry.error is not None:
            raise entry.error

    def _flush(self, batch: list[_Publication]) -> None:
        self.flushes += 1
        try:
            self._journal.extend([item.verified for item in batch])
        except BaseException as exc:
            for item in batch:
                item.error = exc
            return
        placed: list[_Publication] = []
        syncs = DirectorySyncs()
        for item in batch:
            publish, staging, relative = item.publish
            try:
                publish(staging, relative, deferred=syncs)
            except BaseException as exc:
                item.error = exc
            else:
                item.published = True
                placed.append(item)
        try:
            syncs.run()  # every rename of the batch durable before any of its done records
        except BaseException as exc:
            for item in placed:
                item.error = exc
            return
        try:
            self._journal.extend([item.done for item in placed])
        except BaseException as exc:
            for item in placed:
                item.error = exc
