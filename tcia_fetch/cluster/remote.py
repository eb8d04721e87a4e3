"""The worker side of a Dask run: one runtime per worker process, one series per task.

Each worker process keeps one :class:`_Runtime` per run: an event loop on a private thread (an
anyio blocking portal) holding the NBIA client session, this worker's journal writer (its own
segment, as every writer has), and the pacing controls (engine/controls.py, as a single process
builds them, sized for this worker's download slots). The client opens it on every worker while
it plans (:func:`open_runtime`), so the first series does not pay for it. A task
(:func:`fetch_series`, run on one of the worker's threads) takes a lease of the cluster-wide
semaphore, then hands its series to the runtime's loop, where the ordinary :class:`SeriesWorker`
fetches, verifies and publishes it exactly as a single-process run does. The task returns a
small dict the client aggregates. Leases stay with the worker between series (leases.py): the
next series here takes the last one's lease without asking the scheduler.

A worker killed mid-series leaves a staging directory (never a final one: publish is an atomic
rename that never replaces) and the scheduler runs the task again elsewhere. If the killed worker
had already published, the retry finds the final directory, checks it against the journal's
``verified`` record and adopts it instead of downloading again: a series is never published twice.

On a bucket (``s3://``) the same holds with the bucket home (store/objhome.py): the killed
worker leaves an open multipart upload, invisible (the client aborts it at the end of the run),
the publish is the upload's completion and refuses an existing key, and the retry adopts a key
that exists and matches the journal's record. Each worker builds its home from the destination
string with the AWS settings of its own environment (no credential travels in a task) and stages
in a local work dir of its own.

This module does not import Dask: the semaphore comes from a factory in the config.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Container, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.cluster.leases import ClusterSemaphore, LeasePool
from tcia_fetch.config import ClientSettings
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.controls import MAX_OUTAGE_S, pacing_controls
from tcia_fetch.engine.report import RunStats
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.space import SpaceGuard
from tcia_fetch.engine.worker import SeriesJob, SeriesWorker
from tcia_fetch.errors import ClusterError, TciaFetchError
from tcia_fetch.plan.model import PlannedSeries
from tcia_fetch.series.archive import archive_name
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.store._fs import host_name
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.home import close_home, home_journal, open_home, open_portal
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.layout import disambiguated, render_series_path
from tcia_fetch.store.location import BucketLocation, parse_destination
from tcia_fetch.store.reconcile import check_published
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.seriespath import SeriesPaths

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = [
    "WorkerConfig",
    "adopt_published",
    "close_runtime",
    "fetch_series",
    "open_runtime",
    "probe_bucket",
    "probe_destination",
    "series_payload",
]

#: How long a lease may sit idle on a worker before it goes back to the cluster.
_LEASE_LINGER_S: Final = 0.5
_RUNTIMES: dict[str, _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()
#: Runs closed on this worker process (a few bytes each; a worker process outlives many runs).
_CLOSED_RUNS: set[str] = set()


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs for a run (pickled once per task; small)."""

    run_id: str
    #: The destination as ``parse_destination`` reads it: a directory every worker mounts, or
    #: ``s3://bucket/prefix`` (each worker reaches it with the AWS settings of its own environment:
    #: no credential travels in a task).
    destination: str
    settings: ClientSettings
    series_job: SeriesJob
    retry_policy: RetryPolicy
    concurrency: int
    #: Downloads one worker process runs at once at most: min(concurrency, its threads).
    slots: int
    max_requests_per_s: float | None
    max_bytes_per_s: float | None
    damaged: Container[str]
    #: Called once per worker process: the cluster-wide semaphore bound to that worker.
    semaphore: Callable[[], ClusterSemaphore]
    #: The job's ``download.max_outage_s``: how long a worker waits out an outage or throttle storm.
    max_outage_s: float = MAX_OUTAGE_S
    #: Free bytes each worker keeps on its staging filesystem (``RunOptions.min_free_bytes``).
    min_free_bytes: int | None = None
    #: Where each damaged series was published: its repair goes back there (store/seriespath.py).
    damaged_paths: dict[str, str] = field(default_factory=dict)


def series_payload(item: PlannedSeries) -> dict[str, Any]:
    """A planned series as plain data for the wire."""
    return {
        "uid": item.series_uid,
        "count": item.expectation.instance_count,
        "bytes": item.expectation.total_bytes,
        "metadata": dict(item.metadata),
        "origin": item.origin,
    }


def _planned(payload: Mapping[str, Any]) -> PlannedSeries:
    uid = str(payload["uid"])
    return PlannedSeries(
        series_uid=uid,
        expectation=SeriesExpectation(uid, int(payload["count"]), int(payload["bytes"])),
        metadata=MappingProxyType(dict(payload["metadata"])),
        origin=str(payload["origin"]),
    )


def probe_destination(root: str, name: str, nonce: str) -> str | None:
    """Run on every worker: read the client's probe back and answer with one of our own.

    None when this worker sees the very destination the client wrote (shared filesystem); else
    what it saw instead. The reply file proves the worker can also write there. (A bucket:
    :func:`probe_bucket`.)
    """
    path = Path(root) / ".tcia-fetch" / name
    try:
        seen = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if seen != nonce:
        return f"{path} holds something else: this is not the client's destination"
    reply = path.with_name(f"{name}.{host_name()}.{os.getpid()}")
    try:
        reply.write_text(nonce, encoding="utf-8")
    except OSError as exc:
        return f"cannot write {reply}: {exc.strerror or exc}"
    return None


async def probe_bucket(url: str, name: str, nonce: str, policy: RetryPolicy) -> str | None:
    """:func:`probe_destination` for a bucket, run on every worker's event loop (Dask runs a
    coroutine function there): read the client's probe object back through a client of this
    worker's own and write a reply object beside it.

    None when it reads the client's nonce: this worker reaches the same endpoint and bucket,
    with credentials from its own environment that can read and write there. Else what it saw.
    """
    from tcia_fetch.store._objstore import ObjectStore
    from tcia_fetch.store.objstate import STATE_PREFIX

    location = parse_destination(url)
    if not isinstance(location, BucketLocation):
        return f"{url} is not a bucket"
    key = location.key(f"{STATE_PREFIX}/{name}")
    shown = f"s3://{location.bucket}/{key}"
    try:
        store = await ObjectStore.connect(location, policy=policy)
    except TciaFetchError as exc:
        return f"cannot reach {location.url}: {exc}"
    try:
        seen = await store.get(key)
        if seen is None:
            return f"{shown} does not exist here: this worker reaches another endpoint or bucket"
        if seen.decode("utf-8", "replace").strip() != nonce:
            return f"{shown} holds something else: this worker reaches another endpoint or bucket"
        await store.put(f"{key}.{host_name()}.{os.getpid()}", nonce.encode("utf-8"))
    except TciaFetchError as exc:
        return f"cannot use {shown}: {exc}"
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
    return None


def fetch_series(payload: dict[str, Any], config: WorkerConfig) -> dict[str, Any]:
    """The task: one series, under one lease of the cluster-wide download cap."""
    runtime = _runtime(config)
    with runtime.leases.lease():
        return runtime.fetch(payload)


async def open_runtime(config: WorkerConfig) -> None:
    """Run on every worker as soon as it is known: session, journal writer and controls ready
    before (or while) the first series arrives. On a thread: the worker's loop stays free."""
    await anyio.to_thread.run_sync(_runtime, config)


async def close_runtime(run_id: str) -> dict[str, int] | None:
    """Run on every worker at the end: close the session, seal this worker's journal segment and
    return its leases; this worker's lease figures (None if it had no runtime). On a thread:
    returning a lease is a blocking call through the worker's loop, which must not be the caller."""
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.pop(run_id, None)
        _CLOSED_RUNS.add(run_id)
    if runtime is None:
        return None
    await anyio.to_thread.run_sync(runtime.close)
    figures = runtime.leases.statistics()
    return {"acquired": figures.acquired, "reused": figures.reused, "released": figures.released}


def _runtime(config: WorkerConfig) -> _Runtime:
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(config.run_id)
        if runtime is None:
            if config.run_id in _CLOSED_RUNS:  # a late warm-up: nothing may reopen a closed run
                raise ClusterError(f"run {config.run_id} is over on this worker")
            runtime = _Runtime(config)
            _RUNTIMES[config.run_id] = runtime
        return runtime


class _Runtime:
    """This worker process's share of a run: session, journal writer, pacing, on its own loop."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self.leases = LeasePool(config.semaphore, linger_s=_LEASE_LINGER_S)
        self._portal_cm = start_blocking_portal(backend="asyncio")
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        self._md5_legacy = False
        try:
            self._portal.call(self._open)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._expiry: Future[None] = self._portal.start_task_soon(self._return_idle_leases)

    async def _return_idle_leases(self) -> None:
        while True:
            await anyio.sleep(_LEASE_LINGER_S / 2)
            await anyio.to_thread.run_sync(self.leases.release_idle)

    async def _open(self) -> None:
        config = self._config
        clock = SystemClock()
        self._clock = clock
        self._controls = pacing_controls(
            config.slots,
            max_requests_per_s=config.max_requests_per_s,
            max_bytes_per_s=config.max_bytes_per_s,
            clock=clock,
            max_outage_s=config.max_outage_s,
        )
        self._client = NBIAClient(
            config.settings,
            download_slots=config.slots,
            download_read_bytes=self._controls.budget.read_bytes,
        )
        await self._client.__aenter__()
        client = self._client
        self._controls.limiter.follow_round_trips(lambda: client.fastest_answer_s)
        self._destination = await _open_worker_home(config)
        try:
            # A writer: it appends to its own segment and never compacts (the client does, at the end).
            self._journal = await anyio.to_thread.run_sync(
                functools.partial(home_journal, self._destination, config.run_id, compact_every=2**62)
            )
        except BaseException:
            await _close_worker_home(self._destination)
            raise
        # Staging lives beside the state directory; one guard for this process' series.
        self._space = SpaceGuard(self._destination.state_dir, reserve_bytes=config.min_free_bytes)
        # One chooser for every series of this process, as a single-process run has: a repair goes
        # back to its recorded path, and two series here never claim one descriptive path.
        self._paths = SeriesPaths(config.series_job.layout, self._destination, config.damaged_paths)

    def fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._portal.call(self._fetch, payload)

    async def _fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        item = _planned(payload)
        outcome: dict[str, Any] = {"uid": item.series_uid, "worker": f"{host_name()}:{os.getpid()}"}
        stats = RunStats()
        try:
            if await anyio.to_thread.run_sync(self._adopt_published, item):
                return outcome | {"done": True, "adopted": True, "dicom_bytes": 0, "archive_bytes": 0}
            worker = SeriesWorker(
                source=self._client,
                destination=self._destination,
                journal=self._journal,
                job=self._config.series_job,
                run_id=self._config.run_id,
                retry_policy=self._config.retry_policy,
                clock=self._clock,
                pacer=self._controls.pacer,
                limiter=self._controls.limiter,
                breaker=self._controls.breaker,
                bandwidth=self._controls.bandwidth,
                budget=self._controls.budget,
                stats=stats,
                damaged=self._config.damaged,
                md5_via_legacy_endpoint=self._md5_legacy,
                space=self._space,
                paths=self._paths,
            )
            done = await worker.fetch(item)
            self._md5_legacy = self._md5_legacy or worker.md5_via_legacy_endpoint
        except TciaFetchError as exc:
            if not exc.fatal:
                raise
            return outcome | {"done": False, "fatal": str(exc), "reference": exc.reference}
        failure = worker.failures[0].as_dict() if worker.failures else None
        return outcome | {
            "done": done,
            "adopted": False,
            "dicom_bytes": stats.done_bytes,
            "instances": 0,
            "archive_bytes": stats.archive_bytes,
            "retries": stats.retries,
            "throttled": stats.throttled,
            "failure": failure,
        }

    def _adopt_published(self, item: PlannedSeries) -> bool:
        config = self._config
        return adopt_published(
            self._destination,
            self._journal,
            config.series_job.layout,
            item,
            config.run_id,
            recorded_path=config.damaged_paths.get(item.series_uid),
            damaged=item.series_uid in config.damaged,
            keep=config.series_job.keep,
        )

    def close(self) -> None:
        self._expiry.cancel()
        with contextlib.suppress(Exception):
            self._portal.call(self._close)
        self._portal_cm.__exit__(None, None, None)
        with contextlib.suppress(Exception):  # the scheduler may be gone: leases expire there
            self.leases.release_idle(older_than_s=0.0)

    async def _close(self) -> None:
        try:
            await self._client.__aexit__(None, None, None)
        finally:
            try:
                await anyio.to_thread.run_sync(self._journal.close)
            finally:
                await _close_worker_home(self._destination)


async def _open_worker_home(config: WorkerConfig) -> Destination | BucketDestination:
    """This worker's home of the run's destination, prepared, on the runtime's loop.

    A bucket's client lives on this loop (the data path awaits it; the journal and publish reach
    it from threads through the portal) and stages in a work dir of this process's own.
    """
    location = parse_destination(config.destination)
    portal = await open_portal(location)
    work_dir: Path | None = None
    if isinstance(location, BucketLocation):
        from tcia_fetch.store.objhome import worker_work_dir

        work_dir = worker_work_dir(location)
    home = await anyio.to_thread.run_sync(
        functools.partial(
            open_home,
            location,
            keep=config.series_job.keep,
            policy=config.retry_policy,
            portal=portal,
            work_dir=work_dir,
        )
    )
    try:
        await anyio.to_thread.run_sync(home.prepare)
    except BaseException:
        await _close_worker_home(home)
        raise
    return home


async def _close_worker_home(home: Destination | BucketDestination) -> None:
    """Close a bucket home's client and remove this worker's work dir (shielded: cleanup)."""
    await close_home(home)
    if isinstance(home, Destination):
        return
    from tcia_fetch.store.objhome import remove_worker_work_dir

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(remove_worker_work_dir, home.work_dir)


def adopt_published(
    destination: Destination | BucketDestination,
    writer: Journal,
    layout: str,
    item: PlannedSeries,
    run_id: str,
    *,
    recorded_path: str | None = None,
    damaged: bool = False,
    keep: str = "tar.zst",
) -> bool:
    """A retried task whose series a killed worker already published: adopt it, never redo it.

    True (and a ``done`` record appended) only when the journal's ``verified`` (or ``done``)
    record of the series names a published series that matches it exactly; otherwise the
    caller fetches, and publish refuses to overwrite whatever is there.

    The place is the one the record names, not the one the layout renders: a killed worker
    may have published under ``<name>~<hash>`` (another series held the plain name) or, repairing
    a damaged series, back under the path it was recorded at (``recorded_path``), which today's
    layout may no longer render. Reading the journal costs a pass over it, so it is read only
    when one of the places this run can publish the series under exists. A damaged series' own
    place is there from the start: it is adopted only from a record of this run (a repair that
    got as far as publishing), never from the record that described the damaged tree.

    On a bucket (``keep`` names the archive: ``<uid>.tar.zst`` or ``<uid>.zip``) the places are
    keys: a HEAD says whether one exists, and the recorded object is checked by size and a full
    re-read against its MD5 before it is adopted (the completed multipart upload is atomic, so a
    key that exists is a whole archive; whether it is THIS series' verified one is the record's).
    """
    candidates = _candidate_paths(destination, layout, item, recorded_path)
    if not _any_published(destination, candidates, archive_name(item.series_uid, keep)):
        return False
    reader = home_journal(destination, run_id)
    try:
        record = reader.get(item.series_uid)
    finally:
        reader.close()
    if record is None or record.status not in ("verified", "done") or not record.path:
        return False
    if damaged and record.run_id != run_id:
        return False
    if not _matches_record(destination, record):
        return False
    writer.append(record.with_status("done", run_id=run_id))
    return True


def _candidate_paths(
    destination: Destination | BucketDestination, layout: str, item: PlannedSeries, recorded_path: str | None
) -> list[PurePosixPath]:
    """Every path this run may publish ``item`` under (store/seriespath.py chooses among them).

    A bucket's keys end with the series UID, so they are never disambiguated: no HEAD is spent
    on a ``<name>~<hash>`` key that cannot exist."""
    relative = PurePosixPath(render_series_path(layout, item.metadata).as_posix())
    candidates = [relative]
    if isinstance(destination, Destination):
        candidates.append(disambiguated(relative, item.series_uid))
    if recorded_path:
        candidates.insert(0, PurePosixPath(recorded_path))
    return candidates


def _any_published(
    destination: Destination | BucketDestination, candidates: list[PurePosixPath], archive: str
) -> bool:
    """Whether anything stands where this run could publish the series (cheap: no journal)."""
    for relative in candidates:
        if not _inside(destination, relative):
            continue  # a path outside the destination is never a place to publish
        if isinstance(destination, Destination):
            if os.path.lexists(destination.final_path(relative)):
                return True
        elif destination.store.head(destination.final_key(relative, archive)) is not None:
            return True
    return False


def _matches_record(destination: Destination | BucketDestination, record: SeriesRecord) -> bool:
    """The recorded series is there and exactly as recorded (rare path: worth a full re-hash)."""
    assert record.path is not None
    relative = PurePosixPath(record.path)
    if not _inside(destination, relative):
        return False  # a record naming a path outside the destination is never adopted
    if isinstance(destination, Destination):
        published = destination.final_path(relative)
        return os.path.lexists(published) and not check_published(destination, record, check_md5=True)
    return not destination.published_problems(record, check_md5=True)


def _inside(destination: Destination | BucketDestination, relative: PurePosixPath) -> bool:
    """Whether ``relative`` is a safe path inside the destination (never ``..`` or absolute)."""
    try:
        if isinstance(destination, Destination):
            destination.final_path(relative)
        else:
            destination.final_key(relative, "")
    except TciaFetchError:
        return False
    return True
