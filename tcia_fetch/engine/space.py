"""Free space checked before a series starts, so a claimed size never fills the disk.

The extractor never writes more DICOM bytes than the server claimed (series/limits.py), so a
deflate bomb is cut off at the claim. That protects the disk only if the claim itself fits:
:class:`SpaceGuard` compares what a series may write into its staging directory with the free
space of that filesystem (the destination, or a bucket home's local work directory), minus a
small reserve and minus what the series already in flight may still write. Then:

* it fits: the series goes ahead and its bytes stay reserved until its attempt ends;
* it fits once the series in flight are done: the attempt waits for them (deferred, not failed);
* it does not fit even alone: :class:`~tcia_fetch.errors.InsufficientSpaceError`; the series is
  set aside unstarted and the rest of the job goes on (smaller series may still fit), and the run
  then ends as a full disk does, exit 3, naming what was set aside (:func:`space_refusal_error`);
  a rerun after freeing space fetches it. A lying claim thus stops nothing but itself and
  cannot fill the disk;
* the filesystem has less free space than the reserve: :class:`~tcia_fetch.errors.DiskFullError`,
  which ends the run with exit 3 exactly as an ENOSPC while writing does.

Free space is read with ``shutil.disk_usage`` in a worker thread (it is a ``statvfs`` on what
may be an NFS or Lustre mount). A reading is reused for :data:`READING_FRESH_S`, less the whole
claim of every attempt that ended since (its bytes may now be on disk): a job of many tiny
series then pays a thread hand-off and a ``statvfs`` per second, not per series. A cached
reading only ever admits; a refusal or a deferral is decided on a fresh one. The check is a
guard, not an accounting system: other programs may fill the disk meanwhile, which the ENOSPC
handling still catches.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, NamedTuple

import anyio
import anyio.to_thread

from tcia_fetch.errors import DiskFullError, InsufficientSpaceError, StorageError
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.limits import ArchiveLimits

__all__ = [
    "DEFAULT_RESERVE_BYTES",
    "RESERVE_FRACTION",
    "SpaceGuard",
    "space_refusal_error",
    "staging_bytes_needed",
]

#: The reserve kept free: the journal, metadata.csv, reports and other programs need room too.
DEFAULT_RESERVE_BYTES = 256 << 20
#: ...but never more than this share of the filesystem, so a small scratch volume stays usable.
RESERVE_FRACTION = 0.01
#: How long a free-space reading stands in for a new one (see the module docstring).
READING_FRESH_S = 1.0
#: A file occupies whole blocks; 4 KiB per file covers the last partial block on common filesystems.
_BLOCK_SLACK_BYTES = 4 << 10


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def staging_bytes_needed(expectation: SeriesExpectation, keep: Literal["dicom", "zip", "tar.zst"]) -> int:
    """The most bytes one attempt at a series may put in its staging directory.

    ``dicom``: the DICOM files (no more than the claim: the extractor stops at it) plus LICENSE
    and a partial block per file. ``zip``: the archive as served, capped like the raw body.
    ``tar.zst``: the archive, which compression never grows by more than the raw body's slack,
    plus the one member spooled beside it, which may be the whole series when it has one instance;
    the worst case is counted, since a check that guesses low protects nothing.
    """
    limits = ArchiveLimits.for_expectation(expectation)
    files = limits.max_members
    if keep == "dicom":
        return limits.max_dicom_bytes + limits.max_license_bytes + _BLOCK_SLACK_BYTES * files
    if keep == "zip":
        return limits.max_archive_bytes + _BLOCK_SLACK_BYTES
    return limits.max_archive_bytes + limits.max_dicom_bytes + 2 * _BLOCK_SLACK_BYTES


class SpaceGuard:
    """Admits a series only when its staging bytes fit; shared by every worker of a run.

    ``path`` is any directory on the staging filesystem. ``reserve_bytes`` overrides the reserve
    (default: 256 MiB or 1 % of the filesystem, whichever is smaller). ``usage`` and ``clock``
    are injectable for tests; ``usage`` runs in a worker thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        reserve_bytes: int | None = None,
        usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reserve_bytes is not None and reserve_bytes < 0:
            raise ValueError("reserve_bytes must be >= 0")
        self.path = path
        self.reserve_override = reserve_bytes
        self._usage = usage
        #: Bytes reserved by the attempts in flight (their whole claim: what they wrote so far is
        #: also already missing from the free space, so this errs on the safe side).
        self.held_bytes = 0
        self.deferred = 0
        #: Free-space readings taken (the rest were served from the last one).
        self.readings = 0
        self._released = anyio.Event()
        self._clock = clock
        self._reading: _Usage | None = None
        self._read_at = 0.0
        #: The claims of every attempt that ended, and their sum when the reading was taken: at
        #: most the difference less is free than the reading says.
        self._spent = 0
        self._spent_at_reading = 0

    def reserve_for(self, total_bytes: int) -> int:
        """The reserve on a filesystem of ``total_bytes``."""
        if self.reserve_override is not None:
            return self.reserve_override
        return min(DEFAULT_RESERVE_BYTES, int(total_bytes * RESERVE_FRACTION))

    @asynccontextmanager
    async def hold(self, series_uid: str, need: int) -> AsyncIterator[None]:
        """Wait until ``need`` bytes fit, keep them reserved for the block, release them after."""
        while True:
            # Taken before reading: a release during the read then wakes us at once.
            released = self._released
            usage = self._recent_usage()
            if usage is not None and need > usage.free - self.reserve_for(usage.total) - self.held_bytes:
                usage = None  # a cached reading only admits: decide anything else on a fresh one
            if usage is None:
                usage = await self._fresh_usage()
            reserve = self.reserve_for(usage.total)
            usable = usage.free - reserve
            if usable <= 0:
                raise DiskFullError(
                    f"no space left for downloads on {self.path}: {usage.free:,} bytes free, less than the "
                    f"{reserve:,}-byte reserve; free some space and rerun to resume",
                    series_uid=series_uid,
                )
            if need <= usable - self.held_bytes:
                break
            if need > usable:
                raise InsufficientSpaceError(
                    f"not enough free space for this series: it may need {need:,} bytes in {self.path}, "
                    f"which has {usage.free:,} bytes free ({reserve:,} kept in reserve); "
                    "free some space and rerun to fetch it",
                    series_uid=series_uid,
                )
            # It fits once the series in flight are done: wait for one of them to end.
            self.deferred += 1
            await released.wait()
        self.held_bytes += need
        try:
            yield
        finally:
            self.held_bytes -= need
            self._spent += need
            released, self._released = self._released, anyio.Event()
            released.set()

    def _recent_usage(self) -> _Usage | None:
        """The last reading less what ended since, while it is fresh; else None."""
        reading = self._reading
        if reading is None or self._clock() - self._read_at >= READING_FRESH_S:
            return None
        spent = self._spent - self._spent_at_reading
        return _Usage(reading.total, reading.used + spent, reading.free - spent)

    async def _fresh_usage(self) -> _Usage:
        read_at, spent_before = self._clock(), self._spent
        usage = _Usage(*await anyio.to_thread.run_sync(self._read_usage))
        # Attempts that ended while statvfs ran may or may not be in it: count them as not.
        self._reading, self._read_at, self._spent_at_reading = usage, read_at, spent_before
        self.readings += 1
        spent = self._spent - spent_before
        return _Usage(usage.total, usage.used + spent, usage.free - spent)

    def _read_usage(self) -> tuple[int, int, int]:
        try:
            total, used, free = self._usage(self.path)
        except OSError as exc:
            raise StorageError(f"cannot read the free space of {self.path}: {exc.strerror or exc}") from exc
        return total, used, free


def space_refusal_error(refused: list[InsufficientSpaceError]) -> DiskFullError:
    """The run's end when series were set aside for lack of space: disk full, exit 3.

    Raised after every other series had its chance, so one oversized claim costs the job
    nothing else, and a disk that really is full still ends the run the way ENOSPC does.
    """
    first = refused[0]
    more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
    return DiskFullError(
        f"{len(refused)} series did not fit in the free space and were not started: "
        f"{first.series_uid}{more}; {first.message}",
    )
