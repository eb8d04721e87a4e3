"""The destination contract the engine writes to, and its two homes: a directory or a bucket.

The engine needs, per series: a private staging directory, a verified commit (``publish``, or
``replace`` for a repair) and a way to discard; per run: a lock, the journal, startup
reconciliation (committed-series check, leftovers of dead writers), and a place for the report
files. :class:`SeriesHome` is that per-series protocol; the functions below are the per-run
part, so ``engine/run.py`` never asks which home it has.

* POSIX home: :class:`~tcia_fetch.store.destination.Destination` (staging dir + ``rename``).
* Object-store home: :class:`~tcia_fetch.store.objhome.BucketDestination` (local staging +
  one-object upload completed after verification). Imported lazily: only s3:// runs pay for it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from tcia_fetch.store._fs import DirectorySyncs
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import DEFAULT_COMPACT_EVERY, Journal
from tcia_fetch.store.location import DestinationLocation
from tcia_fetch.store.reconcile import Reconciliation, reconcile
from tcia_fetch.store.runlock import acquire_run_lock

if TYPE_CHECKING:
    from tcia_fetch.engine.retry import RetryPolicy
    from tcia_fetch.plan.shard import Shard
    from tcia_fetch.store._objstore import LoopCaller
    from tcia_fetch.store.objhome import BucketDestination

__all__ = [
    "RunLock",
    "SeriesHome",
    "StreamedArchive",
    "close_home",
    "home_journal",
    "home_lock",
    "open_home",
    "open_portal",
    "reconcile_home",
    "upload_home_outputs",
]


class SeriesHome(Protocol):
    """What a worker needs from a destination for one series."""

    def new_staging(self, series_uid: str) -> Path: ...
    def discard(self, staging: Path) -> None: ...
    def publish(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> object: ...
    def replace(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> object: ...


class StreamedArchive(Protocol):
    """A series archive streamed into a bucket while it downloads (``stream_archive`` of a bucket
    home): ``write`` in the extractor's thread, ``drain`` between writes and ``seal`` after the
    series verified on the event loop; the home's ``publish`` completes it, ``discard`` aborts it."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    async def drain(self) -> None: ...
    async def seal(self) -> None: ...


class RunLock(Protocol):
    def heartbeat(self) -> None: ...
    def release(self) -> None: ...


def open_home(
    location: DestinationLocation,
    *,
    keep: str,
    policy: RetryPolicy | None = None,
    portal: LoopCaller | None = None,
    shard: Shard | None = None,
    work_dir: Path | None = None,
) -> Destination | BucketDestination:
    """The home of ``location``, not yet prepared (call ``prepare()``; it checks access).

    A bucket's client runs on ``portal``'s event loop (a run passes one on its own loop, see
    :func:`open_portal`; call this from a worker thread then); ``shard`` picks its lock;
    ``work_dir`` is its local staging (default: per destination and shard, ``default_work_dir``;
    a Dask worker passes one of its own so that processes on one host never share staging).
    """
    if isinstance(location, Path):
        return Destination(location)
    from tcia_fetch.store.objhome import BucketDestination, refuse_unsupported_keep

    refuse_unsupported_keep(keep)
    return BucketDestination(location, policy=policy, portal=portal, shard=shard, work_dir=work_dir)


async def open_portal(location: DestinationLocation) -> LoopCaller | None:
    """For a bucket: a way into the current event loop from worker threads, so that its client
    lives on this loop (call on the loop)."""
    if isinstance(location, Path):
        return None
    from tcia_fetch.store._objstore import ThisLoop

    return ThisLoop()


async def close_home(home: Destination | BucketDestination) -> None:
    """Close a bucket's client (shielded: this is cleanup). A directory has nothing to close."""
    import anyio.to_thread

    with anyio.CancelScope(shield=True):
        if not isinstance(home, Destination):
            await anyio.to_thread.run_sync(home.close)


def home_lock(home: Destination | BucketDestination, run_id: str, *, shard: Shard | None = None) -> RunLock:
    """The lock of a whole-job run, or of ``shard``, refused (DestinationBusyError) while a run of
    the other kind holds one, alike on a directory (store/runlock.py) and on a bucket (whose home
    was opened for its shard)."""
    if isinstance(home, Destination):
        return acquire_run_lock(home.state_dir, run_id=run_id, shard=shard)
    return home.acquire_lock(run_id)


def home_journal(
    home: Destination | BucketDestination, run_id: str, *, compact_every: int = DEFAULT_COMPACT_EVERY
) -> Journal:
    """The run journal of either home; ``compact_every`` as for :meth:`Journal.open` (a Dask
    worker's writer passes a huge one: only the client compacts, at the end)."""
    if isinstance(home, Destination):
        return Journal.open(home.state_dir, run_id=run_id, compact_every=compact_every)
    return home.open_journal(run_id, compact_every=compact_every)


def reconcile_home(home: Destination | BucketDestination, journal: Journal) -> Reconciliation:
    if isinstance(home, Destination):
        return reconcile(home, journal)
    return home.reconcile(journal)


def upload_home_outputs(home: Destination | BucketDestination) -> None:
    """Bucket: upload the files the run wrote to its local mirrors. Directory: nothing to do."""
    if not isinstance(home, Destination):
        home.upload_outputs()
